"""The ONNX path of skruntime runs in a process where ``import torch`` fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat

SCRIPT = r"""
import json, sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
sys.modules["skprotect_pytorch"] = None
import numpy as np
from skruntime import SkRuntime

rt = SkRuntime(sys.argv[1])
x = np.load(sys.argv[2])
with rt.load("net", fmt="onnx") as model:
    y = model(x)
    named = model(**{model.input_names[0]: x})
loaded = sorted(
    m for m, mod in sys.modules.items()
    if mod is not None and (m.split(".")[0] in ("torch", "skprotect_pytorch"))
)
try:
    import torch  # noqa: F401
    guarded = False
except ImportError:
    guarded = True
print(json.dumps({
    "y": y.tolist(), "same": bool(np.array_equal(y, named)), "torch": loaded, "guarded": guarded
}))
"""


def test_onnx_runtime_without_torch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(4, 6)
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", [x], model_export_formats=EF.ONNX
    )
    np.save(tmp_path / "x.npy", x.numpy())
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "outputs/app"), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    assert result["same"] and result["guarded"]
    with torch.no_grad():
        expected = model(x).numpy()
    y = np.asarray(result["y"], dtype=np.float32)
    assert np.linalg.norm(y - expected) / np.linalg.norm(expected) < 1e-4
