"""Tensors that a locked model's forward reaches outside the model: a layer called through a
global variable, a variable that ``forward`` closes over or a class attribute, not through an
attribute of the model, and plain tensors (``W = torch.randn(64, 64)``) reached the same way.

The lock copies the model and replaces the layers that the copy holds; such a layer is not
in the copy, so it runs unlocked whatever the key (the locked model still gave the original's
outputs with the true key: no output check saw it) and every export stores its weights as
they are.  Only a run shows it: :func:`run_keyed_checked` runs the locked model once, as the
protector's first eager run does, refuses any parameter (or tensor that requires grad) that
the model does not hold, and lists the other floating-point matrices it reads from outside
as plaintext weights: a thief reads them without the key, and a public constant (a mask) is
said to be one by registering it as a buffer.

>>> outputs = run_keyed_checked("net", locked.keyed, [x, key])
"""

from __future__ import annotations

import contextlib
import sys
import types
import weakref
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidArgumentError
from .coverage import MODULE_INTERNALS, PlaintextWeight, plain_leaves
from .keyed_model import KeyedModel


def _tensors_in(values: Iterable[object]) -> Iterator[torch.Tensor]:
    """The tensors among ``values``, also inside lists, tuples and dicts (an LSTM's flat
    weights); a loop, not ``torch.utils._pytree``, which took 20 us per torch call."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list | tuple):
            yield from _tensors_in(value)
        elif isinstance(value, dict):
            yield from _tensors_in(value.values())


class _OutsideWatch(TorchFunctionMode):
    """Records the tensors that torch functions receive that ``known`` (``id``\\ s) lacks and
    that no torch function of the run returned: those that existed before the run, outside
    the model and its inputs.

    Weakly: one that ``forward`` creates other than by a torch function and drops (``x *
    nn.Parameter(c)``, ``torch.from_numpy(a)``) is gone after the run, while a layer or tensor
    reached through a global or a closure stays alive.  A torch function mode is thread-local:
    other threads' models are not seen.
    """

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.created: set[int] = set()
        self.found: dict[int, weakref.ref[torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for tensor in _tensors_in((args, kwargs)):
            if id(tensor) not in self.known and id(tensor) not in self.created:
                self.found[id(tensor)] = weakref.ref(tensor)  # a freed one's id may come again
        result = func(*args, **kwargs)
        self.created.update(id(t) for t in _tensors_in((result,)))
        return result

    def outside(self, held: set[int]) -> list[torch.Tensor]:
        """The recorded tensors still alive that ``held`` (``id``\\ s, after the run) lacks:
        those the model neither holds nor created and dropped in its forward."""
        alive = (ref() for ref in self.found.values())
        return [t for t in alive if t is not None and id(t) not in held]


def _tensors(value: object) -> list[torch.Tensor]:
    """``value`` if a tensor, a module's parameters and buffers, else nothing."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.Module):
        return [*value.parameters(), *value.buffers()]
    return []


def _held_tensors(root: nn.Module) -> set[int]:
    """The ``id`` of every tensor that ``root`` holds: its parameters and buffers, and those in
    its modules' plain attributes (tensors, unregistered modules), which :mod:`.coverage`
    reports as plaintext."""
    held = {id(t) for t in (*root.parameters(), *root.buffers())}
    for module in root.modules():
        for attr, value in vars(module).items():
            if attr not in MODULE_INTERNALS:
                held |= {id(t) for _, leaf in plain_leaves(value, "") for t in _tensors(leaf)}
    return held


def _is_weight(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is trainable: an ``nn.Parameter``, or a leaf that requires grad."""
    return isinstance(tensor, nn.Parameter) or (tensor.requires_grad and tensor.is_leaf)


_LIBRARIES = frozenset({"torch", "numpy", *sys.stdlib_module_names})
"""Top-level packages whose functions are not followed: they hold no tensor of the user's."""


def _user_functions(value: object) -> list[types.FunctionType]:
    """The functions of the user's code that ``value`` runs: itself (a function, a bound
    method's), or the methods of its class (a helper object, or a class); none of torch's,
    NumPy's or Python's own."""
    if isinstance(value, types.MethodType):
        value = value.__func__
    if isinstance(value, types.FunctionType):
        return [value] if _user_code(value.__module__) else []
    if isinstance(value, types.ModuleType | torch.Tensor):
        return []
    cls = value if isinstance(value, type) else type(value)
    return [
        f
        for c in cls.__mro__
        if _user_code(c.__module__)
        for f in vars(c).values()
        if isinstance(f, types.FunctionType)
    ]


def _user_code(module_name: str | None) -> bool:
    """Whether the module ``module_name`` is the user's (not a :data:`_LIBRARIES` one)."""
    return (module_name or "").partition(".")[0] not in _LIBRARIES


def _functions(root: nn.Module) -> Iterator[types.FunctionType]:
    """The functions through which ``root``'s forward may reach a tensor: each module class's
    own methods, and the functions and helper objects held in plain attributes (lambdas,
    ``functools.partial``) or as hooks."""
    for module in root.modules():
        yield from _user_functions(type(module))
        values = [v for attr, v in vars(module).items() if attr not in MODULE_INTERNALS]
        values += [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
        for value in values:
            for _, leaf in plain_leaves(value, ""):
                yield from _user_functions(leaf)


def _function_values(fn: types.FunctionType) -> Iterator[tuple[str, object]]:
    """The values ``fn`` reads besides its arguments, with their labels: its closure
    variables (``make.<locals>.Net.forward: V``), default arguments (``Net.forward: default
    W``) and the globals it names (``module.W``)."""
    code = fn.__code__
    for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True):
        with contextlib.suppress(ValueError):  # an empty cell
            yield f"{fn.__qualname__}: {var}", cell.cell_contents
    defaults = fn.__defaults__ or ()
    named = code.co_varnames[code.co_argcount - len(defaults) : code.co_argcount]
    kwdefaults = (fn.__kwdefaults__ or {}).items()
    for var, value in (*zip(named, defaults, strict=True), *kwdefaults):
        yield f"{fn.__qualname__}: default {var}", value
    module_name = fn.__globals__.get("__name__", "?")
    for var in code.co_names:
        if var in fn.__globals__:
            yield f"{module_name}.{var}", fn.__globals__[var]


def _held_objects(root: nn.Module) -> Iterator[tuple[str, object]]:
    """The attributes of the user's objects that ``root``'s modules hold in plain attributes
    (a config object: ``cfg.proj``), which neither the lock nor the coverage enters."""
    for name, module in root.named_modules():
        for attr, value in vars(module).items():
            if attr in MODULE_INTERNALS:
                continue
            for path, leaf in plain_leaves(value, f"{name}.{attr}" if name else attr):
                if (
                    _user_code(type(leaf).__module__)
                    and not isinstance(leaf, nn.Module | torch.Tensor | type)
                    and hasattr(leaf, "__dict__")
                ):
                    yield from ((f"{path}.{k}", v) for k, v in vars(leaf).items())


def _candidates(root: nn.Module) -> Iterator[tuple[str, object]]:
    """Where ``root``'s forward may reach a value outside the model, each with its label: the
    attributes of objects the model holds (:func:`_held_objects`), class attributes
    (``Net.W``), then the values its functions read (:func:`_function_values`),
    following the user's functions and helper objects they read (a module-level ``helper``
    that reads a global).  Each class and function once: searching each instance's class again
    took 7.3 s to name 50 tensors that a model of 2,000 blocks read."""
    yield from _held_objects(root)
    classes = dict.fromkeys(cls for module in root.modules() for cls in type(module).__mro__)
    for cls in classes:  # in order: the first place a tensor is found names it
        yield from ((f"{cls.__qualname__}.{attr}", v) for attr, v in vars(cls).items())
    pending = dict.fromkeys(_functions(root))
    done: set[types.FunctionType] = set()
    while pending:
        fn = next(iter(pending))
        del pending[fn]
        done.add(fn)
        for label, value in _function_values(fn):
            yield label, value
            for _, leaf in plain_leaves(value, ""):
                pending.update(dict.fromkeys(f for f in _user_functions(leaf) if f not in done))


def _labels(root: nn.Module, tensors: list[torch.Tensor]) -> dict[int, str]:
    """Where ``forward`` finds each of ``tensors`` (:func:`_candidates`), by ``id``: the value
    itself, inside a list, tuple or dict (``module.TABLES['w']``), or a parameter or buffer of
    a module there (``module.ENCODER.weight``); one pass over the candidates for all."""
    wanted = {id(t) for t in tensors}
    labels: dict[int, str] = {}
    for label, value in _candidates(root):
        for path, leaf in plain_leaves(value, label):
            if isinstance(leaf, torch.Tensor):
                found = [("", leaf)]
            elif isinstance(leaf, nn.Module):
                found = [(f".{n}", t) for n, t in (*leaf.named_parameters(), *leaf.named_buffers())]
            else:
                continue
            for suffix, tensor in found:
                if id(tensor) in wanted:
                    labels.setdefault(id(tensor), path + suffix)
        if len(labels) == len(wanted):
            break
    return labels


def _plaintext(tensors: list[torch.Tensor], root: nn.Module) -> list[PlaintextWeight]:
    """The floating-point and complex matrices (two or more dimensions) among ``tensors``, as
    plaintext weights named where ``forward`` finds them (a complex one is two real ones)."""
    matrices = [t for t in tensors if t.dim() >= 2 and (t.is_floating_point() or t.is_complex())]
    labels = _labels(root, matrices)
    found = []
    for i, tensor in enumerate(matrices):
        name = labels.get(id(tensor), f"<tensor outside the model #{i}>")
        reason = (
            "a tensor that forward() reads outside the model (a global variable, a variable it "
            "closes over, a class attribute, a cache that an earlier call filled, such as a "
            "functools.lru_cache, or an object the model holds that is not a module, list, "
            "tuple or dict), neither a parameter nor a buffer: the lock "
            "never sees it, and every export stores it as a constant. If it holds trained "
            "values, make it the weight of a supported layer held by the model; if it is a "
            "public constant (a mask, a fixed transform), register it as a buffer "
            "(self.register_buffer(name, tensor)), which plaintext_buffers then lists"
        )
        found.append(PlaintextWeight(name, tuple(tensor.shape), reason))
    return found


def run_keyed_checked(
    model_name: str,
    keyed: KeyedModel,
    inputs: Sequence[torch.Tensor],
) -> object:
    """``keyed(*inputs)`` (the inputs, then the key), refused with
    :class:`InvalidArgumentError` when its forward used a parameter (or a tensor that
    requires grad) that ``keyed`` does not hold and that outlives the run: that layer ran
    unlocked, whatever the key.  The floating-point matrices it read from outside are added
    to ``keyed.plaintext`` (the locked model's ``plaintext``, which the protector warns about)."""
    watch = _OutsideWatch(_held_tensors(keyed) | {id(t) for t in inputs})
    with watch:
        outputs = keyed(*inputs)
    held = _held_tensors(keyed) | {id(t) for t in _tensors_in((outputs,))}
    outside = watch.outside(held) if watch.found else []
    weights = [t for t in outside if _is_weight(t)]
    if weights:
        labels = _labels(keyed.model, weights)
        found = ", ".join(f"{labels.get(id(t), 'shape')} {tuple(t.shape)}" for t in weights)
        raise InvalidArgumentError(
            f"The forward() of '{model_name}' uses parameters that the model does not hold "
            f"({found}): a layer it reaches through a global variable, a variable it closes over "
            "or a class attribute, or one kept where the lock does not look (in a custom "
            "object, or a plain attribute of an unregistered module), not through an attribute "
            "of the model; or a tensor that requires grad reached that way. The lock copies the "
            "model and locks the layers the copy holds, so that layer would run unlocked "
            "whatever the key, and every export would store its weights as they are. Assign the "
            "layer to the model (self.name = layer, or an nn.ModuleList) and call it through "
            "self; make a trained tensor the weight of a supported layer held by the model, and "
            "create a constant one without requires_grad (or call .requires_grad_(False) on "
            "it); then protect."
        )
    known = {(w.name, w.shape) for w in keyed.plaintext}  # a second run lists nothing twice
    found_plain = _plaintext(outside, keyed.model)
    keyed.plaintext.extend(w for w in found_plain if (w.name, w.shape) not in known)
    return outputs
