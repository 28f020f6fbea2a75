"""Lockers for ``nn.LSTM`` and ``nn.GRU``: the cell is decomposed so no weight is stored in clear.

A fused ONNX LSTM/GRU op takes ``W`` and ``R`` as inputs, so hiding it behind a hidden-unit
permutation alone would store ``R`` as a row/column permutation of ``W_hh``.  Instead every
layer is computed as

- the input projection of all time steps at once, ``W_ih x + b_ih`` (both directions fused in
  one matrix), as a fully locked linear (:func:`~.linear.lock_linear_weights`);
- a time loop whose step computes ``R h + b_hh`` with a locked recurrent matrix
  ``W_hh' = M_out · Q · W_hh · M_in⁻¹`` (key Gather+Mul and the public un-mix on the hidden
  state, per step), the gate non-linearities in the true basis, and for LSTM with ``proj_size``
  a locked ``W_hr``.  The loop runs channel-first: states ``(hidden, batch)`` and projected
  inputs ``(T, gates, batch)``, so the key's Gathers copy whole rows, the un-mix is one batched
  GEMM over the mixing blocks and ``W' @ h`` needs no transposed operand (the row-major step
  gathered single elements on the last axis and un-mixed with ``batch × blocks`` tiny GEMMs).

Exact torch semantics: gate order (LSTM ``i, f, g, o``; GRU ``r, z, n`` with ``b_hn`` inside
``r * (...)``), ``num_layers``, ``bidirectional`` (the reverse direction runs on the reversed
sequence), ``batch_first``, unbatched 2-D input, ``proj_size``, optional initial states.
Inter-layer dropout is a training-only op and is ignored (locked models run in eval mode).

The time loop keeps the sequence length and the batch dynamic on every export path; which loop
runs is picked at trace time (see :data:`LOOP_MECHANISMS`):

- eager: a Python loop;
- ``torch.export`` (strict and non-strict; hence ONNX via ``torch.onnx.export(dynamo=True)``
  and AOTInductor): one ``torch._higher_order_ops.scan`` per layer and direction, exported as
  an ONNX ``Scan`` and lowered to a ``while_loop`` by Inductor;
- ``torch.jit.trace`` (hence also the legacy ``torch.onnx.export(dynamo=False)``, which gives
  an ONNX ``Loop``): a ``torch.jit.script``-ed loop function called from the traced module,
  recorded as a ``prim::Loop`` (survives ``torch.jit.freeze``).

No path unrolls the loop, so :data:`UNROLLED_BACKENDS` is empty.  Per step the key costs two
Gathers on the hidden state and the public block un-mixes (plus the same for ``W_hr``): on a
mixed side the key's scales are folded into the un-mix blocks once per call, outside the loop
(rows scaled on the input side, columns on the output side), so the step has no key Mul there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UnsupportedLayerError
from .channel_lock import ChannelOps, lock_bias, lock_matrix, plan_channels
from .context import LockContext
from .linear import LockedLinear, lock_linear_weights
from .registry import register_locker

LSTM_KIND = 0
GRU_KIND = 1

LOOP_MECHANISMS: dict[str, str] = {
    "eager": "python loop",
    "torch.export": "torch._higher_order_ops.scan (ONNX Scan; Inductor while_loop)",
    "torch.jit.trace": "torch.jit.script loop (prim::Loop; legacy ONNX exporter: Loop)",
}
"""Which time loop each backend records; all keep sequence length and batch dynamic."""

UNROLLED_BACKENDS: tuple[str, ...] = ()
"""Backends on which the time loop is unrolled to the example's sequence length (none)."""


# --------------------------------------------------------------------------------------------
# Step functions: plain tensor code, TorchScript-compatible (used by all three loop drivers).
# Parameter list of one direction: for W_hh, then (proj_size only) for W_hr, eight tensors
#   +0 w'  +1 b'  +2 in-side un-mix blocks  +3 out-side un-mix blocks  +4 in idx  +5 in scale
#   +6 out idx  +7 out scale
# (an unmixed side gets an empty placeholder; a mixed side's blocks carry its scales, and its
# scale tensor is not read).  Every step tensor is channel-first,
# ``(channels, batch)``.  ``flags`` =
#   [hh_mix_in, hh_mix_out, hr_mix_in, hr_mix_out, has_proj].
# --------------------------------------------------------------------------------------------

_KEY_POSITIONS = frozenset({4, 5, 6, 7, 12, 13, 14, 15})
"""Positions of the key's slot views in a direction's parameter list."""


def _unmix(x: Tensor, blocks: Tensor) -> Tensor:
    """``Q⁻¹ x`` on the rows of a channel-first ``(n, batch)`` step tensor; ``blocks`` are the
    ``(k, b, b)`` blocks of ``Q⁻¹`` (one batched GEMM, fixed ranks for every exporter)."""
    k = blocks.size(0)
    b = blocks.size(1)
    n = x.size(1)  # the batch, named: a -1 here loses the batch symbol under torch.export
    return (blocks @ x.reshape(k, b, n)).reshape(k * b, n)


def _keyed_linear(x: Tensor, p: list[Tensor], o: int, mix_in: bool, mix_out: bool) -> Tensor:
    """Locked linear ``p[o:o+8]`` on channel-first ``(in, batch)``: true basis in and out.

    A mixed side's scales are already in its un-mix blocks; an unmixed side multiplies by them.
    """
    # Bias and scales are shaped as columns here although the key's scales come as columns:
    # ``torch.export`` gives every tensor lifted into the scan body fresh size symbols, so a
    # lifted column's 1 would no longer broadcast against the batch.
    if mix_in:
        x = torch.embedding(_unmix(x, p[o + 2]), p[o + 4])
    else:
        x = torch.embedding(x, p[o + 4]) * p[o + 5].reshape(-1, 1)
    z = torch.embedding(torch.addmm(p[o + 1].unsqueeze(1), p[o], x), p[o + 6])
    if mix_out:
        return _unmix(z, p[o + 3])
    return z * p[o + 7].reshape(-1, 1)


def _cell(
    kind: int, xg: Tensor, h: Tensor, c: Tensor, p: list[Tensor], flags: list[bool]
) -> tuple[Tensor, Tensor]:
    """One time step of one direction; ``xg`` is the projected input ``W_ih x_t + b_ih``."""
    hg = _keyed_linear(h, p, 0, flags[0], flags[1])
    if kind == 0:  # LSTM_KIND (TorchScript cannot read module globals)
        g = xg + hg
        n4 = g.size(0) // 4
        gi = g.narrow(0, 0, n4)
        gf = g.narrow(0, n4, n4)
        gg = g.narrow(0, 2 * n4, n4)
        go = g.narrow(0, 3 * n4, n4)
        c_new = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
        h_new = torch.sigmoid(go) * torch.tanh(c_new)
        if flags[4]:
            h_new = _keyed_linear(h_new, p, 8, flags[2], flags[3])
        return h_new, c_new
    n3 = xg.size(0) // 3
    rz = torch.sigmoid(xg.narrow(0, 0, 2 * n3) + hg.narrow(0, 0, 2 * n3))
    r = rz.narrow(0, 0, n3)
    z = rz.narrow(0, n3, n3)
    n = torch.tanh(xg.narrow(0, 2 * n3, n3) + r * hg.narrow(0, 2 * n3, n3))
    return (1.0 - z) * n + z * h, c


def _direction_loop(
    kind: int, x: Tensor, h0: Tensor, c0: Tensor, p: list[Tensor], flags: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one direction of one layer over time (a reverse direction gets a pre-flipped ``x``).

    Channel-first: ``x (T, G, N)``, states ``(H, N)``.  Returns the stacked outputs
    ``(T, H_out, N)``, the final ``h`` and the final ``c``.
    """
    h = h0
    c = c0
    outs: list[Tensor] = []
    for t in range(x.size(0)):
        h, c = _cell(kind, x[t], h, c, p, flags)
        outs.append(h)
    return torch.stack(outs), h, c


_SCRIPTED_DIRECTION_LOOP: Any = None


def _scripted_direction_loop() -> Any:
    """The TorchScript version of :func:`_direction_loop`, compiled once on first use."""
    global _SCRIPTED_DIRECTION_LOOP
    if _SCRIPTED_DIRECTION_LOOP is None:
        _SCRIPTED_DIRECTION_LOOP = torch.jit.script(_direction_loop)
    return _SCRIPTED_DIRECTION_LOOP


def _scan_direction(
    kind: int, x: Tensor, h0: Tensor, c0: Tensor, p: list[Tensor], flags: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer as a ``scan`` over time (used under ``torch.export``)."""
    from torch._higher_order_ops.scan import scan

    lstm = kind == LSTM_KIND
    # The key slots are views of one decoded tensor; lifting several aliasing views into the
    # scan body makes Dynamo lose the batch symbol below, so give the body its own copies.
    p = [t.clone() if i in _KEY_POSITIONS else t for i, t in enumerate(p)]
    # Using the batch size (exactly once) inside the body makes export lift it as a loop input:
    # Inductor's scan -> while_loop lowering needs every symbol of the output shapes bound.
    batch = x.size(2)
    h_size = h0.shape[0]
    # Views with a storage offset (h0[k], the chunks of the fused input projection) make Dynamo
    # guard on that offset, which specialises the batch size: hand the loop fresh tensors.
    # Fresh in the contiguous strides the body's carries get: at batch 1 a state ``(H, 1)``
    # made by ``.t().contiguous()`` keeps its transposed strides ``(1, H)`` (a size-1 axis
    # counts as contiguous whatever its stride), and scan refused init and carry as different
    # ("Expected init and carry to have same metadata"): no batch-1 LSTM/GRU exported.
    x = x.clone(memory_format=torch.contiguous_format)
    h0 = h0.clone(memory_format=torch.contiguous_format)
    c0 = c0.clone(memory_format=torch.contiguous_format)

    def combine(carry: list[Tensor], xt: Tensor):
        c = carry[1] if lstm else carry[0]
        h, c = _cell(kind, xt, carry[0], c, p, flags)
        h = h.reshape(h_size, batch)
        return ([h, c] if lstm else [h]), h.clone()

    final, ys = scan(combine, [h0, c0] if lstm else [h0], x)
    return ys, final[0], (final[1] if lstm else c0)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class _KeyedMatrix(nn.Module):
    """A locked ``(out, in)`` matrix plus its key ops, used functionally inside the time loop."""

    def __init__(self, name: str, weight: Tensor, bias: Tensor | None, ctx: LockContext) -> None:
        super().__init__()
        # Both sides keyed: the state feeds back into this matrix, so a one-sided key would
        # leave the recurrence running in the true basis of the unkeyed side.
        plan = plan_channels(ctx, name, 1, weight.shape[0], weight.shape[1], keyed_sides="both")
        locked_w = lock_matrix(weight.detach().unsqueeze(0), plan)[0]
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
        self.weight = nn.Parameter(locked_w.contiguous(), requires_grad=False)
        self.bias = nn.Parameter(lock_bias(bias.detach(), plan), requires_grad=False)
        self.ops = ChannelOps(plan, ctx)
        self.register_buffer("no_mix", torch.zeros(0, dtype=weight.dtype), persistent=False)
        for side, mix in (("in", plan.mix_in), ("out", plan.mix_out)):
            if mix is not None and not mix.uniform:  # the loop takes one stack of blocks
                self.register_buffer(f"{side}_dense", mix.dense().unsqueeze(0))

    @property
    def mix_in(self) -> bool:
        return self.ops.mix_in is not None

    @property
    def mix_out(self) -> bool:
        return self.ops.mix_out is not None

    def _blocks(self, side: str) -> Tensor:
        """The un-mix ``Q⁻¹`` of ``side`` as ``(k, b, b)`` blocks (one dense block for a
        non-uniform mixing), transposed here, once per call, so the time loop does not."""
        mix = self.ops.mix_in if side == "in" else self.ops.mix_out
        if mix is None:
            return self.no_mix
        return (mix.blocks if mix.uniform else getattr(self, f"{side}_dense")).transpose(1, 2)

    def tensors(self) -> list[Tensor]:
        """The eight tensors of this matrix for the current call's key (see ``_keyed_linear``).

        A mixed side's scales are folded into its un-mix blocks here, once per call, so that
        the time loop does no key Mul on that side.  Output side: ``Q⁻¹ · diag(s)`` (columns;
        ``s`` is in the gathered order the un-mix reads).  Input side: the step computes
        ``s ⊙ gather(Q⁻¹ x, idx)``, which is ``gather(diag(t) · Q⁻¹ x, idx)`` with ``t`` the
        scales scattered to their source rows, ``t[idx] = s`` (rows).  A wrong key with repeated
        indices leaves some of ``t`` zero: garbage out, never an out-of-bounds read.
        """
        s = self.ops.slots
        in_idx, in_scale = s.perm(self.ops.in_perm_slot), s.scale(self.ops.in_scale_slot)
        out_idx, out_scale = s.perm(self.ops.out_perm_slot), s.scale(self.ops.out_scale_slot)
        in_blocks = self._blocks("in")
        out_blocks = self._blocks("out")
        if self.ops.mix_in is not None:
            k, b = in_blocks.shape[0], in_blocks.shape[1]
            rows = torch.zeros_like(in_scale).scatter(0, in_idx.long().unsqueeze(1), in_scale)
            in_blocks = in_blocks * rows.reshape(k, b, 1)
        if self.ops.mix_out is not None:
            k, b = out_blocks.shape[0], out_blocks.shape[1]
            out_blocks = out_blocks * out_scale.reshape(k, 1, b)
        return [self.weight, self.bias, in_blocks, out_blocks, in_idx, in_scale, out_idx, out_scale]


class _LockedRecurrentLayer(nn.Module):
    """One layer (all directions): fused locked input projection and per-direction recurrences."""

    def __init__(
        self, input_proj: LockedLinear, hh: list[_KeyedMatrix], hr: list[_KeyedMatrix] | None
    ) -> None:
        super().__init__()
        self.input_proj = input_proj
        self.hh = nn.ModuleList(hh)
        self.hr = None if hr is None else nn.ModuleList(hr)


class LockedRNNBase(nn.Module):
    """Locked ``nn.LSTM`` / ``nn.GRU``: same call signature and outputs as the original layer.

    The original's hyper-parameters (``input_size``, ``hidden_size``, ``num_layers``, ``bias``,
    ``batch_first``, ``bidirectional``, ``proj_size``, ``dropout``) are kept as attributes.
    Attributes ``loop_mechanisms`` and ``unrolled_backends`` say how the time loop is recorded
    on each backend (see the module docstring); the sequence length stays dynamic everywhere.
    """

    kind: int

    loop_mechanisms = LOOP_MECHANISMS
    unrolled_backends = UNROLLED_BACKENDS

    def __init__(
        self, module: nn.LSTM | nn.GRU, layers: list[_LockedRecurrentLayer], name: str = ""
    ) -> None:
        super().__init__()
        self.layer_name = name  # for errors: the layer's name in the user's model
        self.input_size = module.input_size
        self.hidden_size = module.hidden_size
        self.num_layers = module.num_layers
        self.bias = module.bias
        self.batch_first = module.batch_first
        self.bidirectional = module.bidirectional
        self.proj_size = getattr(module, "proj_size", 0)
        self.dropout = module.dropout
        self.num_directions = 2 if module.bidirectional else 1
        self.layers = nn.ModuleList(layers)

    def flatten_parameters(self) -> None:
        """A no-op, kept so that model code calling ``self.rnn.flatten_parameters()`` (usual
        before a cuDNN or DataParallel run) still works: the locked layer holds no fused cuDNN
        weight buffer to compact."""

    @property
    def _h_out(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _loop(self):
        if torch.jit.is_tracing():
            return _scripted_direction_loop()
        if torch.compiler.is_compiling():
            return _scan_direction
        return _direction_loop

    @staticmethod
    def _flags(layer: _LockedRecurrentLayer) -> list[bool]:
        """``[hh_mix_in, hh_mix_out, hr_mix_in, hr_mix_out, has_proj]`` (both directions)."""
        hh = layer.hh[0]
        if layer.hr is None:
            return [hh.mix_in, hh.mix_out, False, False, False]
        hr = layer.hr[0]
        return [hh.mix_in, hh.mix_out, hr.mix_in, hr.mix_out, True]

    def _run(
        self, x: Tensor, h0: Tensor | None, c0: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Inputs ``x (T, N, I)``, states ``(D*L, N, *)`` or ``None``; returns the same layout."""
        lstm = self.kind == LSTM_KIND
        n_dir = self.num_directions
        batch = x.shape[1]
        if h0 is None:
            h0 = x.new_zeros(self.num_layers * n_dir, batch, self._h_out)
        if lstm and c0 is None:
            c0 = x.new_zeros(self.num_layers * n_dir, batch, self.hidden_size)
        loop = self._loop()
        h_finals: list[Tensor] = []
        c_finals: list[Tensor] = []
        layer_in = x
        for li, layer in enumerate(self.layers):
            xproj = layer.input_proj(layer_in).chunk(n_dir, -1)
            cs0 = [c0[li * n_dir + d] for d in range(n_dir)] if lstm else [x.new_zeros(0)] * n_dir
            flags = self._flags(layer)
            ys: list[Tensor] = []
            for d in range(n_dir):
                p = layer.hh[d].tensors()
                if layer.hr is not None:
                    p = p + layer.hr[d].tensors()
                xd = (xproj[d] if d == 0 else xproj[d].flip(0)).transpose(1, 2).contiguous()
                h_in = h0[li * n_dir + d].t().contiguous()
                c_in = cs0[d].t().contiguous() if lstm else cs0[d]
                y, h, c = loop(self.kind, xd, h_in, c_in, p, flags)
                y = y.transpose(1, 2)
                ys.append(y if d == 0 else y.flip(0))
                h_finals.append(h.t())
                c_finals.append(c.t() if lstm else c)
            layer_in = ys[0] if n_dir == 1 else torch.cat(ys, -1)
        h_n = torch.stack(h_finals)
        c_n = torch.stack(c_finals) if lstm else None
        return layer_in, h_n, c_n

    def _prepare(self, x: Tensor) -> tuple[Tensor, bool]:
        if not isinstance(x, Tensor):
            kind = type(self).__name__.removeprefix("Locked")
            raise UnsupportedLayerError(
                f"Layer '{self.layer_name}' ({kind}) was called with a {type(x).__name__}, but "
                f"the locked {kind} takes tensors only, not a PackedSequence. Exclude the layer "
                f"with layer_filter (e.g. lambda name, module: name != '{self.layer_name}'): it "
                "then stays unlocked, its weights in plaintext."
            )
        if x.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__}: expected 2-D or 3-D input, got {x.dim()}-D")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, unbatched

    def _finish(self, out: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return out.squeeze(1)
        return out.transpose(0, 1) if self.batch_first else out


class LockedLSTM(LockedRNNBase):
    """Drop-in locked ``nn.LSTM``: ``forward(input, (h0, c0)=None) -> output, (h_n, c_n)``."""

    kind = LSTM_KIND

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        x, unbatched = self._prepare(input)
        h0 = c0 = None
        if hx is not None:
            h0, c0 = hx
            if unbatched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        out, h_n, c_n = self._run(x, h0, c0)
        assert c_n is not None
        if unbatched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return self._finish(out, unbatched), (h_n, c_n)


class LockedGRU(LockedRNNBase):
    """Drop-in locked ``nn.GRU``: ``forward(input, h0=None) -> output, h_n``."""

    kind = GRU_KIND

    def forward(self, input: Tensor, hx: Tensor | None = None):
        x, unbatched = self._prepare(input)
        h0 = None
        if hx is not None:
            h0 = hx.unsqueeze(1) if unbatched else hx
        out, h_n, _ = self._run(x, h0, None)
        if unbatched:
            h_n = h_n.squeeze(1)
        return self._finish(out, unbatched), h_n


# --------------------------------------------------------------------------------------------
# Locker
# --------------------------------------------------------------------------------------------


def _param(module: nn.Module, name: str) -> Tensor | None:
    """The tensor ``name`` of ``module`` (``None`` if absent), read as an attribute so that a
    parametrized weight (``torch.nn.utils.parametrize``) gives its current computed value:
    ``get_parameter`` refuses it, as it is no ``nn.Parameter``."""
    p = getattr(module, name, None)
    return None if p is None else p.detach()


def _stacked(module: nn.Module, name: str, suffixes: list[str]) -> Tensor:
    """The tensors ``name + suffix`` of ``module``, one per direction, stacked on the rows."""
    return torch.cat([getattr(module, f"{name}{s}").detach() for s in suffixes])


@register_locker(nn.LSTM, nn.GRU)
def lock_recurrent(name: str, module: nn.LSTM | nn.GRU, ctx: LockContext) -> LockedRNNBase:
    if not isinstance(module, nn.LSTM | nn.GRU):
        raise UnsupportedLayerError(f"Layer '{name}' is not an LSTM or GRU.")
    lstm = isinstance(module, nn.LSTM)
    proj = getattr(module, "proj_size", 0) if lstm else 0
    n_dir = 2 if module.bidirectional else 1
    suffixes = ["", "_reverse"][:n_dir]
    layers: list[_LockedRecurrentLayer] = []
    for li in range(module.num_layers):
        w_ih = _stacked(module, f"weight_ih_l{li}", suffixes)
        b_ih = _stacked(module, f"bias_ih_l{li}", suffixes) if module.bias else None
        input_proj = lock_linear_weights(f"{name}.weight_ih_l{li}", w_ih, b_ih, ctx)
        hh: list[_KeyedMatrix] = []
        hr: list[_KeyedMatrix] | None = [] if proj else None
        for s in suffixes:
            w_hh = getattr(module, f"weight_hh_l{li}{s}").detach()
            hh.append(
                _KeyedMatrix(
                    f"{name}.weight_hh_l{li}{s}", w_hh, _param(module, f"bias_hh_l{li}{s}"), ctx
                )
            )
            if hr is not None:
                w_hr = getattr(module, f"weight_hr_l{li}{s}").detach()
                hr.append(_KeyedMatrix(f"{name}.weight_hr_l{li}{s}", w_hr, None, ctx))
        layers.append(_LockedRecurrentLayer(input_proj, hh, hr))
    cls = LockedLSTM if lstm else LockedGRU
    return cls(module, layers, name)
