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
- A function attribute (a lambda or closure) that captured the model's layers would keep
  calling the user's own, unlocked layers from the locked copy (``copy.deepcopy`` does not copy
  functions): it is refused, with how to write it instead.
- A ``torch.compile`` wrapper (``OptimizedModule``) is replaced by the module it wraps
  (:func:`strip_compile_wrappers`): its compiled forward stays bound to the module it was built
  on, so a locked copy would still run the unlocked layer, and every export traces eager code.
"""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import prune
from torch.nn.utils.weight_norm import WeightNorm

from ..errors import InvalidArgumentError
from .coverage import MODULE_INTERNALS
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
    """Replace, in place, every ``torch.compile`` wrapper in ``model`` by the module it wraps,
    and return the (unwrapped) root.

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
    return root


def _wrong_dtypes(model: nn.Module, layer_filter: Callable[[str, nn.Module], bool]) -> list[str]:
    """``"name (Type, dtype)"`` for every layer to lock with non-float32 floating or complex
    tensors (a layer ``layer_filter`` excludes keeps its dtype: it is not locked).  Complex
    ones too: the lock's float64 arithmetic silently dropped their imaginary parts."""
    found, layers = [], []
    for name, module in uncompiled_named_modules(model):
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
            if (t.is_floating_point() or t.is_complex()) and t.dtype != torch.float32
        }
        if dtypes:
            kinds = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
            found.append(f"{name or '<model>'} ({type(module).__name__}, {kinds})")
    return found


def _captures_a_layer(fn: types.FunctionType) -> bool:
    """Whether ``fn``'s closure holds a module that is or contains a layer the lock replaces."""
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return any(
        isinstance(c, nn.Module)
        and any(isinstance(m, supported_layer_types()) for m in c.modules())
        for c in cells
    )


def _layer_closures(model: nn.Module) -> list[str]:
    """The attributes of ``model``'s modules that are functions (lambdas, closures) calling
    its layers through captured variables: ``copy.deepcopy`` keeps a function as it is, so the
    locked copy would call the user's unlocked layers, whatever the key."""
    return [
        f"{name}.{attr}" if name else attr
        for name, module in uncompiled_named_modules(model)
        for attr, value in vars(module).items()
        if attr not in MODULE_INTERNALS
        and isinstance(value, types.FunctionType)
        and _captures_a_layer(value)
    ]


def _uninitialised(model: nn.Module) -> list[str]:
    """The names of the lazy parameters and buffers that no call has materialised yet."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    return [name for name, t in tensors if is_lazy(t)]


def check_lockable(
    model: nn.Module, layer_filter: Callable[[str, nn.Module], bool] = lambda name, m: True
) -> None:
    """Raise :class:`InvalidArgumentError` if ``model`` is TorchScript, cannot be copied, holds
    uninitialised lazy tensors, or the layers ``layer_filter`` selects cannot be locked, as
    they are."""
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
    for name, module in uncompiled_named_modules(model):
        error = _reparametrisation_error(name, module)
        if error is not None:
            raise error
    closures = _layer_closures(model)
    if closures:
        raise InvalidArgumentError(
            f"The model's attribute(s) {', '.join(map(repr, closures))} are functions (lambdas "
            "or closures) that call its layers through captured variables: a copy of the model "
            "keeps such a function as it is, so the locked model would still run your unlocked "
            "layers, whatever the key. Make each a method (def name(self, x): ...) or call the "
            "layer directly in forward, then protect."
        )
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
