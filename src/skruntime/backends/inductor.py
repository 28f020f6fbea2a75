"""AOTInductor backend: ``.pt2`` packages, loaded with ``torch._inductor.aoti_load_package``.

**AOTInductor does not check its inputs**: a key (or any input) of the wrong length or dtype is
read as if it were right, i.e. out of bounds. Its own check (environment variable
``AOTI_RUNTIME_CHECK_INPUTS=1``) cannot be used either: in torch 2.13 a CPU convolution adds a
spurious guard on the batch size while compiling (``s0 < 16`` from the fake conv's backend
choice), so the check rejects every batch above 15 although the compiled code computes them
correctly. skprotect therefore records each input's dtype and static dimensions in the package
metadata (:data:`~.inputs.INPUTS_METADATA`, written with :func:`~.inputs.input_specs`), with the
ranges the dynamic axes were declared for, and every loader checks them with :func:`check_inputs`
before every call. This module is that one implementation; the protector's exporters import it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import weakref
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendError, InputError
from ..system import system_tag, this_system
from .base import BackendOptions, ModelFile
from .gpu import (
    apply_gpu_determinism,
    cuda_index,
    gpu_settings,
    require_cuda,
    restore_gpu_settings,
)
from .inputs import INPUTS_METADATA, input_specs, parse_specs, range_problem

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no folder is locked, none is swept)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "INPUTS_METADATA",
    "InductorBackend",
    "check_inputs",
    "check_package",
    "check_torch_options",
    "input_specs",
    "load_package",
    "load_settings",
    "locked_folder",
    "parse_specs",
    "unpack_problem",
]


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], str]:
    """Shape and dtype name of a numpy array or torch tensor (no copy, any device)."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape), str(x.dtype).removeprefix("torch.")
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    return tuple(x.shape), x.dtype.name


def check_inputs(
    inputs: Sequence[Any],
    specs: list[dict],
    names: list[str],
    name: str,
    key_name: str | None,
    *,
    kind: str = "AOTInductor",
    error: type[Exception] = InputError,
) -> None:
    """Raise ``error`` for an input whose count, dtype or static size is wrong, or whose
    dynamic size is outside the range its spec records (the compiled code may rely on it).

    ``inputs`` are numpy arrays or torch tensors; ``name`` is the model file's name, ``kind`` the
    format named in the message (``"AOTInductor"`` or ``"TorchScript"``).
    """
    if len(inputs) != len(specs):
        raise error(
            f"The {kind} model {name} takes {len(specs)} input(s) ({', '.join(names)}) but got "
            f"{len(inputs)}. Pass the model inputs, then the key."
        )
    for i, (x, spec) in enumerate(zip(inputs, specs, strict=True)):
        got_shape, got_dtype = _shape_dtype(x)
        shape = spec["shape"]
        ok = (
            got_dtype == spec["dtype"]
            and len(got_shape) == len(shape)
            and all(want is None or want == got for want, got in zip(shape, got_shape, strict=True))
        )
        label = names[i] if i < len(names) else f"#{i}"
        if not ok:
            what = "key" if label == key_name else "input"
            expected = tuple("dynamic" if n is None else n for n in shape)
            raise error(
                f'The {kind} model {name} rejected its {what} "{label}" (shape {got_shape}, '
                f"dtype {got_dtype}): expected shape {expected}, dtype {spec['dtype']}. Pass it "
                "with the shape and dtype it was exported with"
                + (" (the key is a float32 vector of fixed length)." if what == "key" else ".")
            )
        if problem := range_problem(got_shape, spec.get("ranges", {})):
            raise error(f'The {kind} model {name} rejected its input "{label}": it {problem}')


def backend_failure(err: BaseException) -> str:
    """``Type: reason`` of a torch error, without TorchScript's serialized-code traceback."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        lines = lines[-1:]  # "RuntimeError: <reason>" comes last
    text = lines[0][:300] if lines else ""
    return text if text.startswith(f"{type(err).__name__}:") else f"{type(err).__name__}: {text}"


_SETTINGS_LOCK = threading.RLock()
"""Held by a load from reading the process-wide settings to keeping or restoring them
(:func:`load_settings`): a failed load that restored them while another thread's load went on
undid the settings of that one (its ``intra_op_threads``)."""


@contextlib.contextmanager
def load_settings(options: BackendOptions, cuda: bool) -> Iterator[None]:
    """The process-wide settings a torch backend runs with, for the block that loads it: on
    CUDA those of :func:`~.gpu.apply_gpu_determinism`, and ``intra_op_threads``
    (``torch.set_num_threads``); put back as they were if the block raises, so that a failed
    load leaves the process as it was. ``inter_op_threads`` is set once the block succeeded:
    torch sets that count once per process and cannot change it back. One load of the process
    at a time (:data:`_SETTINGS_LOCK`)."""
    with _SETTINGS_LOCK:
        saved_gpu = gpu_settings() if cuda else None
        saved_threads = torch.get_num_threads()
        if cuda:
            apply_gpu_determinism()
        if options.intra_op_threads is not None:
            torch.set_num_threads(options.intra_op_threads)
        try:
            yield
            _apply_inter_op_threads(options.inter_op_threads)
        except BaseException:
            torch.set_num_threads(saved_threads)
            if saved_gpu is not None:
                restore_gpu_settings(saved_gpu)
            raise


def _apply_inter_op_threads(wanted: int | None) -> None:
    """Set torch's inter-op thread count (process-wide, once per process) to ``wanted``."""
    if wanted is not None and torch.get_num_interop_threads() != wanted:
        try:
            torch.set_num_interop_threads(wanted)
        except RuntimeError:
            raise BackendError(
                f"inter_op_threads={wanted} cannot be applied: torch sets its inter-op thread "
                "count once per process, before any parallel work, and this process already "
                f"uses {torch.get_num_interop_threads()}. Load this model with "
                f"inter_op_threads={torch.get_num_interop_threads()} or None, or set it on the "
                "first model loaded."
            ) from None


def row_major(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with the strides of a new row-major tensor of its shape (a copy only where
    they differ).

    ``contiguous()`` is not enough: a tensor with a size-1 axis is contiguous whatever that
    axis' stride, and aten chooses a convolution's output layout from the strides, size-1
    axes included. A 1-channel image batch sliced from a transposed array (strides
    ``(64, 1, 8, 1)``) makes a conv return channels_last: AOTInductor compiles its code for
    the layout it saw at export and reads any other as garbage (a quickstart package: error
    26 on the logits for the same values with row-major strides). Export examples and call
    inputs both go through here, so the two always agree."""
    if tensor.layout != torch.strided or tensor.stride() == _row_major_strides(tensor.shape):
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _row_major_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """The strides torch gives a new tensor of ``shape`` (size-1 axes included; an empty axis
    counts as 1, as in torch), computed without making a tensor: this runs on every call."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _storage(tensor: torch.Tensor) -> int | None:
    """The address of the memory ``tensor`` (or the tensor it is a view of) lives in; None for
    a sparse tensor, which has no storage of its own (torch raises for one)."""
    return tensor.untyped_storage().data_ptr() if tensor.layout == torch.strided else None


class TensorIO:
    """numpy or torch tensors in → tensors on ``device``; outputs back in the callers' kind.

    ``owned``: the tensors the model keeps between calls (a TorchScript module's constants),
    which an output may be, or be a view of."""

    def __init__(self, device: str, owned: Iterable[torch.Tensor] = ()) -> None:
        self.device = torch.device(device)
        self._owned = frozenset(_storage(t) for t in owned) - {None}

    def to_device(self, inputs: Sequence[Any]) -> list[torch.Tensor]:
        """Row-major tensors on the device (:func:`row_major`). AOTInductor's compiled code
        indexes its inputs as row-major whatever their strides say, so a channels_last or
        permuted tensor would be read in the wrong order; tensors that already are row-major
        are not copied."""
        tensors = []
        for x in inputs:
            if not isinstance(x, torch.Tensor):
                x = np.asarray(x)
                if not (x.flags.c_contiguous and x.flags.writeable):
                    x = np.array(x, order="C")  # torch.from_numpy wants a writeable buffer
                x = torch.from_numpy(x)
            tensors.append(row_major(x.to(self.device)))
        return tensors

    def outputs(self, out: Any, inputs: Sequence[Any], fed: Sequence[torch.Tensor]) -> list[Any]:
        """Flatten tuple/list/dict outputs; numpy unless the first input is a torch tensor.

        ``fed``: the tensors the model ran on (:meth:`to_device`). An output that shares memory
        with one of them (``return x``, ``x[:, :2]``: the caller's own array on the CPU), with
        a tensor the model keeps (a constant returned as is) or with an earlier output is
        copied, so that a caller who writes to an output changes neither its inputs, nor its
        other outputs, nor the next call's outputs (as with onnxruntime); the other outputs
        are not copied.

        Tensors come back as ordinary tensors: the backends run under ``inference_mode`` (the
        fastest mode: no version counters), whose inference tensors callers could neither modify
        in place nor use with autograd, so those are cloned outside it (a copy of the outputs
        only; numpy outputs need none)."""
        flat = self._unshared(_flatten(out), fed)
        first = inputs[0] if inputs else None
        if isinstance(first, torch.Tensor):
            moved = (t.to(first.device) for t in flat)
            return [t.clone() if t.is_inference() else t for t in moved]
        return [t.detach().cpu().numpy() for t in flat]

    def _unshared(
        self, flat: list[torch.Tensor], fed: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``flat`` with a copy of each output that shares memory with an input, a tensor the
        model keeps, or an earlier output (``return y, y[:, :1]``: writing to one would change
        the other, where onnxruntime returns separate arrays)."""
        taken = {*self._owned, *map(_storage, fed)} - {None}
        unshared = []
        for t in flat:
            storage = _storage(t)
            unshared.append(t.clone() if storage in taken else t)
            if storage is not None:
                taken.add(storage)
        return unshared


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for item in out for t in _flatten(item)]
    raise BackendError(
        f"The model returned a {type(out).__name__}, not tensors. Re-export it with skprotect."
    )


def check_torch_options(options: BackendOptions, valid: Sequence[str], kind: str) -> None:
    """Refuse unknown session options, values other than True or False (every torch session
    option is a flag: the text "false" would have turned one on), and a CUDA device torch
    cannot use (BackendError): the checks of a torch backend that need no file, run by the
    runtime before it reads any."""
    unknown = sorted(set(options.session_options) - set(valid))
    if unknown:
        raise BackendError(
            f"Unknown {kind} session option(s) {', '.join(unknown)}. Valid: {', '.join(valid)}."
        )
    for name, value in options.session_options.items():
        if not isinstance(value, bool | np.bool_):
            raise BackendError(
                f"{kind} session option {name} must be True or False, but got the "
                f"{type(value).__name__} {value!r}."
            )
    if options.device != "cpu":
        require_cuda(f"{kind} GPU", options.device)


_SESSION_OPTIONS = ("run_single_threaded",)


def _remove_folder(folder: str, owner: int, lock: int) -> None:
    """Remove ``folder`` if this is the process ``owner`` that made it: a child forked from it
    (a server's worker) runs the same finalizers when it exits, while its parent still uses it.
    Then close ``lock``, its descriptor (:func:`_private_folder`), in either process."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)
    os.close(lock)


class _Package:
    """One loaded AOTInductor package, shared by the backends of one file, device and options.

    ``run_single_threaded=True`` runs the package "without thread synchronization logic" (torch's
    words; its C++ says "obviously unsafe to use in a threaded environment"), so its calls are
    serialised here: a LoadedModel may be called from several threads, and the package may be
    shared by several LoadedModels.

    ``folder``: the private folder torch extracted the package into (:func:`_in_private_folder`),
    removed with the package (or when the process exits) by the process that loaded it, not
    before: a GPU package loads its kernels from there on their first call. ``lock``: its
    locked descriptor (:func:`_private_folder`), closed then."""

    __slots__ = ("__weakref__", "lock", "metadata", "model")

    def __init__(self, model: Any, single_threaded: bool, folder: str, lock: int) -> None:
        self.model = model
        self.metadata: dict[str, str] = dict(model.get_metadata())
        self.lock = threading.Lock() if single_threaded else None
        # last: where __init__ raises, the caller removes the folder and closes ``lock`` (a
        # second close could close a descriptor that another thread has opened since)
        weakref.finalize(self, _remove_folder, folder, os.getpid(), lock)

    def __call__(self, tensors: Sequence[torch.Tensor]) -> Any:
        if self.lock is None:
            return self.model(*tensors)
        with self.lock:
            return self.model(*tensors)


#: Loaded packages by the verified SHA-256 of their file, device and options. torch never
#: unloads a package: each ``aoti_load_package`` extracts its library (compiled code and
#: weights) to a new temporary file and keeps it mapped until the process exits, even once
#: deleted, so every load of the same file cost its size again in memory and temporary disk
#: space (and ~6 memory mappings: a process fails at ``vm.max_map_count``). Loading the same
#: bytes again reuses their package; other bytes (a changed file) are loaded anew.
_PACKAGES: weakref.WeakValueDictionary[tuple[Any, ...], _Package] = weakref.WeakValueDictionary()
#: CPU packages stay loaded for the process (torch would keep their library anyway); a GPU one
#: only while a model uses it, so that closing its models frees the weights' GPU memory.
_KEPT: list[_Package] = []
_PACKAGES_LOCK = threading.Lock()


_TMPDIR_LOCK = threading.Lock()
"""Held while ``TMPDIR`` names a load's private folder (:func:`_tmpdir`): it is process-wide,
and the protector loads packages too (:func:`load_package`)."""


@contextlib.contextmanager
def _tmpdir(folder: str) -> Iterator[None]:
    """``TMPDIR`` set to ``folder`` for the block, then restored (or unset again): the only way
    to choose where torch's C++ loader extracts a package (it reads ``TMPDIR`` and takes no
    folder argument). Process-wide: one load at a time (:data:`_TMPDIR_LOCK`)."""
    with _TMPDIR_LOCK:
        previous = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = folder
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous


_PRIVATE_PREFIX = "skruntime-aoti-"


def _folder_name(prefix: str) -> re.Pattern[str]:
    """A locked folder's name (:func:`locked_folder`): ``prefix``, the tag of the system that
    made it (:func:`system_tag`), the pid of its process, ``tempfile``'s random part. Folders
    of earlier versions (no system: no lock, or one another host may hold unseen) never match:
    they are left alone."""
    return re.compile(re.escape(prefix) + r"(?P<system>[0-9a-f]{16})-[0-9]+-[a-z0-9_]+")


def _locked(folder: str) -> int | None:
    """A descriptor of ``folder`` (not followed if a symbolic link) holding its exclusive
    ``flock``, or None where a sweep (:func:`_sweep_leftovers`) holds it, or removed the folder
    before it could be locked. Where the file system has no ``flock`` (some NFS mounts), the
    descriptor without the lock: no sweep can lock such a folder either, so none removes it."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:  # a sweep removed it before it could be opened
        return None
    if fcntl is None:  # pragma: no cover (Windows)
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a sweep is removing it
        os.close(fd)
        return None
    except OSError:  # no flock here
        return fd
    kept = False
    try:
        kept = os.path.samestat(os.fstat(fd), os.lstat(folder))
    except FileNotFoundError:  # a sweep removed it between its creation and the lock
        pass
    finally:
        if not kept:
            os.close(fd)
    return fd if kept else None


def _remove_if_abandoned(path: str) -> None:
    """Remove the private folder ``path`` if it is this user's, a real folder (not a symbolic
    link) and no process holds its lock: the process that made it is gone, killed before it
    could remove it (a lock dies with its last process, whatever reuses the pid). The lock is
    held while the folder is removed, so a load that has just created it does not use it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # a symbolic link (ELOOP), not a folder, gone, or not ours to open
        return
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.lstat(path)):
            shutil.rmtree(path, ignore_errors=True)
    except OSError:  # held by a live process (or no flock here, or gone meanwhile)
        return
    finally:
        os.close(fd)


def _sweep_leftovers(parent: str, prefix: str = _PRIVATE_PREFIX) -> None:
    """Remove from ``parent`` this user's folders of ``prefix`` (the private folders of loads,
    unless told) whose process is gone (:func:`_remove_if_abandoned`): a process killed with
    SIGKILL (the OOM killer, a container stopped hard, a power loss or reboot) runs no
    finalizer, and left its folder, with the package extracted in it, for ever. Only this
    host's folders, of this boot or an earlier one (:meth:`~skruntime.system.ThisSystem.owns`):
    another host's lock is not seen."""
    if fcntl is None:  # pragma: no cover (Windows: no lock tells a live load's folder)
        return
    here = this_system()
    name = _folder_name(prefix)
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            named = name.fullmatch(entry.name)
            if (
                named is not None
                and entry.is_dir(follow_symlinks=False)
                and here.owns(named["system"], entry.path)
            ):
                _remove_if_abandoned(entry.path)


def locked_folder(prefix: str, parent: str | None = None) -> tuple[str, int]:
    """A new folder only this user can enter (``tempfile.mkdtemp``), named
    ``<prefix><system>-<pid>-*`` in ``parent`` (Python's temporary folder if None), and its
    descriptor holding its lock (:func:`_locked`) until the folder is removed: what marks it
    used. The folders of ``prefix`` there whose process is gone are removed first
    (:func:`_sweep_leftovers`). Raises ``OSError`` where none can be created."""
    parent = tempfile.gettempdir() if parent is None else parent
    _sweep_leftovers(parent, prefix)
    while True:  # a sweep of another process can take a new folder once, not for ever
        folder = tempfile.mkdtemp(prefix=f"{prefix}{system_tag()}-{os.getpid()}-", dir=parent)
        if (lock := _locked(folder)) is not None:
            return folder, lock


def _private_folder(package: Path, size: int) -> tuple[str, int]:
    """A new locked folder (:func:`locked_folder`, named ``skruntime-aoti-<system>-<pid>-*``)
    for loading ``package`` (``size`` bytes).
    BackendError with what to do where Python has no usable temporary folder (none of
    ``TMPDIR``, /tmp, /var/tmp, /usr/tmp and the current folder is writable)."""
    try:
        return locked_folder(_PRIVATE_PREFIX)
    except OSError as err:
        where = f" in {Path(err.filename).parent}" if err.filename else ""
        raise BackendError(
            f"The AOTInductor package {package} could not be loaded: torch extracts it into a "
            f"temporary folder, and none could be created{where}: {err.strerror or err}. Point "
            "TMPDIR to a writable folder with room for about twice the package's size "
            f"({size:,} bytes)."
        ) from None


def _in_private_folder(
    load: Callable[[str], Any], package: Path, size: int, options: dict[str, bool]
) -> _Package:
    """The package ``load`` returns, given a new private folder (:func:`_private_folder`, in
    Python's temporary folder) for torch to extract it into (:func:`_aoti_load`): removed at
    once if the load fails, else with the package (or when the process exits), not before: a
    GPU package loads its kernels from there on their first call; or by a later load's sweep
    once the process is gone. ``package`` (``size`` bytes) is named where no folder can be
    created (BackendError)."""
    folder, lock = _private_folder(package, size)
    try:
        return _Package(load(folder), options.get("run_single_threaded", False), folder, lock)
    except BaseException:
        _remove_folder(folder, os.getpid(), lock)
        raise


def _aoti_load(path: Path, folder: str, device_index: int, options: dict[str, bool]) -> Any:
    """``aoti_load_package`` of ``path``, ``TMPDIR`` naming ``folder`` meanwhile: torch
    extracts a package into a new ``$TMPDIR/aotinductor_*`` folder, and leaves it behind when
    the load fails (two of them: it tries two loaders). Raises what torch raises."""
    with _tmpdir(folder):
        return torch._inductor.aoti_load_package(str(path), device_index=device_index, **options)


def load_package(path: Path, device_index: int, options: dict[str, bool]) -> _Package:
    """The AOTInductor package at ``path``, loaded as the runtime loads one (from a path the
    caller trusts, unshared): what torch extracts goes with the package, or at once if the
    load fails (:func:`_in_private_folder`). Raises what torch raises, and BackendError where
    no temporary folder can be created. For the protector's verification."""
    return _in_private_folder(
        lambda folder: _aoti_load(path, folder, device_index, options),
        path,
        path.stat().st_size,
        options,
    )


def _load_bytes(model: ModelFile, device_index: int, options: dict[str, bool], folder: str) -> Any:
    """Load the package from ``model``'s verified bytes, once :func:`check_package` has read
    them (BackendError), torch extracting it into ``folder`` (:func:`_aoti_load`); raises what
    torch raises, and BackendError where the copy cannot be written (a full disk).

    ``aoti_load_package`` reads only a path (given a buffer, torch writes it to a temporary file
    itself), so the bytes are written to a private copy: in ``folder`` (0700, this load's own,
    swept with it if the process is killed), the file created there exclusively. torch extracts
    what it needs while loading, so the copy is removed right after: the model runs without
    it."""
    check_package(model)
    copy = Path(folder) / "model.pt2"
    try:
        try:
            with open(copy, "xb") as f:
                f.write(model.data)
        except OSError as err:  # a full disk: torch has not seen the package, re-deploying fails
            raise BackendError(
                f"The AOTInductor package {model.path} ({len(model.data):,} bytes) could not be "
                f"copied to the temporary folder {Path(folder).parent} for torch to load it: "
                f"{err.strerror or err}. Make room there for about twice its size (the copy, "
                "and what torch extracts from it), or point TMPDIR to a folder that has it."
            ) from None
        return _aoti_load(copy, folder, device_index, options)
    finally:
        copy.unlink(missing_ok=True)


def unpack_problem(err: BaseException) -> str | None:
    """Why torch's AOTInductor loader failed, with what to do, when it could not create its
    folder in ``TMPDIR`` (missing, a file, not writable): unlike Python, it does not fall back
    to /tmp, and its message ("Error generating temporary directory") names no variable."""
    if "Error generating temporary directory" not in str(err):
        return None
    tmpdir = os.environ.get("TMPDIR") or "unset: /tmp"
    return (
        f"could not be loaded: torch unpacks it in TMPDIR ({tmpdir}) and could not "
        f"({backend_failure(err)}); it does not fall back to /tmp as Python does. Point TMPDIR "
        "to a writable folder or unset it"
    )


_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, NotImplementedError)
"""What :mod:`zipfile` raises for a damaged archive: a bad header or CRC, data cut short, a
declared size beyond the file, an encrypted or unknown-method entry."""


def check_package(model: ModelFile) -> None:
    """Raise BackendError unless ``model``'s bytes are a whole, undamaged package that torch can
    extract safely, before torch sees them.

    torch's loader (miniz and nlohmann::json, in C++) trusts the archive: it checks no CRC, so a
    damaged library reaches ``dlopen`` and runs if ``dlopen`` accepts it; it extracts an entry
    named ``../../x`` outside its temporary folder (any file the process may write); it
    inflates a compressed entry to whatever size it declares; a metadata JSON nested 200,000
    levels deep overflows its stack (the process dies of a segmentation fault); and each
    failed load leaves what it had extracted in the temporary folder. So the archive is read
    here first, whole (about half the time of the SHA-256 check): every entry stored
    uncompressed (as torch writes them, so nothing extracts to more than the file's size), with
    a safe, unique name and a matching CRC, and every JSON entry readable, the metadata ones
    flat objects of text (what torch reads them as); nothing may come before the first entry
    (Python's reader allows such bytes and shifts every offset past them; torch's refuses the
    archive)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model.data)) as archive:
            infos = archive.infolist()
            if infos and (start := min(i.header_offset for i in infos)) != 0:
                raise BackendError(
                    f"AOTInductor package {model.path} has {start} bytes that none of its "
                    "entries accounts for, added before its directory. The file was "
                    "damaged or changed after skprotect wrote it; re-deploy the file written "
                    "by skprotect."
                )
            seen: set[str] = set()
            for info in infos:
                problem = _entry_problem(info, seen)
                if problem is None and (data := _read_entry(archive, info)) is not None:
                    problem = _json_problem(info.filename, data)
                if problem is not None:
                    raise BackendError(
                        f"AOTInductor package {model.path} holds {problem}. The file was "
                        "damaged or changed after skprotect wrote it; re-deploy the file "
                        "written by skprotect."
                    )
                seen.add(info.filename)
    except _ZIP_ERRORS as err:
        raise BackendError(
            f"AOTInductor package {model.path} is not a whole, undamaged package ({err}): it "
            "was cut short or damaged in transfer. Re-deploy the file written by skprotect."
        ) from None


def _entry_problem(info: zipfile.ZipInfo, seen: set[str]) -> str | None:
    """What makes an archive entry unsafe to hand to torch's extractor, or None."""
    name = info.filename
    if name.startswith("/") or "\\" in name or "\0" in name or ".." in name.split("/"):
        return f"an entry named {name!r}, which torch would extract outside its folder"
    if name in seen:
        return f"two entries named {name!r} (which one torch would read is undefined)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"an entry {name!r} stored as a symbolic link"
    if info.compress_type != zipfile.ZIP_STORED:
        return (
            f"a compressed entry {name!r} ({info.file_size} bytes once extracted, and torch "
            "would extract whatever size it declares); skprotect writes packages uncompressed"
        )
    if info.compress_size != info.file_size:
        size, stored = info.file_size, info.compress_size
        return f"an entry {name!r} that declares {size} bytes but stores {stored}"
    return None


_CHUNK = 16 << 20


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | None:
    """Read ``info`` whole, so that zipfile checks its header and CRC (in chunks: a library may
    hold gigabytes of weights); its bytes if it is a JSON entry, else None."""
    is_json = info.filename.endswith(".json")
    chunks = []
    with archive.open(info) as entry:
        while chunk := entry.read(_CHUNK):
            if is_json:
                chunks.append(chunk)
    return b"".join(chunks) if is_json else None


def _json_problem(name: str, data: bytes) -> str | None:
    """What is wrong with a JSON entry of the package, or None. ``*metadata.json``: an object
    of text values (torch reads each as a string, and ``get_metadata`` decodes them as UTF-8:
    a lone surrogate such as ``"\\ud800"`` is not)."""
    try:
        value = json.loads(data.decode("utf-8"))
        if not name.endswith("metadata.json"):
            return None
        if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            return f"metadata {name!r} that is not a JSON object of text values"
        for text in (*value, *value.values()):
            text.encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        return f"an entry {name!r} that is not UTF-8 JSON (or is nested too deeply)"
    return None


def _shared_package(model: ModelFile, device_index: int, options: dict[str, bool]) -> _Package:
    """The package of ``model``'s bytes, loaded once per process for each device and options
    (keyed on their verified SHA-256); raises what :func:`_load_bytes` and
    :func:`_in_private_folder` raise."""
    key = (model.sha256, device_index, tuple(sorted(options.items())))
    with _PACKAGES_LOCK:  # one load of a package, even when threads load it at once
        package = _PACKAGES.get(key)
        if package is None:
            package = _in_private_folder(
                lambda folder: _load_bytes(model, device_index, options, folder),
                model.path,
                len(model.data),
                options,
            )
            _PACKAGES[key] = package
            if device_index < 0:
                _KEPT.append(package)
    return package


def _failure_advice() -> str:
    """What to do after a failed call. With ``AOTI_RUNTIME_CHECK_INPUTS`` on (set and not
    starting with "0", as the compiled code reads it, once per process), AOTInductor's own check
    refuses inputs its code computes correctly (see the module docstring), and its message
    ("dim value is too small ... expected it to be >= 2") sent users to inputs that are right."""
    value = os.environ.get("AOTI_RUNTIME_CHECK_INPUTS")
    if value is None or value.startswith("0"):
        return "Check the input shapes and dtypes against the model's inputs."
    return (
        f"AOTI_RUNTIME_CHECK_INPUTS={value!r} is set in this process's environment: it turns on "
        "AOTInductor's own input check, which refuses sizes its compiled code computes "
        "correctly (a batch of 1, or above 15 for CPU convolutions); skprotect checks every "
        "call's inputs itself. Unset it and start the process again."
    )


class InductorBackend:
    """One AOTInductor ``.pt2`` package; checks every call's inputs against its metadata.

    numpy in → numpy out, torch tensors in → tensors out (decided by the first input). On CUDA
    (``device="cuda[:N]"``) the GPU settings of :func:`~skruntime.backends.gpu.
    apply_gpu_determinism` are applied first. ``intra_op_threads`` sets torch's (OpenMP) thread
    count for the whole process. A load that fails puts these settings back
    (:func:`load_settings`). ``session_options``: ``{"run_single_threaded": bool}``, passed
    to ``aoti_load_package`` (calls of such a package are then serialised: torch's own thread
    synchronisation is off). The package is loaded from the verified bytes
    (:class:`~.base.ModelFile`), not from the path, and shared by every backend of the same
    bytes, device and options (:data:`_PACKAGES`): torch never unloads one. Before its first
    load the package's archive is read whole (:func:`check_package`): torch's loader trusts it.
    """

    wants_numpy = False
    """The runtime passes torch tensors through (numpy arrays too)."""

    @staticmethod
    def check_options(options: BackendOptions) -> None:
        """Refuse unknown session options and an unusable CUDA device, before any file is read."""
        check_torch_options(options, _SESSION_OPTIONS, "AOTInductor")

    def __init__(self, model: ModelFile | str | os.PathLike[str], options: BackendOptions) -> None:
        self.check_options(options)
        model = ModelFile.of(model)
        self._path = model.path
        name = self._path.name
        self.device = "cpu"
        index = -1
        if options.device != "cpu":
            index = cuda_index(options.device)
            self.device = f"cuda:{index}"
        extra = {k: bool(v) for k, v in options.session_options.items()}
        with load_settings(options, cuda=index >= 0):  # put back if the load fails
            package = self._load(model, index, extra)
            raw = package.metadata.get(INPUTS_METADATA)
            if raw is None:
                raise BackendError(
                    f"{name} was not written by skprotect (no {INPUTS_METADATA} metadata), so "
                    "its inputs cannot be checked. Re-export it with skprotect."
                )
            self.input_record, self.input_names, self._key_name = parse_specs(raw, name)
            """The package's :data:`~.inputs.INPUTS_METADATA` record, parsed (key last): checked
            before every call; the runtime compares it with the configuration."""
        self._package: _Package | None = package  # None once closed
        self._io = TensorIO(self.device)

    def _load(self, model: ModelFile, index: int, extra: dict[str, bool]) -> _Package:
        """The shared package of ``model`` (:func:`_shared_package`); BackendError saying what
        to do where torch cannot load it."""
        try:
            return _shared_package(model, index, extra)
        except BackendError:
            raise
        except Exception as err:
            if advice := unpack_problem(err):
                raise BackendError(f"The AOTInductor package {self._path} {advice}.") from None
            raise BackendError(
                f"torch could not load the AOTInductor package {self._path} "
                f"({backend_failure(err)}). Re-deploy the file written by skprotect, compiled "
                "for this device (a CPU package runs on the CPU, a GPU package on CUDA)."
            ) from None

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        package = self._package
        if package is None:
            raise BackendError(f"The AOTInductor model {self._path.name} is closed.")
        check_inputs(inputs, self.input_record, self.input_names, self._path.name, self._key_name)
        tensors = self._io.to_device(inputs)
        try:
            with torch.inference_mode():
                out = package(tensors)
        except Exception as err:
            raise BackendError(
                f"The AOTInductor model {self._path.name} failed ({backend_failure(err)}). "
                + _failure_advice()
            ) from None
        return self._io.outputs(out, inputs, tensors)

    def close(self) -> None:
        self._package = None
