"""Locker for ``nn.Linear``: one channel matrix, activations keyed on the last axis."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .channel_lock import ChannelOps, lock_bias, lock_matrix, plan_channels
from .context import LockContext
from .registry import register_locker


class LockedLinear(nn.Module):
    """``y = W x + b`` computed as un-key(W' · key(x) + b') with locked ``W'``, ``b'``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ops: ChannelOps) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.ops = ops
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(self.ops.enter(x, -1), self.weight, self.bias)
        return self.ops.leave(z, -1)


def lock_linear_weights(
    name: str, weight: torch.Tensor, bias: torch.Tensor | None, ctx: LockContext
) -> LockedLinear:
    """Lock a raw ``(out, in)`` weight and bias; reused by lockers of layers built on linears."""
    plan = plan_channels(ctx, name, 1, weight.shape[0], weight.shape[1])
    locked_w = lock_matrix(weight.unsqueeze(0), plan)[0]
    return LockedLinear(locked_w, lock_bias(bias, plan), ChannelOps(plan, ctx))


@register_locker(nn.Linear)
def lock_linear(name: str, module: nn.Linear, ctx: LockContext) -> LockedLinear:
    return lock_linear_weights(name, module.weight, module.bias, ctx)
