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

    A torch function mode is thread-local: other threads' models are not seen.
    """

    def __init__(self, known: set[int]) -> None:
        super().__init__()
        self.known = known
        self.found: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for param in _parameters_in((args, kwargs)):
            if id(param) not in self.known:
                self.found.setdefault(id(param), param)
        return func(*args, **kwargs)


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
    hold: that layer ran unlocked, whatever the key."""
    watch = _ParameterWatch(_held_tensors(keyed))
    with watch:
        outputs = keyed(*inputs)
    if watch.found:
        found = ", ".join(f"shape {tuple(t.shape)}" for t in watch.found.values())
        raise InvalidArgumentError(
            f"The forward() of '{model_name}' uses parameters that the model does not hold "
            f"({found}): a layer it reaches through a global variable or a variable it closes "
            "over, not through an attribute of the model. The lock copies the model and locks "
            "the layers the copy holds, so that layer would run unlocked whatever the key, and "
            "every export would store its weights as they are. Assign the layer to the model "
            "(self.name = layer, or an nn.ModuleList) and call it through self, then protect."
        )
    return outputs
