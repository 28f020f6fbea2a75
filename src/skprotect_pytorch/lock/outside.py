"""Weights that a locked model's forward reaches outside the model: a layer called through a
global variable or a variable that ``forward`` closes over, not through an attribute.

The lock copies the model and replaces the layers that the copy holds; such a layer is not
in the copy, so it runs unlocked whatever the key (the locked model still gave the original's
outputs with the true key: no output check saw it) and every export stores its weights as
they are.  Only a run shows it: :func:`run_keyed_checked` runs the locked model once, as the
protector's first eager run does, and refuses any parameter that the model does not hold.

>>> outputs = run_keyed_checked("net", locked.keyed, [x, key])
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidArgumentError
from .coverage import MODULE_INTERNALS, plain_leaves


def _parameters_in(values: Iterable[object]) -> Iterator[nn.Parameter]:
    """The parameters among ``values``, also inside lists, tuples and dicts (an LSTM's flat
    weights); a loop, not ``torch.utils._pytree``, which took 20 us per torch call."""
    for value in values:
        if isinstance(value, torch.Tensor):
            if isinstance(value, nn.Parameter):
                yield value
        elif isinstance(value, list | tuple):
            yield from _parameters_in(value)
        elif isinstance(value, dict):
            yield from _parameters_in(value.values())


class _ParameterWatch(TorchFunctionMode):
    """Records the parameters that torch functions receive and ``known`` (``id``\\ s) lacks.

    Weakly: a parameter that ``forward`` creates and drops (``x * nn.Parameter(c)``) is gone
    after the run, while a layer reached through a global or a closure stays alive.  A torch
    function mode is thread-local: other threads' models are not seen.
    """

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.found: dict[int, weakref.ref[torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for param in _parameters_in((args, kwargs)):
            if id(param) not in self.known:
                self.found[id(param)] = weakref.ref(param)  # a freed one's id may come again
        return func(*args, **kwargs)

    def outside(self, held: set[int]) -> list[torch.Tensor]:
        """The recorded parameters still alive that ``held`` (``id``\\ s, after the run) lacks:
        those the model neither holds nor created and dropped in its forward."""
        alive = (ref() for ref in self.found.values())
        return [p for p in alive if p is not None and id(p) not in held]


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


def run_keyed_checked(
    model_name: str,
    keyed: nn.Module,
    inputs: Sequence[torch.Tensor],
) -> object:
    """``keyed(*inputs)`` (the inputs, then the key), refused with
    :class:`InvalidArgumentError` when its forward used a parameter that ``keyed`` does not
    hold and that outlives the run: that layer ran unlocked, whatever the key."""
    watch = _ParameterWatch(_held_tensors(keyed))
    with watch:
        outputs = keyed(*inputs)
    outside = watch.outside(_held_tensors(keyed)) if watch.found else []
    if outside:
        found = ", ".join(f"shape {tuple(t.shape)}" for t in outside)
        raise InvalidArgumentError(
            f"The forward() of '{model_name}' uses parameters that the model does not hold "
            f"({found}): a layer it reaches through a global variable, a variable it closes over "
            "or a class attribute, or one kept where the lock does not look (in a custom "
            "object, or a plain attribute of an unregistered module), not through an attribute "
            "of the model. The lock copies the model and locks the layers the copy holds, so "
            "that layer would run unlocked whatever the key, and every export would store its "
            "weights as they are. Assign the layer to the model "
            "(self.name = layer, or an nn.ModuleList) and call it through self, then protect."
        )
    return outputs
