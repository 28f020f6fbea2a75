"""A ``MultiheadAttention``'s ``out_proj`` also registered as a layer of its own
(``self.head = self.attn.out_proj``): locked like any shared layer, whichever name comes first,
and left unlocked with a reason when the attention is not locked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.errors import UnsupportedLayerError
from skprotect_pytorch.lock import lock_model


class HeadIsOutProj(nn.Module):
    def __init__(self, attention_first: bool) -> None:
        super().__init__()
        mha = nn.MultiheadAttention(8, 2, batch_first=True)
        if attention_first:
            self.attn = mha
            self.head = mha.out_proj
        else:
            self.head = mha.out_proj
            self.attn = mha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(x, x, x, need_weights=False)[0]
        return self.head(torch.relu(y))


def _lock(model: nn.Module, layer_filter=lambda name, m: True):
    return lock_model(model, layer_filter=layer_filter, secret_rng=np.random.default_rng(0))


@pytest.mark.parametrize("attention_first", [True, False])
def test_out_proj_registered_again_is_locked(attention_first: bool) -> None:
    torch.manual_seed(0)
    model = HeadIsOutProj(attention_first).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        ref = model(x)
    locked = _lock(model)
    assert {d.name for d in locked.locked_layers} == {"attn", "head"}
    assert locked.plaintext == []
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        assert_equivalent(locked.keyed(x, key), ref)
        assert_garbage(locked.keyed(x, torch.zeros_like(key)), ref)


@pytest.mark.parametrize("attention_first", [True, False])
def test_out_proj_of_an_unlocked_attention_is_left_unlocked(attention_first: bool) -> None:
    model = HeadIsOutProj(attention_first).eval()
    with pytest.raises(UnsupportedLayerError) as err:
        _lock(model, layer_filter=lambda name, m: name != "attn")
    assert "head: it is also 'attn.out_proj', a part of layer 'attn'" in str(err.value)
