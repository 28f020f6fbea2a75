"""Lock a model: swap every selected supported layer for its keyed replacement.

>>> locked = lock_model(model, layer_filter=lambda name, m: True, secret_rng=rng)
>>> y = locked.keyed(x, torch.from_numpy(locked.layout.static_key()))
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..errors import InvalidArgumentError, UnsupportedLayerError
from . import attention, conv, linear, recurrent  # noqa: F401  (registers the lockers)
from .batchnorm import fold_batchnorms
from .context import KeySlots, LockContext, LockSettings
from .coverage import (
    PlaintextWeight,
    WeightAlias,
    plain_leaves,
    plaintext_buffers,
    plaintext_weights,
    shared_locked_weights,
    weight_aliases,
)
from .key_layout import KeyLayout
from .keyed_model import KeyedModel
from .preflight import (
    REBOUND_CALLS,
    check_lockable,
    copy_model,
    sharing_memo,
    strip_compile_wrappers,
)
from .registry import find_locker, supported_layer_types

LayerFilter = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class LayerDecision:
    """What happened to one supported layer, and why."""

    name: str
    layer_type: str
    locked: bool
    reason: str = ""


@dataclass
class LockedModel:
    """A locked copy of a model, its key layout, and the per-layer decisions."""

    keyed: KeyedModel
    layout: KeyLayout
    layers: list[LayerDecision] = field(default_factory=list)
    folded_batchnorms: list[tuple[str, str]] = field(default_factory=list)
    plaintext_buffers: list[PlaintextWeight] = field(default_factory=list)
    """Floating-point buffers of two or more dimensions outside every locked layer, stored as
    they are: public tables (masks, position encodings) or trained values (:mod:`.coverage`)."""
    shared_weights: list[tuple[str, ...]] = field(default_factory=list)
    """Groups of locked layers that store copies of one weight (tied or equal weights,
    :func:`.coverage.shared_locked_weights`)."""

    @property
    def plaintext(self) -> list[PlaintextWeight]:
        """Weight tensors outside every locked layer, stored as they are (:mod:`.coverage`),
        and the matrices that ``forward`` reads outside the model, which the first checked run
        adds (:func:`.outside.run_keyed_checked`)."""
        return self.keyed.plaintext

    @property
    def locked_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.locked]

    @property
    def skipped_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if not d.locked]


def once_per_layer(layer_filter: LayerFilter) -> LayerFilter:
    """``layer_filter`` called once per layer name, its answer remembered: the pre-flight
    check and the lock ask about the same layers, and the protector locks once per format
    group, while the user's filter may count, log or be slow."""
    seen: dict[str, bool] = {}

    def remembered(name: str, module: nn.Module) -> bool:
        if name not in seen:
            seen[name] = _answer(layer_filter(name, module), name)
        return seen[name]

    return remembered


def _answer(keep: object, name: str) -> bool:
    """``layer_filter``'s answer for layer ``name`` as a bool: NumPy's bool too (a filter such
    as ``np.prod(module.weight.shape) > 4096`` returns one, which was refused as "returned
    bool"); anything else (a tensor, a number, None) is refused, its type named in full."""
    if isinstance(keep, bool | np.bool_):
        return bool(keep)
    kind = type(keep)
    raise InvalidArgumentError(
        f"layer_filter must return a bool, but returned {kind.__module__}.{kind.__qualname__} "
        f"({keep!r:.60}) for layer '{name}'. Return True to lock the layer, False to leave it "
        "unlocked (e.g. bool(...) around a tensor comparison)."
    )


def _rebound_calls(root: nn.Module, replacements: dict[int, nn.Module]) -> dict[int, object]:
    """A replaced layer's ``forward`` or ``__call__`` kept as an attribute (``self.first =
    self.a.forward``, also in a list, dict or ``functools.partial``), bound to its locked layer
    instead: a deep copy would bind the original class's method to the locked layer, which
    computes garbage with its locked weights (8.6 off for one in a list).  Other methods of a
    replaced layer are refused up front (:func:`.preflight.check_lockable`)."""
    found: dict[int, object] = {}
    for module in root.modules():
        for _, value in plain_leaves(list(vars(module).values()), ""):
            if (
                isinstance(value, types.MethodType)
                and id(value.__self__) in replacements
                and value.__name__ in REBOUND_CALLS
            ):
                found[id(value)] = getattr(replacements[id(value.__self__)], value.__name__)
    return found


def _swap(root: nn.Module, replacements: dict[int, nn.Module]) -> nn.Module:
    """``root`` with every layer in ``replacements`` (by ``id``) replaced by its locked module
    wherever the model refers to it: as a registered child, and in plain attributes too (a
    list ``self.order = [self.a, self.b]`` that ``forward`` iterates, a dict, a bound call).

    Replacing the registered children alone left such a model calling the unlocked layers,
    every key giving the original's outputs.  A deep copy whose memo maps each layer to its
    replacement reaches every reference that ``copy.deepcopy`` follows; tensors and plain data
    (:func:`.preflight.sharing_memo`) are shared, not copied.
    """
    memo = sharing_memo(root)
    memo.update(replacements)
    memo.update(_rebound_calls(root, replacements))
    return copy.deepcopy(root, memo)


def _unlocked_summary(decisions: list[LayerDecision], shown: int = 3) -> str:
    """Each reason the layers were not locked, with the first ``shown`` layers it applies to:
    naming each of a model's 2,000 layers excluded by ``layer_filter`` made an 81,000-character
    error."""
    by_reason: dict[str, list[str]] = {}
    for d in decisions:
        by_reason.setdefault(d.reason, []).append(d.name)
    parts = []
    for reason, names in by_reason.items():
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        parts.append(f"{', '.join(names[:shown])}{more}: {reason}")
    return "; ".join(parts) or "no supported layer"


def _unlock_parts_of_unlocked(
    root: nn.Module,
    decisions: list[LayerDecision],
    replacements: dict[int, nn.Module],
    kept: dict[str, str],
) -> list[LayerDecision]:
    """``decisions`` with each locked layer that is also a part of a supported layer left
    unlocked (``self.head = self.attn.out_proj`` with ``attn`` excluded or skipped), and its
    replacement dropped: the copy swaps a layer wherever the model refers to it, so the
    unlocked ``MultiheadAttention`` would compute with the locked ``out_proj`` weights (32
    relative error with the right key).  Where the owner is locked too, the part is locked
    twice, once in each, as a weight shared by two locked layers."""
    modules = dict(root.named_modules(remove_duplicate=False))
    parts = {
        id(sub): f"{d.name}.{part}" if d.name else part
        for d in decisions
        if not d.locked
        for part, sub in modules[d.name].named_modules()
        if part
    }
    result = []
    for d in decisions:
        module = modules[d.name]
        if d.locked and id(module) in parts:
            del replacements[id(module)]
            for attr in [k for k in kept if k.startswith(f"{d.name}.")]:
                del kept[attr]
            owner = parts[id(module)].rsplit(".", 1)[0]
            d = LayerDecision(
                d.name,
                d.layer_type,
                False,
                f"it is also '{parts[id(module)]}', a part of layer '{owner}', which is not "
                "locked: locking it would change that layer's outputs. Lock "
                f"'{owner}' too, or give '{d.name}' a layer of its own.",
            )
        result.append(d)
    return result


def lock_model(
    model: nn.Module,
    *,
    layer_filter: LayerFilter,
    secret_rng: np.random.Generator,
    settings: LockSettings | None = None,
    public_seed: str = "",
    in_place: bool = False,
    find_shared: bool = False,
    aliases: list[WeightAlias] | None = None,
) -> LockedModel:
    """Return a locked deep copy of ``model``; the user's model object is never modified.

    ``find_shared``: list the locked layers that store copies of one weight
    (:attr:`LockedModel.shared_weights`); a caller that will not use them skips the search.

    ``in_place``: lock ``model`` itself, not a copy, for a caller that passes its own copy and
    needs it no longer (the protector's reference copy, at its last lock): the weights are
    then not held twice more while locking, which set the peak memory of a protection.

    ``aliases``: the buffers over a weight's storage (:func:`.coverage.weight_aliases`) found
    on the user's model when ``model`` is a copy of it, whose copying undid them; found on
    ``model`` itself when ``None``.

    A model the lock cannot take (not float32, pruned, legacy weight norm) is refused first
    with :class:`InvalidArgumentError` (:mod:`.preflight`).  ``torch.compile`` wrappers are
    dropped from the copy: its layers are named and locked as in the uncompiled model.
    """
    layer_filter = once_per_layer(layer_filter)
    check_lockable(model, layer_filter)
    if aliases is None:  # before the copy gives each weight its own storage
        aliases = weight_aliases(model)
    work = strip_compile_wrappers(model if in_place else copy_model(model))  # modes kept
    folded_away: list[tuple[nn.Module, nn.Module]] = []  # (folded BatchNorm, Identity)
    folded = fold_batchnorms(work, folded_away)  # only eval-mode BatchNorms are folded
    slots = KeySlots()
    ctx = LockContext(
        layout=KeyLayout(),
        secret_rng=secret_rng,
        slots=slots,
        settings=settings or LockSettings(),
        public_seed=public_seed,
    )
    decisions: list[LayerDecision] = []
    replacements: dict[int, nn.Module] = {}
    kept: dict[str, str] = {}  # parameters that a locked layer stores as they are
    handled: list[str] = []
    layers: dict[int, str] = {}  # id of each supported layer decided → its name
    for name, module in work.named_modules(remove_duplicate=False):
        if any(prefix == "" or name.startswith(prefix + ".") for prefix in handled):
            continue  # parts of a supported layer (e.g. MultiheadAttention.out_proj)
        if id(module) in layers:
            handled.append(name)  # the same layer under another name: decided once
            continue
        kind = type(module).__name__
        try:
            locker = find_locker(module)
        except UnsupportedLayerError as err:
            decisions.append(LayerDecision(name, kind, False, str(err)))
            handled.append(name)
            layers[id(module)] = name
            continue
        if locker is None:
            continue
        handled.append(name)
        layers[id(module)] = name
        if not layer_filter(name, module):
            decisions.append(LayerDecision(name, kind, False, "excluded by layer_filter"))
            continue
        try:
            # A new module starts in training mode: keep the mode of the layer it replaces.
            replacements[id(module)] = locker(name, module, ctx).train(module.training)
        except UnsupportedLayerError as err:
            decisions.append(LayerDecision(name, kind, False, str(err)))
            continue
        for attr, reason in getattr(replacements[id(module)], "kept_in_plaintext", {}).items():
            kept[f"{name}.{attr}" if name else attr] = reason
        decisions.append(LayerDecision(name, kind, True))
    decisions = _unlock_parts_of_unlocked(work, decisions, replacements, kept)
    if not replacements:
        names = ", ".join(t.__name__ for t in supported_layer_types())
        raise UnsupportedLayerError(
            f"No layer of the model was locked ({_unlocked_summary(decisions)}). Supported "
            f"layer types are {names}; "
            "check layer_filter."
        )
    locked_names = [d.name for d in decisions if d.locked]
    unlocked = {d.name: d.reason for d in decisions if not d.locked}
    plaintext = plaintext_weights(work, locked_names, unlocked, kept, aliases)
    buffers = plaintext_buffers(work, locked_names, aliases)
    shared = shared_locked_weights(work, locked_names) if find_shared else []
    # Held here until the swap: a collected BatchNorm's id could be a new module's.
    identities = {id(bn): identity for bn, identity in folded_away}
    locked_root = _swap(work, identities | replacements)
    keyed = KeyedModel(locked_root, ctx.layout.decoder(), slots, plaintext)
    keyed.training = locked_root.training
    keyed.decoder.train(locked_root.training)
    return LockedModel(keyed, ctx.layout, decisions, folded, buffers, shared)
