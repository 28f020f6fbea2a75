"""An RNN/LSTM/GRU the lock leaves as it is (``layer_filter`` leaves it out), beside locked
layers: torch's own checks of its input's features and initial states (``if
self.input_size != input.size(-1):``, ``if hx.size() != expected_hidden_size:``) make
``torch.jit.trace`` warn that a tensor became a Python value, and the TorchScript export
refused every such model as if its outputs depended on it (bench/protect_time.py's plain
TorchScript exports of its LSTM and GRU failed the same way)."""

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
    def __init__(self, kind: type[nn.RNNBase], initial_state: bool) -> None:
        super().__init__()
        self.rnn = kind(8, 16, batch_first=True)
        self.initial_state = initial_state
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.initial_state:
            h = torch.zeros(1, x.shape[0], 16)
            out = self.rnn(x, (h, h) if isinstance(self.rnn, nn.LSTM) else h)[0]
        else:
            out = self.rnn(x)[0]
        return self.head(out)


@pytest.mark.parametrize("initial_state", [False, True], ids=["no-state", "initial-state"])
@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN], ids=["LSTM", "GRU", "RNN"])
def test_torchscript_protects_a_model_with_an_unlocked_rnn(
    workdir: Path, kind: type[nn.RNNBase], initial_state: bool
) -> None:
    torch.manual_seed(0)
    model = Tagger(kind, initial_state).eval()
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "net",
        [torch.randn(2, 7, 8)],
        onnx_params={
            "input_names": ["x"],
            "output_names": ["y"],
            "dynamic_axes": {"x": {0: "batch", 1: "steps"}, "y": {0: "batch", 1: "steps"}},
        },
        model_export_formats=EF.TORCHSCRIPT_CPU,
        test_key=True,
        layer_filter=lambda name, module: name == "head",
    )
    assert [d.name for d in result.locked_layers] == ["head"]
    folder = workdir / "outputs/app/net/cpu"
    text = (folder / "key_vector_inv_net.txt").read_text().split()
    key = torch.from_numpy(np.array([np.float32(v) for v in text], dtype=np.float32))
    scripted = torch.jit.load(str(folder / "net.pt"))
    other = torch.randn(3, 4, 8)  # another batch and length
    with torch.no_grad():
        ref = model(other)
        assert_equivalent(scripted(other, key), ref)
        assert_garbage(scripted(other, torch.rand_like(key) * 4), ref)
