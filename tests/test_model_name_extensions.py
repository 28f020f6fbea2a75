"""A new model name is refused only when it ends with the extension of a file the protection
names after it, and the refusal names that file and the names to use instead.

Before, any model or key file extension was refused: ``asr.pth`` or ``weights.bin`` name no
file ``asr.pth.pth`` or ``weights.bin.bin``, and were refused all the same with the advice to
drop the ending, naming the ONNX file ``asr.pth.onnx`` as if it were the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import MODEL_FILE_EXTENSIONS, SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
X = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_refused_extensions_are_those_of_the_files_written():
    assert sorted(MODEL_FILE_EXTENSIONS) == [".json", ".onnx", ".pt", ".pt2", ".txt"]


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("asr.pt", "TORCHSCRIPT_CPU model file named after it, which would be asr.pt.pt"),
        ("resnet.onnx", "ONNX model file named after it, which would be resnet.onnx.onnx"),
        ("net.v2.PT2", "INDUCTOR_CPU model file named after it, which would be net.v2.PT2.pt2"),
        ("m.json", "TXT key parameters file named after it, which would be key_params_m.json.json"),
        ("m.txt", "TXT key file named after it, which would be key_vector_inv_m.txt.txt"),
    ],
)
def test_a_name_that_doubles_an_extension_is_refused_with_what_to_use(
    workdir: Path, name: str, file: str
):
    stem, ext = name.rsplit(".", 1)
    message = re.escape(f"{file}. model_name is the name without file extension: ") + re.escape(
        f"pass model_name={stem!r}, or '{stem}_{ext}' to keep '{ext}' in the name."
    )
    with pytest.raises(InvalidArgumentError, match=message):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(), name, [X], model_export_formats=EF.ONNX
        )
    assert not (workdir / "outputs").exists()


def test_names_that_double_nothing_are_accepted(workdir: Path):
    protector = SkProtectorPyTorch(application_name="app")
    for name in ("asr.pth", "weights.bin", "model.v2"):
        result = protector.protect_new_model(mlp(), name, [X], model_export_formats=EF.ONNX)
        assert result.formats["onnx"].path.name == f"{name}.onnx"
