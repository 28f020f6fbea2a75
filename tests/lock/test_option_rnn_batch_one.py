"""A locked LSTM/GRU run on a batch of one (or an unbatched sequence), the usual inference
call: its state ``(hidden, 1)`` kept transposed strides, which ``torch.export``'s scan refused
("Expected init and carry to have same metadata"). AOTInductor could not export such a model
at all, and ONNX fell back to the legacy exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat

CASES = {
    "gru-batch1": (lambda: nn.GRU(8, 5), (6, 1, 8)),
    "lstm-unbatched-bi-2layers": (lambda: nn.LSTM(8, 17, 2, bidirectional=True), (4, 8)),
    "lstm-proj-batch-first": (lambda: nn.LSTM(3, 16, batch_first=True, proj_size=4), (1, 5, 3)),
}


class Tail(nn.Module):
    """The recurrence's output sequence and final hidden state."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor):
        out, h = self.rnn(x)
        return out, h[0] if isinstance(h, tuple) else h


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_torch_export_takes_a_batch_of_one(case) -> None:
    make, shape = case
    torch.manual_seed(0)
    model, x = Tail(make()).eval(), torch.randn(*shape)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    key = torch.from_numpy(locked.layout.static_key())
    program = torch.export.export(locked.keyed, (x, key))
    with torch.no_grad():
        ref = model(x)
        assert_equivalent(program.module()(x, key), ref)
        assert_garbage(program.module()(x, torch.rand_like(key) * 4), ref)


def test_onnx_uses_the_dynamo_exporter_at_batch_one(workdir: Path) -> None:
    torch.manual_seed(0)
    model, x = Tail(nn.GRU(8, 5, num_layers=2)).eval(), torch.randn(6, 1, 8)
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", [x], model_export_formats=EF.ONNX, test_key=True
    )
    assert result.formats["onnx"].exporter.startswith("torch.onnx dynamo=True")
    folder = workdir / "outputs/app/net/onnx"
    text = (folder / "key_vector_inv_net.txt").read_text().split()
    key = np.array([np.float32(v) for v in text], dtype=np.float32)
    session = ort.InferenceSession(str(folder / "net.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    with torch.no_grad():
        ref = model(x)
    assert_equivalent(session.run(None, {names[0]: x.numpy(), names[1]: key}), ref)


@pytest.mark.slow
def test_aot_inductor_protects_a_batch_of_one(workdir: Path) -> None:
    torch.manual_seed(0)
    model, x = Tail(nn.LSTM(8, 6, bidirectional=True)).eval(), torch.randn(5, 8)
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", [x], model_export_formats=EF.INDUCTOR_CPU, test_key=True
    )
    folder = workdir / "outputs/app/net/cpu"
    text = (folder / "key_vector_inv_net.txt").read_text().split()
    key = torch.from_numpy(np.array([np.float32(v) for v in text], dtype=np.float32))
    loaded = torch._inductor.aoti_load_package(str(folder / "net.pt2"))
    with torch.no_grad():
        assert_equivalent(loaded(x, key), model(x))
