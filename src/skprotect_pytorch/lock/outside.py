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


def _functions(root: nn.Module) -> Iterator[types.FunctionType]:
    """The functions through which ``root``'s forward may reach a tensor: each module class's
    own methods, and the functions held in plain attributes (lambdas, ``functools.partial``)."""
    for module in root.modules():
        for cls in type(module).__mro__:
            if cls.__module__.startswith("torch."):
                break
            yield from (f for f in vars(cls).values() if isinstance(f, types.FunctionType))
        for attr, value in vars(module).items():
            if attr not in MODULE_INTERNALS:
                for _, leaf in plain_leaves(value, ""):
                    if isinstance(leaf, types.FunctionType):
                        yield leaf


def _path_in(value: object, tensor: torch.Tensor) -> str | None:
    """``""`` when ``value`` is ``tensor``, ``".name"`` when it is a module holding it under
    that name, else ``None``."""
    if value is tensor:
        return ""
    if isinstance(value, nn.Module):
        for name, t in (*value.named_parameters(), *value.named_buffers()):
            if t is tensor:
                return f".{name}"
    return None


def _candidates(root: nn.Module) -> Iterator[tuple[str, object]]:
    """Where ``root``'s forward may reach a value outside the model, each with its label: class
    attributes (``Net.W``), variables its functions close over (``make.<locals>.Net.forward:
    V``) and the globals they read (``module.W``)."""
    for module in root.modules():
        for cls in type(module).__mro__:
            yield from ((f"{cls.__qualname__}.{attr}", v) for attr, v in vars(cls).items())
    for fn in _functions(root):
        cells = zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True)
        for var, cell in cells:
            with contextlib.suppress(ValueError):  # an empty cell
                yield f"{fn.__qualname__}: {var}", cell.cell_contents
        module_name = fn.__globals__.get("__name__", "?")
        for var in fn.__code__.co_names:
            if var in fn.__globals__:
                yield f"{module_name}.{var}", fn.__globals__[var]


def _where(tensor: torch.Tensor, root: nn.Module) -> str:
    """Where ``forward`` finds ``tensor`` (:func:`_candidates`), or ``""``."""
    for label, value in _candidates(root):
        path = _path_in(value, tensor)
        if path is not None:
            return label + path
    return ""


def _plaintext(tensors: list[torch.Tensor], root: nn.Module) -> list[PlaintextWeight]:
    """The floating-point matrices (two or more dimensions) among ``tensors``, as plaintext
    weights named where ``forward`` finds them."""
    found = []
    for i, tensor in enumerate(t for t in tensors if t.dim() >= 2 and t.is_floating_point()):
        name = _where(tensor, root) or f"<tensor outside the model #{i}>"
        reason = (
            "a tensor that forward() reads outside the model (a global variable, a variable it "
            "closes over or a class attribute), neither a parameter nor a buffer: the lock "
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
        found = ", ".join(f"{_where(t, keyed.model) or 'shape'} {tuple(t.shape)}" for t in weights)
        raise InvalidArgumentError(
            f"The forward() of '{model_name}' uses parameters that the model does not hold "
            f"({found}): a layer it reaches through a global variable, a variable it closes over "
            "or a class attribute, or one kept where the lock does not look (in a custom "
            "object, or a plain attribute of an unregistered module), not through an attribute "
            "of the model; or a tensor that requires grad reached that way. The lock copies the "
            "model and locks the layers the copy holds, so that layer would run unlocked "
            "whatever the key, and every export would store its weights as they are. Assign the "
            "layer to the model (self.name = layer, or an nn.ModuleList) and call it through "
            "self, then protect."
        )
    known = {(w.name, w.shape) for w in keyed.plaintext}  # a second run lists nothing twice
    found_plain = _plaintext(outside, keyed.model)
    keyed.plaintext.extend(w for w in found_plain if (w.name, w.shape) not in known)
    return outputs
