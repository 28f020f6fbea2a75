"""``SkRuntime(kek=...)`` given the key-encryption key file's content as it is: ``skprotect
export-kek`` writes base64 text, and ``kek=Path(file).read_bytes()`` was refused with only
"kek must be 32 bytes, but got 45." It now says how to decode it, and that works."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import KeyUnavailableError, SkRuntime

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def test_the_kek_files_text_is_refused_with_how_to_decode_it(workdir: Path) -> None:
    torch.manual_seed(0)
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval(),
        "m",
        [torch.randn(2, 6)],
        model_export_formats=EF.ONNX,
        deployment_platform=EP.LINUX,
    )
    kek_file = protector.state.export_kek(workdir / "kek.b64")
    out = protector.outputs_dir
    with pytest.raises(KeyUnavailableError) as err:
        SkRuntime(out, kek=kek_file.read_bytes())
    assert str(err.value) == (
        "kek must be 32 bytes, the raw key-encryption key, but got 45 bytes holding its base64 "
        "text (as `skprotect export-kek` writes the file): pass "
        "base64.b64decode(Path(file).read_bytes())."
    )
    with pytest.raises(KeyUnavailableError, match="but got a str holding its base64 text"):
        SkRuntime(out, kek=kek_file.read_text())
    SkRuntime(out, kek=base64.b64decode(Path(kek_file).read_bytes())).load("m").close()
