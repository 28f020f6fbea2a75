"""Layers a model reaches other than through its attributes' direct values: functions in
containers, kept methods of layers, reference cycles, complex layers, globals.  Each is locked
exactly with its key, or refused with a clear error before anything runs unlocked."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.outside import run_keyed_checked


def _lock(model: nn.Module, layer_filter=lambda name, module: True):
    return lock_model(model, layer_filter=layer_filter, secret_rng=np.random.default_rng(0))


def _run(locked, x: torch.Tensor, key: np.ndarray | None = None) -> torch.Tensor:
    key = locked.layout.static_key() if key is None else key
    with torch.no_grad():
        return locked.keyed(x, torch.from_numpy(key))


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


class Helper(nn.Linear):
    """A Linear with a helper of its own (its forward is torch's: the lock takes it)."""

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * (x @ self.weight.T + self.bias)


class Calls(nn.Module):
    """Calls layer ``a`` through ``self.call``, which each case sets, then ``b``."""

    def __init__(self, make_call) -> None:
        super().__init__()
        self.a = Helper(16, 16)
        self.b = nn.Linear(16, 4)
        self.call = make_call(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = self.call
        while not callable(call):  # the case's container: its first item, down to the call
            call = next(iter(call.values())) if isinstance(call, dict) else call[0]
        return self.b(torch.relu(call(x)))


CAPTURING = {
    "list": lambda m: [lambda x: m.a(x)],
    "tuple in dict": lambda m: {"f": (lambda x: m.a(x),)},
    "partial of a lambda": lambda m: functools.partial(lambda x, scale: m.a(x) * scale, scale=1),
    "default argument": lambda m: [lambda x, layer=m.a: layer(x)],
    "captured list": lambda m: (lambda layers: [lambda x: layers[0](x)])([m.a]),
}


@pytest.mark.parametrize("case", CAPTURING)
def test_a_function_capturing_a_layer_inside_a_container_is_refused(case: str) -> None:
    """Only a function directly in an attribute was refused: one in a list, dict or partial
    kept calling the user's unlocked layer 'a' (rel_err 0 with the key zeroed, 'a' alone
    locked), and its true weight went into every export unreported."""
    with pytest.raises(InvalidArgumentError, match=r"attribute\(s\) .*'call.* are functions"):
        _lock(Calls(CAPTURING[case]).eval())


RELOCKED = {
    "partial of the layer": lambda m: functools.partial(m.a),
    "forward in a list": lambda m: [m.a.forward],
    "forward in a partial": lambda m: {"f": functools.partial(m.a.forward)},
}


@pytest.mark.parametrize("case", RELOCKED)
def test_a_layer_or_its_forward_inside_a_container_calls_the_locked_layer(case: str) -> None:
    """A bound forward in a list was bound to the locked layer with torch's Linear.forward,
    which computes garbage with locked weights (rel_err 8.6)."""
    torch.manual_seed(0)
    model, x = Calls(RELOCKED[case]).eval(), torch.randn(4, 16)
    locked = _lock(model, layer_filter=lambda name, module: name == "a")
    expected = _reference(model, x)
    assert_equivalent(_run(locked, x), expected)
    assert_garbage(_run(locked, x, np.zeros(locked.layout.length, np.float32)), expected)


@pytest.mark.parametrize(
    "make_call, method",
    [
        (lambda m: m.a.scaled, "scaled"),
        (lambda m: [functools.partial(m.a._conv_forward)], "_conv_forward"),
    ],
)
def test_a_kept_method_of_a_layer_to_lock_is_refused_naming_it(make_call, method: str) -> None:
    """The copy bound the layer's class method to the locked layer: wrong outputs (rel_err
    35.9), found only by the protector's output check, which did not name the cause."""

    def with_conv(m: Calls):
        m.a = nn.Conv1d(16, 16, 1) if method == "_conv_forward" else m.a
        return make_call(m)

    with pytest.raises(
        InvalidArgumentError, match=rf"'call.*' \({method}\(\) of layer 'a'\) are methods"
    ):
        _lock(Calls(with_conv).eval())


class KeepsAPartsForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.project = self.attn.out_proj.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.attn(x, x, x, need_weights=False)[0])


def test_a_kept_forward_of_a_part_of_a_layer_to_lock_is_refused() -> None:
    """The copy bound it to an unlocked copy of out_proj: it ran without the key (outputs
    equal the original's) and its weights were listed nowhere."""
    with pytest.raises(
        InvalidArgumentError, match=r"'project' \(forward\(\) of layer 'attn.out_proj'\)"
    ):
        _lock(KeepsAPartsForward().eval())


def test_a_kept_method_of_an_excluded_layer_is_fine() -> None:
    """The layer stays as it is: its method computes what it did."""
    torch.manual_seed(0)
    model, x = Calls(lambda m: m.a.scaled).eval(), torch.randn(4, 16)
    locked = _lock(model, layer_filter=lambda name, module: name != "a")
    assert_equivalent(_run(locked, x), _reference(model, x))


def _recursive():
    """A closure that captures itself (and no layer)."""

    def depth(value: object) -> int:
        return 1 + max(map(depth, value), default=0) if isinstance(value, list) else 0

    return depth


class Cycles(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 4)
        self.loop: list = [torch.randn(4, 4)]
        self.loop.append(self.loop)
        self.graph: dict = {"next": None}
        self.graph["next"] = {"back": self.graph}
        self.walk = _recursive()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


def test_reference_cycles_in_plain_attributes_end() -> None:
    """A list holding itself made the coverage walk recurse without end (RecursionError);
    the walks through containers and closures that the lock added end too."""
    torch.manual_seed(0)
    model, x = Cycles().eval(), torch.randn(4, 16)
    locked = _lock(model)
    assert [(w.name, w.shape) for w in locked.plaintext_buffers] == [("loop[0]", (4, 4))]
    assert_equivalent(_run(locked, x), _reference(model, x))


def test_a_complex_layer_is_refused_with_layer_filter_not_float() -> None:
    """The advice was model.float(), which drops the imaginary parts: other outputs."""
    model = nn.Sequential(nn.Linear(16, 16, dtype=torch.cfloat), nn.Linear(16, 4)).eval()
    with pytest.raises(InvalidArgumentError) as err:
        _lock(model)
    message = str(err.value)
    assert "layer_filter=lambda name, module: name not in ['0']" in message
    assert "Convert the model with model.float()" not in message


GLOBAL_LAYER = nn.Linear(16, 16)


class CallsAGlobal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(GLOBAL_LAYER(x)))


def _closing_over_a_layer() -> nn.Module:
    hidden = nn.GRU(16, 16)

    class ClosesOver(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(hidden(x)[0])

    return ClosesOver()


@pytest.mark.parametrize("make", [CallsAGlobal, _closing_over_a_layer])
def test_a_layer_outside_the_model_is_refused_at_the_first_run(make) -> None:
    """The copy cannot see it: the locked model gave the original's outputs with the key (no
    mismatch), other keys changed them (layer 'b' is locked), yet that layer ran unlocked
    and was listed nowhere."""
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(4, 16)
    locked = _lock(model)
    assert_equivalent(_run(locked, x), _reference(model, x))
    assert locked.plaintext == []
    key = torch.from_numpy(locked.layout.static_key())
    with pytest.raises(InvalidArgumentError, match=r"'net' uses parameters that the model does"):
        run_keyed_checked("net", locked.keyed, [x, key])


class Everything(nn.Module):
    """Every supported layer type, a folded BatchNorm, an unlocked layer, an unregistered one
    in a plain list and a locked layer's weight kept in a list (both listed as plaintext)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16))
        self.up = nn.ConvTranspose1d(16, 16, 1)
        self.lstm = nn.LSTM(16, 16, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.emb = nn.Embedding(4, 16)
        self.blocks = [nn.Linear(16, 16)]
        self.head = nn.Linear(16, 4)
        self.tied = [self.head.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.conv(x.transpose(1, 2))).transpose(1, 2) + self.emb.weight[0]
        h = self.attn(h, h, h, need_weights=False)[0] + self.lstm(h)[0]
        return self.head(self.blocks[0](h)) + nn.functional.linear(h, self.tied[0])


def test_a_model_that_holds_all_its_layers_runs_checked_as_usual() -> None:
    torch.manual_seed(0)
    model, x = Everything().eval(), torch.randn(2, 5, 16)
    locked = _lock(model, layer_filter=lambda name, module: name != "up")
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        outputs = run_keyed_checked("net", locked.keyed, [x, key])
    assert_equivalent(outputs, _reference(model, x))
