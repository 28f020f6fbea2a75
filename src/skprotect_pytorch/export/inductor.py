"""AOTInductor export (CPU and CUDA): ``torch.export`` then ``aoti_compile_and_package`` → ``.pt2``.

The key input is exported with a static length. **AOTInductor does not check its inputs** unless
the environment variable ``AOTI_RUNTIME_CHECK_INPUTS=1`` is set when the package runs: without
it, a key (or any input) of the wrong length or dtype is read as if it were right, i.e. out of
bounds. :meth:`InductorExporter.load` sets it before loading, and every runtime that loads our
``.pt2`` files must do the same; with it, a wrong input raises a ``RuntimeError`` naming the
input, which the loader turns into an :class:`~skprotect_pytorch.errors.InvalidArgumentError`.

The input check also enforces torch.export's lower bound of 2 on every dynamic dimension, which
would reject a batch of 1 at run time; we compile with ``aot_inductor.check_lowerbound=False``
(unless ``inductor_configs`` says otherwise) so that batch 1 runs, while static dimensions,
dtypes, the key's length and any upper bound stay checked.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError, InvalidArgumentError
from ..formats import ExportFormat
from .base import (
    ExportReport,
    Runner,
    check_example_inputs,
    first_line,
    flatten_outputs,
    quiet_upstream_warnings,
    register_exporter,
    require_cuda,
    signature_dynamic_shapes,
    to_numpy,
)
from .options import ExportOptions

CHECK_INPUTS_ENV = "AOTI_RUNTIME_CHECK_INPUTS"
DEFAULT_INDUCTOR_CONFIGS = {"aot_inductor.check_lowerbound": False}

_HANDLE = re.compile(r"input_handles\[(\d+)\]:\s*(.*)")


def enable_input_checks() -> None:
    """Make AOTInductor packages loaded from now on check input shapes and dtypes."""
    os.environ[CHECK_INPUTS_ENV] = "1"


@register_exporter(ExportFormat.INDUCTOR_CPU, ExportFormat.INDUCTOR_GPU)
class InductorExporter:
    """``torch.export.export`` + ``torch._inductor.aoti_compile_and_package`` to a ``.pt2``."""

    extension = ".pt2"

    def __init__(self, fmt: ExportFormat) -> None:
        self.fmt = fmt
        self.device = "cuda" if fmt is ExportFormat.INDUCTOR_GPU else "cpu"

    def export(
        self,
        module: nn.Module,
        example_inputs: tuple[Tensor, ...],
        path: Path,
        options: ExportOptions,
        *,
        with_key: bool,
    ) -> ExportReport:
        args = check_example_inputs(example_inputs, options, with_key)
        if self.device == "cuda":
            require_cuda(self.fmt)
            module = copy.deepcopy(module).to(self.device)  # never move the caller's model
            args = tuple(a.to(self.device) for a in args)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            shapes = signature_dynamic_shapes(module, options.export_dynamic_shapes(with_key))
            with quiet_upstream_warnings():
                program = torch.export.export(module.eval(), args, dynamic_shapes=shapes)
        except Exception as err:
            raise ExportError(
                f"torch.export failed ({first_line(err)}). Check that the model runs with "
                "input_tensors and that dynamic_shapes matches what the model allows."
            ) from err
        exported = time.perf_counter()
        configs = {**DEFAULT_INDUCTOR_CONFIGS, **options.inductor_configs}
        try:
            with quiet_upstream_warnings():
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(path), inductor_configs=configs
                )
        except Exception as err:
            raise ExportError(
                f"AOTInductor compilation failed ({first_line(err)}). Check inductor_configs and "
                "that a C++ compiler is installed"
                + (" (and the CUDA toolkit)." if self.device == "cuda" else ".")
            ) from err
        end = time.perf_counter()
        return ExportReport(
            path=path,
            fmt=self.fmt,
            exporter=f"torch.export + aoti_compile_and_package ({self.device})",
            seconds=end - start,
            notes=[
                f"torch.export {exported - start:.1f} s, AOTInductor compile {end - exported:.1f} s"
            ],
        )

    def load(self, path: Path, options: ExportOptions) -> Runner:
        if self.device == "cuda":
            require_cuda(self.fmt)
        enable_input_checks()
        compiled = torch._inductor.aoti_load_package(str(path))
        device = self.device
        name = Path(path).name

        def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
            tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(device) for x in inputs]
            try:
                with torch.no_grad():
                    out = compiled(*tensors)
            except RuntimeError as err:
                raise _input_error(err, name, inputs, options) from err
            return to_numpy(flatten_outputs(out))

        return run


def _input_error(
    err: RuntimeError, name: str, inputs: Sequence[np.ndarray], options: ExportOptions
) -> Exception:
    text = str(err).strip()
    match = _HANDLE.search(text)
    if match is None and "inputs vector size" not in text:
        return err  # not an input check: keep the original error
    if match is None:
        return InvalidArgumentError(
            f"The AOTInductor model {name} got {len(inputs)} input(s) ({text}). Pass the model "
            "inputs, then the key."
        )
    idx = int(match.group(1))
    # The names are known for keyed and unkeyed models alike: the key, if any, is last.
    all_names = options.names(with_key=len(inputs) > len(options.input_names))
    label = all_names[idx] if idx < len(all_names) else f"#{idx}"
    what = "key" if label == options.key_name else "input"
    return InvalidArgumentError(
        f'The AOTInductor model {name} rejected its {what} "{label}" (shape '
        f"{tuple(np.shape(inputs[idx])) if idx < len(inputs) else '?'}, dtype "
        f"{np.asarray(inputs[idx]).dtype if idx < len(inputs) else '?'}): "
        f"{match.group(2).strip()}. Pass it with the shape and dtype it was exported with"
        + (" (the key is a float32 vector of fixed length)." if what == "key" else ".")
    )
