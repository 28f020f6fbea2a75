"""``protect_updated_model(..., rotate_keys=True)``: new keys for a deployed model.

Keys derive from the master secret per (model, format group, key epoch), and the epoch was a
constant: an update of a model with the same weights got the same key, so a leaked key of
version 1 (a TXT key file, a key read from a device) unlocked version 2, and there was no way
to draw new keys short of a new master secret (which re-keys every model of the application).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from tests.models import make_mlp
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.result import ProtectionResult
from skruntime import SkRuntime
from skruntime.config import load_config, sha256_file
from skruntime.keyfile import read_txt_keys
from skruntime.mev import mev_filename, read_mev

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


def _protect(
    protector: SkProtectorPyTorch,
    model: nn.Module,
    x: torch.Tensor,
    update: bool = False,
    **kwargs: Any,
) -> ProtectionResult:
    """Protect ``model`` as ``"m"`` to ONNX: a new model, or an update with ``update=True``."""
    call = protector.protect_updated_model if update else protector.protect_new_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(model, "m", [x], model_export_formats=EF.ONNX, **kwargs)


def _txt_key(protector: SkProtectorPyTorch) -> np.ndarray:
    """The static key the TXT key files of the ONNX group hold now."""
    return read_txt_keys(protector.outputs_dir / "m" / "onnx", "m").static_key()


def _linux_key(protector: SkProtectorPyTorch) -> np.ndarray:
    """The static key the LINUX key file of the ONNX model holds now."""
    model = protector.outputs_dir / "m" / "onnx" / "m.onnx"
    return read_mev(
        protector.outputs_dir / "m" / "onnx" / mev_filename("m", "onnx"),
        model_name="m",
        fmt_slug="onnx",
        model_sha256=sha256_file(model),
        kek=protector.state.kek,
    ).static_key()


def _run(protector: SkProtectorPyTorch, key: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """The deployed ONNX model's outputs on ``x`` with ``key`` fed as its last input."""
    session = ort.InferenceSession(str(protector.outputs_dir / "m" / "onnx" / "m.onnx"))
    data, key_input = (i.name for i in session.get_inputs())
    return session.run(None, {data: x.numpy(), key_input: key})[0]


def _epoch(protector: SkProtectorPyTorch, platform: EP) -> int:
    return load_config(protector.config_path(platform)).models["m"].key_epoch


def _share_masks(protector: SkProtectorPyTorch) -> list[int]:
    """The permutation masks of the TXT key shares (the JSON's share), drawn per key epoch."""
    params = protector.outputs_dir / "m" / "onnx" / "key_params_m.json"
    return json.loads(params.read_text(encoding="utf-8"))["perm_offsets"]


def _bytes(protector: SkProtectorPyTorch) -> dict[str, bytes]:
    folder = protector.outputs_dir / "m" / "onnx"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_rotation_makes_a_leaked_key_useless_and_later_updates_keep_it(workdir: Path) -> None:
    model, (x,) = make_mlp()
    with torch.no_grad():
        expected = model(x).numpy()
    protector = SkProtectorPyTorch(application_name="app")
    first = _protect(protector, model, x)
    leaked = _txt_key(protector)
    assert first.key_epoch == 0 and _epoch(protector, EP.TXT) == 0
    assert_equivalent(_run(protector, leaked, x), expected)
    epoch_0_files, epoch_0_masks = _bytes(protector), _share_masks(protector)

    rotated = _protect(protector, model, x, update=True, rotate_keys=True)
    assert rotated.key_epoch == 1 and _epoch(protector, EP.TXT) == 1
    assert "key epoch     : 1" in str(rotated)
    assert_garbage(_run(protector, leaked, x), expected)  # same weights, new key
    assert_equivalent(_run(protector, _txt_key(protector), x), expected)
    # new masks too: the old JSON share with the new .txt share would give the new key
    assert _share_masks(protector) != epoch_0_masks
    with SkRuntime(protector.outputs_dir, platform="TXT").load("m") as deployed:
        assert_equivalent(deployed(x.numpy()), expected)  # the runtime's session key
    epoch_1_files = _bytes(protector)

    # a plain update keeps the rotated epoch: it does not go back to the leaked key
    again = _protect(protector, model, x, update=True)
    assert again.key_epoch == 1 and _epoch(protector, EP.TXT) == 1
    assert_garbage(_run(protector, leaked, x), expected)
    assert_equivalent(_run(protector, _txt_key(protector), x), expected)
    # and, like protecting an unchanged model at epoch 0, it reproduces the files byte for byte
    assert _bytes(protector) == epoch_1_files != epoch_0_files


def test_a_plain_update_of_an_unchanged_model_reproduces_its_files(workdir: Path) -> None:
    model, (x,) = make_mlp()
    protector = SkProtectorPyTorch(application_name="app")
    _protect(protector, model, x)
    before = _bytes(protector)
    assert _protect(protector, model, x * 2, update=True).key_epoch == 0
    assert _bytes(protector) == before


def test_rotation_on_linux_and_the_other_platform_follows(workdir: Path) -> None:
    """LINUX keys rotate alike. The platforms derive a group's key alike and share its model
    files: a model then protected for TXT takes the rotated epoch (the same key and file), not
    the replaced one."""
    model, (x,) = make_mlp()
    with torch.no_grad():
        expected = model(x).numpy()
    protector = SkProtectorPyTorch(application_name="app")
    _protect(protector, model, x, deployment_platform=EP.LINUX)
    leaked = _linux_key(protector)
    rotated = _protect(
        protector, model, x, update=True, rotate_keys=True, deployment_platform=EP.LINUX
    )
    assert rotated.key_epoch == 1 and _epoch(protector, EP.LINUX) == 1
    assert_garbage(_run(protector, leaked, x), expected)
    new_key = _linux_key(protector)
    assert_equivalent(_run(protector, new_key, x), expected)

    txt = _protect(protector, model, x)
    assert txt.key_epoch == 1 and _epoch(protector, EP.TXT) == 1
    np.testing.assert_array_equal(_txt_key(protector), new_key)
    _linux_key(protector)  # the shared model file is still the one the LINUX entry records


def test_rotate_keys_is_a_bool_of_updates_only(workdir: Path) -> None:
    model, (x,) = make_mlp()
    protector = SkProtectorPyTorch(application_name="app")
    for wrong in (1, "yes", None, np.True_):
        with pytest.raises(InvalidArgumentError, match="rotate_keys must be a bool"):
            _protect(protector, model, x, update=True, rotate_keys=wrong)
    with pytest.raises(TypeError, match="rotate_keys"):  # a new model has no earlier key
        _protect(protector, model, x, rotate_keys=True)
