"""The one interface every runtime backend implements."""

from __future__ import annotations

import hashlib
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import BackendError
from ..files import open_regular

MAX_THREADS = 1024
"""Upper bound of a thread count: far above the cores of any machine a model runs on (more
threads than cores only slow a model down), and far below the C ``int`` in which onnxruntime and
torch store the count (a larger number fails inside their bindings with an unreadable error)."""

MAX_ONNX_BYTES = 2**31 - 1
"""The largest ``.onnx`` file onnxruntime can parse: protobuf's limit on one message (2 GiB
less one byte). The protector writes, and the ONNX backend loads, one self-contained file,
never external data. Here, not in the ONNX backend, so that the protector reads it without
importing onnxruntime."""

SizeCheck = Callable[[Path, int], None]
"""A backend's check of a model file's size (its path, its size in bytes), raising
:class:`~skruntime.errors.BackendError` for a size the backend cannot load: the runtime runs it
on the open file before reading it (:meth:`ModelFile.read`)."""

_DEVICE_RE = re.compile(r"cpu|cuda(:[0-9]+)?")


def device_problem(device: object) -> str | None:
    """What is wrong with a device name, or None for ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: the
    one rule of :class:`BackendOptions` and of ``skprotect run --device``."""
    if isinstance(device, str) and _DEVICE_RE.fullmatch(device):
        return None
    return f"must be 'cpu', 'cuda' or 'cuda:N' (lower case, N a GPU index), but got {device!r}"


def threads_problem(count: object) -> str | None:
    """What is wrong with a thread count, or None for an integer from 1 to :data:`MAX_THREADS`
    (numpy integers included; bools and floats are refused, not rounded)."""
    wanted = f"must be an int from 1 to {MAX_THREADS}"
    if isinstance(count, bool | np.bool_):
        return f"{wanted}, but got the bool {count!r}"
    try:
        value = operator.index(count)
    except TypeError:
        return f"{wanted}, but got the {type(count).__name__} {count!r}"
    if not 1 <= value <= MAX_THREADS:
        return f"{wanted}, but got {value}"
    return None


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model: device, threads, and backend-specific session options."""

    device: str = "cpu"
    """``"cpu"`` or ``"cuda"`` (``"cuda:N"`` for a given GPU)."""
    intra_op_threads: int | None = None
    """Threads used inside one operator (onnxruntime intra-op, torch.set_num_threads)."""
    inter_op_threads: int | None = None
    """Threads running independent operators in parallel (onnxruntime inter-op)."""
    session_options: dict[str, Any] = field(default_factory=dict)
    """Passed through: attributes of ``onnxruntime.SessionOptions`` (e.g.
    ``{"graph_optimization_level": ...}``) or, for ``"providers"``, the provider list."""

    def __post_init__(self) -> None:
        """Refuse what the frameworks would refuse later with their own errors (or worse,
        accept: ``True`` threads, a device name that only fails on first use)."""
        if problem := device_problem(self.device):
            raise BackendError(f"device {problem}.")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is None:
                continue
            if problem := threads_problem(value):
                raise BackendError(f"{name} {problem}; None uses the framework's default.")
            object.__setattr__(self, name, operator.index(value))  # numpy ints: plain int
        options = self.session_options
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise BackendError(
                "session_options must be a dict from option names (str) to values, or None, "
                f"but got the {type(options).__name__} {options!r}."
            )
        object.__setattr__(self, "session_options", dict(options))


@dataclass(frozen=True, repr=False)
class ModelFile:
    """A model file read once: its bytes and their SHA-256. Backends load these very bytes and
    never open the path again, so a file replaced after its integrity check cannot run."""

    path: Path
    """Where the bytes were read from, for messages only."""
    data: bytes
    sha256: str
    """Lower-case hex SHA-256 of ``data``."""

    @classmethod
    def read(cls, path: str | os.PathLike[str], check_size: SizeCheck | None = None) -> ModelFile:
        """Read the whole file and hash what was read (raises ``OSError`` if unreadable, and
        :class:`~skruntime.files.NotRegularFileError`, an ``OSError``, for a FIFO, a device
        or a folder, which would block or never end).

        ``check_size`` is called with the path and the size of the open file (its descriptor's
        ``fstat``, so the very file that would be read) before a byte is read: a file too large
        for its backend is refused unread, instead of after reading and hashing gigabytes. A
        file larger than the process can allocate raises ``MemoryError`` naming it and its
        size (Python's own has no message)."""
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if check_size is not None:
                check_size(Path(path), size)
            try:
                data = f.read()
            except MemoryError:
                raise MemoryError(
                    f"{path} is {size:,} bytes, more than this process could allocate to read it"
                ) from None
        return cls(Path(path), data, hashlib.sha256(data).hexdigest())

    @classmethod
    def of(
        cls, model: ModelFile | str | os.PathLike[str], check_size: SizeCheck | None = None
    ) -> ModelFile:
        """``model`` itself, or the file at that path read with :meth:`read`; ``check_size``
        (as in :meth:`read`) is applied to either, to the bytes read for a ``ModelFile``."""
        if not isinstance(model, ModelFile):
            return cls.read(model, check_size)
        if check_size is not None:
            check_size(model.path, len(model.data))
        return model

    def __repr__(self) -> str:  # not the bytes, which may be gigabytes
        return f"ModelFile({str(self.path)!r}, {len(self.data)} bytes, sha256={self.sha256})"


class Backend(Protocol):
    """A loaded model file. Inputs are the model's inputs followed by the key vector.

    A backend whose format has a size limit also has a static method ``check_size``
    (:data:`SizeCheck`), which the runtime runs before it reads the file."""

    @staticmethod
    def check_options(options: BackendOptions) -> None:
        """Raise BackendError for options this backend refuses; reads no file (run first)."""
        ...

    def __init__(self, model: ModelFile | str | os.PathLike[str], options: BackendOptions) -> None:
        """Load ``model``'s bytes (a path is read once, :meth:`ModelFile.of`); keep no copy."""
        ...

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """Run once. numpy in → numpy out; torch backends also take and return torch tensors."""
        ...

    def close(self) -> None:
        """Release the session (and the framework's memory)."""
        ...


def as_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like (torch tensors included, without importing torch).

    Tensors go through ``numpy(force=True)``: detached, on the CPU, with a lazy negation or
    conjugation applied (``x.numpy()`` refuses a tensor whose neg or conj bit is set)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.numpy(force=True)
    return np.asarray(x)
