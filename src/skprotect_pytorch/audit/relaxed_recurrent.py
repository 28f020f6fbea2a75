"""A2 on LSTM/GRU: the recurrent matrices of a locked layer with relaxed (soft) key ops.

A locked LSTM/GRU (:mod:`skprotect_pytorch.lock.recurrent`) reads the key of each recurrent
matrix (``W_hh``, and ``W_hr`` with ``proj_size``) through ``_KeyedMatrix.tensors()`` as hard
index tensors used inside its time loop, so gradient descent cannot reach it.
:class:`RelaxedKeyedMatrix` replaces each ``_KeyedMatrix``: it hands the loop the same eight
tensors that ``_keyed_linear`` takes, with the relaxed key ops (soft permutation times scales,
dense ``M_in``/``M_out`` with ``x ↦ x M``) folded into the weight and bias,
``W_f = M_outᵀ · W' · M_inᵀ``, ``b_f = M_outᵀ · b'``, and identity indices and unit scales in
the key positions.  ``_keyed_linear`` then computes ``unmix_out(M_out(W' · M_in(unmix_in(h))) +
b' M_out)``, exactly the locked step with the relaxed key, and the locked layer's own eager loop
(``_direction_loop``/``_cell``: the same gate math) runs unchanged.  The key is sampled once per
forward call (one Gumbel draw for every time step), the weights stay the locked module's
parameters (trainable in the joint variant) and the state dict keeps the locked names.
The input projections are ``LockedLinear`` layers: their ``ChannelOps`` are relaxed like any
other layer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from ..lock.channel_lock import BlockMix, ChannelOps
from ..lock.recurrent import _KeyedMatrix


class Relaxation(Protocol):
    """What a relaxed key op offers: its dense matrix per side and the public mixings."""

    mix_in: BlockMix | None
    mix_out: BlockMix | None

    def monomial(self, side: str) -> Tensor | None:
        """The side's key op as a matrix ``M`` (``x ↦ x M``), ``None`` without key op."""
        ...


class RelaxedKeyedMatrix(_KeyedMatrix):
    """A ``_KeyedMatrix`` whose ``tensors()`` fold a relaxed key into the weight and bias."""

    def __init__(self, matrix: _KeyedMatrix, ops: Relaxation) -> None:
        nn.Module.__init__(self)  # the locked matrix is already built: take its parts as they are
        self.weight = matrix.weight
        self.bias = matrix.bias
        self.ops = ops  # type: ignore[assignment]  # a relaxed ChannelOps (same mixings)
        self.register_buffer("no_mix", matrix.no_mix, persistent=False)
        n_out, n_in = matrix.weight.shape
        for side, n in (("in", n_in), ("out", n_out)):
            self.register_buffer(f"index_{side}", torch.arange(n), persistent=False)
            self.register_buffer(f"unit_{side}", torch.ones(n), persistent=False)

    def tensors(self) -> list[Tensor]:
        """The eight tensors of ``_keyed_linear`` with the relaxed key folded in."""
        weight, bias = self.weight, self.bias
        m_in, m_out = self.ops.monomial("in"), self.ops.monomial("out")
        if m_in is not None:
            weight = weight @ m_in.T
        if m_out is not None:
            weight, bias = m_out.T @ weight, bias @ m_out
        return [
            weight,
            bias,
            self._blocks("in"),
            self._blocks("out"),
            self.index_in,
            self.unit_in,
            self.index_out,
            self.unit_out,
        ]


def replace_keyed_matrices(root: nn.Module, relax: Callable[[ChannelOps], Relaxation]) -> int:
    """Swap every ``_KeyedMatrix`` under ``root`` for a :class:`RelaxedKeyedMatrix` whose key op
    is ``relax(matrix.ops)``; returns how many were swapped."""
    swapped = 0
    for module in list(root.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, _KeyedMatrix) and not isinstance(child, RelaxedKeyedMatrix):
                setattr(module, name, RelaxedKeyedMatrix(child, relax(child.ops)))
                swapped += 1
    return swapped
