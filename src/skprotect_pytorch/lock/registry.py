"""Registry mapping each supported layer type to its locker (like peft's layer → adapter map)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Protocol

from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

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


def _module_attr(name: str) -> object:
    return inspect.getattr_static(nn.Module, name, None)


@functools.cache
def _forward_path(base: type[nn.Module]) -> tuple[str, ...]:
    """``forward`` and the methods and properties of ``base`` that it calls, transitively (by
    the attribute names their code uses), less ``nn.Module``'s own: what a subclass must keep
    for the lock to hold."""
    found: list[str] = []
    todo = ["forward"]
    while todo:
        name = todo.pop()
        attr = inspect.getattr_static(base, name, None)
        fn = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
        if name in found or not inspect.isfunction(fn) or attr is _module_attr(name):
            continue
        found.append(name)
        todo.extend(fn.__code__.co_names)
    return tuple(found)


def _overridden(module: nn.Module, base: type[nn.Module]) -> list[str]:
    """The names of :func:`_forward_path` that ``module``'s class replaces."""
    cls = type(module)
    return [
        n
        for n in _forward_path(base)
        if inspect.getattr_static(cls, n, None) is not inspect.getattr_static(base, n, None)
    ]


def find_locker(module: nn.Module) -> Locker | None:
    """The locker for ``module``'s type, or ``None`` if the type is not supported.

    The locker reproduces the base type's own ``forward``; a layer whose call does something
    else is refused with :class:`UnsupportedLayerError` (the caller reports it as skipped):
    a subclass that overrides ``forward`` or a method it calls (a ``Conv2d`` with its own
    ``_conv_forward``), or a layer with forward hooks or pre-hooks, which the locked
    replacement would silently drop.
    """
    for t in type(module).__mro__:
        if t not in _LOCKERS:
            continue
        kind = type(module).__name__
        overridden = _overridden(module, t)
        if overridden:
            methods = ", ".join(f"{n}()" for n in overridden)
            raise UnsupportedLayerError(
                f"{kind} subclasses {t.__name__} but overrides {methods}, which the locked "
                "layer cannot reproduce; the layer is left unlocked. Only the forward() of "
                f"{', '.join(x.__name__ for x in _LOCKERS)} and the methods it calls are "
                "locked: keep them in subclasses to lock them."
            )
        hooks = [
            label
            for label, registered in (
                ("forward hooks", module._forward_hooks),
                ("forward pre-hooks", module._forward_pre_hooks),
            )
            if registered
        ]
        if any(isinstance(h, SpectralNorm) for h in module._forward_pre_hooks.values()):
            raise UnsupportedLayerError(
                f"{kind} uses the legacy torch.nn.utils.spectral_norm, a forward pre-hook that "
                "recomputes its weight, which the locked layer would not run; the layer is left "
                "unlocked. Build it with torch.nn.utils.parametrizations.spectral_norm instead "
                "(locked with its computed weight), or fold the norm into a plain weight with "
                "torch.nn.utils.remove_spectral_norm(module), then protect."
            )
        if hooks:
            raise UnsupportedLayerError(
                f"{kind} has {' and '.join(hooks)}, which the locked layer would not run; the "
                "layer is left unlocked so that they still do. Remove the hooks to lock it."
            )
        return _LOCKERS[t]
    return None
