"""Models as users write them: a layer registered under two names is one locked layer, the
plaintext report names only what is really stored unlocked (and the matrix buffers apart), a
mismatch names the layer whose weights forward() reads, and a never-called lazy module is
refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.coverage import PlaintextWeight
from skprotect_pytorch.lock.diagnose import mismatch_error
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


class Aliased(nn.Module):
    """``self.b = self.a``: one Linear reached through two attribute names, called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = self.a
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _lock(model: nn.Module, layer_filter=lambda name, module: True):
    return lock_model(model, layer_filter=layer_filter, secret_rng=np.random.default_rng(0))


def test_a_layer_under_two_names_is_locked_once_and_not_reported_plain() -> None:
    model = Aliased().eval()
    locked = _lock(model)
    assert [d.name for d in locked.locked_layers] == ["a", "head"]
    assert locked.plaintext == []  # was: b.weight, "Linear is not a layer type the lock supports"
    assert locked.keyed.model.a is locked.keyed.model.b  # both names reach the locked layer
    stored = [p for p in locked.keyed.parameters() if p.shape == model.a.weight.shape]
    assert stored and not any(torch.equal(p, model.a.weight) for p in stored)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        expected = model(x)
        assert_equivalent(locked.keyed(x, key), expected)
        assert_garbage(locked.keyed(x, torch.zeros_like(key)), expected)


def test_an_excluded_layer_under_two_names_is_reported_once_with_its_reason() -> None:
    locked = _lock(Aliased().eval(), layer_filter=lambda name, module: name != "a")
    assert locked.plaintext == [
        PlaintextWeight("a.weight", (16, 16), "layer 'a' was not locked: excluded by layer_filter")
    ]


class AliasedAttention(nn.Module):
    """An attention with ``add_bias_kv`` (rows its lock keeps) under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, add_bias_kv=True, batch_first=True)
        self.again = self.attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(x, x, x, need_weights=False)[0]
        return self.again(h, h, h, need_weights=False)[0]


def test_rows_kept_by_an_aliased_locked_layer_are_listed_once() -> None:
    locked = _lock(AliasedAttention().eval())
    assert [w.name for w in locked.plaintext] == ["attn.bias_k", "attn.bias_v"]


class Buffered(nn.Module):
    """A trained projection kept as a buffer, a 1-D mean, an integer table and a locked layer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(16, 16))
        self.register_buffer("mean", torch.randn(16))
        self.register_buffer("order", torch.arange(16).reshape(4, 4))
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x - self.mean) @ self.proj)


def test_a_matrix_buffer_is_listed_as_stored_unlocked() -> None:
    model = Buffered().eval()
    locked = _lock(model)
    reason = "buffer of Buffered, not a parameter: the lock keys parameters only"
    assert locked.plaintext_buffers == [PlaintextWeight("proj", (16, 16), reason)]
    assert locked.plaintext == []  # the buffer fails no gate: it may be a public table
    assert torch.equal(locked.keyed.model.proj, model.proj)  # what the list says: as it is
    assert _lock(nn.Sequential(nn.Linear(16, 4))).plaintext_buffers == []


class TransposedTied(nn.Module):
    """An autoencoder whose decoder is the encoder's weight transposed, read in forward()."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(16, 8)
        self.mid = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mid(torch.relu(self.enc(x))))
        return torch.nn.functional.linear(h, self.enc.weight.t())


def test_a_mismatch_names_the_layer_whose_weights_forward_reads() -> None:
    model = TransposedTied().eval()
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    locked = _lock(model)
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        assert_garbage(locked.keyed(x, key), model(x))  # what the protector then reports
    message = str(mismatch_error("tied", model, 16.4))
    assert "reads the tensors of layer(s) 'enc' directly" in message
    assert "lambda name, module: name not in {'enc'}" in message
    fixed = _lock(model, layer_filter=lambda name, module: name not in {"enc"})  # as it says
    assert [d.name for d in fixed.locked_layers] == ["mid"]
    with torch.no_grad():
        assert_equivalent(fixed.keyed(x, torch.from_numpy(fixed.layout.static_key())), model(x))


class LazyNet(nn.Module):
    """A lazy first layer: its weights exist only after the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.LazyLinear(16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_a_lazy_module_never_called_is_refused_before_anything_runs(tmp_path, monkeypatch) -> None:
    """It was locked with the random weights of the protector's own first call."""
    model = LazyNet().eval()
    message = r"uninitialised lazy tensors \(a\.weight, a\.bias\).*Call the model once"
    with pytest.raises(InvalidArgumentError, match=message):
        _lock(model)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidArgumentError, match=message):
        SkProtectorPyTorch(application_name="r1").protect_new_model(
            model, "lazy", [torch.randn(2, 8)], model_export_formats=EF.ONNX
        )
    assert isinstance(model.a, nn.LazyLinear)  # the user's model is left as it was
    assert not (tmp_path / "outputs" / "r1" / "lazy").exists()
    model(torch.randn(2, 8))  # materialised: now it locks
    assert [d.name for d in _lock(model).locked_layers] == ["a", "b"]


class Noisy(nn.Module):
    """Adds fresh noise at every call, in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + 0.1 * torch.randn_like(x))


def test_a_mismatch_without_a_weight_read_names_the_other_causes() -> None:
    message = str(mismatch_error("noisy", Noisy().eval(), 0.07))
    assert "reads the tensors of layer(s)" not in message
    assert "random in eval mode" in message and "changes its inputs in place" in message
