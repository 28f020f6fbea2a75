"""Shared machinery of the matching attacks (A3, A4, A5): the thief's view of each keyed layer
as a stored channel matrix, and key estimates made by Hungarian matching on it.

A keyed layer computes ``W_eff = Toᵀ · D_out Π_out · W' · D_in Π_in · Tiᵀ`` where ``W'`` is the
stored weight, ``Ti``/``To`` the public un-mix matrices (identity where a side is unmixed),
``Π`` the key's gathers (``Π[j, p[j]] = 1``) and ``D`` its scales.  With the true key
``W_eff = W``, so ``W' = Π_outᵀ D_out⁻¹ · (To⁻ᵀ W Ti⁻ᵀ) · Π_inᵀ D_in⁻¹``: the stored matrix is
``A = To⁻ᵀ W Ti⁻ᵀ`` (``To W Ti`` for an orthogonal mixing) up to keyed monomials on both
sides.  The public mixing and its inverse are in the files, so the attacks use both.  A side
whose slot is ``None`` has no key op.

Every keyed matrix of the lock is such a layer (:func:`keyed_layers`): Linear, conv (a grouped
conv as its dense block-diagonal channel matrix, a transposed conv with its axes swapped), the
q/k/v/out projections of attention, and the input projection, ``W_hh`` and ``W_hr`` of LSTM/GRU
layers (``_KeyedMatrix`` holds its key in a ``ChannelOps`` too).  :func:`reference_weights` maps
each to its counterpart in a plaintext model of the same architecture.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..lock.attention import LockedMultiheadAttention
from ..lock.channel_lock import ChannelOps
from ..lock.conv import to_channel_matrix
from ..lock.recurrent import LockedRNNBase

_CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


# ---------------------------------------------------------------------------------------------
# Keyed layers and key estimates
# ---------------------------------------------------------------------------------------------
FAMILIES = ("linear", "conv", "attention", "recurrent")
"""What a keyed layer is part of: a Linear, a conv (any groups, transposed too), one of the four
projections of a locked attention, or one matrix of a locked LSTM/GRU (input projection of all
gates and directions, ``W_hh`` or ``W_hr`` of one direction)."""


@dataclass
class KeyedLayer:
    """One locked layer as the thief sees it: stored ``(O, I, taps)`` weight, bias, un-mixes.

    ``family`` is one of :data:`FAMILIES`; ``role`` the layer's name inside its attention or
    recurrent parent (``q_proj``, ``out_proj``, ``input_proj``, ``hh``, ``hr``), else ``""``.
    """

    name: str
    module: nn.Module
    ops: ChannelOps
    weight: np.ndarray
    bias: np.ndarray | None
    t_in: np.ndarray
    t_out: np.ndarray
    family: str = "linear"
    role: str = ""

    @cached_property
    def f_in(self) -> np.ndarray:
        """``Ti⁻ᵀ``: takes a true-basis weight's input side into the stored frame (``Ti`` when
        the public mixing is orthogonal)."""
        return np.linalg.inv(self.t_in).T

    @cached_property
    def f_out(self) -> np.ndarray:
        """``To⁻ᵀ``: the same for the output side."""
        return np.linalg.inv(self.t_out).T

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]


def _unmix_matrix(mix, n: int) -> np.ndarray:
    """``T`` with ``mix.apply_transpose(x) = x @ T`` for row vectors (identity when unmixed)."""
    if mix is None:
        return np.eye(n)
    with torch.no_grad():
        return mix.apply_transpose(torch.eye(n), -1).double().numpy()


def dense_matrix(module: nn.Module, weight: torch.Tensor) -> np.ndarray:
    """A layer's weight as one dense ``(O, I, taps)`` channel matrix: a conv's groups become
    the diagonal blocks (zeros elsewhere), a transposed conv's channel axes are swapped."""
    w = weight.detach().double()
    if not isinstance(module, _CONVS):
        return w.reshape(w.shape[0], w.shape[1], -1).numpy()
    a = to_channel_matrix(module, w)  # (G, o, i, *taps)
    g, o, i = a.shape[:3]
    a = a.reshape(g, o, i, -1)
    dense = torch.zeros(g * o, g * i, a.shape[3], dtype=w.dtype)
    for k in range(g):
        dense[k * o : (k + 1) * o, k * i : (k + 1) * i] = a[k]
    return dense.numpy()


def _parents(root: nn.Module) -> dict[str, tuple[str, str]]:
    """Family and role of every module inside a locked attention or recurrent layer."""
    out: dict[str, tuple[str, str]] = {}
    for prefix, module in root.named_modules():
        family = (
            "attention"
            if isinstance(module, LockedMultiheadAttention)
            else "recurrent"
            if isinstance(module, LockedRNNBase)
            else None
        )
        if family is None:
            continue
        for name, _ in module.named_modules(prefix=prefix):
            rest = name[len(prefix) :].lstrip(".").split(".")
            role = rest[-1] if family == "attention" else rest[2] if len(rest) > 2 else ""
            out[name] = (family, role)
    return out


def keyed_layers(root: nn.Module) -> list[KeyedLayer]:
    """Every keyed matrix of ``root`` in module order: Linear and conv layers (a grouped conv as
    its dense block-diagonal matrix), the projections of locked attention layers and the input
    projections and recurrent matrices of locked LSTM/GRU layers."""
    parents = _parents(root)
    layers = []
    for name, module in root.named_modules():
        ops = getattr(module, "ops", None)
        if not isinstance(ops, ChannelOps):
            continue
        inner = getattr(module, "conv", module)
        w = dense_matrix(inner, inner.weight)
        b = None if inner.bias is None else inner.bias.detach().double().numpy()
        t_in = _unmix_matrix(ops.mix_in, w.shape[1])
        t_out = _unmix_matrix(ops.mix_out, w.shape[0])
        family, role = parents.get(name, ("conv" if inner is not module else "linear", ""))
        layers.append(KeyedLayer(name, module, ops, w, b, t_in, t_out, family, role))
    return layers


Target = tuple[np.ndarray, np.ndarray | None]
"""A reference layer's ``(O, I, taps)`` weight and its bias (or ``None``)."""

_RECURRENT_NAME = re.compile(r"(?:(.*)\.)?layers\.(\d+)\.(input_proj|hh|hr)(?:\.(\d+))?")


def _plain_target(model: nn.Module, name: str) -> Target | None:
    """The weight and bias that the locked layer ``name`` stands for in a plaintext ``model`` of
    the same architecture: a module of that name (Linear, conv, an attention's ``out_proj``),
    a chunk of an ``nn.MultiheadAttention``'s input projection, or an LSTM/GRU's ``weight_ih``
    (all directions), ``weight_hh`` or ``weight_hr`` of one direction."""
    modules = dict(model.named_modules())
    module = modules.get(name)
    if module is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
        return dense_matrix(module, module.weight), _numpy(module.bias)
    parent_name, _, leaf = name.rpartition(".")
    parent = modules.get(parent_name)
    if isinstance(parent, nn.MultiheadAttention) and leaf in ("q_proj", "k_proj", "v_proj"):
        k = ("q_proj", "k_proj", "v_proj").index(leaf)
        if parent._qkv_same_embed_dim:
            w = parent.in_proj_weight.chunk(3)[k]
        else:
            w = getattr(parent, f"{leaf}_weight")
        b = None if parent.in_proj_bias is None else parent.in_proj_bias.chunk(3)[k]
        return dense_matrix(parent, w), _numpy(b)
    match = _RECURRENT_NAME.fullmatch(name)
    if match is None or not isinstance(rnn := modules.get(match.group(1) or ""), nn.LSTM | nn.GRU):
        return None
    layer, kind, direction = match.group(2), match.group(3), match.group(4)
    suffixes = ["", "_reverse"][: 2 if rnn.bidirectional else 1]
    if kind == "input_proj":
        w = torch.cat([getattr(rnn, f"weight_ih_l{layer}{s}") for s in suffixes])
        if not rnn.bias:
            return dense_matrix(rnn, w), None
        return dense_matrix(rnn, w), _numpy(
            torch.cat([getattr(rnn, f"bias_ih_l{layer}{s}") for s in suffixes])
        )
    suffix = suffixes[int(direction or 0)]
    w = getattr(rnn, f"weight_{kind}_l{layer}{suffix}")
    b = getattr(rnn, f"bias_hh_l{layer}{suffix}", None) if kind == "hh" else None
    return dense_matrix(rnn, w), _numpy(b)


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().numpy()


def reference_weights(model: nn.Module, layers: Sequence[KeyedLayer]) -> dict[str, Target]:
    """The true-basis weight and bias of each keyed layer in a plaintext model of the same
    architecture (see :func:`_plain_target`); layers without a counterpart of the same shape
    are left out (the caller notes them)."""
    out = {}
    for layer in layers:
        target = _plain_target(model, layer.name)
        if target is None:
            continue
        w, b = target
        if getattr(layer.module, "unfold", None) is not None and w.size == layer.weight.size:
            w = w.reshape(layer.weight.shape)  # taps unfolded into input channels, in order
        if w.shape == layer.weight.shape:
            out[layer.name] = (w, b)
    return out


@dataclass
class KeyEstimate:
    """A guess of every permutation and scale slot (starts as the null key)."""

    perms: list[np.ndarray]
    scales: list[np.ndarray]
    known: set = field(default_factory=set)
    """Perm slots that some matching step has set (the others stay identity)."""
    notes: list[str] = field(default_factory=list)
    """What the estimator could not model (those slots keep their previous value), for the
    attack's outcome and the report."""

    @classmethod
    def null(cls, perm_sizes: list[int], scale_sizes: list[int]) -> KeyEstimate:
        return cls([np.arange(n) for n in perm_sizes], [np.ones(n) for n in scale_sizes])

    @classmethod
    def decode(cls, decoder: nn.Module, key: torch.Tensor) -> KeyEstimate:
        """The slots of a key vector as the locked model's own decoder reads them."""
        with torch.no_grad():
            perms, scales = decoder(key)
        return cls(
            [p.numpy().astype(np.int64) for p in perms],
            [s.double().reshape(-1).numpy() for s in scales],
        )

    def side(self, ops: ChannelOps, side: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(perm, scale)`` of one side of a layer; ``None`` if that side has no key op."""
        p_slot = ops.in_perm_slot if side == "in" else ops.out_perm_slot
        s_slot = ops.in_scale_slot if side == "in" else ops.out_scale_slot
        if p_slot is None and s_slot is None:
            return None
        n = len(self.perms[p_slot]) if p_slot is not None else len(self.scales[s_slot])
        perm = self.perms[p_slot] if p_slot is not None else np.arange(n)
        scale = self.scales[s_slot] if s_slot is not None else np.ones(n)
        return perm, scale

    def set_side(self, ops: ChannelOps, side: str, perm: np.ndarray, scale: np.ndarray) -> None:
        p_slot = ops.in_perm_slot if side == "in" else ops.out_perm_slot
        s_slot = ops.in_scale_slot if side == "in" else ops.out_scale_slot
        if p_slot is not None:
            self.perms[p_slot] = np.asarray(perm, dtype=np.int64)
            self.known.add(p_slot)
        if s_slot is not None:
            self.scales[s_slot] = np.asarray(scale, dtype=np.float64)


def _monomial_cols(w: np.ndarray, side: tuple[np.ndarray, np.ndarray] | None, t: np.ndarray):
    """``W' · D Π · Tᵀ`` per tap (the input side applied); ``w`` is ``(O, I, K)``."""
    if side is not None:
        perm, scale = side
        gather = np.zeros((len(perm), t.shape[0]))
        gather[np.arange(len(perm)), perm] = scale
        w = np.einsum("oik,ic->ock", w, gather, optimize=True)
    return np.einsum("ock,dc->odk", w, t, optimize=True)


def _monomial_rows(w: np.ndarray, side: tuple[np.ndarray, np.ndarray] | None, t: np.ndarray):
    """``Tᵀ · D Π · W'`` per tap (the output side applied)."""
    if side is not None:
        perm, scale = side
        w = w[perm] * scale[:, None, None]
    return np.einsum("ro,rik->oik", t, w, optimize=True)


def effective_weight(layer: KeyedLayer, key: KeyEstimate) -> np.ndarray:
    """``W_eff`` of the layer under the estimated key (the true weight for the true key)."""
    w = _monomial_cols(layer.weight, key.side(layer.ops, "in"), layer.t_in)
    return _monomial_rows(w, key.side(layer.ops, "out"), layer.t_out)


# ---------------------------------------------------------------------------------------------
# Statistics and assignment
# ---------------------------------------------------------------------------------------------
class NonFiniteScores(ValueError):
    """A score matrix with NaN or infinite entries: what matching meets when the model it
    matches against diverged (scipy's "matrix contains invalid numeric entries")."""


def hungarian(score: np.ndarray) -> np.ndarray:
    """``p`` maximising ``sum_j score[j, p[j]]`` (rows: key indices, columns: sources)."""
    if not np.isfinite(score).all():
        raise NonFiniteScores(
            f"a {score.shape[0]}x{score.shape[1]} matching score holds NaN or infinite entries"
        )
    rows, cols = linear_sum_assignment(score, maximize=True)
    p = np.empty(score.shape[0], dtype=np.int64)
    p[rows] = cols
    return p


def sinkhorn(score: np.ndarray, tau: float = 0.05, iters: int = 50) -> np.ndarray:
    """Doubly stochastic normalisation of ``exp(score / tau)`` (log domain)."""
    log = torch.from_numpy(score / tau)
    for _ in range(iters):
        log = log - torch.logsumexp(log, dim=1, keepdim=True)
        log = log - torch.logsumexp(log, dim=0, keepdim=True)
    return log.exp().numpy()


def balance(a: np.ndarray, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Row and column factors ``r, c`` making ``r_i² Σ_k a_ik² c_k²`` equal for all rows and
    columns (Sinkhorn-Knopp on squared entries); ``a`` is ``(O, I, K)``.

    Balancing removes any diagonal scaling on either side: if ``a = D1 b D2`` the balanced
    matrices of ``a`` and ``b`` agree up to one global factor.
    """
    sq = (a**2).sum(axis=2) + 1e-30
    n_out, n_in = sq.shape
    r, c = np.ones(n_out), np.ones(n_in)
    for _ in range(iters):
        r = 1.0 / np.sqrt((sq * c[None, :] ** 2).sum(1) / n_in)
        c = 1.0 / np.sqrt((sq * r[:, None] ** 2).sum(0) / n_out)
    return r, c


def descriptors(a: np.ndarray, axis: int, quantiles: int = 32) -> np.ndarray:
    """Permutation-invariant signature of each row (``axis=0``) or column (``axis=1``) of a
    balanced ``(O, I, K)`` matrix: quantiles of its sorted absolute entries, unit-normalised."""
    m = np.abs(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1))
    q = np.quantile(m, np.linspace(0, 1, quantiles), axis=1).T
    q = q - q.mean(1, keepdims=True)
    return q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-12)


def balanced(a: np.ndarray) -> np.ndarray:
    r, c = balance(a)
    return a * r[:, None, None] * c[None, :, None]


def match_descriptors(stored: np.ndarray, target: np.ndarray, axis: int) -> np.ndarray:
    """Assign each stored row/column to a target row/column by cosine of descriptors
    (Sinkhorn-normalised, then Hungarian); returns ``p`` with stored ``j`` ↔ target ``p[j]``."""
    cos = descriptors(balanced(stored), axis) @ descriptors(balanced(target), axis).T
    return hungarian(sinkhorn(cos))


DIVERGED_NOTE = (
    "{what}: NaN or infinite scores (the model matched against, or its activations, diverged), "
    "key slots left as they were: "
)
"""The note of the layers whose matching met non-finite numbers, followed by their names."""


def finite_step(key: KeyEstimate, step: Callable[[KeyEstimate], None]) -> bool:
    """Apply one layer's matching ``step`` to ``key`` unless it meets NaN or infinite scores or
    leaves a non-finite scale: then ``key`` is unchanged and False says so.  A diverged
    reference stopped the whole audit in scipy; now that layer's attempt recovers nothing."""
    trial = copy.deepcopy(key)
    try:
        step(trial)
    except NonFiniteScores:
        return False
    if not all(np.isfinite(s).all() for s in trial.scales):
        return False
    key.perms, key.scales, key.known = trial.perms, trial.scales, trial.known
    return True


# ---------------------------------------------------------------------------------------------
# Weight matching against a target weight (A4, A5)
# ---------------------------------------------------------------------------------------------
def _solve_in(layer: KeyedLayer, key: KeyEstimate, target: np.ndarray):
    """Least-squares step for the input side given the output side, in the stored frame:
    Hungarian on ``G[j, r]² / n_j`` with ``G = Σ_taps Uᵀ W_R Ti⁻ᵀ``, ``U = Toᵀ D Π W'``; scale
    ``G / n``. Exact for an orthogonal mixing; otherwise exact at the true key."""
    u = _monomial_rows(layer.weight, key.side(layer.ops, "out"), layer.t_out)
    g = np.einsum("ojk,ock,cr->jr", u, target, layer.f_in, optimize=True)
    n = (u**2).sum(axis=(0, 2)) + 1e-30
    p = hungarian(g**2 / n[:, None])
    return p, g[np.arange(len(p)), p] / n


def _solve_out(layer: KeyedLayer, key: KeyEstimate, target: np.ndarray):
    """Same for the output side given the input side: ``G = Σ_taps To⁻ᵀ W_R Vᵀ``."""
    v = _monomial_cols(layer.weight, key.side(layer.ops, "in"), layer.t_in)
    g = np.einsum("ro,ock,sck->rs", layer.f_out, target, v, optimize=True)
    n = (v**2).sum(axis=(1, 2)) + 1e-30
    p = hungarian(g**2 / n[None, :])
    return p, g[np.arange(len(p)), p] / n[p]


def _rank_one_scales(stored: np.ndarray, aligned: np.ndarray, iters: int = 20):
    """Signed ``a, b`` minimising ``‖stored − diag(a) aligned diag(b)‖`` (alternating LS)."""
    a, b = np.ones(stored.shape[0]), np.ones(stored.shape[1])
    for _ in range(iters):
        ab = aligned * b[None, :, None]
        a = (stored * ab).sum((1, 2)) / ((ab**2).sum((1, 2)) + 1e-30)
        aa = aligned * a[:, None, None]
        b = (stored * aa).sum((0, 2)) / ((aa**2).sum((0, 2)) + 1e-30)
    return a, b


def _unit_rows(m: np.ndarray) -> np.ndarray:
    m = m.reshape(m.shape[0], -1)
    m = m - m.mean(1, keepdims=True)
    return m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-12)


def match_two_sided(
    stored: np.ndarray,
    target: np.ndarray,
    *,
    rows: bool = True,
    cols: bool = True,
    iters: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Stored row ``r`` ↔ target row ``row_src[r]`` and column ``j`` ↔ ``col_src[j]`` for two
    ``(O, I, K)`` matrices equal up to monomials on both sides: descriptor matching first, then
    alternating two-sided Hungarian on the cosine of balanced absolute rows (columns put in the
    target's order by the current column match) and of balanced absolute columns."""
    bs, bt = np.abs(balanced(stored)), np.abs(balanced(target))
    row_src = match_descriptors(stored, target, 0) if rows else np.arange(stored.shape[0])
    col_src = match_descriptors(stored, target, 1) if cols else np.arange(stored.shape[1])
    for _ in range(iters):
        previous = row_src.copy(), col_src.copy()
        if rows:
            in_target_order = bs[:, np.argsort(col_src)]
            row_src = hungarian(_unit_rows(in_target_order) @ _unit_rows(bt).T)
        if cols:
            in_target_order = bs[np.argsort(row_src)].swapaxes(0, 1)
            col_src = hungarian(_unit_rows(in_target_order) @ _unit_rows(bt.swapaxes(0, 1)).T)
        if np.array_equal(previous[0], row_src) and np.array_equal(previous[1], col_src):
            break
    return row_src, col_src


def init_from_descriptors(layer: KeyedLayer, key: KeyEstimate, target: np.ndarray) -> None:
    """First guess for one layer: match stored rows/columns to those of ``A = To⁻ᵀ W_R Ti⁻ᵀ``
    (the reference in the stored frame; ``To W_R Ti`` for an orthogonal mixing) with
    :func:`match_two_sided` (invariant to all scales and signs), then fit the signed scales of
    the two monomials."""
    a = np.einsum("po,oik,iq->pqk", layer.f_out, target, layer.f_in, optimize=True)
    w = layer.weight
    has_in, has_out = key.side(layer.ops, "in"), key.side(layer.ops, "out")
    row_src, col_src = match_two_sided(w, a, rows=has_out is not None, cols=has_in is not None)
    # stored row r ↔ A row row_src[r]  ⇒  p_out[row_src[r]] = r
    p_out, p_in = np.argsort(row_src), col_src
    a_rows, a_cols = _rank_one_scales(w, a[row_src][:, col_src])
    if has_out is not None:
        key.set_side(layer.ops, "out", p_out, 1.0 / a_rows[p_out])
    if has_in is not None:
        key.set_side(layer.ops, "in", p_in, 1.0 / a_cols)


def _least_squares_scales(
    columns: np.ndarray, mixes: np.ndarray, target: np.ndarray, previous: np.ndarray
) -> np.ndarray:
    """Scales ``s`` minimising ``‖Σ_j s_j · mixes[j] ⊗ columns[j] − target‖²``; ``columns[j]``
    and ``target`` flattened over their other axes (normal equations, tiny ridge). A scale the
    data does not determine (a dead channel: zero column) keeps its ``previous`` value."""
    cf = columns.reshape(len(columns), -1)
    gram = (mixes @ mixes.T) * (cf @ cf.T)
    rhs = np.einsum("jd,jx,dx->j", mixes, cf, target, optimize=True)
    ridge = 1e-9 * np.trace(gram) / len(gram) + 1e-30
    s = np.linalg.solve(gram + ridge * np.eye(len(gram)), rhs)
    undetermined = ~np.isfinite(s) | (np.abs(s) < 1e-12) | (np.diag(gram) <= ridge)
    return np.where(undetermined, previous, s)


def true_frame_scales(layer: KeyedLayer, key: KeyEstimate, target: np.ndarray, iters: int = 10):
    """For the current permutations, the signed scales of both sides by alternating least
    squares on ``‖W_eff − W_R‖²`` in the true frame. The Hungarian steps work in the stored
    frame, which weights the reference's errors by a conditioned public mixing; ``W_eff`` is
    linear in each side's scales, so this step is exact for any mixing."""
    for _ in range(iters):
        out = key.side(layer.ops, "out")
        if out is not None:  # W_eff[o] = Σ_r To[r, o] s_r B[r], B = input side applied, gathered
            b = _monomial_cols(layer.weight, key.side(layer.ops, "in"), layer.t_in)[out[0]]
            t = target.reshape(len(target), -1)
            scales = _least_squares_scales(b, layer.t_out, t, out[1])
            key.set_side(layer.ops, "out", out[0], scales)
        inp = key.side(layer.ops, "in")
        if inp is not None:  # W_eff[:, d] = Σ_j Ti[d, p_j] s_j V[:, j], V = output side applied
            v = _monomial_rows(layer.weight, key.side(layer.ops, "out"), layer.t_out)
            t = np.moveaxis(target, 1, 0).reshape(target.shape[1], -1)
            cols = np.moveaxis(v, 1, 0)
            scales = _least_squares_scales(cols, layer.t_in[:, inp[0]].T, t, inp[1])
            key.set_side(layer.ops, "in", inp[0], scales)


def _fix_gauge(layer: KeyedLayer, key: KeyEstimate, bias: np.ndarray | None) -> None:
    """The weight fixes only the product of the two sides' scales; choose the factor ``c``
    (out × c, in ÷ c) that best matches the bias too."""
    inp, out = key.side(layer.ops, "in"), key.side(layer.ops, "out")
    if bias is None or layer.bias is None or inp is None or out is None:
        return
    b_eff = layer.t_out.T @ (layer.bias[out[0]] * out[1])
    c = float(b_eff @ bias) / (float(b_eff @ b_eff) + 1e-30)
    c = float(np.copysign(max(abs(c), 1e-3), c))
    key.set_side(layer.ops, "out", out[0], out[1] * c)
    key.set_side(layer.ops, "in", inp[0], inp[1] / c)


def weight_match(
    layers: list[KeyedLayer],
    key: KeyEstimate,
    targets: Mapping[str, Target],
    *,
    rounds: int = 10,
) -> KeyEstimate:
    """Git Re-Basin-style weight matching of every keyed layer to a target weight (the
    reference's, in its own basis): :func:`init_from_descriptors`, then alternating
    least-squares Hungarian steps on the input and output sides, then the scales refitted in
    the true frame (:func:`true_frame_scales`), then :func:`_fix_gauge`.
    Layers without a target, and layers whose matching met NaN or infinite numbers (a diverged
    reference: :func:`finite_step`), keep their slots and are listed in ``key.notes``."""
    missing = [layer.name for layer in layers if layer.name not in targets]
    if missing:
        key.notes.append(
            "weight matching: no reference counterpart, key slots left at the null key: "
            + ", ".join(missing)
        )

    def match(layer: KeyedLayer, key: KeyEstimate) -> None:
        target, bias = targets[layer.name]
        init_from_descriptors(layer, key, target)
        for _ in range(rounds):
            if key.side(layer.ops, "in") is not None:
                key.set_side(layer.ops, "in", *_solve_in(layer, key, target))
            if key.side(layer.ops, "out") is not None:
                key.set_side(layer.ops, "out", *_solve_out(layer, key, target))
        true_frame_scales(layer, key, target)
        _fix_gauge(layer, key, bias)

    diverged = [
        layer.name
        for layer in layers
        if layer.name in targets and not finite_step(key, partial(match, layer))
    ]
    if diverged:
        key.notes.append(DIVERGED_NOTE.format(what="weight matching") + ", ".join(diverged))
    return key
