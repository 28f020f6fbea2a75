"""The lock of one linear map on channel axes: ``W' = M_out · Q · W · M_in⁻¹`` (DESIGN.md §3).

``M_in``/``M_out`` are keyed monomials (secret permutation within groups times secret scales),
``Q`` is a public block-orthogonal mixing stored next to ``W`` (on its smaller channel side), so
that every stored row or column is a mixture of true ones.  At run time the key only touches
activations: a Gather+Mul before the op and a Gather+Mul plus the public un-mix after it.
Every layer family reduces its weights to grouped channel matrices ``(G, O, I, *taps)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .context import LockContext

MixSide = Literal["in", "out"]


def _block_sizes(n: int, block: int) -> list[int]:
    """Split ``n`` channels into blocks of ``block``; the remainder joins the last block."""
    if n <= block:
        return [n]
    k, r = divmod(n, block)
    return [block] * (k - 1) + [block + r]


def _flat_orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random orthogonal matrix whose entries all have (about) the same magnitude.

    Flat entries make every stored row an even mixture of ``n`` true rows, so no true row
    dominates any stored one (a random orthogonal matrix often has one entry near 0.7).
    Sylvester-Hadamard for powers of two, orthonormal DCT-II otherwise; random signs and
    permutations on both sides vary it per layer.
    """
    if n & (n - 1) == 0:
        h = np.ones((1, 1))
        while h.shape[0] < n:
            h = np.block([[h, h], [h, -h]])
        base = h / np.sqrt(n)
    else:
        k = np.arange(n)
        base = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
        base[0] /= np.sqrt(2)
    signs = rng.choice([-1.0, 1.0], size=(2, n))
    return (signs[0][:, None] * base * signs[1][None, :])[rng.permutation(n)][:, rng.permutation(n)]


class BlockMix(nn.Module):
    """Public block-diagonal orthogonal ``Q`` over one channel axis; blocks stay inside groups."""

    def __init__(self, n_total: int, groups: int, block: int, rng: np.random.Generator) -> None:
        super().__init__()
        n = n_total // groups
        sizes = _block_sizes(n, block)
        dense = np.zeros((groups, n, n))
        blocks = []
        for g in range(groups):
            start = 0
            for size in sizes:
                q = _flat_orthogonal(rng, size)
                dense[g, start : start + size, start : start + size] = q
                blocks.append(q)
                start += size
        self.group_matrices = dense  # float64 (G, n, n), used to transform weights
        self.uniform = len(set(sizes)) == 1
        if self.uniform:
            stacked = np.stack(blocks).astype(np.float32)
            self.register_buffer("blocks", torch.from_numpy(stacked))
        else:
            full = np.zeros((n_total, n_total))
            for g in range(groups):
                full[g * n : (g + 1) * n, g * n : (g + 1) * n] = dense[g]
            self.register_buffer("matrix", torch.from_numpy(full.astype(np.float32)))

    def apply_transpose(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Return ``Qᵀ x`` along ``axis`` (the public un-mix)."""
        axis = axis % x.dim()  # non-negative axes: the TorchScript ONNX exporter needs them
        last = x.dim() - 1
        x = x.movedim(axis, last)
        if self.uniform:
            k, b, _ = self.blocks.shape
            y = (x.unflatten(-1, (k, b)).unsqueeze(-2) @ self.blocks).squeeze(-2).flatten(-2)
        else:
            y = x @ self.matrix
        return y.movedim(last, axis)


@dataclass
class ChannelPlan:
    """The secret and public parts of one locked linear map."""

    groups: int
    out_per_group: int
    in_per_group: int
    in_perm: np.ndarray
    in_scale: np.ndarray
    out_perm: np.ndarray
    out_scale: np.ndarray
    mix_in: BlockMix | None
    mix_out: BlockMix | None


def _grouped_perm(rng: np.random.Generator, groups: int, n: int) -> np.ndarray:
    return np.concatenate([g * n + rng.permutation(n) for g in range(groups)])


def plan_channels(
    ctx: LockContext,
    name: str,
    groups: int,
    out_per_group: int,
    in_per_group: int,
    *,
    mix_both: bool = False,
) -> ChannelPlan:
    """Draw the keyed monomials and the public mixing for a ``(G, O, I)`` channel matrix.

    Mixing goes on the smaller channel side (cheaper un-mix).  ``mix_both`` mixes both sides:
    needed when the matrix is sparse (regrouped depthwise convs), where one-sided mixing would
    leave every stored tap vector a rescaled copy of one true kernel.
    """
    candidates = [(n, side) for n, side in ((out_per_group, "out"), (in_per_group, "in")) if n >= 2]
    if not candidates:
        raise UnsupportedLayerError(
            f"Layer '{name}' has a single input and output channel per group: no mixing can hide "
            "its weights. Exclude it with layer_filter or give it more channels."
        )
    sides = {side for _, side in candidates} if mix_both else {min(candidates)[1]}

    def mix(side: MixSide) -> BlockMix | None:
        if side not in sides:
            return None
        n = out_per_group if side == "out" else in_per_group
        return BlockMix(
            groups * n, groups, ctx.settings.mix_block, ctx.public_rng(f"{name}/{side}")
        )

    rng = ctx.secret_rng
    return ChannelPlan(
        groups=groups,
        out_per_group=out_per_group,
        in_per_group=in_per_group,
        in_perm=_grouped_perm(rng, groups, in_per_group),
        in_scale=ctx.random_scales(groups * in_per_group),
        out_perm=_grouped_perm(rng, groups, out_per_group),
        out_scale=ctx.random_scales(groups * out_per_group),
        mix_in=mix("in"),
        mix_out=mix("out"),
    )


def lock_matrix(weight: torch.Tensor, plan: ChannelPlan) -> torch.Tensor:
    """Return ``M_out · Q · W · M_in⁻¹`` for a grouped channel matrix ``(G, O, I, *taps)``."""
    a = weight.detach().to(torch.float64)
    if plan.mix_out is not None:
        a = torch.einsum("gpo,goi...->gpi...", torch.from_numpy(plan.mix_out.group_matrices), a)
    if plan.mix_in is not None:
        a = torch.einsum("goi...,giq->goq...", a, torch.from_numpy(plan.mix_in.group_matrices))
    g, o, i = plan.groups, plan.out_per_group, plan.in_per_group
    taps = a.shape[3:]
    shape_t = (1,) * len(taps)
    rows = a.reshape(g * o, i, *taps)[torch.from_numpy(plan.out_perm)]
    rows = rows * torch.from_numpy(plan.out_scale).double().view(g * o, 1, *shape_t)
    a = rows.reshape(g, o, i, *taps)
    local_in = torch.from_numpy(plan.in_perm.reshape(g, i) - np.arange(g)[:, None] * i)
    cols = torch.stack([a[k][:, local_in[k]] for k in range(g)])
    cols = cols / torch.from_numpy(plan.in_scale).double().view(g, 1, i, *shape_t)
    return cols.to(weight.dtype)


def lock_bias(bias: torch.Tensor | None, plan: ChannelPlan) -> torch.Tensor | None:
    """Return ``M_out · Q_out · b`` (``Q_out`` only when the output side is mixed)."""
    if bias is None:
        return None
    b = bias.detach().to(torch.float64).reshape(plan.groups, plan.out_per_group)
    if plan.mix_out is not None:
        b = torch.einsum("gpo,go->gp", torch.from_numpy(plan.mix_out.group_matrices), b)
    b = b.reshape(-1)[torch.from_numpy(plan.out_perm)] * torch.from_numpy(plan.out_scale).double()
    return b.to(bias.dtype)


class ChannelOps(nn.Module):
    """Activation-side ops of one locked map: key Gather+Mul in; key Gather+Mul, un-mix out."""

    def __init__(self, plan: ChannelPlan, ctx: LockContext) -> None:
        super().__init__()
        layout = ctx.layout
        inverse = np.argsort(plan.out_perm)
        self.in_perm_slot = layout.add_perm(plan.in_perm)
        self.in_scale_slot = layout.add_scale(plan.in_scale)
        self.out_perm_slot = layout.add_perm(inverse)
        self.out_scale_slot = layout.add_scale((1.0 / plan.out_scale[inverse]).astype(np.float32))
        self.mix_in = plan.mix_in
        self.mix_out = plan.mix_out
        self.slots = ctx.slots

    @staticmethod
    def _gather_mul(
        x: torch.Tensor, axis: int, idx: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        axis = axis % x.dim()
        shape = [1] * x.dim()
        shape[axis] = -1
        return x.index_select(axis, idx) * scale.view(shape)

    def enter(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Move an input from the true channel basis into the layer's locked basis."""
        if self.mix_in is not None:
            x = self.mix_in.apply_transpose(x, axis)
        s = self.slots
        return self._gather_mul(x, axis, s.perm(self.in_perm_slot), s.scale(self.in_scale_slot))

    def leave(self, z: torch.Tensor, axis: int) -> torch.Tensor:
        """Bring the layer's locked output back to the true channel basis."""
        s = self.slots
        z = self._gather_mul(z, axis, s.perm(self.out_perm_slot), s.scale(self.out_scale_slot))
        if self.mix_out is not None:
            z = self.mix_out.apply_transpose(z, axis)
        return z
