"""Which weight tensors a lock leaves in plaintext, and why.

The lock keys the weight matrices of the supported layers only. Any other weight tensor of two
or more dimensions (an ``nn.Embedding`` table, a learned positional encoding, a kernel of a
layer that was skipped or excluded) is written to every artifact as it is: a thief reads it
without the key. This lists them so that the protector's result and the audit can say so.
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


def _covering(owner: str, names: Iterable[str]) -> str | None:
    """The first of ``names`` that is ``owner`` or one of its ancestors."""
    return next((n for n in names if n == "" or owner == n or owner.startswith(n + ".")), None)


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
    unlocked.
    """
    locked, kept = list(locked), kept or {}
    modules = dict(model.named_modules(remove_duplicate=False))
    found, seen = [], set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.dim() < 2 or id(param) in seen:
            continue
        if name not in kept and _covering(_owner(name), locked) is not None:
            continue
        seen.add(id(param))
        layer = _covering(_owner(name), skipped)
        if name in kept:
            reason = kept[name]
        elif layer is not None:
            reason = f"layer '{layer}' was not locked: {skipped[layer]}"
        else:
            kind = type(modules[_owner(name)]).__name__
            reason = f"{kind} is not a layer type the lock supports"
        found.append(PlaintextWeight(name, tuple(param.shape), reason))
    return found
