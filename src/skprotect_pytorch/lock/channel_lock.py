"""The lock of one linear map on channel axes: ``W' = M_out · Q · W · M_in⁻¹`` (DESIGN.md §3).

``M_in``/``M_out`` are keyed monomials (secret permutation within groups times secret scales),
``Q`` is a public block-orthogonal mixing stored next to ``W`` (on its smaller channel side), so
that every stored row or column is a mixture of true ones.  At run time the key only touches
activations: a Gather+Mul before the op and a Gather+Mul plus the public un-mix after it.
Every layer family reduces its weights to grouped channel matrices ``(G, O, I, *taps)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayerError
from .context import LockContext

MixSide = Literal["in", "out"]
KeyedSides = Literal["both", "mixed"]


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


def _conditioned_mixing(rng: np.random.Generator, n: int, condition: float) -> np.ndarray:
    """A random mixing block with condition number ``condition``: ``H₁ · diag(s) · H₂`` with
    two flat orthogonal ``H`` and singular values ``s`` log-spaced over ``[1, condition]``
    (geometric mean 1, shuffled); ``condition == 1`` gives the flat orthogonal block itself.

    An orthogonal mixing keeps each locked matrix's singular values, which a thief can read
    after balancing away the secret scales: on the suite CNN a start with only the victim's
    singular values beat training from scratch (docs/security.md, "Init scale").
    """
    q = _flat_orthogonal(rng, n)
    if condition == 1.0 or n == 1:
        return q
    s = np.exp(np.linspace(0.0, np.log(condition), n))
    s = rng.permutation(s / np.exp(np.log(s).mean()))
    return (q * s) @ _flat_orthogonal(rng, n)


def _runs(sizes: list[int]) -> list[int]:
    """Lengths of the runs of equal consecutive ``sizes`` (``[16, 16, 24] → [2, 1]``)."""
    runs: list[int] = []
    for i, size in enumerate(sizes):
        if i and size == sizes[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


class BlockMix(nn.Module):
    """Public block-diagonal mixing ``Q`` over one channel axis; blocks stay inside groups.

    ``q_blocks`` (``Q``'s float64 blocks, applied one at a time by :meth:`mix_left` and
    :meth:`mix_right`) lock the weights; the buffers hold ``(Q⁻¹)ᵀ`` so that
    the un-mix is their transpose, ``Q⁻¹`` (``Qᵀ`` when ``Q`` is orthogonal).  The blocks are
    stacked per *segment*, a run of equal-size consecutive blocks (one segment when ``n`` is a
    multiple of the block, two when a larger last block takes the remainder), so that every
    un-mix is one batched MatMul or grouped conv per segment: a dense block-diagonal matrix
    instead cost a 1000-class head 4 MB of reads per call.
    """

    def __init__(
        self,
        n_total: int,
        groups: int,
        block: int,
        rng: np.random.Generator,
        condition: float = 1.0,
    ) -> None:
        super().__init__()
        n = n_total // groups
        sizes = _block_sizes(n, block)
        self.q_blocks: list[tuple[int, int, np.ndarray]] = []  # (group, start, Q block)
        blocks = []  # (Q⁻¹)ᵀ per block, in channel order
        for g in range(groups):
            start = 0
            for size in sizes:
                q = _conditioned_mixing(rng, size, condition)
                self.q_blocks.append((g, start, q))
                blocks.append(np.linalg.inv(q).T)
                start += size
        first = 0
        self.segments = 0
        for count in _runs(sizes * groups):
            stacked = torch.from_numpy(np.stack(blocks[first : first + count]).astype(np.float32))
            name = "blocks" if self.segments == 0 else f"blocks_{self.segments}"
            self.register_buffer(name, stacked)
            first += count
            self.segments += 1

    def mix_left(self, a: torch.Tensor) -> torch.Tensor:
        """``Q a`` on axis 1 of a float64 ``(G, n, ...)`` tensor, one block at a time."""
        out = torch.empty_like(a)
        for g, start, q in self.q_blocks:
            rows = slice(start, start + q.shape[0])
            out[g, rows] = torch.tensordot(torch.from_numpy(q), a[g, rows], dims=1)
        return out

    def mixing(self) -> torch.Tensor:
        """The whole mixing ``Q``, block-diagonal float64 ``(n_total, n_total)``, built on
        demand (for checks): the lock keeps only its blocks, as a dense ``Q`` per layer held
        4x the layer's weights in memory for as long as the locked model lived."""
        n = sum(q.shape[0] for _, _, q in self.q_blocks)
        dense = torch.zeros(n, n, dtype=torch.float64)
        offset = 0
        for _, _, q in self.q_blocks:
            size = q.shape[0]
            dense[offset : offset + size, offset : offset + size] = torch.from_numpy(q)
            offset += size
        return dense

    def mix_right(self, a: torch.Tensor) -> torch.Tensor:
        """``a Q`` on axis 2 of a float64 ``(G, O, n, ...)`` tensor, one block at a time."""
        out = torch.empty_like(a)
        for g, start, q in self.q_blocks:
            cols = slice(start, start + q.shape[0])
            out[g, :, cols] = torch.einsum("oi...,iq->oq...", a[g, :, cols], torch.from_numpy(q))
        return out

    @property
    def uniform(self) -> bool:
        """Whether all blocks have one size (one segment, the ``blocks`` buffer)."""
        return self.segments == 1

    def segment_blocks(self) -> list[torch.Tensor]:
        """The ``(k, b, b)`` stacks of ``(Q⁻¹)ᵀ`` blocks of each segment, in channel order."""
        return [self.blocks, *(getattr(self, f"blocks_{i}") for i in range(1, self.segments))]

    def _segments(self) -> Iterator[tuple[torch.Tensor, slice]]:
        """Each segment's ``(k, b, b)`` blocks and the channel range they un-mix."""
        start = 0
        for blocks in self.segment_blocks():
            k, b, _ = blocks.shape
            yield blocks, slice(start, start + k * b)
            start += k * b

    def dense(self) -> torch.Tensor:
        """``(Q⁻¹)ᵀ`` as one dense block-diagonal ``(n, n)`` matrix."""
        return torch.block_diag(*(b for stack in self.segment_blocks() for b in stack))

    def apply_transpose(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Return ``Q⁻¹ x`` along ``axis`` (the public un-mix; ``Qᵀ x`` for orthogonal ``Q``)."""
        axis = axis % x.dim()  # non-negative axes: the TorchScript ONNX exporter needs them
        rows = x.movedim(axis, 0)
        y = self.apply_rows(rows.reshape(rows.shape[0], -1)).reshape(rows.shape)
        return y.movedim(0, axis)

    def apply_rows(self, t: torch.Tensor) -> torch.Tensor:
        """``Q⁻¹ t`` for a channel-first ``(n, N)`` matrix: one batched MatMul over the blocks.

        Channel-first keeps the blocks' rows contiguous, so the un-mix is ``k`` GEMMs of
        ``(b, b) @ (b, N)`` instead of ``k·N`` vector-matrix products.
        """
        parts = []
        for blocks, channels in self._segments():
            k, b, _ = blocks.shape
            rows = t if self.uniform else t[channels]
            parts.append((blocks.transpose(1, 2) @ rows.reshape(k, b, -1)).reshape(k * b, -1))
        return parts[0] if self.uniform else torch.cat(parts)

    def apply_conv(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """``Q⁻¹ x`` on the channel axis of an ``(N, C, *spatial)`` tensor, left where it is.

        For ONNX a 1×1 grouped conv: onnxruntime keeps Conv in its blocked NCHWc layout, so
        this avoids the two layout transposes a MatMul on the channel axis would need
        (DESIGN.md §3, "what was learned").  Everywhere else (eager, TorchScript, AOTInductor)
        one batched MatMul of the blocks with an ``(N, k, b, H·W)`` view: ATen runs a small
        grouped 1×1 conv one group at a time below batch 16, and Inductor's is slower still
        (docs/benchmarks.md).
        """
        conv_form = torch.onnx.is_in_onnx_export()
        spatial = x.dim() - 2
        parts = []
        for blocks, channels in self._segments():
            k, b, _ = blocks.shape
            part = x if self.uniform else x[:, channels]
            if conv_form:
                weight = blocks.transpose(1, 2).reshape(k * b, b, *([1] * spatial))
                conv = F.conv1d if spatial == 1 else F.conv2d
                parts.append(conv(part, weight, groups=k))
            else:
                rows = part.unflatten(1, (k, b)).flatten(3)
                parts.append((blocks.transpose(1, 2) @ rows).reshape(part.shape))
        return parts[0] if self.uniform else torch.cat(parts, 1)


@dataclass
class ChannelPlan:
    """The secret and public parts of one locked linear map.

    A side that is not keyed has the identity permutation and unit scales: its stored axis is
    in the true channel order and needs no key op at run time.
    """

    groups: int
    out_per_group: int
    in_per_group: int
    in_perm: np.ndarray
    in_scale: np.ndarray
    out_perm: np.ndarray
    out_scale: np.ndarray
    mix_in: BlockMix | None
    mix_out: BlockMix | None
    keyed_in: bool = True
    keyed_out: bool = True


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
    keyed_sides: KeyedSides | None = None,
) -> ChannelPlan:
    """Draw the keyed monomials and the public mixing for a ``(G, O, I)`` channel matrix.

    Mixing goes on the smaller channel side (cheaper un-mix), or on both sides when the
    settings say ``mix_sides="both"`` or ``mix_both`` is set: needed when the matrix is sparse
    (regrouped depthwise convs), where one-sided mixing would leave every stored tap vector a
    rescaled copy of one true kernel.  ``keyed_sides``
    (default: the settings') is ``"both"`` or ``"mixed"``: key only the mixed side(s), where
    the monomial sits outside the public mixing so that the attacker cannot strip it.
    """
    candidates = [(n, side) for n, side in ((out_per_group, "out"), (in_per_group, "in")) if n >= 2]
    if not candidates:
        raise UnsupportedLayerError(
            f"Layer '{name}' has a single input and output channel per group: no mixing can hide "
            "its weights. Exclude it with layer_filter or give it more channels."
        )
    mix_both = mix_both or ctx.settings.mix_sides == "both"
    sides = {side for _, side in candidates} if mix_both else {min(candidates)[1]}
    keyed = {"in", "out"} if (keyed_sides or ctx.settings.keyed_sides) == "both" else sides

    def mix(side: MixSide) -> BlockMix | None:
        if side not in sides:
            return None
        n = out_per_group if side == "out" else in_per_group
        return BlockMix(
            groups * n,
            groups,
            ctx.settings.mix_block,
            ctx.public_rng(f"{name}/{side}"),
            ctx.settings.mixing_condition,
        )

    def monomial(side: MixSide, n: int) -> tuple[np.ndarray, np.ndarray]:
        if side not in keyed:
            return np.arange(groups * n), np.ones(groups * n, dtype=np.float32)
        return _grouped_perm(ctx.secret_rng, groups, n), ctx.random_scales(groups * n)

    in_perm, in_scale = monomial("in", in_per_group)
    out_perm, out_scale = monomial("out", out_per_group)
    return ChannelPlan(
        groups=groups,
        out_per_group=out_per_group,
        in_per_group=in_per_group,
        in_perm=in_perm,
        in_scale=in_scale,
        out_perm=out_perm,
        out_scale=out_scale,
        mix_in=mix("in"),
        mix_out=mix("out"),
        keyed_in="in" in keyed,
        keyed_out="out" in keyed,
    )


def lock_matrix(weight: torch.Tensor, plan: ChannelPlan) -> torch.Tensor:
    """Return ``M_out · Q · W · M_in⁻¹`` for a grouped channel matrix ``(G, O, I, *taps)``."""
    a = weight.detach().to(torch.float64)
    if plan.mix_out is not None:
        a = plan.mix_out.mix_left(a)
    if plan.mix_in is not None:
        a = plan.mix_in.mix_right(a)
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
        b = plan.mix_out.mix_left(b)
    b = b.reshape(-1)[torch.from_numpy(plan.out_perm)] * torch.from_numpy(plan.out_scale).double()
    return b.to(bias.dtype)


class ChannelOps(nn.Module):
    """Activation-side ops of one locked map: key Gather+Mul in; key Gather+Mul, un-mix out.

    A side that the plan does not key has no slots (``None``) and no key op.  On channel-first
    rows ``(n, N)`` (locked linears transpose into that layout themselves) the Gather runs on
    axis 0, so onnxruntime copies whole rows instead of single elements, and the un-mix is one
    batched MatMul.  On a conv's channel axis they run in place and the un-mix is a grouped
    1×1 conv in ONNX, a batched MatMul elsewhere (:meth:`BlockMix.apply_conv`).
    """

    def __init__(self, plan: ChannelPlan, ctx: LockContext) -> None:
        super().__init__()
        layout = ctx.layout
        inverse = np.argsort(plan.out_perm)
        self.in_perm_slot = layout.add_perm(plan.in_perm) if plan.keyed_in else None
        self.in_scale_slot = layout.add_scale(plan.in_scale) if plan.keyed_in else None
        self.out_perm_slot = layout.add_perm(inverse) if plan.keyed_out else None
        self.out_scale_slot = (
            layout.add_scale((1.0 / plan.out_scale[inverse]).astype(np.float32))
            if plan.keyed_out
            else None
        )
        self.mix_in = plan.mix_in
        self.mix_out = plan.mix_out
        self.slots = ctx.slots

    def _key(self, perm_slot: int | None, scale_slot: int | None):
        if perm_slot is None or scale_slot is None:
            return None
        return self.slots.perm(perm_slot), self.slots.scale(scale_slot)

    @staticmethod
    def _in_order(x: torch.Tensor, axis: int, key, unmix, mix_first: bool) -> torch.Tensor:
        """The key op (Gather+Mul along ``axis``) and the un-mix, in the order of the side."""
        if unmix is not None and mix_first:
            x = unmix(x)
        if key is not None:
            perm, scale = key
            if axis == 0 and x.dim() == 2:
                # Channel-first rows: ``embedding`` exports as one bare Gather (``index_select``
                # adds a Reshape of the indices), and the key's scale column fits as it is.
                x = F.embedding(perm, x) * scale
            else:
                shape = [1] * x.dim()
                shape[axis] = -1
                x = x.index_select(axis, perm) * scale.view(shape)
        if unmix is not None and not mix_first:
            x = unmix(x)
        return x

    def _transform(self, x: torch.Tensor, axis: int, key, mix, mix_first: bool) -> torch.Tensor:
        if key is None and mix is None:
            return x
        axis = axis % x.dim()  # non-negative axes: the TorchScript ONNX exporter needs them
        if axis == 0 and x.dim() == 2:  # channel-first rows (n, N): linears, unbatched Conv1d
            return self._in_order(x, 0, key, mix.apply_rows if mix is not None else None, mix_first)
        conv_layout = axis == 1 and x.dim() in (3, 4)  # (N, C, *spatial), in place
        along = None
        if mix is not None:
            apply = mix.apply_conv if conv_layout else mix.apply_transpose

            def along(t: torch.Tensor) -> torch.Tensor:
                return apply(t, axis)

        return self._in_order(x, axis, key, along, mix_first)

    def enter(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Move an input from the true channel basis into the layer's locked basis."""
        key = self._key(self.in_perm_slot, self.in_scale_slot)
        return self._transform(x, axis, key, self.mix_in, mix_first=True)

    def leave(self, z: torch.Tensor, axis: int) -> torch.Tensor:
        """Bring the layer's locked output back to the true channel basis."""
        key = self._key(self.out_perm_slot, self.out_scale_slot)
        return self._transform(z, axis, key, self.mix_out, mix_first=False)
