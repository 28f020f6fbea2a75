"""Layers as users ship them: wrapped by torch.compile, called with the keyword ``input=``,
complex-valued.  Each is locked exactly with its key, or refused with a clear error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model


def _lock(model: nn.Module, layer_filter=lambda name, module: True):
    return lock_model(model, layer_filter=layer_filter, secret_rng=np.random.default_rng(0))


def _run(locked, x: torch.Tensor, key: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return locked.keyed(x, torch.from_numpy(key))


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


class Net(nn.Module):
    def __init__(self, a: nn.Module) -> None:
        super().__init__()
        self.a = a
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _assert_each_slot_matters(locked, x: torch.Tensor, expected: torch.Tensor) -> None:
    """Every permutation slot of the key changes the output: no layer runs without its key
    (one slot alone garbles less than the whole key: 0.3 of the output's norm, not 0)."""
    for slot in range(len(locked.layout.perm_sizes)):
        assert_garbage(_run(locked, x, _scrambled(locked, slot)), expected, min_rel=0.1)


def _scrambled(locked, slot: int) -> np.ndarray:
    """The static key with permutation slot ``slot`` replaced by another permutation."""
    key = locked.layout.static_key().copy()
    sizes = locked.layout.perm_sizes
    start = sum(sizes[:slot])
    key[start : start + sizes[slot]] = np.random.default_rng(1).permutation(sizes[slot])
    return key


@pytest.mark.parametrize("where", ["layer", "model"])
def test_a_compiled_layer_is_locked_and_needs_its_key(where: str) -> None:
    """The wrapper's compiled forward stayed bound to the unlocked layer: the locked model
    ignored layer 'a's key (and torch.export stored its plaintext weight)."""
    torch.manual_seed(0)
    plain = Net(nn.Linear(16, 16)).eval()
    x = torch.randn(4, 16)
    compiled = Net(torch.compile(plain.a)).eval()
    compiled.b = plain.b
    model = torch.compile(compiled) if where == "model" else compiled
    locked = _lock(model)
    assert_equivalent(_run(locked, x, locked.layout.static_key()), _reference(plain, x))
    _assert_each_slot_matters(locked, x, _reference(plain, x))
    assert [d.name for d in locked.locked_layers] == ["a", "b"]
    assert not any(type(m).__name__ == "OptimizedModule" for m in locked.keyed.modules())


def test_a_compiled_layer_is_named_without_the_wrapper_for_layer_filter() -> None:
    """The dtype check and the lock ask ``layer_filter`` about the same name."""
    model = Net(torch.compile(nn.Linear(16, 16).double())).eval()
    with pytest.raises(InvalidArgumentError, match=r"not float32: a \(Linear, float64\)"):
        _lock(model)
    locked = _lock(model, layer_filter=lambda name, module: name != "a")
    assert [d.name for d in locked.locked_layers] == ["b"]


class KeywordCalls(nn.Module):
    """Calls its layers with torch's parameter name, ``input=``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(16, 16, 3)
        self.up = nn.ConvTranspose1d(16, 16, 2, stride=2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(input=torch.relu(self.conv(input=x)), output_size=[11])
        return self.fc(input=y.transpose(1, 2))


def test_layers_called_with_the_input_keyword_lock_exactly() -> None:
    """It raised TypeError: LockedLinear.forward() got an unexpected keyword 'input'."""
    torch.manual_seed(0)
    model, x = KeywordCalls().eval(), torch.randn(2, 16, 7)
    locked = _lock(model)
    assert_equivalent(_run(locked, x, locked.layout.static_key()), _reference(model, x))


def test_a_complex_layer_is_refused() -> None:
    """It was locked with its imaginary parts dropped (a ComplexWarning only)."""
    model = nn.Sequential(nn.Linear(16, 16, dtype=torch.cfloat), nn.Linear(16, 4)).eval()
    with pytest.raises(InvalidArgumentError, match=r"not float32: 0 \(Linear, complex64\)"):
        _lock(model)


def test_a_quantized_layers_packed_weight_is_listed_as_plaintext() -> None:
    """A dynamically quantized Linear keeps its int8 weight outside its parameters: the lock
    leaves it as it is (TorchScript stores it), but the plaintext list was empty."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with warnings.catch_warnings():  # torch.ao's quantization is deprecated for torchao
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    quantized[2] = nn.Linear(16, 4)
    locked = _lock(quantized.eval())
    assert [d.name for d in locked.locked_layers] == ["2"]
    [entry] = locked.plaintext
    assert (entry.name, entry.shape) == ("0._packed_params._packed_params", (16, 16))
    assert "packed weight" in entry.reason and "protect the float32 model" in entry.reason
    x = torch.randn(4, 16)
    assert_equivalent(_run(locked, x, locked.layout.static_key()), _reference(quantized, x))


class IteratesAList(nn.Module):
    """Registers its layers, then calls them through a plain list, a dict and a bound method."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Conv1d(16, 16, 1)
        self.c = nn.Linear(16, 8)
        self.d = nn.Linear(8, 4)
        self.order = [self.a, self.b]
        self.heads = {"out": (self.c,)}
        self.finish = self.d.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.order:
            x = torch.relu(layer(x.transpose(0, 1)))
        return self.finish(torch.relu(self.heads["out"][0](x)))


def test_layers_called_through_a_plain_list_are_the_locked_ones() -> None:
    """Only the registered children were replaced: the list, the dict and the bound method
    kept the unlocked layers, so every key gave the original's outputs (rel_err 0)."""
    torch.manual_seed(0)
    model, x = IteratesAList().eval(), torch.randn(16, 16)
    locked = _lock(model)
    assert_equivalent(_run(locked, x, locked.layout.static_key()), _reference(model, x))
    _assert_each_slot_matters(locked, x, _reference(model, x))
    inner = locked.keyed.model
    assert inner.order == [inner.a, inner.b] and inner.heads["out"][0] is inner.c
    assert inner.finish.__self__ is inner.d


class Unregistered(nn.Module):
    """A layer in a plain list (not an nn.ModuleList), a tensor that is no buffer, and a
    locked layer's weight kept in a plain list that ``forward`` reads."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = [nn.Linear(16, 16)]
        self.proj = torch.randn(16, 16)
        self.head = nn.Linear(16, 16)
        self.tied = [self.head.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(torch.relu(self.blocks[0](x @ self.proj)))
        return torch.nn.functional.linear(h, self.tied[0])


def test_weights_held_in_plain_attributes_are_listed_as_plaintext() -> None:
    """The lock cannot see them and every export stores them, but both lists were empty."""
    model = Unregistered().eval()
    locked = _lock(model)
    assert [d.name for d in locked.locked_layers] == ["head"]
    assert [(w.name, w.shape) for w in locked.plaintext] == [
        ("blocks[0].weight", (16, 16)),
        ("tied[0]", (16, 16)),
    ]
    assert "nn.ModuleList" in locked.plaintext[0].reason
    assert "the original of a tensor of locked layer 'head'" in locked.plaintext[1].reason
    assert [(w.name, w.shape) for w in locked.plaintext_buffers] == [("proj", (16, 16))]
    assert "neither a parameter nor a buffer" in locked.plaintext_buffers[0].reason
    x = torch.randn(4, 16)
    assert_equivalent(_run(locked, x, locked.layout.static_key()), _reference(model, x))


class ScriptedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.jit.script(nn.Linear(16, 16))
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_torchscript_is_refused_or_reported_with_the_way_out() -> None:
    """A scripted model gave "No layer of the model was locked (no supported layer)", and a
    scripted layer's weight "RecursiveScriptModule is not a layer type the lock supports"."""
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with pytest.raises(
        InvalidArgumentError, match=r"TorchScript module.*Pass the eager nn\.Module"
    ):
        _lock(torch.jit.script(model))
    [entry] = _lock(ScriptedLayer().eval()).plaintext
    assert entry.name == "a.weight"
    assert entry.reason.startswith("a TorchScript module (Linear, from torch.jit.script or trace)")


class CallsThroughALambda(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)
        self.first = lambda x: self.a(x)
        self.act = lambda x: torch.relu(x)  # captures no layer: fine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.first(x)))


def test_a_lambda_calling_a_layer_is_refused_with_the_way_out() -> None:
    """The copy kept the lambda, bound to the user's model: layer 'a' ran unlocked, and its key
    slots changed nothing (rel_err 0 with them scrambled)."""
    with pytest.raises(InvalidArgumentError, match=r"attribute\(s\) 'first' are functions.*method"):
        _lock(CallsThroughALambda().eval())
