"""Moving an update's files into place: an interruption (Ctrl-C) or a full disk at any step
leaves files and configuration of the previous protection as they were, or the new ones, both
complete: never a file lost, never a configuration that records other files than those there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import skprotect_pytorch.pipeline as pipeline
import skprotect_pytorch.staging as staging_module
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.config import load_config, sha256_file

EF = SkProtectorPyTorch.ExportFormat
INPUTS = [torch.randn(2, 8, generator=torch.Generator().manual_seed(0))]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def protector(workdir: Path) -> SkProtectorPyTorch:
    """A protector whose application holds model 'net' (TorchScript CPU: new bytes each time)."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU)
    return protector


def test_an_interrupt_as_a_replaced_file_is_set_aside_loses_nothing(
    workdir: Path, protector: SkProtectorPyTorch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after the previous model file was moved (now: hard-linked) to the backup
    folder, before the move was recorded: the rollback did not know it, the cleanup deleted
    the backup folder, and the previous protection's file was gone."""
    before = tree(workdir / "outputs")
    for name in ("replace", "link"):
        real = getattr(os, name)

        def interrupted_on_return(src: str, dst: str, real=real) -> None:  # type: ignore[no-untyped-def]
            real(src, dst)
            if "-backup" in str(dst):
                raise KeyboardInterrupt

        monkeypatch.setattr(os, name, interrupted_on_return)
    with pytest.raises(KeyboardInterrupt):
        protector.protect_updated_model(
            mlp(1), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
        )
    assert tree(workdir / "outputs") == before


def test_an_interrupt_after_the_configuration_is_written_keeps_the_new_files(
    workdir: Path, protector: SkProtectorPyTorch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C once the new configuration was written (while its write returned): the rollback
    put the previous files back under a configuration that records the new ones, and the
    runtime refused the model. The protection is complete: its files stay."""
    app = workdir / "outputs" / "app"
    before = tree(app)
    real_add_model = pipeline.add_model

    def written_then_interrupted(*args: object, **kwargs: object) -> None:
        real_add_model(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "add_model", written_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        protector.protect_updated_model(
            mlp(1), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
        )
    after = tree(app)
    assert after["net/cpu/net.pt"] != before["net/cpu/net.pt"]
    entry = load_config(app / "skconfig.json").models["net"].formats["torchscript_cpu"]
    assert sha256_file(app / entry.file) == entry.sha256
    params = json.loads(after["net/cpu/key_params_net.json"])
    assert entry.sha256 in json.dumps(params["model_sha256"])
    assert sorted(after) == sorted(before)  # no staging or backup folder left


class Killed(Exception):
    """The process dies here: no rollback, no cleanup runs."""


def test_a_backup_left_by_a_protection_killed_while_moving_files_in_is_rolled_back(
    workdir: Path, protector: SkProtectorPyTorch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A protection killed between two moves into place left the deployment half updated and
    the previous files in a hidden backup folder that ships; later protections removed its
    staging folder and said nothing, then only warned. The configuration on disk records the
    backups: they are moved back, with a warning at the caller's line naming them."""
    app = workdir / "outputs" / "app"
    before = tree(app)
    staging = staging_module.Staging(app)
    for name in ("key_params_net.json", "key_vector_inv_net.txt", "net.pt"):
        staging.path(f"net/cpu/{name}").write_bytes(b"new " + name.encode())
    moves: list[str] = []

    def killed_on_the_fourth_move(real):  # type: ignore[no-untyped-def]
        def move(src: str, dst: str) -> None:  # a file set aside (linked) or moved into place
            moves.append(dst)
            if len(moves) == 4:
                raise Killed
            real(src, dst)

        return move

    with monkeypatch.context() as dying:
        dying.setattr(os, "replace", killed_on_the_fourth_move(os.replace))
        dying.setattr(os, "link", killed_on_the_fourth_move(os.link))
        with pytest.raises(Killed):
            staging.commit_files()
    assert staging.owner is not None
    os.close(staging.owner)  # the process is gone: its lock is released
    backup = staging.root.with_name(staging.root.name + "-backup")
    with pytest.warns(UserWarning, match="rolled back") as caught:
        protector.protect_new_model(mlp(), "other", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU)
    said = [w for w in caught if str(backup) in str(w.message)]
    assert len(said) == 1 and said[0].filename == __file__
    assert "net/cpu/key_params_net.json, net/cpu/key_vector_inv_net.txt" in str(said[0].message)
    assert not staging.root.exists() and not backup.exists()
    after = tree(app)
    assert {k: v for k, v in after.items() if k.startswith("net/")} == {
        k: v for k, v in before.items() if k.startswith("net/")
    }
