"""A conv's BatchNorm also held in a plain list, a dict or a config object that ``forward``
calls is folded and replaced there too: replacing it by ``nn.Identity`` only where it is
registered left the list applying it a second time, after the conv that had absorbed it."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.lock import lock_model


class ConvBN(nn.Module):
    def __init__(self, holder: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)
        self.holder = holder
        self.order = {
            "list": [self.conv, self.bn],
            "dict": {"bn": self.bn},
            "object": types.SimpleNamespace(bn=self.bn),
        }[holder]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.holder == "list":
            for layer in self.order:
                x = layer(x)
            return x
        bn = self.order["bn"] if self.holder == "dict" else self.order.bn
        return bn(self.conv(x))


@pytest.mark.parametrize("holder", ["list", "dict", "object"])
def test_batchnorm_held_elsewhere_is_folded_everywhere(holder: str) -> None:
    torch.manual_seed(0)
    model = ConvBN(holder).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        ref = model(x)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    assert locked.folded_batchnorms == [("conv", "bn")]
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        assert_equivalent(locked.keyed(x, key), ref)
        assert_garbage(locked.keyed(x, torch.zeros_like(key)), ref)
