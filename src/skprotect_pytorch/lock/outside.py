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
it as a buffer.  So are the lists and tuples of floating-point numbers that it turns into a
tensor (``torch.tensor(W_LIST)``) and finds outside the model or in its plain attributes:
existing before the run, unlike one it builds from the inputs (``x.tolist()``).

>>> outputs = run_keyed_checked("net", locked.keyed, [x, key])
"""

from __future__ import annotations

import functools
import gc
import itertools
import types
import weakref
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidArgumentError
from .coverage import MODULE_INTERNALS, SCALAR_TYPES, PlaintextWeight, plain_leaves
from .functions import called_functions, user_code, user_functions
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


_DATA_ARGUMENTS: dict[object, tuple[int, str]] = {
    torch.tensor: (0, "data"),
    torch.as_tensor: (0, "data"),
    torch.asarray: (0, "obj"),
    torch.Tensor.new_tensor: (1, "data"),
}
"""The torch functions that copy Python data into a new tensor, with where their data is (its
position, or its keyword): numbers in a list or tuple are no tensor that a torch function
receives, yet every export stores the tensor they become as a constant."""

Converted = tuple[list | tuple, tuple[int, ...]]
"""A list or tuple that ``forward`` turned into a tensor, and the tensor's shape."""


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

    The lists and tuples that :data:`_DATA_ARGUMENTS` turn into floating-point (complex)
    tensors of :data:`MIN_NUMBERS` numbers or more are kept in ``converted``, strongly (no
    weak reference to a list exists): their ``id`` stays theirs until the run is judged.
    """

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.created: dict[int, weakref.ref[Data]] = {}
        self.found: dict[int, weakref.ref[Data]] = {}
        self.addresses: dict[int, int] = {}
        self.converted: dict[int, Converted] = {}

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
        data_at = _DATA_ARGUMENTS.get(func)
        if data_at is not None:
            at, keyword = data_at
            data = args[at] if len(args) > at else kwargs.get(keyword)
            if (
                isinstance(data, list | tuple)
                and (result.is_floating_point() or result.is_complex())
                and result.numel() >= MIN_NUMBERS
            ):
                self.converted[id(data)] = (data, tuple(result.shape))
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


def _functions(root: nn.Module) -> Iterator[types.FunctionType]:
    """The functions through which ``root``'s forward may reach a tensor: each module class's
    own methods, and the functions and helper objects held in plain attributes (lambdas,
    ``functools.partial``) or as hooks."""
    for module in root.modules():
        yield from user_functions(type(module))
        values = [v for attr, v in vars(module).items() if attr not in MODULE_INTERNALS]
        values += [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
        for value in values:
            for _, leaf in plain_leaves(value, ""):
                yield from user_functions(leaf)


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
                user_code(type(leaf).__module__)
                and not isinstance(leaf, nn.Module | torch.Tensor | type)
                and hasattr(leaf, "__dict__")
            ):
                yield from ((f"{path}.{k}", v) for k, v in vars(leaf).items())


def _candidates(root: nn.Module) -> Iterator[tuple[str, object]]:
    """Where ``root``'s forward may reach a value outside the model, each with its label: the
    NumPy arrays its modules hold in plain attributes (``enc.table``), the attributes of
    objects the model holds (:func:`_held_objects`), class attributes
    (``Net.W``), then the values its functions read, following the user's functions and
    helper objects they read (a module-level ``helper`` that reads a global:
    :func:`.functions.called_functions`).  Each class and function once: searching each
    instance's class again took 7.3 s to name 50 tensors that a model of 2,000 blocks read."""
    for where, value in _attributes(root):
        yield from ((p, a) for p, a in plain_leaves(value, where) if isinstance(a, np.ndarray))
    yield from _held_objects(root)
    classes = dict.fromkeys(cls for module in root.modules() for cls in type(module).__mro__)
    for cls in classes:  # in order: the first place a tensor is found names it
        yield from ((f"{cls.__qualname__}.{attr}", v) for attr, v in vars(cls).items())
    for _, values in called_functions(_functions(root)):
        yield from values


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


def _sequences(value: object, path: str, seen: set[int]) -> Iterator[tuple[str, list | tuple]]:
    """Each list and tuple in ``value``, through lists, tuples and dicts, with the expression
    that reaches it (``W[0]``, ``TABLES['w']``); each container once (``seen`` holds their
    ``id``), and one of numbers and strings only not entered (a vocabulary)."""
    if not isinstance(value, list | tuple | dict) or id(value) in seen:
        return
    seen.add(id(value))
    if not isinstance(value, dict):
        yield path, value
    items = value.values() if isinstance(value, dict) else value
    if SCALAR_TYPES.issuperset(map(type, items)):
        return
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        yield from _sequences(item, f"{path}[{key!r}]", seen)


def _floats(sequence: list | tuple) -> list[object]:
    """The floating-point and complex numbers in ``sequence`` and the lists and tuples in it:
    no integer (a shape, an index) nor bool."""
    found: list[object] = []
    for item in sequence:
        if isinstance(item, list | tuple):
            found += _floats(item)
        elif isinstance(item, float | complex | np.floating | np.complexfloating):
            found.append(item)
    return found


def _trained_numbers(sequence: list | tuple) -> bool:
    """Whether ``sequence`` holds :data:`MIN_NUMBERS` floating-point numbers or more, not all
    equal: what :func:`_listed` keeps of a tensor."""
    numbers = _floats(sequence)
    return len(numbers) >= MIN_NUMBERS and any(n != numbers[0] for n in numbers)


def _converted_sequences(converted: Iterable[Converted], root: nn.Module) -> list[PlaintextWeight]:
    """The lists and tuples of trained numbers (:func:`_trained_numbers`) among ``converted``
    that ``forward`` finds in ``root``'s plain attributes or outside the model
    (:func:`_candidates`), as plaintext weights named where: those are the ones that existed
    before the run; one that it built from the inputs (``x.tolist()``) is found nowhere."""
    wanted = {id(s): shape for s, shape in converted if _trained_numbers(s)}
    labels: dict[int, str] = {}
    seen: set[int] = set()
    for label, value in itertools.chain(_attributes(root), _candidates(root)) if wanted else ():
        for path, sequence in _sequences(value, label, seen):
            if id(sequence) in wanted:
                labels.setdefault(id(sequence), path)
        if len(labels) == len(wanted):
            break
    reason = (
        "a list or tuple of floating-point numbers that forward() turns into a tensor "
        "(torch.tensor, torch.as_tensor, torch.asarray, Tensor.new_tensor), kept in a global "
        "variable, a variable it closes over, a class attribute or a plain attribute: the lock "
        "never sees it, and every export stores its numbers as a constant. If it holds trained "
        "values, make them the weight (or bias) of a supported layer held by the model; if it "
        "is a public constant, register it as a buffer (self.register_buffer(name, "
        "torch.tensor(value))) and use the buffer in forward()"
    )
    return [PlaintextWeight(labels[i], shape, reason) for i, shape in wanted.items() if i in labels]


def run_keyed_checked(
    model_name: str,
    keyed: KeyedModel,
    inputs: Sequence[torch.Tensor],
) -> object:
    """``keyed(*inputs)`` (the inputs, then the key), refused with
    :class:`InvalidArgumentError` when its forward used a parameter (or a tensor that
    requires grad) that ``keyed`` does not hold and that outlives the run: that layer ran
    unlocked, whatever the key.  The tensors and NumPy arrays it read from outside that
    :func:`_listed` keeps, and the lists and tuples of trained numbers it turned into tensors
    (:func:`_converted_sequences`), are added to ``keyed.plaintext`` (the locked model's
    ``plaintext``, which the protector warns about)."""
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
    found_plain += _converted_sequences(watch.converted.values(), keyed.model)
    keyed.plaintext.extend(w for w in found_plain if (w.name, w.shape) not in known)
    return outputs
