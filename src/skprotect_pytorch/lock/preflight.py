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
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import prune
from torch.nn.utils.weight_norm import WeightNorm

from ..errors import InvalidArgumentError
from .registry import supported_layer_types


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


def _wrong_dtypes(model: nn.Module, layer_filter: Callable[[str, nn.Module], bool]) -> list[str]:
    """``"name (Type, dtype)"`` for every layer to lock with non-float32 floating tensors
    (a layer ``layer_filter`` excludes keeps its dtype: it is not locked)."""
    found, layers = [], []
    for name, module in model.named_modules():
        if not isinstance(module, supported_layer_types()) or any(
            layer == "" or name.startswith(f"{layer}.") for layer in layers
        ):
            continue  # not a layer to lock, or part of one (MultiheadAttention.out_proj)
        layers.append(name)
        if layer_filter(name, module) is False:
            continue
        dtypes = {
            t.dtype
            for t in (*module.parameters(), *module.buffers())
            if t.is_floating_point() and t.dtype != torch.float32
        }
        if dtypes:
            kinds = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
            found.append(f"{name or '<model>'} ({type(module).__name__}, {kinds})")
    return found


def _uninitialised(model: nn.Module) -> list[str]:
    """The names of the lazy parameters and buffers that no call has materialised yet."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    return [name for name, t in tensors if is_lazy(t)]


def check_lockable(
    model: nn.Module, layer_filter: Callable[[str, nn.Module], bool] = lambda name, m: True
) -> None:
    """Raise :class:`InvalidArgumentError` if ``model`` cannot be copied, holds uninitialised
    lazy tensors, or the layers ``layer_filter`` selects cannot be locked, as they are."""
    lazy = _uninitialised(model)
    if lazy:
        raise InvalidArgumentError(
            f"The model has uninitialised lazy tensors ({', '.join(lazy)}): a Lazy* module "
            "(e.g. nn.LazyLinear) creates its weights at its first call, so they hold no trained "
            "values yet. Call the model once on an input, load your trained weights "
            "(model.load_state_dict(...)), then protect."
        )
    for name, module in model.named_modules():
        error = _reparametrisation_error(name, module)
        if error is not None:
            raise error
    wrong = _wrong_dtypes(model, layer_filter)
    if wrong:
        raise InvalidArgumentError(
            f"The lock works in float32, but {len(wrong)} layer(s) to lock are not float32: "
            f"{'; '.join(wrong)}. Convert the model with model.float() and pass float32 "
            "input_tensors (the protected model then computes in float32 and returns float32 "
            "outputs), or leave those layers unlocked with layer_filter."
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
