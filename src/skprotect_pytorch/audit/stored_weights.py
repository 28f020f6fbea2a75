"""Gate 4 of the audit: how much of a true weight each stored (locked) weight still shows.

Each locked layer stores ``W' = M_out · Q_out · W · Q_in · M_in⁻¹`` (DESIGN.md §3).  A thief who
found the secret permutations and signs could undo them; what remains is the public mixing and
the secret magnitudes.  This module gives the thief exactly that (the true permutations and
signs, an upper bound on any alignment he could find) and measures the Pearson correlation of
the aligned stored weight with the true weight:

>>> scores = aligned_weight_correlations(locked, original_model)
>>> all(s.passes for s in scores)

With one mixed side in blocks of ``b`` the correlation is about ``1/√b`` (0.25 for 16); with both
sides mixed about ``1/b`` (0.06).  The exported constants are these stored weights (checked
bit-for-bit by ``tests/audit/test_attacks.py``), so this is the gate's "no constant correlates
above 0.1 with a true weight after the best permutation and sign alignment".
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..lock import LockedModel
from ..lock.batchnorm import fold_batchnorms
from ..lock.channel_lock import ChannelOps
from ..lock.conv import LockedConv, merge_groups, to_channel_matrix
from ..lock.key_layout import KeyLayout

GATE_CORRELATION = 0.1


@dataclass(frozen=True)
class StoredWeightScore:
    """Correlation of one stored weight (aligned by the true key) with its true weight.

    ``noise_floor`` is the same statistic for a Gaussian tensor of the same shape (mean + 3
    standard deviations over draws): short rows correlate by chance (a 10×16 head reaches
    ≈ 0.2), so the gate is ``correlation ≤ max(0.1, noise_floor)``.
    """

    layer: str
    shape: tuple[int, ...]
    correlation: float
    noise_floor: float

    @property
    def passes(self) -> bool:
        return self.correlation <= max(GATE_CORRELATION, self.noise_floor)


def _unkey(stored: np.ndarray, ops: ChannelOps, layout: KeyLayout) -> np.ndarray:
    """Undo the true permutations and signs (not magnitudes, not mixing) of ``(G, O, I, *t)``."""
    g, o, i = stored.shape[:3]
    a = stored.reshape(g * o, i, *stored.shape[3:]).copy()
    if ops.out_perm_slot is not None:
        inverse = layout.perms[ops.out_perm_slot]  # stored row r holds true row inverse⁻¹[r]
        out_perm = np.argsort(inverse)
        signs = np.sign(layout.scales[ops.out_scale_slot])[out_perm]
        rows = np.empty_like(a)
        rows[out_perm] = a * signs.reshape(-1, *([1] * (a.ndim - 1)))
        a = rows
    a = a.reshape(g, o, i, *stored.shape[3:])
    if ops.in_perm_slot is not None:
        in_perm = layout.perms[ops.in_perm_slot].reshape(g, i) - np.arange(g)[:, None] * i
        signs = np.sign(layout.scales[ops.in_scale_slot]).reshape(g, i)
        cols = np.empty_like(a)
        for k in range(g):
            shape = (1, i, *([1] * (a.ndim - 3)))
            cols[k][:, in_perm[k]] = a[k] * signs[k].reshape(shape)
        a = cols
    return a


def _signed_fit(a: np.ndarray, w: np.ndarray) -> float:
    """``Σ_r |⟨a_r, w_r⟩| / (‖a‖ ‖w‖)``: correlation after the best sign of each row."""
    dots = np.abs((a * w).sum(axis=1)).sum()
    return float(dots / max(np.linalg.norm(a) * np.linalg.norm(w), 1e-30))


def aligned_correlation(a: np.ndarray, w: np.ndarray) -> float:
    """Best of the row-wise and column-wise sign-aligned correlations of ``(G, O, I, *t)``.

    Signs are chosen per output channel (rows) or per input channel (columns, taps included):
    the public mixing flips signs too, and the thief may undo any of them.
    """
    g, o, i = a.shape[:3]
    rows = _signed_fit(a.reshape(g * o, -1), w.reshape(g * o, -1))
    a_cols, w_cols = (np.swapaxes(t, 1, 2).reshape(g * i, -1) for t in (a, w))
    return max(rows, _signed_fit(a_cols, w_cols))


def _noise_floor(w: np.ndarray, draws: int = 64) -> float:
    """``aligned_correlation`` of Gaussian tensors shaped like ``w``: mean + 3 std."""
    rng = np.random.default_rng(0)
    values = [aligned_correlation(rng.standard_normal(w.shape), w) for _ in range(draws)]
    return float(np.mean(values) + 3 * np.std(values))


def _matrix(w: torch.Tensor) -> np.ndarray:
    """A linear weight ``(O, I)`` as a one-group channel matrix ``(1, O, I)``."""
    return w.detach()[None].double().numpy()


def _keyed_matrices(mod: nn.Module, true: nn.Module, name: str) -> Iterator[tuple]:
    """``(label, stored (G,O,I,*t), true (G,O,I,*t), ops)`` for each keyed matrix of a layer."""
    if isinstance(mod, LockedConv):
        w = to_channel_matrix(true, true.weight.detach())
        factor = true.groups // mod.conv.groups
        if factor > 1:
            w = merge_groups(w, factor)
        stored = to_channel_matrix(mod.conv, mod.conv.weight.detach())
        if mod.unfold is not None:  # taps unfolded into input channels, in order
            w = w.reshape(stored.shape)
        yield name, stored.double().numpy(), w.double().numpy(), mod.ops
    elif isinstance(true, nn.Linear):
        yield name, _matrix(mod.weight), _matrix(true.weight), mod.ops
    elif isinstance(true, nn.MultiheadAttention):
        e = true.embed_dim
        parts = (
            [true.in_proj_weight[k * e : (k + 1) * e] for k in range(3)]
            if true.in_proj_weight is not None
            else [true.q_proj_weight, true.k_proj_weight, true.v_proj_weight]
        )
        for label, w in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
            lin = getattr(mod, label)
            yield f"{name}.{label}", _matrix(lin.weight), _matrix(w), lin.ops
        out = mod.out_proj
        yield f"{name}.out_proj", _matrix(out.weight), _matrix(true.out_proj.weight), out.ops
    elif isinstance(true, nn.LSTM | nn.GRU):
        sfx = ["", "_reverse"] if true.bidirectional else [""]
        for li, layer in enumerate(mod.layers):
            w_ih = torch.cat([true.get_parameter(f"weight_ih_l{li}{s}") for s in sfx])
            proj = layer.input_proj
            yield f"{name}.weight_ih_l{li}", _matrix(proj.weight), _matrix(w_ih), proj.ops
            for kind, mats in (("hh", layer.hh), ("hr", layer.hr)):
                if mats is None:
                    continue
                for s, m in zip(sfx, mats, strict=True):
                    w = true.get_parameter(f"weight_{kind}_l{li}{s}")
                    yield f"{name}.weight_{kind}_l{li}{s}", _matrix(m.weight), _matrix(w), m.ops


def aligned_weight_correlations(
    locked: LockedModel, original: nn.Module
) -> list[StoredWeightScore]:
    """Gate 4 scores of every keyed matrix: Linear, Conv, attention projections, LSTM/GRU."""
    true_root = copy.deepcopy(original).eval()
    fold_batchnorms(true_root)
    scores = []
    for d in locked.locked_layers:
        mod, true = locked.keyed.model.get_submodule(d.name), true_root.get_submodule(d.name)
        for label, stored, true_w, ops in _keyed_matrices(mod, true, d.name):
            aligned = _unkey(stored, ops, locked.layout)
            scores.append(
                StoredWeightScore(
                    label,
                    tuple(stored.shape),
                    aligned_correlation(aligned, true_w),
                    _noise_floor(true_w),
                )
            )
    return scores
