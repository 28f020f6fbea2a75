"""Staging folders name the system that writes them: on NFS mounted with local locks
(``local_lock=all``) each host's ``flock`` always succeeds, so the orphan scan of a protection on
host B deleted the staging folder of a protection still running on host A."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import skprotect_pytorch.staging as staging_module
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
INPUTS = [torch.randn(2, 8, generator=torch.Generator().manual_seed(0))]
OTHER_SYSTEM = "0123456789abcdef"


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def running_elsewhere(app: Path, monkeypatch: pytest.MonkeyPatch) -> staging_module.Staging:
    """The staging folder of a protection running on another host: made there (another system
    tag), with a staged model, and its lock, taken in that host's kernel, not visible here."""
    with monkeypatch.context() as there:
        there.setattr(staging_module, "system_tag", lambda: OTHER_SYSTEM)
        staging = staging_module.Staging(app)
    staging.path("net/onnx/net.onnx").write_bytes(b"a locked model, still being verified")
    if staging.owner is not None:
        os.close(staging.owner)
        staging.owner = None
    return staging


def test_a_running_protections_folder_of_another_host_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Host B's protection starts while host A's moves its files into place: A's folder, its
    files and its backups stay, the log says whose it is and why it is kept, and no warning
    calls the backup left over."""
    app = tmp_path / "outputs" / "app"
    other = running_elsewhere(app, monkeypatch)
    backup = other.root.with_name(other.root.name + "-backup")
    (backup / "net" / "onnx").mkdir(parents=True)
    (backup / "net" / "onnx" / "net.onnx").write_bytes(b"the previous locked model")
    with caplog.at_level(logging.INFO, logger="skprotect"), warnings.catch_warnings():
        warnings.simplefilter("error")
        here = staging_module.Staging(app)
    here.cleanup()
    assert (other.root / "net" / "onnx" / "net.onnx").is_file()
    assert (backup / "net" / "onnx" / "net.onnx").is_file()
    assert f"kept {other.root}" in caplog.text
    assert f"process {os.getpid()} on host" in caplog.text
    owner = json.loads((other.root / ".owner.json").read_text())
    assert sorted(owner) == ["host", "pid", "started"]  # nothing else: no secret, no path


def test_a_killed_protections_folder_of_this_host_is_still_removed(tmp_path: Path) -> None:
    """The folder of a protection of this system whose lock is free (its process died) goes."""
    app = tmp_path / "outputs" / "app"
    dead = staging_module.Staging(app)
    dead.path("net/original/net_onnx.onnx").write_bytes(b"plaintext weights")
    assert dead.owner is not None
    os.close(dead.owner)  # the process died: its lock is released
    here = staging_module.Staging(app)
    here.cleanup()
    assert not dead.root.exists()


def test_an_old_folder_of_another_host_is_said_and_no_owner_file_ships(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host's folder unchanged for two days is kept, with a warning at the caller's line
    that names it, its host and how to remove it; the protection's own owner file is not
    moved into outputs/."""
    app = workdir / "outputs" / "app"
    other = running_elsewhere(app, monkeypatch)
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (other.root, *other.root.rglob("*")):
        os.utime(path, (two_days_ago, two_days_ago))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
        )
    said = [w for w in caught if str(other.root) in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__
    assert "not changed for 48 hours" in str(said[0].message)
    assert "delete this folder by hand" in str(said[0].message)
    assert other.root.is_dir()
    shipped = sorted(str(p.relative_to(app)) for p in app.rglob("*") if other.root not in p.parents)
    assert shipped == [
        other.root.name,
        "net",
        "net/cpu",
        "net/cpu/key_params_net.json",
        "net/cpu/key_vector_inv_net.txt",
        "net/cpu/net.pt",
        "skconfig.json",
    ]
