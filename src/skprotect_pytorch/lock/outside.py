"""Tensors that a locked model's forward reaches outside the model: a layer called through a
global variable, a variable that ``forward`` closes over or a class attribute, not through an
attribute of the model, and plain tensors (``W = torch.randn(64, 64)``) reached the same way.

The lock copies the model and replaces the layers that the copy holds; such a layer is not
in the copy, so it runs unlocked whatever the key (the locked model still gave the original's
outputs with the true key: no output check saw it) and every export stores its weights as
they are.  Only a run shows it: :func:`run_keyed_checked` runs the locked model once, as the
protector's first eager run does, refuses any parameter (or tensor that requires grad) that
the model does not hold, and lists the other floating-point (complex, quantized) tensors it
reads from outside as plaintext weights, and the NumPy arrays it turns into tensors: a thief
reads them without the key, and a public constant (a mask) is said to be one by registering
it as a buffer.

>>> outputs = run_keyed_checked("net", locked.keyed, [x, key])
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import types
import weakref
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidArgumentError
from .coverage import MODULE_INTERNALS, PlaintextWeight, plain_leaves
from .keyed_model import KeyedModel

Data = torch.Tensor | np.ndarray
"""What ``forward`` may read outside the model and every export then stores: a tensor, or a
NumPy array that a torch function turns into one (``torch.tensor(a)``)."""


def _tensors_in(values: Iterable[object]) -> Iterator[Data]:
    """The tensors and NumPy arrays among ``values``, also inside lists, tuples and dicts (an
    LSTM's flat weights); a loop, not ``torch.utils._pytree``, which took 20 us per torch call."""
    for value in values:
        if isinstance(value, torch.Tensor | np.ndarray):
            yield value
        elif isinstance(value, list | tuple):
            yield from _tensors_in(value)
        elif isinstance(value, dict):
            yield from _tensors_in(value.values())


def _on_the_host(value: Data) -> bool:
    """Whether ``value`` is a plain tensor with its own memory on the CPU, where a NumPy
    array's memory can be (a sparse tensor has no single address, and a ``torch.vmap``
    batched tensor, a plain ``torch.Tensor`` too, none: its ``data_ptr()`` raises)."""
    return (
        type(value) is torch.Tensor
        and value.layout == torch.strided
        and value.device.type == "cpu"
        and torch._C._has_storage(value)
    )


class _OutsideWatch(TorchFunctionMode):
    """Records the tensors (and NumPy arrays) that torch functions receive that ``known``
    (``id``\\ s) lacks and that no torch function of the run returned: those that existed
    before the run, outside the model and its inputs.

    Weakly: one that ``forward`` creates other than by a torch function and drops (``x *
    nn.Parameter(c)``, ``torch.from_numpy(a)``) is gone after the run, while a layer or tensor
    reached through a global or a closure stays alive; where a dropped one's memory lies is
    kept, which tells a global array that ``torch.from_numpy`` (no torch function call) read.
    Created ones are weakly kept too: such a tensor often takes the ``id`` of a freed one that
    a torch function returned.  A torch function mode is thread-local: other threads' models
    are not seen.
    """

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.created: dict[int, weakref.ref[Data]] = {}
        self.found: dict[int, weakref.ref[Data]] = {}
        self.addresses: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in _tensors_in((args, kwargs)):
            made = self.created.get(id(value))
            if id(value) not in self.known and (made is None or made() is not value):
                self.found[id(value)] = weakref.ref(value)  # a freed one's id may come again
                if _on_the_host(value):
                    self.addresses[id(value)] = value.data_ptr()
        result = func(*args, **kwargs)
        self.created.update((id(t), weakref.ref(t)) for t in _tensors_in((result,)))
        return result

    def outside(self, held: set[int]) -> list[Data]:
        """The recorded tensors and arrays still alive that ``held`` (``id``\\ s, after the run)
        lacks: those the model neither holds nor created and dropped in its forward."""
        alive = (ref() for ref in self.found.values())
        return [t for t in alive if t is not None and id(t) not in held]

    def dropped_addresses(self) -> list[int]:
        """Where the memory of the recorded CPU tensors gone after the run lay: made in
        ``forward`` other than by a torch function, possibly over a NumPy array's memory."""
        return [at for i, at in self.addresses.items() if self.found[i]() is None]


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


def _is_weight(value: Data) -> bool:
    """Whether ``value`` is trainable: an ``nn.Parameter``, or a leaf tensor that requires grad."""
    return isinstance(value, nn.Parameter) or (
        isinstance(value, torch.Tensor) and value.requires_grad and value.is_leaf
    )


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


def _attributes(root: nn.Module) -> Iterator[tuple[str, object]]:
    """The plain attributes of ``root``'s modules, with their paths (``enc.table``)."""
    for name, module in root.named_modules():
        for attr, value in vars(module).items():
            if attr not in MODULE_INTERNALS:
                yield f"{name}.{attr}" if name else attr, value


def _held_objects(root: nn.Module) -> Iterator[tuple[str, object]]:
    """The attributes of the user's objects that ``root``'s modules hold in plain attributes
    (a config object: ``cfg.proj``), which neither the lock nor the coverage enters."""
    for where, value in _attributes(root):
        for path, leaf in plain_leaves(value, where):
            if (
                _user_code(type(leaf).__module__)
                and not isinstance(leaf, nn.Module | torch.Tensor | type)
                and hasattr(leaf, "__dict__")
            ):
                yield from ((f"{path}.{k}", v) for k, v in vars(leaf).items())


def _candidates(root: nn.Module) -> Iterator[tuple[str, object]]:
    """Where ``root``'s forward may reach a value outside the model, each with its label: the
    NumPy arrays its modules hold in plain attributes (``enc.table``), the attributes of
    objects the model holds (:func:`_held_objects`), class attributes
    (``Net.W``), then the values its functions read (:func:`_function_values`),
    following the user's functions and helper objects they read (a module-level ``helper``
    that reads a global).  Each class and function once: searching each instance's class again
    took 7.3 s to name 50 tensors that a model of 2,000 blocks read."""
    for where, value in _attributes(root):
        yield from ((p, a) for p, a in plain_leaves(value, where) if isinstance(a, np.ndarray))
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


_CACHE = type(functools.cache(len))
"""The wrapper of ``functools.lru_cache`` (and ``functools.cache``): it lists its results to the
garbage collector (``gc.get_referents``) only."""


def _cached(cache: object) -> Iterator[tuple[str, Data]]:
    """The tensors and arrays among the results that a ``functools.lru_cache`` holds, with
    their places (``()``, ``()[0]`` in a tuple it returned)."""
    own = getattr(cache, "__dict__", None)  # functools.wraps's attributes, no result
    held = [r for r in gc.get_referents(cache) if r is not own]
    results = [v for r in held for v in (r.values() if isinstance(r, dict) else (r,))]
    for result in results:
        for place, value in plain_leaves(result, "()"):
            if isinstance(value, torch.Tensor | np.ndarray):
                yield place, value


def _labels(root: nn.Module, tensors: Sequence[Data]) -> dict[int, str]:
    """Where ``forward`` finds each of ``tensors`` (:func:`_candidates`), by ``id``: the value
    itself, inside a list, tuple or dict (``module.TABLES['w']``), a parameter or buffer of a
    module there (``module.ENCODER.weight``), or a result that a ``functools.lru_cache`` holds
    (``module.causal_mask()``); one pass over the candidates for all."""
    wanted = {id(t) for t in tensors}
    labels: dict[int, str] = {}
    for label, value in _candidates(root):
        for path, leaf in plain_leaves(value, label):
            if isinstance(leaf, torch.Tensor | np.ndarray):
                found = [("", leaf)]
            elif isinstance(leaf, nn.Module):
                found = [(f".{n}", t) for n, t in (*leaf.named_parameters(), *leaf.named_buffers())]
            elif isinstance(leaf, _CACHE):
                found = list(_cached(leaf))
            else:
                continue
            for suffix, tensor in found:
                if id(tensor) in wanted:
                    labels.setdefault(id(tensor), path + suffix)
        if len(labels) == len(wanted):
            break
    return labels


MIN_NUMBERS = 8
"""The fewest numbers a tensor read outside the model holds to be listed: fewer (an RGB mean
and deviation, a few scalars) are a public constant far more often than trained values, and
tell little (the audit's leak search skips vectors shorter than this for the same reason)."""


def _listed(value: Data) -> bool:
    """Whether a tensor or array read outside the model is listed as a plaintext weight: of
    any number of dimensions (a trained bias vector too), floating-point, complex or quantized,
    of :data:`MIN_NUMBERS` numbers or more, not all equal (``torch.ones(64)`` tells one)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fc":
            return False
        flat = value.reshape(-1)
    elif value.layout != torch.strided:  # sparse: its stored numbers are chosen ones
        return (value.is_floating_point() or value.is_complex()) and value.numel() >= MIN_NUMBERS
    elif value.is_floating_point() or value.is_complex() or value.is_quantized:
        flat = (value.dequantize() if value.is_quantized else value).detach().reshape(-1)
    else:
        return False
    return len(flat) >= MIN_NUMBERS and bool((flat != flat[0]).any())


def _byte_range(array: np.ndarray) -> range:
    """The addresses of ``array``'s numbers (a strided view's span)."""
    start = array.__array_interface__["data"][0]
    steps = [(n - 1) * s for n, s in zip(array.shape, array.strides, strict=True)]
    low = start + sum(s for s in steps if s < 0)
    return range(low, start + sum(s for s in steps if s > 0) + array.itemsize)


def _arrays_at(root: nn.Module, addresses: list[int]) -> list[np.ndarray]:
    """The NumPy arrays where ``forward`` may find values (:func:`_candidates`) that hold one
    of ``addresses``: read by ``torch.from_numpy``, which shares their memory and is no torch
    function that a mode sees."""
    found: dict[int, np.ndarray] = {}
    for _, value in _candidates(root):
        for _, leaf in plain_leaves(value, ""):
            if isinstance(leaf, np.ndarray) and leaf.size and id(leaf) not in found:
                span = _byte_range(leaf)
                if any(at in span for at in addresses):
                    found[id(leaf)] = leaf
    return list(found.values())


def _plaintext(values: list[Data], root: nn.Module) -> list[PlaintextWeight]:
    """The tensors and arrays among ``values`` that :func:`_listed` keeps, as plaintext
    weights named where ``forward`` finds them (a complex one is two real ones)."""
    listed = [v for v in values if _listed(v)]
    labels = _labels(root, listed)
    found = []
    for i, value in enumerate(listed):
        name = labels.get(id(value), f"<tensor outside the model #{i}>")
        reason = (
            "a tensor that forward() reads outside the model (a global variable, a variable it "
            "closes over, a class attribute, a cache that an earlier call filled, such as a "
            "functools.lru_cache, or an object the model holds that is not a module, list, "
            "tuple or dict), or a NumPy array it turns into a tensor, neither a parameter nor a "
            "buffer: the lock never sees it, and every export stores it as a constant. If it "
            "holds trained values, make it the weight (or bias) of a supported layer held by "
            "the model; if it is a public constant (a mask, a fixed transform, normalisation "
            "statistics), register it as a buffer (self.register_buffer(name, "
            "torch.as_tensor(value))): plaintext_buffers lists the buffers of two or more "
            "dimensions, at info level"
        )
        found.append(PlaintextWeight(name, tuple(value.shape), reason))
    return found


def run_keyed_checked(
    model_name: str,
    keyed: KeyedModel,
    inputs: Sequence[torch.Tensor],
) -> object:
    """``keyed(*inputs)`` (the inputs, then the key), refused with
    :class:`InvalidArgumentError` when its forward used a parameter (or a tensor that
    requires grad) that ``keyed`` does not hold and that outlives the run: that layer ran
    unlocked, whatever the key.  The tensors and NumPy arrays it read from outside that
    :func:`_listed` keeps are added to ``keyed.plaintext`` (the locked model's ``plaintext``,
    which the protector warns about)."""
    watch = _OutsideWatch(_held_tensors(keyed) | {id(t) for t in inputs})
    with watch:
        outputs = keyed(*inputs)
    held = _held_tensors(keyed) | {id(t) for t in _tensors_in((outputs,))}
    outside = watch.outside(held) if watch.found else []
    dropped = watch.dropped_addresses()
    if dropped:
        seen = {id(v) for v in outside}
        outside += [a for a in _arrays_at(keyed.model, dropped) if id(a) not in seen]
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
