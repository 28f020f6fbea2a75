"""An nn.Embedding with a positive padding_idx, in front of locked layers: its range check in
torch (``if padding_idx >= weight.size(0)``, a comparison with the constant weight's row
count) makes ``torch.jit.trace`` warn that a tensor became a Python value, and the
TorchScript export refused every such model as if its outputs depended on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat


class Tagger(nn.Module):
    def __init__(self, **embedding_options: object) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16, **embedding_options)
        self.proj = nn.Linear(16, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(self.embed(tokens))))


@pytest.mark.parametrize(
    "options",
    [
        {"padding_idx": 3},
        {"padding_idx": -2},  # nn.Embedding stores it as 18
        {"padding_idx": 19, "max_norm": 1.0, "sparse": True},
    ],
    ids=["positive", "negative", "max_norm-sparse"],
)
def test_torchscript_protects_an_embedding_with_padding_idx(workdir: Path, options) -> None:
    torch.manual_seed(0)
    model = Tagger(**options).eval()
    tokens = torch.randint(0, 20, (2, 7))
    tokens[0, 0] = model.embed.padding_idx
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", [tokens], model_export_formats=EF.TORCHSCRIPT_CPU, test_key=True
    )
    assert [d.name for d in result.locked_layers] == ["proj", "head"]
    folder = workdir / "outputs/app/net/cpu"
    text = (folder / "key_vector_inv_net.txt").read_text().split()
    key = torch.from_numpy(np.array([np.float32(v) for v in text], dtype=np.float32))
    scripted = torch.jit.load(str(folder / "net.pt"))
    other = torch.randint(0, 20, (3, 5))
    other[1, 2] = model.embed.padding_idx
    with torch.no_grad():
        ref = model(other)
        assert_equivalent(scripted(other, key), ref)
        assert_garbage(scripted(other, torch.rand_like(key) * 4), ref)
