"""A type check in a library beside torch (torch_geometric, torchvision) is the model's code
for the diagnosis of a locked model: only torch's and the protector's own folders are not.
Before, any path starting with torch's folder name was left out (``.../torch_geometric/``)."""

from __future__ import annotations

from pathlib import Path

import torch

import skprotect_pytorch
from skprotect_pytorch.lock.diagnose import _user_code

TORCH = Path(torch.__file__).resolve().parent
PROTECTOR = Path(skprotect_pytorch.__file__).resolve().parent


def test_a_library_whose_folder_starts_like_torchs_is_the_models_code() -> None:
    assert _user_code(f"{TORCH}_geometric/nn/conv/gcn_conv.py")
    assert _user_code(f"{TORCH}vision/ops/misc.py")
    assert _user_code(f"{PROTECTOR}_models/net.py")
    assert not _user_code(str(TORCH / "nn" / "modules" / "module.py"))
    assert not _user_code(str(PROTECTOR / "lock" / "diagnose.py"))
