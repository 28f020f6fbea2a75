"""Weight tensors the lock leaves in plaintext are listed with the reason, and only those."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.coverage import PlaintextWeight


class TokenNet(nn.Module):
    """An embedding table, a learned position table, a LayerNorm, a locked and a kept Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.pos = nn.Parameter(torch.randn(1, 6, 16))
        self.norm = nn.LayerNorm(16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(tokens) + self.pos)
        return self.head(torch.relu(self.mix(h))).mean(1)


def test_plaintext_weights_name_every_unlocked_matrix_and_why() -> None:
    model = TokenNet().eval()
    locked = lock_model(
        model,
        layer_filter=lambda name, m: name != "head",
        secret_rng=np.random.default_rng(0),
    )
    unsupported = "is not a layer type the lock supports"
    excluded = "excluded by layer_filter"
    assert locked.plaintext == [
        PlaintextWeight("pos", (1, 6, 16), f"TokenNet {unsupported}"),
        PlaintextWeight("embed.weight", (20, 16), f"Embedding {unsupported}"),
        PlaintextWeight("head.weight", (4, 16), "layer 'head' was not locked: " + excluded),
    ]
    # what the list claims: those tensors are in the locked model bit for bit, the locked one not
    stored = dict(locked.keyed.named_parameters())
    for w in locked.plaintext:
        match = [n for n, p in stored.items() if p.shape == w.shape]
        original = model.get_parameter(w.name)
        assert any(torch.equal(stored[n], original) for n in match), w.name
    assert not any(
        p.shape == model.mix.weight.shape and torch.equal(p, model.mix.weight)
        for p in stored.values()
    )


def test_fully_locked_model_has_no_plaintext_weights() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    for net in (model, nn.Linear(8, 16)):  # the second: the root itself is the locked layer
        locked = lock_model(net, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng())
        assert locked.plaintext == []


class TiedNet(nn.Module):
    """A language-model head tied to the embedding: one tensor, two modules."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 20, bias=False)
        self.embed = nn.Embedding(20, 16)
        self.embed.weight = self.head.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


def test_a_tied_weight_counts_when_one_of_its_modules_leaves_it_plain() -> None:
    locked = lock_model(
        TiedNet().eval(), layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0)
    )
    assert [d.name for d in locked.locked_layers] == ["head"]
    assert locked.plaintext == [
        PlaintextWeight(
            "embed.weight",
            (20, 16),
            "Embedding is not a layer type the lock supports; it is also the weight of locked "
            "layer 'head', whose key a thief can solve from the two: untie the weights, or "
            "exclude that layer with layer_filter",
        )
    ]
