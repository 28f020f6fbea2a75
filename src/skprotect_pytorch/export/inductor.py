"""AOTInductor export (CPU and CUDA): ``torch.export`` then ``aoti_compile_and_package`` → ``.pt2``.

**AOTInductor does not check its inputs**: a key (or any input) of the wrong length or dtype is
read as if it were right, i.e. out of bounds. Its own check (environment variable
``AOTI_RUNTIME_CHECK_INPUTS=1``) cannot be used either: in torch 2.13 a CPU convolution adds a
spurious guard on the batch size while compiling (``s0 < 16`` from the fake conv's backend
choice, with a batch-2 example), so the check rejects every batch above 15 although the compiled
code computes them correctly. We therefore record each input's dtype and static dimensions in
the package metadata (``skprotect.inputs``) and :meth:`InductorExporter.load` checks them before
every call: a wrong key or input raises :class:`~skprotect_pytorch.errors.InvalidArgumentError`
naming it. Runtimes that load our ``.pt2`` files must do the same: :func:`input_specs` and
:func:`check_inputs` live in the runtime (``skruntime.backends.inductor``), the lower layer.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor, nn

from skruntime.backends.inductor import (
    INPUTS_METADATA,
    check_inputs,
    load_package,
    locked_folder,
    row_major,
)

from ..errors import ExportError, InvalidArgumentError
from ..formats import ExportFormat
from .base import (
    DeviceExporter,
    ExportReport,
    Runner,
    first_line,
    flatten_outputs,
    isolated_traces,
    one_at_a_time,
    quiet_upstream_warnings,
    register_exporter,
    require_cuda,
    signature_dynamic_shapes,
    to_numpy,
)
from .options import ExportOptions, SizeRange, exported_axes

_MIN_SCRUBBED_PREFIX = 8
"""Shorter folders (``/usr``, ``/root``) are left alone: replacing so few bytes anywhere in a
compiled library could hit code or data, and they say little about the build machine."""


class _ErrorKeepingFile(io.RawIOBase):
    """``file`` as torch's archive writer writes a package into it, streamed (the package is
    about the weights' size): the first ``OSError`` (a full disk) is kept in :attr:`error`,
    not raised, and later writes are dropped. Raised to it, the error aborted the whole
    process: a write in the writer's ``__exit__`` fails again, and its destructor throws while
    that error unwinds (C++ terminate), writing to a path or a file alike."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__()
        self.file = file
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.error is None:
            try:
                self.file.write(data)
            except OSError as err:
                self.error = err
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self.error is None:
            try:
                return self.file.seek(offset, whence)
            except OSError as err:
                self.error = err
        return 0


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXT = "|".join(re.escape(os.strerror(code)) for code in _NO_SPACE)
_NO_SPACE_ERRNO = "|".join(str(code) for code in _NO_SPACE)
_NO_SPACE_LINE = re.compile(
    # a tool's diagnostic, the system's reason last (perror's form): "as: Fatal error: w.o:
    # No space left on device", "ld: final link failed: …", "… of w.o: 'No space …'", "(…)"
    rf"(?:: |\()'?(?:{_NO_SPACE_TEXT})'?\)?\.?$"
    # Python's OSError, its file after it: "[Errno 28] No space left on device: '/c/w.so'"
    rf"|\[Errno (?:{_NO_SPACE_ERRNO})\] (?:{_NO_SPACE_TEXT})(?:: .*)?$"
)
_QUOTED_SOURCE = re.compile(r"\s*\d*\s*\|")
"""The start of a source line that GCC quotes under its diagnostic (``   12 |   code``)."""


def _out_of_space(err: BaseException) -> str | None:
    """What said that the disk was full in ``err`` or the errors it came from (an ``OSError``
    of a full disk or quota, or a line of the compiler's output in the form of a diagnostic
    saying so: :data:`_NO_SPACE_LINE`), else None: the compile then failed with "a C++
    compile error", which sent users to check their compiler. A line that merely holds the
    words (a quoted source line, a string in the code) is no such diagnostic: taken for one,
    a compile error was said to be a full disk."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE:
            return str(cause)
        for line in str(cause).splitlines():
            if not _QUOTED_SOURCE.match(line) and _NO_SPACE_LINE.search(line.strip()):
                return line.strip()
        cause = cause.__cause__ or cause.__context__
    return None


def _cache_dir() -> str:
    """torch's compile cache folder, where AOTInductor builds (:func:`own_build_folder`)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return cache_dir()


BUILD_PREFIX = "skprotect-build-"
"""The start of an export's build folder's name (:func:`own_build_folder`)."""


@contextlib.contextmanager
def own_build_folder() -> Iterator[str]:
    """AOTInductor builds in a folder of this export's own, inside torch's compile cache,
    removed afterwards; yields its path (:func:`without_build_paths` blanks it). Torch names
    its build folder after the graph's code alone: two exports of one architecture at once
    (other keys, so other weights) wrote the same library and metadata files, and one package
    could carry the other's (its ``skprotect.inputs`` with the other key's commitment).

    The runtime's locked folder (:func:`~skruntime.backends.inductor.locked_folder`: named
    ``skprotect-build-<system>-<pid>-*``, locked while the export runs), and this host's build
    folders whose process is gone are removed first: one killed with SIGKILL (the OOM killer,
    a container stopped hard) left its folder, the compiled library with the weights in it,
    in the cache for ever."""
    root = Path(_cache_dir())
    root.mkdir(parents=True, exist_ok=True)
    folder, lock = locked_folder(BUILD_PREFIX, str(root))
    try:
        # read by compile_fx_aot when inductor_configs leave it out (aoti_compile_and_package
        # refuses it there)
        with torch._inductor.config.patch({"aot_inductor.output_path": folder}):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def build_folders(*builds: str) -> list[str]:
    """The build machine's folders that AOTInductor writes into a package, longest first:
    the export's build folders ``builds`` (:func:`own_build_folder`: their names hold the
    host's tag and the pid), torch's compile cache (named after the user), torch's install
    folder (the virtualenv) and the Python installations (the compile commands' include and
    library folders)."""
    named = (*builds, _cache_dir(), os.path.dirname(torch.__file__), sys.prefix, sys.base_prefix)
    folders = {*named, *map(os.path.realpath, named)}
    wanted = (f for f in folders if os.path.isabs(f) and len(f) >= _MIN_SCRUBBED_PREFIX)
    return sorted(wanted, key=len, reverse=True)


def without_build_paths(path: Path, *builds: str) -> bool:
    """Rewrite the package at ``path`` with every :func:`build_folders` path (``builds``: the
    export's build folders) blanked out in place (same length, ``/___…``, so no offset inside
    the compiled library moves); True if anything was replaced. AOTInductor leaves them in its
    generated sources (the compile commands as comments), in the library's source-file strings
    (``__FILE__`` of its runtime checks) and in its debug line tables; loading needs none of
    them. A package of sources only (``aot_inductor.package_cpp_only``) is compiled again where
    it is loaded, from the folders it names, so it is left as it is. Members are copied in
    chunks: a library holding gigabytes of weights is never read into memory whole."""
    folders = [f.encode() for f in build_folders(*builds)]
    if not folders:
        return False
    # longest first: where a folder and one inside it both start, the whole path is blanked
    pattern = re.compile(b"|".join(map(re.escape, folders)))
    overlap = len(folders[0]) - 1  # a path split between two chunks
    partial = path.with_name(f".{path.name}.partial")
    changed = False
    try:
        with zipfile.ZipFile(path) as source:
            if not any(name.endswith(".so") for name in source.namelist()):
                return False
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as target:
                for info in source.infolist():
                    large = info.file_size >= zipfile.ZIP64_LIMIT
                    with (
                        source.open(info) as data,
                        target.open(copy.copy(info), "w", force_zip64=large) as out,
                    ):
                        changed |= _copy_blanked(data, out, pattern, overlap)
        if changed:
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return changed


_CHUNK = 16 << 20


def _copy_blanked(
    data: IO[bytes], out: IO[bytes], pattern: re.Pattern[bytes], overlap: int
) -> bool:
    """Copy ``data`` to ``out`` with each match of ``pattern`` blanked; a match starting in the
    last ``overlap`` bytes of a chunk waits for the next one, which may complete a longer
    folder. True if anything was blanked."""
    changed = False
    tail = b""
    while True:
        chunk = data.read(_CHUNK)
        buffer = bytearray(tail + chunk)
        end = max(len(buffer) - overlap, 0) if chunk else len(buffer)
        spans = [m.span() for m in pattern.finditer(buffer) if m.start() < end]
        for start, stop in spans:
            buffer[start:stop] = b"/" + b"_" * (stop - start - 1)
        changed |= bool(spans)
        out.write(buffer[:end])
        tail = bytes(buffer[end:])
        if not chunk:
            return changed


def release_last_trace() -> None:
    """Drop torch's map of the last ``make_fx`` trace's fake tensors to its graph nodes.

    ``torch.fx.experimental.proxy_tensor`` keeps it in a module global, for the fake-tensor
    leak check of ``torch.export`` (which reads it right after its own trace), and clears it
    only when the next trace starts. After an AOTInductor compile its nodes hold the compiled
    graph module, and with it the locked model's weights, until the process exports again:
    +50 MiB kept after protecting a 50 MB model (docs/benchmarks.md, "Repeated
    protections")."""
    from torch.fx.experimental import proxy_tensor

    proxy_tensor._FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT.clear()


@register_exporter(ExportFormat.INDUCTOR_CPU, ExportFormat.INDUCTOR_GPU)
class InductorExporter(DeviceExporter):
    """``torch.export.export`` + ``torch._inductor.aoti_compile_and_package`` to a ``.pt2``."""

    extension = ".pt2"

    gpu_format = ExportFormat.INDUCTOR_GPU

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
        self.compile_configs(options, args, with_key)  # refuses bad settings before the export
        try:
            shapes = signature_dynamic_shapes(module, options.export_dynamic_shapes(with_key))
            with isolated_traces(), quiet_upstream_warnings(), torch.no_grad():
                program = torch.export.export(module, args, dynamic_shapes=shapes)
        except Exception as err:
            raise ExportError(
                f"torch.export failed ({first_line(err)}). Check that the model runs with "
                "input_tensors and that dynamic_shapes matches what the model allows."
            ) from err
        exported = time.perf_counter()
        configs = self.compile_configs(options, args, with_key, exported_axes(program))
        try:
            with open(path, "wb") as file:
                sink = _ErrorKeepingFile(file)
                try:
                    # Without no_grad, a CUDA compile of parameters that require grad fails in
                    # addmm's out= variant ("functions with out=... arguments don't support
                    # automatic differentiation"); an inference package needs no autograd anyway.
                    with own_build_folder() as build, quiet_upstream_warnings(), torch.no_grad():
                        torch._inductor.aoti_compile_and_package(
                            program, package_path=sink, inductor_configs=configs
                        )
                except Exception as err:
                    if sink.error is not None:  # the disk's error, not what it led to
                        raise sink.error from err
                    if (full := _out_of_space(err)) is not None:
                        raise ExportError(
                            f"AOTInductor compilation ran out of disk space ({full}). It "
                            f"builds in torch's compile cache ({_cache_dir()}; the environment "
                            "variable TORCHINDUCTOR_CACHE_DIR moves it) and the compiler writes "
                            f"temporary files in {tempfile.gettempdir()} ($TMPDIR): free space "
                            "there, then protect again."
                        ) from err
                    raise ExportError(
                        f"AOTInductor compilation failed ({first_line(err)}). Check "
                        "inductor_configs and that a C++ compiler is installed"
                        + (" (and the CUDA toolkit)." if self.device == "cuda" else ".")
                    ) from err
                finally:
                    release_last_trace()
            if sink.error is not None:
                raise sink.error
        except (OSError, ExportError) as err:
            path.unlink(missing_ok=True)
            if isinstance(err, OSError):  # a full or read-only disk, said by the protection
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
        try:
            without_build_paths(path, build)
        except OSError as err:
            raise ExportError(
                f"AOTInductor package {path} could not be rewritten without the build machine's "
                f"paths ({err.strerror or err}). Free space or check the folder's permissions."
            ) from err
        end = time.perf_counter()
        return ExportReport(
            path=path,
            fmt=self.fmt,
            exporter=f"torch.export + aoti_compile_and_package ({self.device})",
            seconds=end - start,
            notes=[
                *notes,
                f"torch.export {exported - start:.1f} s, AOTInductor compile "
                f"{end - exported:.1f} s",
            ],
        )

    def compile_configs(
        self,
        options: ExportOptions,
        args: tuple[Tensor, ...],
        with_key: bool,
        exported: Sequence[Mapping[int, SizeRange]] | None = None,
    ) -> dict:
        """The user's ``inductor_configs``, plus the input record in the package metadata
        (``exported``: the exported program's dynamic axes, :meth:`ExportOptions.inputs_record`),
        and unless the user set them: on CPU no layout optimisation, on CUDA no compile-time
        autotuning. Settings that make a package that cannot be loaded are refused."""
        configs = dict(options.inductor_configs)
        if configs.get("aot_inductor.package_constants_in_so") is False and not configs.get(
            "aot_inductor.package_constants_on_disk_format"
        ):
            # torch 2.13 then packages no weights at all, and loading the package crashes the
            # process (segmentation fault) instead of raising.
            raise InvalidArgumentError(
                'inductor_configs sets "aot_inductor.package_constants_in_so" to False without '
                '"aot_inductor.package_constants_on_disk_format": AOTInductor then writes the '
                "package without its weights, and loading it crashes the process. Also set "
                '"aot_inductor.package_constants_on_disk_format": "binary_blob", or leave '
                '"aot_inductor.package_constants_in_so" out.'
            )
        if "aot_inductor.output_path" in configs:
            # torch refuses a path only when compiling, in its own words ("pass in a package
            # path"), and takes "" for its shared folder: :func:`own_build_folder` undone.
            raise InvalidArgumentError(
                'inductor_configs sets "aot_inductor.output_path": the protection writes the '
                "package into outputs/<application_name>/ and AOTInductor builds it in a "
                "folder of its own, removed afterwards. Leave it out."
            )
        if self.device == "cpu":
            # Inductor turns conv graphs channels-last; on CPU that made a ResNet-18 at 32 px
            # 1.4–1.8× slower at batch 1 and its locked copy's un-mix slower still
            # (docs/benchmarks.md, "AOTInductor without layout optimisation").
            configs.setdefault("layout_optimization", False)
        if self.device == "cuda":
            # Compile-time autotuning runs each Triton kernel on random inputs, so the kernels
            # that index with key-decoded permutations read out of bounds and trip a device-side
            # assert (pytorch/pytorch#194018). Tuned at the first run instead, on real inputs.
            configs.setdefault("triton.autotune_at_compile_time", False)
        metadata = dict(configs.get("aot_inductor.metadata") or {})
        configs["aot_inductor.metadata"] = metadata | options.inputs_record(
            args, with_key, exported
        )
        return configs

    def load(self, path: Path, options: ExportOptions) -> Runner:
        if self.device == "cuda":
            require_cuda(self.fmt)
        # the runtime's load: torch's extracted folder goes with the package, or at once if the
        # load fails (torch's own load left two $TMPDIR/aotinductor_* folders per failure)
        package = load_package(Path(path), -1, {})
        device = self.device
        name = Path(path).name
        raw = package.metadata.get(INPUTS_METADATA)
        if raw is None:
            raise InvalidArgumentError(
                f"{name} was not written by skprotect (no {INPUTS_METADATA} metadata), so its "
                "inputs cannot be checked. Re-export it with skprotect."
            )
        specs = json.loads(raw)

        def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
            names = options.names(with_key=len(specs) > len(options.input_names))
            check_inputs(inputs, specs, names, name, options.key_name, error=InvalidArgumentError)
            tensors = [
                row_major(torch.from_numpy(np.ascontiguousarray(x)).to(device)) for x in inputs
            ]
            with torch.no_grad():
                out = package(tensors)
            return to_numpy(flatten_outputs(out))

        return run
