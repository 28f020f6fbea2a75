"""The one interface every runtime backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


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
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', but got {self.device!r}")
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, but got {value!r}")


class Backend(Protocol):
    """A loaded model file. Inputs are the model's inputs followed by the key vector."""

    def __init__(self, path: Path, options: BackendOptions) -> None: ...

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """Run once. numpy in → numpy out; torch backends also take and return torch tensors."""
        ...

    def close(self) -> None:
        """Release the session (and the framework's memory)."""
        ...


def as_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like (torch tensors included, without importing torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
