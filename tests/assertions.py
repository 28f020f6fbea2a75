"""Shared assertions for comparing model outputs (tensors, ndarrays, or nested tuples/lists)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

_TINY = 1e-12


def _leaves(x: Any) -> list[np.ndarray]:
    """Flatten tensors/ndarrays/scalars nested in tuples or lists into float64 arrays."""
    if isinstance(x, torch.Tensor):
        return [x.detach().cpu().to(torch.float64).numpy()]
    if isinstance(x, np.ndarray):
        return [x.astype(np.float64)]
    if isinstance(x, Sequence) and not isinstance(x, str | bytes):
        return [leaf for item in x for leaf in _leaves(item)]
    return [np.asarray(x, dtype=np.float64)]


def _pairs(a: Any, b: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb), f"output structures differ: {len(la)} vs {len(lb)} tensors"
    for x, y in zip(la, lb, strict=True):
        assert x.shape == y.shape, f"output shapes differ: {x.shape} vs {y.shape}"
    return list(zip(la, lb, strict=True))


def rel_err(a: Any, b: Any) -> float:
    """Max abs difference over max abs reference (``b``), worst over all output tensors."""
    worst = 0.0
    for x, ref in _pairs(a, b):
        if x.size == 0:
            continue
        diff = np.abs(x - ref)
        if not np.all(np.isfinite(diff)):
            return float("inf")
        worst = max(worst, float(diff.max() / max(np.abs(ref).max(), _TINY)))
    return worst


def garbage_ratio(a: Any, ref: Any) -> float:
    """``‖a − ref‖ / ‖ref‖`` over all output tensors together (``inf`` if ``a`` is not finite)."""
    pairs = _pairs(a, ref)
    num = sum(float(np.sum((x - r) ** 2)) for x, r in pairs)
    den = sum(float(np.sum(r**2)) for _, r in pairs)
    if not np.isfinite(num):
        return float("inf")
    return float(np.sqrt(num) / max(np.sqrt(den), _TINY))


def assert_equivalent(a: Any, b: Any, rtol: float = 1e-4) -> None:
    """Assert ``a`` reproduces the reference ``b`` (relative max error below ``rtol``)."""
    err = rel_err(a, b)
    assert err < rtol, f"outputs differ: rel_err={err:.3g} >= {rtol:g}"


def assert_garbage(a: Any, ref: Any, min_rel: float = 0.5) -> None:
    """Assert ``a`` is useless in place of ``ref`` (relative L2 distance above ``min_rel``)."""
    ratio = garbage_ratio(a, ref)
    assert ratio > min_rel, f"outputs are close to the reference: ‖a−ref‖/‖ref‖={ratio:.3g}"
