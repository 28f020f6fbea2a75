"""Checks made before a model is copied and locked: what the lock cannot take is refused up
front with what to do, instead of failing later deep inside torch.

- Hook-based reparametrisations (``torch.nn.utils.prune``, the legacy
  ``torch.nn.utils.weight_norm``) keep a computed, non-leaf tensor as the layer's weight, which
  ``copy.deepcopy`` cannot copy; the user makes them permanent first.
- A lazy module (``nn.LazyLinear``, ``nn.LazyConv2d``, …) never called has uninitialised
  tensors: its first call would fill them with fresh random values, and the protected model
  would hold those instead of trained weights.
- The lock works in float32 (its mixing blocks, key decoder and scales are float32, and so are
  the runtime's key vectors): a float64/float16/bfloat16 supported layer is refused rather than
  silently converted, since that would change the model's outputs.
- A function attribute (a lambda or closure, also in a list, dict or ``functools.partial``)
  that captured the model's layers would keep calling the user's own, unlocked layers from the
  locked copy (``copy.deepcopy`` does not copy functions): it is refused, with how to write it
  instead; one that reads only numbers or strings through a captured object
  (``lambda x: x * self.scale``) is not, unless it, or a function of the user's it calls, may
  read variables without naming them (``eval``, a frame's ``f_locals``: a helper reading
  ``sys._getframe(1).f_locals`` sees the captured model).  So is a kept bound method of a
  layer to lock other than its ``forward`` (``self.f = self.a.helper``), and a method of its
  class applied to it with ``functools.partial`` (``partial(nn.Linear.forward, self.a)``): the
  copy applies it to the locked layer, giving wrong outputs.
- A ``torch.compile`` wrapper (``OptimizedModule``) is replaced by the module it wraps
  (:func:`strip_compile_wrappers`): its compiled forward stays bound to the module it was built
  on, so a locked copy would still run the unlocked layer, and every export traces eager code.
"""

from __future__ import annotations

import copy
import dis
import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import prune
from torch.nn.utils.weight_norm import WeightNorm

from ..errors import InvalidArgumentError, UnsupportedLayerError
from .coverage import MODULE_INTERNALS, SCALAR_TYPES, plain_leaves
from .functions import called_functions, function_values, nested_codes, user_functions
from .registry import find_locker, supported_layer_types


def _reparametrisation_error(name: str, module: nn.Module) -> InvalidArgumentError | None:
    """The error for a layer whose weight a pruning or legacy weight-norm hook recomputes."""
    label = f"'{name}' ({type(module).__name__})" if name else type(module).__name__
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            tensor = getattr(hook, "_tensor_name", "weight")
            return InvalidArgumentError(
                f"Layer {label} is pruned with torch.nn.utils.prune: its '{tensor}' is "
                f"recomputed from '{tensor}_orig' and '{tensor}_mask' by a hook, which cannot be "
                f"copied or locked. Make the pruning permanent first with "
                f"torch.nn.utils.prune.remove(module, '{tensor}') for every pruned parameter, "
                "then protect."
            )
        if isinstance(hook, WeightNorm):
            return InvalidArgumentError(
                f"Layer {label} uses the legacy torch.nn.utils.weight_norm on '{hook.name}', "
                "whose hook-computed weight cannot be copied or locked. Build the layer with "
                "torch.nn.utils.parametrizations.weight_norm instead, or fold the norm into a "
                "plain weight with torch.nn.utils.remove_weight_norm(module), then protect."
            )
    return None


def _compile_wrapper_type() -> type[nn.Module] | None:
    """``torch.compile``'s module wrapper class, or ``None`` if no module was compiled in this
    process (a model can hold a wrapper only once its module is imported, which takes seconds)."""
    return getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)


def _unwrapped(module: nn.Module) -> nn.Module:
    """``module`` without its ``torch.compile`` wrappers (``torch.compile(m)._orig_mod`` is m)."""
    wrapper = _compile_wrapper_type()
    while wrapper is not None and isinstance(module, wrapper):
        module = module._orig_mod
    return module


def uncompiled_named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` as :func:`strip_compile_wrappers` leaves the model: a wrapped
    module under its wrapper's name (``a``, not ``a._orig_mod``), so that ``layer_filter`` is
    asked about the same names before and after the wrappers are stripped."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        module = _unwrapped(module)
        if id(module) in seen:
            return
        seen.add(id(module))
        yield prefix, module
        for attr, child in module._modules.items():
            if child is not None:
                yield from walk(child, f"{prefix}.{attr}" if prefix else attr)

    return walk(model, "")


def strip_compile_wrappers(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``torch.compile`` wrapper registered in ``model`` by the module
    it wraps, and return the (unwrapped) root; a copy of it where wrappers are also kept in
    plain attributes (``self.order = [self.a]``), replaced there too.

    A wrapper's compiled forward is bound to the module it was built on, not to its
    ``_orig_mod`` entry: in a deep copy it kept calling the *unlocked* layer, so the locked
    model ignored that layer's key and ``torch.export`` stored its plaintext weight.  Compiling
    is a speed-up of the same eager code, which is what every export traces.
    """
    root = _unwrapped(model)
    for _, module in list(uncompiled_named_modules(root)):
        for attr, child in module._modules.items():
            if child is not None:
                module._modules[attr] = _unwrapped(child)
    kept = _attribute_compile_wrappers(root)
    if not kept:
        return root
    memo = sharing_memo(root)
    for wrapper in kept:  # the wrapped module's one copy, registered or not
        memo[id(wrapper)] = copy.deepcopy(_unwrapped(wrapper), memo)
    return copy.deepcopy(root, memo)


def _inert(value: object, memo: dict[int, object], decided: dict[int, bool]) -> bool:
    """Whether ``value`` holds no object that a copy may have to replace (a module, a
    function, a method, any other object): only numbers, strings, tensors, arrays without
    Python objects (an ``object`` field of a structured array can hold a layer), and lists,
    tuples and dicts of them.  Each such value but a number or string goes into
    ``memo`` as itself; ``decided`` holds the containers judged (a cycle is not inert: judged
    on the way, its parts would be too early)."""
    kind = type(value)
    if kind in SCALAR_TYPES:
        return True
    if isinstance(value, torch.Tensor | np.ndarray):
        inert = not isinstance(value, np.ndarray) or not value.dtype.hasobject
    elif kind not in (list, tuple, dict):
        return False
    elif id(value) in decided:
        return decided[id(value)]
    else:
        decided[id(value)] = False  # until judged: a cycle back to it is not inert
        parts = (value.keys(), value.values()) if kind is dict else (value,)
        inert = all(SCALAR_TYPES.issuperset(map(type, items)) for items in parts) or all(
            [_inert(item, memo, decided) for items in parts for item in items]  # judges all
        )
        decided[id(value)] = inert
    if inert:
        memo[id(value)] = value
    return inert


def sharing_memo(root: nn.Module) -> dict[int, object]:
    """A ``copy.deepcopy`` memo in which ``root``'s parameters and buffers, and the plain data
    its modules' attributes hold (:func:`_inert`: a vocabulary, a table) are themselves: a copy
    of ``root`` made with it shares them and copies the rest, which is all that can refer to a
    layer.  For a copy of the lock's own copy, whose plain data nothing else holds: copying a
    plain dict of a million entries again took 0.8 s of a 2 s lock."""
    memo: dict[int, object] = {id(t): t for t in (*root.parameters(), *root.buffers())}
    decided: dict[int, bool] = {}
    for module in root.modules():
        for attr, value in vars(module).items():
            if attr not in MODULE_INTERNALS:
                _inert(value, memo, decided)
    return memo


def _attribute_compile_wrappers(root: nn.Module) -> list[nn.Module]:
    """The ``torch.compile`` wrappers that ``root``'s modules hold in plain attributes, through
    which a list that ``forward`` iterates would call the unlocked layers."""
    wrapper = _compile_wrapper_type()
    if wrapper is None:
        return []
    return [
        item
        for module in root.modules()
        for attr, value in vars(module).items()
        if attr not in MODULE_INTERNALS
        for _, item in plain_leaves(value, "")
        if isinstance(item, wrapper)
    ]


LayerFilter = Callable[[str, nn.Module], bool]

REBOUND_CALLS = ("forward", "__call__")
"""The methods of a replaced layer that the lock binds to its locked layer when the model
keeps them as attributes (``self.first = self.a.forward``): they compute the same outputs."""


def _layers_to_lock(model: nn.Module, layer_filter: LayerFilter) -> list[tuple[str, nn.Module]]:
    """The supported layers that ``layer_filter`` does not exclude, less the parts of another
    (``MultiheadAttention.out_proj``): a layer it excludes stays as it is."""
    found, layers = [], []
    for name, module in uncompiled_named_modules(model):
        if not isinstance(module, supported_layer_types()) or any(
            layer == "" or name.startswith(f"{layer}.") for layer in layers
        ):
            continue  # not a layer to lock, or part of one
        layers.append(name)
        if layer_filter(name, module) is not False:
            found.append((name, module))
    return found


def _wrong_dtypes(layers: list[tuple[str, nn.Module]]) -> dict[str, bool]:
    """``"name (Type, dtype)"`` → whether complex, for every layer to lock with non-float32
    floating or complex tensors.  Complex ones too: the lock's float64 arithmetic silently
    dropped their imaginary parts."""
    found = {}
    for name, module in layers:
        dtypes = {
            t.dtype
            for t in (*module.parameters(), *module.buffers())
            if (t.is_floating_point() or t.is_complex()) and t.dtype != torch.float32
        }
        if dtypes:
            kinds = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
            label = f"{name or '<model>'} ({type(module).__name__}, {kinds})"
            found[label] = any(d.is_complex for d in dtypes)
    return found


def _dtype_error(wrong: dict[str, bool]) -> InvalidArgumentError:
    """What to do about layers that are not float32: convert real ones, exclude complex ones
    (``model.float()`` drops a complex tensor's imaginary part: other outputs, no error)."""
    real = [label for label, is_complex in wrong.items() if not is_complex]
    complex_ = [label.partition(" (")[0] for label, is_complex in wrong.items() if is_complex]
    advice = []
    if real:
        advice.append(
            "Convert the model with model.float() and pass float32 input_tensors (the protected "
            "model then computes in float32 and returns float32 outputs), or leave those layers "
            "unlocked with layer_filter."
        )
    if complex_:
        advice.append(
            f"Complex-valued layers cannot be locked, nor converted (model.float() drops their "
            f"imaginary parts): leave them unlocked with layer_filter, e.g. "
            f"layer_filter=lambda name, module: name not in {complex_!r}."
        )
    return InvalidArgumentError(
        f"The lock works in float32, but {len(wrong)} layer(s) to lock are not float32: "
        f"{'; '.join(wrong)}. {' '.join(advice)}"
    )


_PLAIN_DATA = (str, bytes, int, float, complex, type(None))
"""Values through which no layer is reached (``bool`` is an ``int``)."""

_CELL_OPS = frozenset(
    {"LOAD_DEREF", "STORE_DEREF", "DELETE_DEREF", "LOAD_CLOSURE", "MAKE_CELL", "LOAD_CLASSDEREF"}
)
"""The instructions that use a closure variable by name (Python 3.11)."""


def _plain_attribute(obj: object, name: str) -> bool:
    """Whether ``obj.name`` is an instance attribute that holds a number or a string (or a
    tuple of them), read without running code: no ``__getattribute__`` of its own, no
    property or other data descriptor of its class before the instance's ``__dict__``."""
    cls = type(obj)
    if cls.__getattribute__ is not object.__getattribute__:
        return False
    attributes = getattr(obj, "__dict__", {})
    descriptor = inspect.getattr_static(cls, name, None)
    if name not in attributes or hasattr(type(descriptor), "__set__"):
        return False
    value = attributes[name]
    items = value if type(value) is tuple else (value,)
    return all(isinstance(item, _PLAIN_DATA) for item in items)


_UNNAMED_READS = frozenset(
    {"eval", "exec", "locals", "vars", "_getframe", "currentframe", "f_locals", "getargvalues"}
)
"""Names through which code reads variables without naming them in its instructions
(``eval("self.a")`` sees the closure's ``self``; so do ``locals()``, and a frame's
``f_locals`` or ``inspect.getargvalues``, also its caller's: ``sys._getframe(1)``,
``inspect.currentframe().f_back``, ``inspect.stack()[1].frame``)."""


_FRAME_READS = frozenset({"f_locals", "getargvalues"})
"""Names through which a function reads the variables of another function's frame, its
caller's among them (``sys._getframe(1).f_locals``, ``inspect.currentframe().f_back.f_locals``,
``inspect.stack()[1].frame.f_locals``, ``inspect.getargvalues(frame).locals``); ``eval``,
``locals()`` or ``vars()`` in a function it calls see only that function's own variables."""


def _reads_unnamed(fn: types.FunctionType, plain: set[str]) -> bool:
    """Whether ``fn``, or a function nested in it, names :data:`_UNNAMED_READS`, or a function
    of the user's that it may call names :data:`_FRAME_READS`: a helper reading
    ``sys._getframe(1).f_locals`` sees the variables ``fn`` closes over.  Followed
    (:func:`.functions.called_functions`) from what ``fn`` reads but its ``plain`` closure
    variables, through which it calls nothing (a method of the model's class that uses
    ``vars(self)`` is not the lambda's to run); torch's, NumPy's and Python's own functions
    are not: ``logging`` and ``warnings`` read frames to name the caller, never to run a
    layer."""
    if any(_UNNAMED_READS.intersection(c.co_names) for c in nested_codes(fn.__code__)):
        return True
    helpers = dict.fromkeys(
        f
        for _, value in function_values(fn, skip=plain)
        for _, leaf in plain_leaves(value, "")
        for f in user_functions(leaf)
    )
    return any(
        _FRAME_READS.intersection(c.co_names)
        for called, _ in called_functions(helpers)
        for c in nested_codes(called.__code__)
    )


def _reads_plain_data(fn: types.FunctionType, var: str, value: object) -> bool:
    """Whether ``fn`` uses its closure variable ``var`` (holding ``value``) only to read plain
    data attributes of it (``lambda x: x * self.scale``), so that it cannot reach a layer
    through it by name: every use is a load followed by an attribute read (not a method call)
    of a :func:`_plain_attribute`, and no function nested in ``fn`` uses it."""
    code = fn.__code__
    if any(var in c.co_freevars for c in list(nested_codes(code))[1:]):
        return False
    ops = list(dis.get_instructions(code))
    for op, after in zip(ops, [*ops[1:], None], strict=True):
        if op.opname not in _CELL_OPS or op.argval != var:
            continue
        if op.opname != "LOAD_DEREF" or after is None or after.opname != "LOAD_ATTR":
            return False
        if not _plain_attribute(value, after.argval):
            return False
    return True


def _captured(fn: types.FunctionType) -> list[object]:
    """What ``fn`` keeps besides its code: its closure's variables and its default arguments,
    which ``copy.deepcopy`` keeps as they are, together with the function; less the closure
    variables it only reads numbers or strings from (:func:`_reads_plain_data`), unless it
    may read them without naming them (:func:`_reads_unnamed`)."""
    values, plain = [], {}
    for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _reads_plain_data(fn, var, value):
            plain[var] = value
        else:
            values.append(value)
    if plain and _reads_unnamed(fn, set(plain)):
        values += plain.values()
    return [*values, *(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()]


def _reaches_a_layer(values: list[object], seen: set[int]) -> bool:
    """Whether ``values`` hold a module that is or contains a supported layer: directly, in
    containers, as a bound method's object, or captured by a function they hold."""
    for value in values:
        for _, item in plain_leaves(value, "", seen):
            if isinstance(item, types.MethodType):
                item = item.__self__
            if isinstance(item, nn.Module) and any(
                isinstance(m, supported_layer_types()) for m in item.modules()
            ):
                return True
            if isinstance(item, types.FunctionType) and id(item) not in seen:
                seen.add(id(item))
                if _reaches_a_layer(_captured(item), seen):
                    return True
    return False


def _attribute_leaves(model: nn.Module) -> Iterator[tuple[str, object]]:
    """Every value in the plain attributes of ``model``'s modules, through lists, tuples, dicts
    and ``functools.partial`` objects, with its path (``fns[0]``)."""
    for name, module in uncompiled_named_modules(model):
        for attr, value in vars(module).items():
            if attr not in MODULE_INTERNALS:
                yield from plain_leaves(value, f"{name}.{attr}" if name else attr)


def _layer_closures(model: nn.Module) -> list[str]:
    """The attributes of ``model``'s modules that are functions (lambdas, closures, also in a
    list, dict or ``functools.partial``) calling its layers through captured variables or
    default arguments: ``copy.deepcopy`` keeps a function as it is, so the locked copy would
    call the user's unlocked layers, whatever the key."""
    return [
        f"'{path}'"
        for path, item in _attribute_leaves(model)
        if isinstance(item, types.FunctionType) and _reaches_a_layer(_captured(item), set())
    ]


def _replaced(module: nn.Module) -> bool:
    """Whether the lock replaces ``module`` (its locker does not refuse it)."""
    try:
        return find_locker(module) is not None
    except UnsupportedLayerError:
        return False


def _layer_methods(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> list[str]:
    """The attributes that are bound methods of a layer the lock replaces, other than
    :data:`REBOUND_CALLS` (``self.f = self.a.helper``), or of a part of one (``self.f =
    self.attn.out_proj.forward``), and those that apply a method of its class to it with
    ``functools.partial`` (``partial(nn.Linear.forward, self.a)``): the copy binds the first
    and the third to the locked layer, whose weights are keyed (wrong outputs, 35.9 relative
    error), and the second to an unlocked copy of the part, which ran without the key and
    shipped its weights unreported."""
    owners = {}  # id of the layer or part → (its name, whether it is a part)
    for name, layer in layers:
        if _replaced(layer):
            owners |= {
                id(m): (f"{name}.{part}" if name else part, True)
                for part, m in layer.named_modules()
                if part
            }
            owners[id(layer)] = (name, False)
    found = []
    for path, item in _attribute_leaves(model):
        if isinstance(item, types.MethodType) and id(item.__self__) in owners:
            name, part = owners[id(item.__self__)]
            if part or item.__name__ not in REBOUND_CALLS:
                found.append(f"'{path}' ({item.__name__}() of layer '{name}')")
        elif isinstance(item, functools.partial) and item.args and id(item.args[0]) in owners:
            cls = _defining_class(item.func, item.args[0])
            if cls is not None:
                name = owners[id(item.args[0])][0]
                found.append(
                    f"'{path}' (functools.partial({cls.__name__}.{item.func.__name__}, "
                    f"<layer '{name}'>))"
                )
    return found


def _defining_class(func: object, layer: nn.Module) -> type | None:
    """The class of ``layer``'s own (``nn.Module``'s excepted) whose method ``func`` is
    (``nn.Linear.forward``): applied to the locked layer by ``functools.partial``, it reads
    its keyed weights (8.1 relative error); ``None`` for any other function."""
    for cls in type(layer).__mro__:
        if cls in (nn.Module, object):
            break
        if isinstance(func, types.FunctionType) and vars(cls).get(func.__name__) is func:
            return cls
    return None


def _uninitialised(model: nn.Module) -> list[str]:
    """The names of the lazy parameters and buffers that no call has materialised yet."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    return [name for name, t in tensors if is_lazy(t)]


def _on_meta(model: nn.Module) -> list[str]:
    """The names of the parameters and buffers on the ``meta`` device: shapes without values."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    return [name for name, t in tensors if t.is_meta and not is_lazy(t)]


def _non_persistent(model: nn.Module) -> set[str]:
    """The names of the buffers that no ``state_dict`` holds (``persistent=False``)."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in module._non_persistent_buffers_set
    }


def _names(names: list[str]) -> str:
    """The first five of ``names`` and how many in all."""
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def _meta_message(meta: list[str], non_persistent: set[str]) -> str:
    """Why tensors on ``meta`` are refused and how to give them values: non-persistent buffers
    are in no state_dict, so loading one leaves them on meta (to_empty: uninitialised)."""
    loaded = [n for n in meta if n not in non_persistent]
    computed = [n for n in meta if n in non_persistent]
    message = (
        f"The model's tensors {_names(meta)} are on the 'meta' device: they have shapes but no "
        "values (a model built under torch.device('meta') or init_empty_weights"
    )
    if loaded:
        message += (
            ", whose weights were never loaded). Load the trained weights first, e.g. "
            "model.load_state_dict(state_dict, assign=True) or model.to_empty(device='cpu') "
            "then model.load_state_dict(state_dict)"
        )
    else:
        message += ")"
    if computed:
        message += (
            f"{'; ' if loaded else '. '}{_names(computed)} are non-persistent buffers "
            "(register_buffer(..., persistent=False)), which no state_dict holds: "
            "load_state_dict leaves them on 'meta' and to_empty leaves them uninitialised. "
            "Compute them again (build the modules that register them on a real device, or "
            "assign them as their __init__ computes them)"
        )
    return message + ", then protect."


def check_lockable(model: nn.Module, layer_filter: LayerFilter = lambda name, m: True) -> None:
    """Raise :class:`InvalidArgumentError` if ``model`` is TorchScript, cannot be copied, holds
    uninitialised lazy tensors or tensors on the ``meta`` device, or the layers
    ``layer_filter`` selects cannot be locked, as they are."""
    if isinstance(model, torch.jit.ScriptModule):
        raise InvalidArgumentError(
            "The model is a TorchScript module (from torch.jit.script or torch.jit.trace), "
            "compiled code whose layers the lock cannot replace. Pass the eager nn.Module "
            "instead: the protector exports TorchScript itself."
        )
    lazy = _uninitialised(model)
    if lazy:
        raise InvalidArgumentError(
            f"The model has uninitialised lazy tensors ({', '.join(lazy)}): a Lazy* module "
            "(e.g. nn.LazyLinear) creates its weights at its first call, so they hold no trained "
            "values yet. Call the model once on an input, load your trained weights "
            "(model.load_state_dict(...)), then protect."
        )
    meta = _on_meta(model)
    if meta:
        raise InvalidArgumentError(_meta_message(meta, _non_persistent(model)))
    for name, module in uncompiled_named_modules(model):
        error = _reparametrisation_error(name, module)
        if error is not None:
            raise error
    closures = _layer_closures(model)
    if closures:
        raise InvalidArgumentError(
            f"The model's attribute(s) {', '.join(closures)} are functions (lambdas "
            "or closures) that call its layers through captured variables, or may read such a "
            "variable without naming it (eval, exec, locals(), vars(), a frame's f_locals, "
            "also in a function they call: sys._getframe(1).f_locals): a copy of the model "
            "keeps such a function as it is, so the locked model would still run your unlocked "
            "layers, whatever the key. Make each a method (def name(self, x): ...) or call the "
            "layer directly in forward, then protect."
        )
    layers = _layers_to_lock(model, layer_filter)
    methods = _layer_methods(model, layers)
    if methods:
        raise InvalidArgumentError(
            f"The model's attribute(s) {', '.join(methods)} are methods of layers the lock "
            "replaces, or of their parts, bound or applied to the layer with functools.partial: "
            "the locked layer holds keyed weights and reproduces only the layer's own call, so "
            "such a method would compute wrong results or run an unlocked copy of the part. Call "
            "the layer itself in forward (self.layer(x), or keep self.layer or "
            "self.layer.forward), or leave that layer unlocked with layer_filter, then protect."
        )
    wrong = _wrong_dtypes(layers)
    if wrong:
        raise _dtype_error(wrong)


def check_no_scripted_submodules(model: nn.Module, formats: list[str]) -> None:
    """Raise :class:`InvalidArgumentError` if ``model`` holds TorchScript submodules and
    ``formats`` (ONNX, AOTInductor) are exported by tracing it with ``torch.onnx.export`` or
    ``torch.export``, neither of which runs through TorchScript code: the export failed only
    after locking, with "Tried to trace ... but it is not part of the active trace"."""
    scripted: list[str] = []
    for name, module in uncompiled_named_modules(model):
        inside = any(name.startswith(f"{outer}.") for outer in scripted)
        if name and not inside and isinstance(module, torch.jit.ScriptModule):
            scripted.append(name)
    if scripted:
        raise InvalidArgumentError(
            f"The model holds TorchScript submodule(s) {', '.join(map(repr, scripted))} (from "
            f"torch.jit.script or torch.jit.trace): the {' and '.join(formats)} export(s) trace "
            "the model with torch.onnx.export or torch.export, which cannot run through "
            "TorchScript code, and the lock cannot key the layers inside it. Keep those "
            "submodules eager nn.Modules (drop the torch.jit.script/trace call), or choose "
            "only TORCHSCRIPT_CPU / TORCHSCRIPT_GPU in model_export_formats."
        )


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``; a model that cannot be copied is an input error that says why,
    not a traceback from inside ``copy`` (call :func:`check_lockable` first for the usual
    causes, said more precisely)."""
    try:
        return copy.deepcopy(model)
    except Exception as err:
        raise InvalidArgumentError(
            f"The model cannot be copied with copy.deepcopy ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); the protector never modifies "
            "your model, so it locks a copy. Keep only parameters, buffers and plain attributes "
            "on the modules (no tensors computed from parameters, e.g. by hooks), then protect."
        ) from err
