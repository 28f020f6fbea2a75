"""What the lock reports matches what it stores and computes: a model that is itself a
MultiheadAttention is one locked layer, an attention's add_bias_kv rows are listed as
plaintext, an excluded non-float32 conv, a hooked conv or BatchNorm and a conv whose weight
forward reads are not folded, a PackedSequence is refused naming the layer, a parametrized
LSTM/GRU is locked, and a legacy spectral norm is skipped with the fixes that lock it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn
from torch.nn.utils import parametrizations

from skprotect_pytorch.errors import UnsupportedLayerError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.coverage import PlaintextWeight


def _lock(model: nn.Module, layer_filter=lambda name, module: True):
    return lock_model(model, layer_filter=layer_filter, secret_rng=np.random.default_rng(0))


def _qkv(n: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    return tuple(torch.randn(5, n, 16, generator=gen) for _ in range(3))


def test_a_model_that_is_a_multihead_attention_is_one_locked_layer() -> None:
    """Its out_proj was locked a second time: a phantom layer in the decisions, dead key
    slots, and the user's filter asked about a part of the attention."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2).eval()
    asked: list[str] = []
    locked = _lock(mha, lambda name, module: asked.append(name) or True)
    wrapped = _lock(nn.Sequential(mha))
    assert [(d.name, d.layer_type, d.locked) for d in locked.layers] == [
        ("", "MultiheadAttention", True)
    ]
    assert asked == [""]
    assert locked.layout.length == wrapped.layout.length
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        expected = mha(*_qkv())
        assert_equivalent(locked.keyed(*_qkv(), key), expected)
        assert_garbage(locked.keyed(*_qkv(), torch.zeros_like(key))[0], expected[0])


@pytest.mark.parametrize("prefix", ["", "attn."])
def test_add_bias_kv_rows_are_listed_as_plaintext(prefix: str) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, add_bias_kv=True).eval()
    model = mha if not prefix else nn.ModuleDict({"attn": mha})
    locked = _lock(model)
    assert [(w.name, w.shape) for w in locked.plaintext] == [
        (f"{prefix}bias_k", (1, 1, 16)),
        (f"{prefix}bias_v", (1, 1, 16)),
    ]
    assert all("add_bias_kv" in w.reason for w in locked.plaintext)
    # what the list claims: the locked attention holds them bit for bit
    stored = locked.keyed.model if not prefix else locked.keyed.model["attn"]
    assert torch.equal(stored.bias_k, mha.bias_k) and torch.equal(stored.bias_v, mha.bias_v)
    assert _lock(nn.MultiheadAttention(16, 2)).plaintext == []


class _ConvBN(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3).to(dtype)
        self.bn = nn.BatchNorm2d(8).to(dtype)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3)).float())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_an_excluded_non_float32_conv_keeps_its_batchnorm_and_dtype(dtype: torch.dtype) -> None:
    """The fold wrote float32 weights into the excluded conv: its call then failed on the
    float64/bfloat16 input."""
    torch.manual_seed(0)
    model = _ConvBN(dtype).eval()
    x = torch.randn(2, 4, 6, 6).to(dtype)
    locked = _lock(model, lambda name, module: name == "head")
    assert locked.folded_batchnorms == []
    assert [d.name for d in locked.locked_layers] == ["head"]
    excluded = "layer 'conv' was not locked: excluded by layer_filter"
    assert locked.plaintext == [PlaintextWeight("conv.weight", (8, 4, 3, 3), excluded)]
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        assert_equivalent(locked.keyed(x, key), model(x))


def test_a_float32_conv_still_folds_its_batchnorm() -> None:
    torch.manual_seed(0)
    model = _ConvBN(torch.float32).eval()
    locked = _lock(model)
    assert locked.folded_batchnorms == [("conv", "bn")]
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        assert_equivalent(locked.keyed(x, torch.from_numpy(locked.layout.static_key())), model(x))


def test_a_packed_sequence_is_refused_naming_the_layer_and_the_way_out() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.GRU(6, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.enc(nn.utils.rnn.pack_sequence(list(x)))
            return nn.utils.rnn.pad_packed_sequence(out)[0]

    locked = _lock(Tagger().eval())
    key = torch.from_numpy(locked.layout.static_key())
    with pytest.raises(UnsupportedLayerError) as info:
        locked.keyed(torch.randn(2, 4, 6), key)
    assert str(info.value) == (
        "Layer 'enc' (GRU) was called with a PackedSequence, but the locked GRU takes tensors "
        "only, not a PackedSequence. Exclude the layer with layer_filter (e.g. lambda name, "
        "module: name != 'enc'): it then stays unlocked, its weights in plaintext."
    )


def _conv_bn_conv() -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("hooked", [0, 1])
def test_a_hooked_conv_or_batchnorm_is_not_folded(hooked: int) -> None:
    """Folding made a conv's forward hook see the normalised output (wrong outputs), and
    replaced a hooked BatchNorm by an Identity (its hook never ran again)."""
    torch.manual_seed(0)
    model = _conv_bn_conv()
    calls: list[int] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return output.clamp(min=-0.1)

    model[hooked].register_forward_hook(hook)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        expected = model(x)
    calls.clear()
    locked = _lock(model)
    assert locked.folded_batchnorms == []
    with torch.no_grad():
        assert_equivalent(locked.keyed(x, torch.from_numpy(locked.layout.static_key())), expected)
    assert calls == [1]


@pytest.mark.parametrize(
    "build",
    [
        lambda: parametrizations.weight_norm(nn.LSTM(6, 8, proj_size=4), "weight_hr_l0"),
        lambda: parametrizations.weight_norm(nn.LSTM(6, 8), "weight_hh_l0"),
        lambda: parametrizations.spectral_norm(nn.GRU(6, 8, bidirectional=True), "weight_ih_l0"),
    ],
    ids=["lstm-weight-norm-hr", "lstm-weight-norm-hh", "gru-spectral-norm-ih"],
)
def test_a_parametrized_recurrent_layer_is_locked_with_its_computed_weight(build) -> None:
    """Like any other supported layer (docs/api.md); the locker read the weights with
    ``get_parameter``, which raised a bare AttributeError for a parametrized one."""
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(5, 2, 6)
    locked = _lock(model)
    assert [d.locked for d in locked.layers] == [True]
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        expected = model(x)
        assert_equivalent(locked.keyed(x, key), expected)
        assert_garbage(locked.keyed(x, torch.zeros_like(key))[0], expected[0])


class _ReadsConvWeight(nn.Module):
    """Calls its conv, and also convolves with the conv's weight itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        direct = torch.nn.functional.conv2d(x, self.conv.weight, padding=1)
        return self.head(self.bn(self.conv(x)) + direct)


def test_excluding_a_conv_whose_weight_forward_reads_reproduces_the_model() -> None:
    """The advice for such a model is to exclude the layer; the BatchNorm was still folded
    into its weight, so the direct read saw the folded weight and the outputs stayed wrong."""
    torch.manual_seed(0)
    model = _ReadsConvWeight().eval()
    x = torch.randn(2, 4, 6, 6)
    locked = _lock(model, lambda name, module: name != "conv")
    assert locked.folded_batchnorms == []
    with torch.no_grad():
        assert_equivalent(locked.keyed(x, torch.from_numpy(locked.layout.static_key())), model(x))


def test_legacy_spectral_norm_is_skipped_with_the_fixes_that_lock_it() -> None:
    """Its hook was reported as any hook ("Remove the hooks to lock it"), which the user cannot
    do; the two fixes named now both lock the layer exactly."""
    torch.manual_seed(0)
    x = torch.randn(4, 8)

    def build(norm) -> nn.Sequential:
        torch.manual_seed(1)
        return nn.Sequential(norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 3)).eval()

    legacy = build(torch.nn.utils.spectral_norm)
    locked = _lock(legacy)
    assert [(d.name, d.locked) for d in locked.layers] == [("0", False), ("2", True)]
    reason = locked.layers[0].reason
    assert "legacy torch.nn.utils.spectral_norm" in reason
    assert "parametrizations.spectral_norm" in reason and "remove_spectral_norm" in reason
    removed = build(torch.nn.utils.spectral_norm)
    torch.nn.utils.remove_spectral_norm(removed[0])
    with torch.no_grad():
        assert_equivalent(removed(x), legacy(x))  # the same model, its norm folded
    for fixed in (build(parametrizations.spectral_norm), removed):
        locked = _lock(fixed)
        assert all(d.locked for d in locked.layers)
        key = torch.from_numpy(locked.layout.static_key())
        with torch.no_grad():
            assert_equivalent(locked.keyed(x, key), fixed(x))
