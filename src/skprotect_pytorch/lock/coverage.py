"""Which weight tensors a lock leaves in plaintext, and why.

The lock keys the weight matrices of the supported layers only. Any other weight tensor of two
or more dimensions (an ``nn.Embedding`` table, a learned positional encoding, a kernel of a
layer that was skipped or excluded) is written to every artifact as it is: a thief reads it
without the key. This lists them so that the protector's result and the audit can say so, and
lists apart the floating-point buffers, which are stored as they are too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class PlaintextWeight:
    """A weight tensor stored unlocked: its parameter name, shape and the reason."""

    name: str
    shape: tuple[int, ...]
    reason: str


def _owner(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def _ancestors(owner: str) -> list[str]:
    """``owner`` and every module name above it, the root ``""`` last."""
    parts = owner.split(".") if owner else []
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _covering(owner: str, layers: dict[int, str], modules: dict[str, nn.Module]) -> str | None:
    """The name of the layer among ``layers`` (module id → name) that is ``owner`` or holds it.

    Compared by module identity, not by name: a module registered under two names (``self.b =
    self.a``) is one layer, named once by ``named_modules()``, reached through either path.
    """
    for name in _ancestors(owner):
        layer = layers.get(id(modules[name]))
        if layer is not None:
            return layer
    return None


def plaintext_weights(
    model: nn.Module,
    locked: Iterable[str],
    skipped: dict[str, str],
    kept: dict[str, str] | None = None,
) -> list[PlaintextWeight]:
    """The weight tensors (two or more dimensions) of ``model`` outside every ``locked`` layer,
    and those that a locked layer stores as they are.

    ``skipped`` maps the supported layers that were not locked to the reason, which is then
    the tensor's reason; any other owner is a module type the lock does not support. ``kept``
    maps the parameters of locked layers that their lock keeps unchanged (a
    ``MultiheadAttention``'s ``bias_k``) to the reason. A tensor shared by several modules
    (tied weights: an embedding and the output layer) counts when any of them leaves it
    unlocked; a module registered under several names is the same layer under each.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    locked_ids = {id(modules[name]): name for name in locked}
    skipped_ids = {id(modules[name]): name for name in skipped}
    kept_ids = {id(params[name]): reason for name, reason in (kept or {}).items()}
    found, seen = [], set()
    for name, param in params.items():
        if param.dim() < 2 or id(param) in seen:
            continue
        owner = _owner(name)
        if id(param) not in kept_ids and _covering(owner, locked_ids, modules) is not None:
            continue
        seen.add(id(param))
        layer = _covering(owner, skipped_ids, modules)
        if id(param) in kept_ids:
            reason = kept_ids[id(param)]
        elif layer is not None:
            reason = f"layer '{layer}' was not locked: {skipped[layer]}"
        else:
            reason = f"{type(modules[owner]).__name__} is not a layer type the lock supports"
        reason += _tied(param, params, locked_ids, modules)
        found.append(PlaintextWeight(name, tuple(param.shape), reason))
    return found


def _tied(
    param: nn.Parameter,
    params: dict[str, nn.Parameter],
    locked_ids: dict[int, str],
    modules: dict[str, nn.Module],
) -> str:
    """What a plaintext tensor tied to a locked layer's weight (an embedding and the output
    layer) gives away: that layer's stored weight beside its plaintext original tells its key."""
    layers = {
        layer
        for name, tensor in params.items()
        if tensor is param and (layer := _covering(_owner(name), locked_ids, modules))
    }
    if not layers:
        return ""
    return (
        f"; it is also the weight of locked layer {', '.join(map(repr, sorted(layers)))}, whose "
        "key a thief can solve from the two: untie the weights, or exclude that layer with "
        "layer_filter"
    )


def plaintext_buffers(model: nn.Module, locked: Iterable[str]) -> list[PlaintextWeight]:
    """The floating-point buffers (two or more dimensions) of ``model`` outside every ``locked``
    layer: the exporters write them into every artifact as they are.

    Most are public by design (a causal mask, a sinusoidal position table), but a buffer can
    hold trained values too (a frozen projection registered with ``register_buffer``), which a
    thief then reads without the key. Listed apart from :func:`plaintext_weights`, whose
    entries all fail the audit's gate 4, so that the user can tell which is which.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    locked_ids = {id(modules[name]): name for name in locked}
    found, seen = [], set()
    for name, buffer in model.named_buffers(remove_duplicate=False):
        if buffer.dim() < 2 or not buffer.is_floating_point() or id(buffer) in seen:
            continue
        owner = _owner(name)
        if _covering(owner, locked_ids, modules) is not None:
            continue
        seen.add(id(buffer))
        kind = type(modules[owner]).__name__
        reason = f"buffer of {kind}, not a parameter: the lock keys parameters only"
        found.append(PlaintextWeight(name, tuple(buffer.shape), reason))
    return found
