"""A key rotation outlives the configurations: the private state records each model's newest
key epoch, so a protection after ``outputs/`` was deleted (a clean build folder) does not go
back to the key that the rotation replaced because it had leaked. Before the record existed,
the epoch lived in the configurations only and such a protection started again at epoch 0:
the leaked key unlocked the new files."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import StateError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.state import ProtectionState
from skruntime.keyfile import read_txt_keys

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
RECORD = "key_epochs.json"  # beside master.key
TXT = dict(model_export_formats=EF.ONNX, deployment_platform=EP.TXT)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def deployed_key(workdir: Path) -> bytes:
    return read_txt_keys(workdir / "outputs/app/m/onnx", "m").static_key().tobytes()


def test_a_clean_outputs_folder_does_not_bring_a_replaced_key_back(workdir: Path) -> None:
    model = mlp()
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(model, "m", [X], **TXT)
    leaked = deployed_key(workdir)
    rotated = protector.protect_updated_model(model, "m", [X], rotate_keys=True, **TXT)
    assert rotated.key_epoch == 1
    shutil.rmtree(workdir / "outputs")
    again = SkProtectorPyTorch(application_name="app").protect_new_model(model, "m", [X], **TXT)
    assert again.key_epoch == 1
    assert deployed_key(workdir) != leaked
    record = workdir / ".skprotect_private/app" / RECORD
    assert json.loads(record.read_text()) == {"m": 1}
    assert record.stat().st_mode & 0o777 == 0o600


def test_epoch_zero_writes_no_record_and_a_newer_record_is_kept(workdir: Path) -> None:
    state = ProtectionState.open("app")
    state.record_key_epoch("m", 0)
    assert not (state.folder / RECORD).exists()
    state.record_key_epoch("m", 3)
    state.record_key_epoch("m", 2)
    state.record_key_epoch("n", 1)
    assert (state.key_epoch_floor("m"), state.key_epoch_floor("n")) == (3, 1)
    assert state.key_epoch_floor("other") == 0


@pytest.mark.parametrize("content", ["{", '{"m": -1}', '{"m": true}', "[1]"])
def test_a_damaged_record_is_refused_not_read_as_no_rotation(workdir: Path, content: str) -> None:
    state = ProtectionState.open("app")
    (state.folder / RECORD).write_text(content)
    with pytest.raises(StateError, match="Restore it from the backup of this state folder"):
        state.key_epoch_floor("m")


def test_two_protections_recording_at_once_keep_both_records(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two protections of the application rotating other models at once (threads here, as two
    processes would) each read the record and wrote it back: one model's epoch was lost, and
    its next protection went back to the replaced key. Reading is slowed so that the two
    overlap whenever nothing keeps them apart."""
    state = ProtectionState.open("app")
    read = ProtectionState._key_epochs

    def slow_read(self: ProtectionState) -> dict[str, int]:
        epochs = read(self)
        time.sleep(0.3)
        return epochs

    monkeypatch.setattr(ProtectionState, "_key_epochs", slow_read)
    threads = [
        threading.Thread(target=state.record_key_epoch, args=(name, 1)) for name in ("m", "n")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert json.loads((state.folder / RECORD).read_text()) == {"m": 1, "n": 1}
