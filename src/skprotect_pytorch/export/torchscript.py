"""TorchScript export (CPU and CUDA): ``torch.jit.trace`` → ``freeze`` → ``optimize_for_inference``.

A trace records the operations run on the example inputs; sizes read with ``tensor.shape`` are
traced as ops, so the usual dynamic batch works, but Python control flow on shapes is baked in
(the report's notes list the tracer's warnings about that). The GPU variant traces on CUDA, so
the saved graph runs there. ``optimize_for_inference`` turns CPU convolutions into MKLDNN
constants that cannot be saved; the exporter then keeps the frozen graph (and says so in the
report's notes), which a runtime may optimise after loading. Each input's dtype and static
sizes are saved in the extra file ``skprotect.inputs`` (the AOTInductor metadata format), since
TorchScript runs a key of the wrong length or dtype without complaint.
"""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..formats import ExportFormat
from .base import (
    DeviceExporter,
    ExportReport,
    Runner,
    collect_warnings,
    first_line,
    flatten_outputs,
    one_at_a_time,
    refuse_baked_values,
    register_exporter,
    require_cuda,
    to_numpy,
)
from .options import ExportOptions

_CHUNK = 1 << 20  # bytes copied at a time from one archive entry to the file


def write_without_debug_records(archive: BinaryIO, path: Path) -> None:
    """Write the TorchScript archive to ``path`` without its ``.debug_pkl`` records. They map
    each op to the Python call stack that traced it: absolute paths of the build machine's
    files (the protection script, the model's module, the virtualenv) with function names and
    line numbers, none of which a shipped file should carry. ``torch.jit.load`` does not need
    them; only error messages of a failing op lose their Python source lines. Entries are
    copied in chunks: holding the archive as bytes, filtered, then as bytes again cost three
    more copies of the weights in memory."""
    with (
        zipfile.ZipFile(archive) as source,
        zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target,
    ):
        for info in source.infolist():
            if not info.filename.endswith(".debug_pkl"):
                with source.open(info) as entry, target.open(info, "w") as copy:
                    shutil.copyfileobj(entry, copy, _CHUNK)


def _saved(module: torch.jit.ScriptModule, extra_files: dict[str, str]) -> io.BytesIO:
    """``module`` saved in memory with ``extra_files``, read from the start."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files=extra_files)
    buffer.seek(0)
    return buffer


def _tracing_failed(err: Exception) -> ExportError:
    return ExportError(
        f"TorchScript tracing failed ({first_line(err)}). Check that the model runs with "
        "input_tensors, or choose another format in model_export_formats."
    )


def _frozen(traced: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    try:
        return torch.jit.freeze(traced)
    except Exception as err:
        raise _tracing_failed(err) from err


def _frozen_archive(
    traced: torch.jit.ScriptModule,
    device: str,
    scratch: Path,
    extra_files: dict[str, str],
    notes: list[str],
) -> tuple[io.BytesIO, str]:
    """The frozen, if possible optimised, ``traced`` module saved in memory with
    ``extra_files``, and the steps it went through.

    It is frozen once saved to ``scratch`` (removed again) and loaded back: ``torch.jit.trace``
    puts the traced module's types in TorchScript's global compilation unit, and
    ``torch.jit.freeze`` adds the frozen type there, its graph holding every weight as a
    constant; frozen as traced, the locked model's tensors stayed alive for the rest of the
    process, +50 MiB per protection of a 50 MB model (docs/benchmarks.md, "Repeated
    protections"). A loaded module's unit is freed with the module. Loaded from a file, not
    memory, and again for the fallback: an in-memory archive is copied whole before loading,
    and a module kept for the fallback would hold one more copy of the weights."""

    def loaded() -> torch.jit.ScriptModule:
        return torch.jit.load(str(scratch), map_location=device)

    try:
        try:
            # through a Python file: on a full disk, torch's own file writer aborts the whole
            # process (its destructor throws while the error unwinds: C++ terminate)
            with open(scratch, "wb") as file:
                torch.jit.save(traced, file)
        except OSError as err:
            # a full or read-only disk, said by the protection with the file it names
            raise OSError(err.errno, err.strerror, str(scratch)) from err
        except RuntimeError as err:  # torch's archive writer: "file write failed", not OSError
            raise ExportError(
                f"TorchScript export could not save the traced model to {scratch} "
                f"({first_line(err)}). If the disk is full or the folder read-only, free space "
                "or check its permissions; otherwise the traced model cannot be serialised by "
                "TorchScript: protect it for another format."
            ) from err
        try:
            # a freeze holds a copy of the weights: the fallback one is made only when needed
            optimized = torch.jit.optimize_for_inference(torch.jit.freeze(loaded()))
            buffer = _saved(optimized, extra_files)
            del optimized
            # some optimised graphs save fine but cannot be loaded back
            torch.jit.load(buffer, map_location=device)
            return buffer, "trace+freeze+optimize_for_inference"
        except Exception as err:
            notes.append(
                f"optimize_for_inference output not saved ({first_line(err)}): it holds MKLDNN "
                "constants that TorchScript cannot serialise (upstream limitation); saved the "
                "frozen graph, already optimised by freeze (conv-bn folding, constant folding)"
            )
            return _saved(_frozen(loaded()), extra_files), "trace+freeze"
    finally:
        scratch.unlink(missing_ok=True)


@register_exporter(ExportFormat.TORCHSCRIPT_CPU, ExportFormat.TORCHSCRIPT_GPU)
class TorchScriptExporter(DeviceExporter):
    """Traced, frozen and inference-optimised TorchScript in a ``.pt`` file."""

    extension = ".pt"

    gpu_format = ExportFormat.TORCHSCRIPT_GPU

    @one_at_a_time
    def export(
        self,
        module: nn.Module,
        example_inputs: tuple[Tensor, ...],
        path: Path,
        options: ExportOptions,
        *,
        with_key: bool,
    ) -> ExportReport:
        start = time.perf_counter()
        module, args, path, notes = self.prepare(module, example_inputs, path, options, with_key)
        try:
            with torch.no_grad(), collect_warnings(notes, torch.jit.TracerWarning) as caught:
                traced = torch.jit.trace(module, args, check_trace=False, strict=False)
        except Exception as err:
            raise _tracing_failed(err) from err
        refuse_baked_values(caught, f"ExportFormat.{self.fmt.name}")
        extra_files = options.inputs_record(args, with_key)
        scratch = path.with_name(f".{path.name}.traced")
        buffer, steps = _frozen_archive(traced, self.device, scratch, extra_files, notes)
        write_without_debug_records(buffer, path)
        return ExportReport(
            path=path,
            fmt=self.fmt,
            exporter=f"torch.jit {steps} ({self.device})",
            seconds=time.perf_counter() - start,
            notes=notes,
        )

    def load(self, path: Path, options: ExportOptions) -> Runner:
        if self.device == "cuda":
            require_cuda(self.fmt)
        model = torch.jit.load(str(path), map_location=self.device)
        device = self.device

        def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
            tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in inputs]
            with torch.no_grad():
                out = model(*tensors)
            return to_numpy(flatten_outputs(out))

        return run
