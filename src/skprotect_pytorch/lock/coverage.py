"""Which weight tensors a lock leaves in plaintext, and why.

The lock keys the weight matrices of the supported layers only. Any other weight tensor of two
or more dimensions (an ``nn.Embedding`` table, a learned positional encoding, a kernel of a
layer that was skipped or excluded) is written to every artifact as it is: a thief reads it
without the key. This lists them so that the protector's result and the audit can say so, and
lists apart the floating-point buffers, which are stored as they are too.  Weights outside the
parameters are listed as well: a quantized layer's packed weight, and the tensors and modules
held in plain attributes (a list instead of an ``nn.ModuleList``), which the lock never sees.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
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


@dataclass(frozen=True)
class WeightAlias:
    """A buffer or plain attribute (``path``, held by module ``owner``) over the storage of
    parameter ``param``: ``register_buffer("w", self.fc.weight.data)``, ``.detach()``, a view."""

    path: str
    owner: str
    param: str
    shape: tuple[int, ...]


def _span(tensor: torch.Tensor) -> tuple[int, int, int] | None:
    """Where ``tensor``'s elements live: its storage and the bytes from its first to past its
    last element (``None`` for a tensor with no plain storage).  Two tensors share values only
    where these bytes overlap: a weight and a buffer cut apart from one tensor do not."""
    if (
        tensor.numel() == 0
        or tensor.is_meta
        or tensor.is_quantized
        or tensor.layout != torch.strided
    ):
        return None
    try:
        storage, start = tensor.untyped_storage().data_ptr(), tensor.data_ptr()
    except RuntimeError:  # a wrapper subclass (``_make_wrapper_subclass``) holds no memory
        return None
    last = sum(
        (size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
    )
    return storage, start, start + (last + 1) * tensor.element_size()


def _unwrapped_name(name: str) -> str:
    """``name`` as the lock's copy of the model has it, whose ``torch.compile`` wrappers are
    stripped (:func:`.preflight.strip_compile_wrappers`): ``a._orig_mod.b`` is ``a.b``."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def weight_aliases(model: nn.Module) -> list[WeightAlias]:
    """The buffers and plain-attribute tensors (two or more dimensions) of ``model`` over some
    of a weight parameter's elements without being it, once per name of a tied weight.
    Found on the user's model, before it is copied: ``copy.deepcopy`` gives each parameter its
    own storage, so that the copy's buffer holds the original values unnoticed while the layer
    is locked."""
    params: dict[int, list[tuple[int, int, str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.dim() >= 2 and (span := _span(param)) is not None:
            params.setdefault(span[0], []).append((span[1], span[2], name))
    if not params:
        return []
    modules = dict(model.named_modules(remove_duplicate=False))
    held = [(name, _owner(name), t) for name, t in model.named_buffers(remove_duplicate=False)]
    names = {id(module): name for name, module in reversed(modules.items())}
    held += [
        (path, names[id(holder)], item)
        for path, item, holder in _plain_attributes(model, {}, modules)
        if isinstance(item, torch.Tensor) and not isinstance(item, nn.Parameter)
    ]
    found = []
    for path, owner, tensor in held:
        span = _span(tensor) if tensor.dim() >= 2 else None
        if span is None:
            continue
        storage, start, end = span
        # a tied weight under each of its names: the alias is a weight if any of them is locked
        over = [
            name for first, past, name in params.get(storage, ()) if first < end and start < past
        ]
        for param in dict.fromkeys(over):
            found.append(
                WeightAlias(*map(_unwrapped_name, (path, owner, param)), tuple(tensor.shape))
            )
    return found


def _aliased_weights(
    aliases: Iterable[WeightAlias], locked_ids: dict[int, str], modules: dict[str, nn.Module]
) -> list[PlaintextWeight]:
    """The ``aliases`` of a locked layer's weight outside every locked layer: every export
    stores them as they are, beside the locked weight, so a thief solves the layer's key."""
    found, named = [], set()
    for alias in aliases:
        layer = _covering(_owner(alias.param), locked_ids, modules)
        if layer is None or alias.path in named:
            continue
        if _covering(alias.owner, locked_ids, modules) is not None:
            continue
        named.add(alias.path)
        reason = (
            f"it holds the original values of '{alias.param}' of locked layer '{layer}' (the "
            "same storage: .data, .detach() or a view), which the locked model keeps as they "
            "are, and a thief can solve the layer's key from the two: read the layer's weight "
            "or output in forward instead, or exclude the layer with layer_filter"
        )
        found.append(PlaintextWeight(alias.path, alias.shape, reason))
    return found


def plaintext_weights(
    model: nn.Module,
    locked: Iterable[str],
    skipped: dict[str, str],
    kept: dict[str, str] | None = None,
    aliases: Iterable[WeightAlias] = (),
) -> list[PlaintextWeight]:
    """The weight tensors (two or more dimensions) of ``model`` outside every ``locked`` layer,
    and those that a locked layer stores as they are.

    ``skipped`` maps the supported layers that were not locked to the reason, which is then
    the tensor's reason; any other owner is a module type the lock does not support. ``kept``
    maps the parameters of locked layers that their lock keeps unchanged (a
    ``MultiheadAttention``'s ``bias_k``) to the reason. A tensor shared by several modules
    (tied weights: an embedding and the output layer) counts when any of them leaves it
    unlocked; a module registered under several names is the same layer under each.
    ``aliases`` (:func:`weight_aliases`, found before ``model`` was copied) adds the buffers
    and attributes over a locked layer's weight.
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
            reason = _unsupported(modules[owner])
        own = _covering(owner, locked_ids, modules)  # the locked layer that keeps it as it is
        reason += _tied(param, params, locked_ids, modules, own)
        found.append(PlaintextWeight(name, tuple(param.shape), reason))
    found += _aliased_weights(aliases, locked_ids, modules)
    named = {w.name for w in found}
    held = [w for w in _held_weights(model, locked_ids, modules) if w.name not in named]
    return found + _packed_weights(model, locked_ids, modules) + held


MODULE_INTERNALS = frozenset(vars(nn.Module()))
"""The attributes every module has (``_parameters``, ``_modules``, the hook dicts, …)."""

_SCALARS = (str, bytes, int, float, complex, type(None))
"""Values no walk of plain attributes looks for: skipped inside containers, unnamed (a
vocabulary of a million strings took 7 s more to lock with a path formatted for each)."""

SCALAR_TYPES = frozenset({*_SCALARS, bool})
"""The exact types of :data:`_SCALARS`' values: a container of them only is skipped whole, in
one pass in C (``SCALAR_TYPES.issuperset(map(type, values))``)."""


def plain_leaves(
    value: object, path: str, seen: set[int] | None = None
) -> Iterator[tuple[str, object]]:
    """Each value inside a plain attribute's value, through lists, tuples, dicts and
    ``functools.partial`` objects, with the expression that reaches it (``blocks[0]``).  A
    ``functools.partial`` is a value too, before its parts: applied to a layer, a function is
    judged with its arguments (:mod:`.preflight`).

    Each container is entered once (``seen`` holds their ``id``): a list that holds itself,
    or any reference cycle through containers, ended in a RecursionError.  Strings and numbers
    in lists and dicts are left out (:data:`_SCALARS`).
    """
    seen = set() if seen is None else seen
    if not isinstance(value, list | tuple | dict | functools.partial):
        yield path, value
        return
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, functools.partial):
        yield path, value
        items = [(".func", value.func)]
        items += [(f".args[{i}]", item) for i, item in enumerate(value.args)]
        items += [(f".keywords[{k!r}]", item) for k, item in value.keywords.items()]
    elif SCALAR_TYPES.issuperset(map(type, value.values() if isinstance(value, dict) else value)):
        items = []
    elif isinstance(value, dict):
        items = [(f"[{k!r}]", v) for k, v in value.items() if not isinstance(v, _SCALARS)]
    else:
        items = [(f"[{i}]", v) for i, v in enumerate(value) if not isinstance(v, _SCALARS)]
    for suffix, item in items:
        yield from plain_leaves(item, path + suffix, seen)


def _held(value: object, path: str) -> Iterator[tuple[str, object]]:
    """The tensors and modules in a plain attribute's value (:func:`plain_leaves`)."""
    for where, item in plain_leaves(value, path):
        if isinstance(item, torch.Tensor | nn.Module):
            yield where, item


def _plain_attributes(
    model: nn.Module, locked_ids: dict[int, str], modules: dict[str, nn.Module]
) -> Iterator[tuple[str, object, nn.Module]]:
    """Each tensor or module held in a plain attribute (``self.blocks = [nn.Linear(…)]``,
    ``self.proj = torch.randn(…)``) of a module outside every locked layer, once, with its path
    and the module holding it: ``forward`` may use it, and every export then stores it."""
    seen: set[int] = set()
    for owner, module in modules.items():
        if _covering(owner, locked_ids, modules) is not None:
            continue
        for attr, value in vars(module).items():
            if attr in MODULE_INTERNALS:
                continue
            for path, item in _held(value, f"{owner}.{attr}" if owner else attr):
                if id(item) not in seen:
                    seen.add(id(item))
                    yield path, item, module


def _registered(model: nn.Module) -> set[int]:
    """The ``id`` of every parameter, buffer and module of ``model``."""
    return {id(t) for t in (*model.parameters(), *model.buffers(), *model.modules())}


def _held_weights(
    model: nn.Module, locked_ids: dict[int, str], modules: dict[str, nn.Module]
) -> list[PlaintextWeight]:
    """The weights (two or more dimensions) that plain attributes hold: those of a module not
    registered as a submodule, which the lock does not see, and a locked layer's original
    tensor (``self.ws = [self.fc.weight]``), which the locked model keeps as it is."""
    registered = _registered(model)
    locked = {
        id(t): layer
        for name, t in model.named_parameters(remove_duplicate=False)
        if (layer := _covering(_owner(name), locked_ids, modules)) is not None
    }
    found = []
    for path, item, holder in _plain_attributes(model, locked_ids, modules):
        if isinstance(item, torch.Tensor) and id(item) in locked and item.dim() >= 2:
            reason = (
                f"a plain attribute of {type(holder).__name__} holds the original of a tensor "
                f"of locked layer '{locked[id(item)]}', which the locked model keeps as it is: "
                "use the layer's output instead, or exclude the layer with layer_filter"
            )
            found.append(PlaintextWeight(path, tuple(item.shape), reason))
        elif isinstance(item, nn.Module) and id(item) not in registered:
            reason = (
                f"{type(item).__name__} held by {type(holder).__name__} in a plain attribute, "
                "not registered as a submodule, so the lock does not see it: hold it in an "
                "nn.ModuleList or nn.ModuleDict, or assign it directly (self.name = module)"
            )
            found += [
                PlaintextWeight(f"{path}.{name}", tuple(t.shape), reason)
                for name, t in (*item.named_parameters(), *item.named_buffers())
                if t.dim() >= 2
            ]
    return found


def _matrix_shapes(value: object) -> Iterator[tuple[int, ...]]:
    """The shapes of the tensors of two or more dimensions in a state-dict value: a tensor, a
    tuple or list of them, or a TorchScript object's state (packed quantized weights)."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2:
            yield tuple(value.shape)
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _matrix_shapes(item)
    elif isinstance(value, torch.ScriptObject) and hasattr(value, "__getstate__"):
        yield from _matrix_shapes(value.__getstate__())


def _packed_weights(
    model: nn.Module, locked_ids: dict[int, str], modules: dict[str, nn.Module]
) -> list[PlaintextWeight]:
    """The weights that modules keep in their state dict outside every parameter and buffer
    (a quantized layer's packed int8 weight), outside every locked layer: no parameter, so
    :func:`plaintext_weights` missed them, yet every export stores them as they are."""
    tensors = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    tensors |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    found = []
    for name, value in model.state_dict(keep_vars=True).items():
        shape = next(_matrix_shapes(value), None)
        owner = _owner(name)
        if name in tensors or shape is None or owner not in modules:
            continue  # a parameter or buffer (listed apart), no matrix, or a renamed entry
        if _covering(owner, locked_ids, modules) is not None:
            continue
        kind = type(modules[owner])
        reason = (
            f"{kind.__module__}.{kind.__qualname__} keeps it outside its parameters (a quantized "
            "layer's packed weight), which the lock does not key: protect the float32 model "
            "instead (quantize_compatibility=True keeps the locked model quantizable)"
        )
        found.append(PlaintextWeight(name, shape, reason))
    return found


def _unsupported(module: nn.Module) -> str:
    """Why the lock leaves ``module``'s own weights as they are."""
    if isinstance(module, torch.jit.ScriptModule):
        return (
            f"a TorchScript module ({module.original_name}, from torch.jit.script or trace) is "
            "compiled code the lock cannot change: keep it an eager nn.Module (the protector "
            "exports TorchScript itself)"
        )
    return f"{type(module).__name__} is not a layer type the lock supports"


def _tied(
    param: nn.Parameter,
    params: dict[str, nn.Parameter],
    locked_ids: dict[int, str],
    modules: dict[str, nn.Module],
    own: str | None = None,
) -> str:
    """What a plaintext tensor tied to a locked layer's weight (an embedding and the output
    layer) gives away: that layer's stored weight beside its plaintext original tells its key.
    ``own``: the locked layer that keeps ``param`` as it is (a ``MultiheadAttention``'s
    ``bias_k``), which stores no locked copy of it."""
    layers = {
        layer
        for name, tensor in params.items()
        if tensor is param and (layer := _covering(_owner(name), locked_ids, modules))
    } - {own}
    if not layers:
        return ""
    return (
        f"; it is also the weight of locked layer {', '.join(map(repr, sorted(layers)))}, whose "
        "key a thief can solve from the two: untie the weights, or exclude that layer with "
        "layer_filter"
    )


def shared_locked_weights(model: nn.Module, locked: Iterable[str]) -> list[tuple[str, ...]]:
    """Groups of ``locked`` layers whose weights are one tensor (tied weights) or equal ones (a
    tie undone by cloning before protecting): each layer is locked as its own copy of the same
    matrix, and a lock that leaves a keyed side of it unmixed with sign-only scales
    (``balanced`` with ``quantize_compatibility``) lets a thief match the copies' rows on that
    side and link their keys (docs/security.md, "Tied locked weights"). A weight of one value
    throughout (zero- or constant-initialised) is no such copy: its rows are all alike, so no
    match links anything, and the weight tells a thief nothing he did not know."""
    modules = dict(model.named_modules(remove_duplicate=False))
    groups: dict[tuple, list[tuple[torch.Tensor, list[str]]]] = {}
    for name in locked:
        weight = getattr(modules[name], "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        flat = weight.detach().reshape(-1)
        if bool((flat == flat[0]).all()):
            continue
        # shape and first entries first: torch.equal on every pair of a deep model's
        # same-shape layers would compare each weight in full many times over
        head = tuple(flat[:8].tolist())
        candidates = groups.setdefault((tuple(weight.shape), weight.dtype, head), [])
        for tensor, names in candidates:
            if tensor is weight or torch.equal(tensor.detach(), weight.detach()):
                names.append(name)
                break
        else:
            candidates.append((weight, [name]))
    return [tuple(names) for same in groups.values() for _, names in same if len(names) > 1]


def plaintext_buffers(
    model: nn.Module, locked: Iterable[str], aliases: Iterable[WeightAlias] = ()
) -> list[PlaintextWeight]:
    """The floating-point buffers (two or more dimensions) of ``model`` outside every ``locked``
    layer: the exporters write them into every artifact as they are.

    Most are public by design (a causal mask, a sinusoidal position table), but a buffer can
    hold trained values too (a frozen projection registered with ``register_buffer``), which a
    thief then reads without the key. Listed apart from :func:`plaintext_weights`, whose
    entries all fail the audit's gate 4, so that the user can tell which is which.  Tensors
    held in plain attributes (:func:`_plain_attributes`) are listed here too; those over a
    locked layer's weight (``aliases``) are plaintext weights instead.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    locked_ids = {id(modules[name]): name for name in locked}
    weights = {w.name for w in _aliased_weights(aliases, locked_ids, modules)}
    found, seen = [], set()
    for name, buffer in model.named_buffers(remove_duplicate=False):
        if buffer.dim() < 2 or not buffer.is_floating_point() or id(buffer) in seen:
            continue
        if name in weights:
            continue
        owner = _owner(name)
        if _covering(owner, locked_ids, modules) is not None:
            continue
        seen.add(id(buffer))
        kind = type(modules[owner]).__name__
        reason = f"buffer of {kind}, not a parameter: the lock keys parameters only"
        found.append(PlaintextWeight(name, tuple(buffer.shape), reason))
    registered = _registered(model)
    for path, item, holder in _plain_attributes(model, locked_ids, modules):
        if (
            isinstance(item, torch.Tensor)
            and id(item) not in registered
            and item.dim() >= 2
            and item.is_floating_point()
            and path not in weights
        ):
            reason = (
                f"plain tensor attribute of {type(holder).__name__}, neither a parameter nor a "
                "buffer: the lock keys parameters only, and the exports store it as a constant"
            )
            found.append(PlaintextWeight(path, tuple(item.shape), reason))
    return found
