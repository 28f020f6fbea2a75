"""``skprotect scan`` finds the plaintext weights of files saved with ``torch.save`` or as
``.safetensors`` among the artifacts, refuses a folder it cannot read and an empty path, and
reads each file once; ``run`` refuses
an empty OUTPUTS_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app


@pytest.fixture
def original(workdir: Path) -> dict[str, torch.Tensor]:
    """The original's state dict, saved as ``original.pt``, and a ``ship/`` folder holding an
    unrelated TorchScript artifact."""
    torch.manual_seed(0)
    weights = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).state_dict()
    torch.save(weights, "original.pt")
    Path("ship").mkdir()
    torch.jit.save(torch.jit.script(nn.Linear(16, 16)), "ship/model.pt")
    return weights


def scan(*args: str):
    return CliRunner().invoke(app, ["scan", *args])


@pytest.mark.parametrize("name", ["weights.pt", "weights.pth", "weights.ckpt", "w.safetensors"])
def test_a_weights_file_among_the_artifacts_is_found(
    original: dict[str, torch.Tensor], name: str
) -> None:
    """A ``torch.save`` ``.pt`` was called damaged (exit 2, "Export it again"); a ``.pth``,
    ``.ckpt`` or ``.safetensors`` file was not read at all, and the folder said clean (exit 0)."""
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in original.items()}, f"ship/{name}")
    else:
        torch.save({"state_dict": original, "epoch": 3}, f"ship/{name}")
    result = scan("ship", "--original", "original.pt")
    assert result.exit_code == 1, result.output
    assert f"ship/{name}: 2 weight(s) of the original found in plaintext:" in result.output
    assert "ship/model.pt: no weight of the original found" in result.output


class _Net(nn.Module):
    """A module class of this test file: ``weights_only`` refuses to unpickle it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_a_whole_pickled_model_among_the_artifacts_is_found(
    original: dict[str, torch.Tensor],
) -> None:
    """``torch.save(model)``: ``weights_only`` refuses the module class, and the file was called
    damaged (exit 2, "Export it again"); its tensor storages are searched instead, unpickled
    by nobody (until 2026-12-07)."""
    model = _Net()
    model.body.load_state_dict(original)
    torch.save(model, "ship/whole.pt")
    result = scan("ship", "--original", "original.pt")
    assert result.exit_code == 1, result.output
    assert "ship/whole.pt: 2 weight(s) of the original found in plaintext:" in result.output


def test_a_folder_that_cannot_be_read_is_an_error(
    original: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rglob`` left out a folder it could not read: the scan said nothing was found (exit 0)
    while the unreadable folder held the original. Root reads any folder, so the error is
    raised as a user's would be."""
    Path("ship/locked").mkdir()
    torch.save(original, "ship/locked/weights.pt")
    real = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = scan("ship", "--original", "original.pt")
    assert result.exit_code == 2, result.output
    assert result.output == (
        "error: Cannot read the folder 'ship/locked' (Permission denied): the files in it would "
        "go unscanned. Give this user read access to it, then scan again.\n"
    )


@pytest.mark.parametrize("args", [["", "--original", "original.pt"], ["ship", "--original", ""]])
def test_an_empty_path_is_refused(original: dict[str, torch.Tensor], args: list[str]) -> None:
    """typer reads '' as '.': ``scan "$DIR"`` with DIR unset scanned the current folder, and
    ``--original ''`` was said to be the folder '.'."""
    result = CliRunner().invoke(app, ["scan", *args], env={"COLUMNS": "400"}, color=False)
    assert result.exit_code == 2, result.output
    assert "the path is empty (a shell variable left unset?); pass a path" in result.output
    assert "Scanning" not in result.output


def test_a_loop_of_symbolic_links_is_called_so(original: dict[str, torch.Tensor]) -> None:
    """It was said not to exist ("check the path"), as ``--original`` and ``run`` call it."""
    Path("loop.onnx").symlink_to("loop.onnx")
    result = scan("loop.onnx", "--original", "original.pt")
    assert result.exit_code == 2, result.output
    assert result.output == (
        "error: loop.onnx is a loop of symbolic links, not a file or folder to scan.\n"
    )


def test_a_file_given_twice_is_scanned_once(original: dict[str, torch.Tensor]) -> None:
    """A folder and a file in it, both given, were scanned twice (about 25 s a ResNet-18)."""
    result = scan("ship", "ship/model.pt", "./ship/model.pt", "--original", "original.pt")
    assert result.exit_code == 0, result.output
    assert result.output.count("Scanning") == 1


def test_run_refuses_an_empty_outputs_folder(workdir: Path) -> None:
    """typer reads '' as '.': ``skprotect run "$APP_DIR" MODEL`` with APP_DIR unset ran the
    configuration of the current folder, or said that it held none (exit 3)."""
    result = CliRunner().invoke(
        app, ["run", "", "mlp", "-i", "x.npy"], env={"COLUMNS": "400"}, color=False
    )
    assert result.exit_code == 2, result.output
    assert "the path is empty (a shell variable left unset?); pass the folder that holds the " in (
        result.output
    )
