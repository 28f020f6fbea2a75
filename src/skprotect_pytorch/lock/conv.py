"""Lockers for Conv1d/2d and ConvTranspose1d/2d: channel axes keyed, spatial taps untouched.

Grouped and depthwise convs are first regrouped into fewer, larger groups (block-diagonal
weights, exact) so that every group has at least ``min_group_channels`` input channels to mix.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .channel_lock import ChannelOps, lock_bias, lock_matrix, plan_channels
from .context import LockContext
from .registry import register_locker

ConvLike = nn.Conv1d | nn.Conv2d | nn.ConvTranspose1d | nn.ConvTranspose2d


def to_channel_matrix(module: ConvLike, weight: torch.Tensor) -> torch.Tensor:
    """View a conv weight as grouped channel matrices ``(G, O, I, *taps)``."""
    g = module.groups
    if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d):
        in_total, out_g = weight.shape[:2]
        return weight.reshape(g, in_total // g, out_g, *weight.shape[2:]).transpose(1, 2)
    out_total, in_g = weight.shape[:2]
    return weight.reshape(g, out_total // g, in_g, *weight.shape[2:])


def from_channel_matrix(module: ConvLike, a: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_channel_matrix` for the module's current ``groups``."""
    g, o, i = a.shape[:3]
    if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d):
        return a.transpose(1, 2).reshape(g * i, o, *a.shape[3:])
    return a.reshape(g * o, i, *a.shape[3:])


def merge_groups(a: torch.Tensor, factor: int) -> torch.Tensor:
    """Regroup ``(G, O, I, *t)`` into ``(G/f, f·O, f·I, *t)`` block-diagonal matrices."""
    g, o, i = a.shape[:3]
    out = a.new_zeros(g // factor, factor * o, factor * i, *a.shape[3:])
    for k in range(g):
        j, m = divmod(k, factor)
        out[j, m * o : (m + 1) * o, m * i : (m + 1) * i] = a[k]
    return out


def _merge_factor(groups: int, in_per_group: int, wanted: int) -> int:
    for f in range(1, groups + 1):
        if groups % f == 0 and (f * in_per_group >= wanted or f == groups):
            return f
    return groups


class LockedConv(nn.Module):
    """A conv (or transposed conv) with locked weights between key ops on the channel axis."""

    def __init__(self, conv: ConvLike, ops: ChannelOps) -> None:
        super().__init__()
        self.conv = conv
        self.ops = ops
        self.spatial_dims = len(conv.kernel_size)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        axis = x.dim() - self.spatial_dims - 1
        z = self.conv(self.ops.enter(x, axis), *args, **kwargs)
        return self.ops.leave(z, axis)


@register_locker(nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
def lock_conv(name: str, module: ConvLike, ctx: LockContext) -> LockedConv:
    a = to_channel_matrix(module, module.weight.detach())
    factor = _merge_factor(module.groups, a.shape[2], ctx.settings.min_group_channels)
    if factor > 1:
        a = merge_groups(a, factor)
    conv = copy.deepcopy(module)
    conv.groups = module.groups // factor
    plan = plan_channels(ctx, name, conv.groups, a.shape[1], a.shape[2], mix_both=factor > 1)
    weight = from_channel_matrix(conv, lock_matrix(a, plan))
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if module.bias is not None:
        conv.bias = nn.Parameter(lock_bias(module.bias, plan), requires_grad=False)
    return LockedConv(conv, ChannelOps(plan, ctx))
