"""Why a locked model fails or differs where the original works, said in terms of the user's
model (which layer, which attribute) and with what to do, for the protector's first eager run.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import SkProtectError, UnsupportedLayerError, VerificationError
from ..export.base import first_line
from .batchnorm import traced_graph
from .registry import supported_layer_types

_LOCK_PACKAGE = __name__.rpartition(".")[0]
# with the separator: torch_geometric's or torchvision's code is not torch's
_LIBRARY_DIRS = tuple(
    os.path.join(Path(m.__file__).resolve().parent, "")
    for m in (torch, sys.modules[__name__.split(".")[0]])
)
_SET_CLASS = object.__dict__["__class__"].__set__


def _user_code(filename: str) -> bool:
    """Whether ``filename`` is the user's code, neither torch's nor the protector's."""
    return not str(Path(filename).resolve()).startswith(_LIBRARY_DIRS)


@contextlib.contextmanager
def _class_reads(
    layers: dict[str, nn.Module], answers: dict[str, type], found: list[str]
) -> Iterator[None]:
    """Record in ``found`` the names of ``layers`` whose class the user's code asks for
    (``isinstance(self.fc, nn.Linear)``, ``self.fc.__class__``), answering ``answers[name]``:
    ``isinstance`` reads ``__class__`` once the object's type fails the test, so each layer
    gets, for the block, a subclass of its own type whose ``__class__`` notes the read."""

    def recording(cls: type, name: str) -> type:
        def read(_self: object) -> type:
            if name not in found and _user_code(sys._getframe(1).f_code.co_filename):
                found.append(name)
            return answers[name]

        return type(cls.__name__, (cls,), {"__class__": property(read)})

    originals = {name: type(layer) for name, layer in layers.items()}
    try:
        for name, layer in layers.items():
            _SET_CLASS(layer, recording(originals[name], name))
        yield
    finally:
        for name, layer in layers.items():
            _SET_CLASS(layer, originals[name])


def type_checked_layers(
    root: nn.Module, originals: dict[str, type], matches: Callable[[], bool]
) -> list[str]:
    """The locked layers of ``root`` (named in ``originals``, with their original types) whose
    type the model's forward() checks and that make it fail or differ: ``isinstance(self.fc,
    nn.Linear)`` is ``False`` for a locked layer, another class, so forward() takes another
    branch. ``matches`` runs the locked model once and says whether it gives the original's
    outputs: it runs once noting the checks, then once with the checked layers answering
    their original types, which must then match (a check that changes nothing, as in a loop
    over ``self.modules()`` looking for dropouts, is not the cause)."""
    layers = {name: root.get_submodule(name) for name in originals}
    found: list[str] = []
    noting = _class_reads(layers, {n: type(m) for n, m in layers.items()}, found)
    with noting, contextlib.suppress(Exception):  # it failed or differed just before
        matches()
    if not found:
        return []
    answers = {n: originals[n] if n in found else type(m) for n, m in layers.items()}
    with _class_reads(layers, answers, []):
        try:
            return found if matches() else []
        except Exception:  # still fails: something else breaks it
            return []


def type_check_error(
    model_name: str, layers: list[str], what: str, error: type[SkProtectError]
) -> SkProtectError:
    """The ``error`` for a locked model that ``what`` (fails on the examples, or differs from
    the original) because forward() checks the types of ``layers``."""
    names = ", ".join(f"'{n}'" for n in layers)
    return error(
        f"The locked model of '{model_name}' {what}: its forward() checks the type of "
        f"layer(s) {names} (isinstance(self.layer, nn.LSTM), layer.__class__), and a locked "
        "layer is another class (LockedLinear, LockedConv, LockedLSTM, ...), so the check is "
        "False and forward() takes another branch. Decide the branch from something the "
        "locked layer keeps (a flag set in __init__, or its hyper-parameters such as "
        "hidden_size or proj_size), or leave those layers unlocked with layer_filter (e.g. "
        f"lambda name, module: name not in {{{names}}}), and protect again."
    )


def _missing_attribute(err: AttributeError, root: nn.Module) -> tuple[str, nn.Module, str] | None:
    """``(layer name, locked layer, attribute)`` when ``err`` was raised by the
    ``nn.Module.__getattr__`` of a locked replacement inside ``root``, else ``None``."""
    names = {id(m): n for n, m in root.named_modules()}
    found = None
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if (
            frame.f_code.co_name == "__getattr__"
            and id(owner) in names
            and type(owner).__module__.startswith(_LOCK_PACKAGE)
        ):
            found = names[id(owner)], owner, str(frame.f_locals.get("name", "?"))
        tb = tb.tb_next
    return found


def eager_failure(model_name: str, root: nn.Module, err: Exception) -> SkProtectError:
    """The error to raise when the locked model ``root`` raised ``err`` on inputs on which the
    original ran: our own errors as they are, anything else as an
    :class:`UnsupportedLayerError` naming the layer and attribute when it can."""
    if isinstance(err, SkProtectError):
        return err
    if isinstance(err, AttributeError):
        found = _missing_attribute(err, root)
        if found is not None:
            name, layer, attribute = found
            label = f"layer '{name}'" if name else "the model itself"
            return UnsupportedLayerError(
                f"The forward() of '{model_name}' uses attribute '{attribute}' of {label}, "
                f"which the locked layer ({type(layer).__name__}) does not have. Exclude that "
                f"layer with layer_filter (e.g. lambda name, module: name != '{name}'), or "
                "change forward() to only call the layer."
            )
    return UnsupportedLayerError(
        f"The locked model of '{model_name}' fails on input_tensors where the original runs "
        f"({first_line(err)}). Its forward() probably uses a locked layer other than by calling "
        "it (reads its attributes or weights, or calls its methods); exclude that layer with "
        "layer_filter (docs/api.md, Supported layers)."
    )


def _nested_tensor_encoders(model: nn.Module) -> list[str]:
    """The ``nn.TransformerEncoder`` layers that take torch's nested-tensor path in eval mode."""
    return [
        name or "<model>"
        for name, module in model.named_modules()
        if isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False)
    ]


def mismatch_error(model_name: str, original: nn.Module, rel_diff: float) -> VerificationError:
    """The error for a locked model whose eager outputs differ from the original's."""
    head = (
        f"The locked model of '{model_name}' differs from the original by {rel_diff:.2e} "
        "(relative) before export."
    )
    encoders = _nested_tensor_encoders(original)
    if encoders:
        return VerificationError(
            f"{head} Its nn.TransformerEncoder {', '.join(encoders)} was built with "
            "enable_nested_tensor=True: given a src_key_padding_mask in eval mode, torch runs it "
            "on nested tensors and returns zeros at the padded positions, which the locked model "
            "(it cannot use torch's fused fast path) does not. Build the encoder with "
            "enable_nested_tensor=False (the outputs at real tokens are unchanged) and protect "
            "again."
        )
    read = _layers_read_directly(original)
    if read:
        names = ", ".join(f"'{name}'" for name in read)
        return VerificationError(
            f"{head} Its forward() reads the tensors of layer(s) {names} directly (e.g. "
            "F.linear(x, self.fc.weight.t()) for tied weights), and a locked layer's tensors "
            "are the locked ones. Leave those layers unlocked with layer_filter (e.g. "
            f"lambda name, module: name not in {{{names}}}), or only call them, and protect again."
        )
    return VerificationError(
        f"{head} The model probably reads a layer's weights outside its forward(); exclude that "
        "layer with layer_filter. Two other causes: a forward() that is random in eval mode "
        "(torch.randn, torch.rand_like, …) or that changes its inputs in place (x.mul_(2)) "
        "gives other outputs at each run; make it deterministic and out-of-place. See the log "
        "for details."
    )


def _layers_read_directly(model: nn.Module) -> list[str]:
    """The supported layers whose tensors ``forward`` reads other than by calling the layer
    (``self.fc.weight``), outermost layer first, as torch.fx sees them; none when fx cannot
    trace the model (data-dependent control flow)."""
    try:
        graph = traced_graph(model)
    except Exception:
        return []
    layers = [n for n, m in model.named_modules() if isinstance(m, supported_layer_types())]
    found: list[str] = []
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        target = str(node.target)
        layer = next((n for n in layers if n and target.startswith(f"{n}.")), None)
        if layer is not None and layer not in found:
            found.append(layer)
    return found
