"""An update moves its files into place while a runtime may be loading the model: each
replaced file was first moved to the backup folder and only then replaced by the new one, so a
runtime loading in between found no model file or no key file ("Encrypted key file ... not
found"). A replaced file is now kept for the rollback by a hard link and replaced in one
rename: at every step the model file and its key file are there, the previous or the new."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.models import LIFECYCLE_INPUT as X
from tests.models import lifecycle_mlp, protect_linux_version

import skprotect_pytorch.staging as staging
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime

FILES = ["m/onnx/m.onnx", "m/onnx/mev_m_onnx.bin"]


def test_the_model_and_key_file_are_never_missing_while_an_update_moves_in(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protect_linux_version(protector, 0, new=True)
    out = protector.outputs_dir
    missing: list[str] = []
    for name in ("replace", "link"):
        real = getattr(os, name)

        def watched(src: str, dst: str, real=real) -> None:  # type: ignore[no-untyped-def]
            real(src, dst)
            missing.extend(f for f in FILES if not (out / f).is_file())

        monkeypatch.setattr(staging.os, name, watched)
    protect_linux_version(protector, 1, new=False)
    monkeypatch.undo()
    assert missing == []
    assert not list(out.glob(".staging-*"))  # the backups were removed with the staging folder
    with SkRuntime(out, kek=protector.state.kek).load("m") as model:
        expected = lifecycle_mlp(1)(X).detach().numpy()
        assert abs(model(X.numpy()) - expected).max() < 1e-4
