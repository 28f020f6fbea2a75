"""The quickstart checks every folder it writes before the training: a plain file named
``outputs`` or ``log`` in the current folder failed the protection only after it (about
80 seconds), with a message about the protection."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch import quickstart
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import SkProtectError, StateError
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.protect import SkProtectorPyTorch


@pytest.mark.parametrize(
    ("blocking", "written"),
    [
        ("outputs", "outputs/quickstart/digits_cnn"),
        ("log", "log"),
        ("outputs/quickstart_licensed", "outputs/quickstart_licensed/digits_cnn"),
        (".skprotect_private", ".skprotect_private/quickstart"),
    ],
)
def test_a_file_in_the_way_fails_before_the_training(
    untrained: Path, blocking: str, written: str
) -> None:
    (untrained / blocking).parent.mkdir(parents=True, exist_ok=True)
    (untrained / blocking).write_text("not a folder")
    message = (
        f"{untrained / blocking} is a file, not a folder, but the quickstart writes "
        f"{untrained / written}: move it away"
    )
    with pytest.raises(SkProtectError, match=re.escape(message)):
        quickstart.run_quickstart(licensed=True)
    assert not (untrained / ".skprotect_private").is_dir()  # nothing created either


def test_the_command_says_it_in_one_line(untrained: Path) -> None:
    (untrained / "log").write_text("not a folder")
    result = CliRunner().invoke(app, ["quickstart"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: {untrained / 'log'} is a file, not a folder")


def test_a_lost_master_secret_fails_before_the_training(untrained: Path) -> None:
    """A quickstart run again after its state folder was deleted made a new master secret, then
    failed after the training ("signed by a different application key"), leaving it behind."""
    SkProtectorPyTorch(application_name=quickstart.APPLICATION).protect_new_model(
        nn.Linear(4, 2), "m", [torch.randn(1, 4)], model_export_formats=ExportFormat.ONNX
    )
    shutil.rmtree(untrained / ".skprotect_private")
    with pytest.raises(StateError, match="no master secret"):
        quickstart.run_quickstart(licensed=False)
    assert not (untrained / ".skprotect_private" / quickstart.APPLICATION).exists()
