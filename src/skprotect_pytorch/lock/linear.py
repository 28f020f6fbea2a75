"""Locker for ``nn.Linear``: one channel matrix, activations keyed on the last axis."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .channel_lock import ChannelOps, lock_bias, lock_matrix, plan_channels
from .context import LockContext
from .registry import register_locker


class LockedLinear(nn.Module):
    """``y = W x + b`` computed as un-key(W' · key(x) + b') with locked ``W'``, ``b'``.

    The key ops and the un-mix run channel-first, on ``(features, rows)`` (DESIGN.md §3).  By
    default the GEMM does too, ``W' @ xᵀ``, so one transpose goes in and one comes out
    (onnxruntime ran ``x W'ᵀ`` as a ``transA`` Gemm plus a Transpose per layer).  With
    ``quantizable`` the weight stays the GEMM's second operand, ``x W'ᵀ``, because onnxruntime's
    quantizers only take a Gemm/MatMul weight there (the first operand stays float).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        ops: ChannelOps,
        *,
        quantizable: bool = False,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.ops = ops
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.quantizable = quantizable

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # ``input``, as nn.Linear names it: model code may pass it by keyword.
        x = input
        lead = x.shape[:-1]
        # Features first, then flatten: (N, T, C) -> Transpose -> (C, N, T) -> Reshape, so the
        # output's inverse Transpose meets the next layer's across an elementwise op (ReLU,
        # GELU) and onnxruntime's transpose optimizer cancels both. Axes are spelled positive:
        # the legacy ONNX exporter writes a negative one into Transpose's perm as it is.
        last = x.dim() - 1
        flat = x.t() if last == 1 else x.movedim(last, 0).reshape(self.in_features, -1)
        rows = self.ops.enter(flat, 0)
        if self.quantizable:
            z = F.linear(rows.t(), self.weight, self.bias).t()
        elif self.bias is None:
            z = self.weight @ rows
        else:
            z = torch.addmm(self.bias.unsqueeze(1), self.weight, rows)
        y = self.ops.leave(z, 0)
        return y.t() if last == 1 else y.reshape(self.out_features, *lead).movedim(0, last)


def lock_linear_weights(
    name: str, weight: torch.Tensor, bias: torch.Tensor | None, ctx: LockContext
) -> LockedLinear:
    """Lock a raw ``(out, in)`` weight and bias; reused by lockers of layers built on linears."""
    plan = plan_channels(ctx, name, 1, weight.shape[0], weight.shape[1])
    locked_w = lock_matrix(weight.unsqueeze(0), plan)[0]
    return LockedLinear(
        locked_w,
        lock_bias(bias, plan),
        ChannelOps(plan, ctx),
        quantizable=ctx.settings.quantize_compatibility,
    )


@register_locker(nn.Linear)
def lock_linear(name: str, module: nn.Linear, ctx: LockContext) -> LockedLinear:
    return lock_linear_weights(name, module.weight, module.bias, ctx)
