"""Lockers for Conv1d/2d and ConvTranspose1d/2d: channel axes keyed.

Grouped and depthwise convs are first regrouped into fewer, larger groups (block-diagonal
weights, exact) so that every group has at least ``min_group_channels`` input channels to mix.
A one-group conv with very few input channels (a stem) has its spatial taps unfolded into
channels first (:func:`unfold_taps`), so that the mixing and the key reach the taps too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .channel_lock import ChannelOps, lock_bias, lock_matrix, plan_channels
from .context import LockContext
from .registry import register_locker

ConvLike = nn.Conv1d | nn.Conv2d | nn.ConvTranspose1d | nn.ConvTranspose2d
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def _base_type(module: ConvLike) -> type[ConvLike]:
    """``module``'s torch conv type.  New convs are built of it, never of the module's own
    class: a subclass may have another ``__init__``, and a parametrized layer's class holds its
    weight as a property that cannot be assigned."""
    return next(t for t in type(module).__mro__ if t in _CONV_TYPES)


def _plain_conv(module: ConvLike, groups: int) -> ConvLike:
    """A conv like ``module`` but with ``groups``; weight and bias are still to be assigned."""
    base = _base_type(module)
    kwargs = {"output_padding": module.output_padding} if module.transposed else {}
    return base(
        module.in_channels, module.out_channels, module.kernel_size, module.stride,
        module.padding, dilation=module.dilation, groups=groups, bias=module.bias is not None,
        padding_mode=module.padding_mode, device="meta", dtype=module.weight.dtype, **kwargs,
    )  # fmt: skip


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


def unfold_taps(module: nn.Conv1d | nn.Conv2d) -> tuple[nn.Module, nn.Module]:
    """Split a one-group conv into a public tap unfold and a 1×1 conv, exactly.

    The unfold is a grouped conv with one-hot kernels (the conv's stride, padding, dilation and
    padding mode) whose output channel ``c·K + t`` is tap ``t`` of input channel ``c``; the
    1×1 conv holds the weight reshaped to ``(O, C·K)``, the order of ``weight.reshape``.
    """
    c, o, kernel = module.in_channels, module.out_channels, module.kernel_size
    taps, ones = math.prod(kernel), (1,) * len(kernel)
    w = module.weight.detach()
    base = _base_type(module)
    unfold = base(
        c, c * taps, kernel, module.stride, module.padding, module.dilation, groups=c,
        bias=False, padding_mode=module.padding_mode, device="meta", dtype=w.dtype,
    )  # fmt: skip
    one_hot = torch.eye(taps, dtype=w.dtype, device=w.device).reshape(taps, 1, *kernel)
    unfold.weight = nn.Parameter(one_hot.repeat(c, 1, *ones), requires_grad=False)
    point = base(c * taps, o, 1, bias=module.bias is not None, device="meta", dtype=w.dtype)
    point.weight = nn.Parameter(w.reshape(o, c * taps, *ones).clone(), requires_grad=False)
    if module.bias is not None:
        point.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return unfold, point


def _unfolds(module: ConvLike, ctx: LockContext) -> bool:
    """Whether ``module`` is a thin one-group conv whose taps the lock unfolds into channels."""
    taps, settings = math.prod(module.kernel_size), ctx.settings
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d)
        and module.groups == 1
        and taps > 1
        and module.in_channels < settings.min_group_channels
        and module.in_channels * taps <= settings.unfold_taps_max
    )


class _Copied:
    """A read-only copy of one of the replaced layer's hyper-parameters, for model code that
    reads them (``self.conv.out_channels``); the locked layer's own math does not use them."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: LockedConv | None, owner: type | None = None):
        return self if obj is None else obj.source_attributes[self.name]

    def __set__(self, obj: LockedConv, value: object) -> None:
        raise AttributeError(f"{self.name} of a locked conv is a read-only copy of the original's")


class LockedConv(nn.Module):
    """A conv (or transposed conv) with locked weights between key ops on the channel axis;
    ``unfold`` (public, or ``None``) first turns the input's taps into channels.

    It keeps the original layer's public hyper-parameters (``in_channels`` … ``padding_mode``)
    as read-only copies.  ``weight`` and ``bias`` are the *locked* tensors: their dtype and
    device are the original's, their values (and, after an unfold, the weight's shape) are not.
    """

    in_channels = _Copied()
    out_channels = _Copied()
    kernel_size = _Copied()
    stride = _Copied()
    padding = _Copied()
    dilation = _Copied()
    groups = _Copied()
    padding_mode = _Copied()
    output_padding = _Copied()
    transposed = _Copied()

    def __init__(
        self, source: ConvLike, conv: ConvLike, ops: ChannelOps, unfold: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.source_attributes = {n: getattr(source, n) for n in _COPIED}
        self.unfold = unfold
        self.conv = conv
        self.ops = ops
        self.spatial_dims = len(conv.kernel_size)
        self.crops_output = _output_padding_past_stride(conv)

    @property
    def weight(self) -> torch.Tensor:
        return self.conv.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.conv.bias

    def forward(self, input: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # ``input``, as torch's convs name it: model code may pass it by keyword.
        x = input
        if self.unfold is not None:
            x = self.unfold(x)
        axis = x.dim() - self.spatial_dims - 1
        z = self.ops.enter(x, axis)
        if self.crops_output and not args and not kwargs:
            z = self._transposed_then_cropped(z, axis)
        else:
            z = self.conv(z, *args, **kwargs)
        return self.ops.leave(z, axis)

    def _transposed_then_cropped(self, z: torch.Tensor, axis: int) -> torch.Tensor:
        """The transposed conv as its full output (no padding, no output padding, no bias),
        zero-extended at the end where ``output_padding`` reaches past it, then cropped by
        ``padding`` and biased: what torch computes, exactly.

        torch allows an ``output_padding`` up to ``max(stride, dilation) - 1``, but
        onnxruntime's ConvTranspose refuses one of ``stride`` or more ("output_padding may be
        too large for stride"), so a protected ONNX file of such a layer could not run.
        """
        conv = self.conv
        transpose = F.conv_transpose1d if self.spatial_dims == 1 else F.conv_transpose2d
        y = transpose(z, conv.weight, None, conv.stride, 0, 0, conv.groups, conv.dilation)
        extra = [max(0, op - p) for p, op in zip(conv.padding, conv.output_padding, strict=True)]
        if any(extra):
            y = F.pad(y, [v for e in reversed(extra) for v in (0, e)])
        crop = [slice(None)] * (axis + 1)
        for p, op, e in zip(conv.padding, conv.output_padding, extra, strict=True):
            end = e + p - op  # >= 0: what the end loses, after the zero extension
            crop.append(slice(p, -end if end else None))
        y = y[tuple(crop)]
        if conv.bias is not None:
            y = y + conv.bias.view(-1, *([1] * self.spatial_dims))
        return y


def _output_padding_past_stride(conv: ConvLike) -> bool:
    """Whether a transposed conv has an ``output_padding`` of its ``stride`` or more on some
    axis (torch allows it when the dilation is larger), which onnxruntime cannot run."""
    return bool(conv.transposed) and any(
        op >= s for op, s in zip(conv.output_padding, conv.stride, strict=True)
    )


_COPIED = tuple(n for n, v in vars(LockedConv).items() if isinstance(v, _Copied))


@register_locker(nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
def lock_conv(name: str, module: ConvLike, ctx: LockContext) -> LockedConv:
    source, unfold = module, None
    if _unfolds(module, ctx):
        unfold, module = unfold_taps(module)
    a = to_channel_matrix(module, module.weight.detach())
    factor = _merge_factor(module.groups, a.shape[2], ctx.settings.min_group_channels)
    if factor > 1:
        a = merge_groups(a, factor)
    conv = _plain_conv(module, module.groups // factor)
    plan = plan_channels(ctx, name, conv.groups, a.shape[1], a.shape[2], mix_both=factor > 1)
    weight = from_channel_matrix(conv, lock_matrix(a, plan))
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if module.bias is not None:
        conv.bias = nn.Parameter(lock_bias(module.bias, plan), requires_grad=False)
    return LockedConv(source, conv, ChannelOps(plan, ctx), unfold)
