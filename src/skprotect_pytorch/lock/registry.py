"""Registry mapping each supported layer type to its locker (like peft's layer → adapter map)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from ..errors import UnsupportedLayerError
from .context import LockContext


class Locker(Protocol):
    """Builds the locked replacement of one layer; the key parts go into ``ctx.layout``."""

    def __call__(self, name: str, module: nn.Module, ctx: LockContext) -> nn.Module: ...


_LOCKERS: dict[type[nn.Module], Locker] = {}


def register_locker(*layer_types: type[nn.Module]) -> Callable[[Locker], Locker]:
    """Decorator: register ``fn`` as the locker of ``layer_types``."""

    def wrap(fn: Locker) -> Locker:
        for t in layer_types:
            _LOCKERS[t] = fn
        return fn

    return wrap


def supported_layer_types() -> tuple[type[nn.Module], ...]:
    return tuple(_LOCKERS)


def find_locker(module: nn.Module) -> Locker | None:
    """The locker for ``module``'s type, or ``None`` if the type is not supported.

    Subclasses of a supported type are accepted only when they keep its ``forward``: a subclass
    with its own forward may compute something the locker cannot reproduce.
    """
    for t in type(module).__mro__:
        if t in _LOCKERS:
            if type(module).forward is not t.forward:
                raise UnsupportedLayerError(
                    f"{type(module).__name__} subclasses {t.__name__} but overrides forward(); "
                    f"only {', '.join(x.__name__ for x in _LOCKERS)} with their own forward are "
                    "supported. Exclude it with layer_filter."
                )
            return _LOCKERS[t]
    return None
