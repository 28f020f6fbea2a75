"""The public API's input: names, arguments and failures that used to surface late or wrongly."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

import skprotect_pytorch.configuration as configuration
import skprotect_pytorch.pipeline as pipeline
import skprotect_pytorch.protect as protect
import skprotect_pytorch.staging as staging
from skprotect_pytorch import Customer
from skprotect_pytorch.errors import ConfigurationError, ExportError, InvalidArgumentError
from skprotect_pytorch.logs import get_logger
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.config import FormatEntry, ModelEntry, load_config

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
INPUTS = [torch.randn(2, 8, generator=torch.Generator().manual_seed(0))]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def no_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("the export started although the call was bound to fail")


@pytest.mark.parametrize("name", ["skrpl", "skconfig.json", "SKRPL"])
def test_a_model_named_like_a_configuration_file_is_refused(workdir: Path, name: str) -> None:
    """The model's folder goes beside the configuration files: a model called ``skrpl`` made
    every later LINUX protection of the application fail ("Is a directory")."""
    with pytest.raises(InvalidArgumentError, match="name of a configuration file"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(), name, INPUTS, model_export_formats=EF.ONNX
        )
    assert not (workdir / "outputs").exists()


@pytest.mark.parametrize("version", [2.0, np.int64(2), "2"])
def test_a_platform_version_of_another_type_is_refused_before_the_export(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, version: object
) -> None:
    """2.0 and numpy's 2 equal 2, so they passed the argument check and were refused by the
    configuration write, after every format had been exported."""
    monkeypatch.setattr(pipeline, "get_exporter", no_export)
    with pytest.raises(InvalidArgumentError, match="platform_version must be an int"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(), "net", INPUTS, model_export_formats=EF.ONNX, platform_version=version
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": 2**63}, "at most 9223372036854775807"),
        ({"id": 1, "name": "x" * 1025}, "at most 1024 characters"),
        ({"id": 1, "name": "\ud800"}, "valid Unicode"),
    ],
    ids=["id-over-int64", "long-name", "lone-surrogate"],
)
def test_a_customer_no_configuration_or_licence_server_takes_is_refused(
    kwargs: dict, message: str
) -> None:
    """These were accepted, then refused by the configuration write after the export (name) or
    by the licence server at deployment (id)."""
    with pytest.raises(InvalidArgumentError, match=message):
        Customer(**kwargs)


def test_a_configuration_of_another_master_secret_is_refused_before_the_export(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost private state folder used to be found out by the configuration write, after
    every format (minutes of AOTInductor compiles) had been exported."""
    SkProtectorPyTorch(application_name="app").protect_new_model(
        mlp(), "net", INPUTS, model_export_formats=EF.ONNX
    )
    shutil.rmtree(workdir / ".skprotect_private")
    replaced = SkProtectorPyTorch(application_name="app")
    assert replaced.state.folder.is_dir()  # a new master secret (a wrong backup put back)
    monkeypatch.setattr(pipeline, "get_exporter", no_export)
    with pytest.raises(ConfigurationError, match="different application key"):
        replaced.protect_new_model(mlp(1), "other", INPUTS, model_export_formats=EF.ONNX)


def test_each_protector_logs_into_its_own_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last protector created with save_logs=True took the log of every other one, and one
    with save_logs=False still wrote into it."""

    def fake_run(request: pipeline.ProtectRequest, state: object) -> str:
        get_logger().info("protecting model %s", request.model_name)
        return request.model_name

    monkeypatch.setattr(protect, "run_protection", fake_run)
    first = SkProtectorPyTorch(application_name="a1", save_logs=True)
    second = SkProtectorPyTorch(application_name="a2", save_logs=True)
    quiet = SkProtectorPyTorch(application_name="a3")
    assert first.log_path != second.log_path  # even when created in the same second
    for protector, name in ((first, "m1"), (second, "m2"), (quiet, "m3")):
        protector.protect_new_model(mlp(), name, INPUTS, model_export_formats=EF.ONNX)
    first_log, second_log = first.log_path.read_text(), second.log_path.read_text()
    assert "protecting model m1" in first_log and "torch" in first_log
    assert "protecting model m2" in second_log
    assert "m2" not in first_log and "m1" not in second_log
    assert "m3" not in first_log + second_log


def _entry(name: str) -> ModelEntry:
    return ModelEntry(
        key_epoch=0,
        inputs=[{"name": "x", "shape": [1, 4], "dtype": "float32", "dynamic_dims": {}}],
        outputs=[{"name": "y"}],
        key={"name": "key_vector", "length": 12},
        formats={
            "onnx": FormatEntry(
                group="onnx", file=f"{name}/onnx/{name}.onnx", key_files=[], sha256="ab" * 32
            )
        },
    )


def _add(path: Path, name: str, application: str, key: Ed25519PrivateKey) -> None:
    """Add ``name`` to the TXT version-2 configuration at ``path``, as a protection would."""
    configuration.add_model(
        path,
        name,
        _entry(name),
        platform="TXT",
        platform_version=2,
        customer=None,
        application=application,
        signing_key=key,
        replace=False,
    )


def test_two_protections_at_once_keep_both_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two scripts of one application each read the configuration, added their model and
    wrote it back: the slower write dropped the other's model (its files stayed, untracked)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    path = tmp_path / "outputs" / "app" / "skconfig.json"

    def add(name: str) -> None:
        _add(path, name, "app", key)

    add("first")
    real_write = configuration.write_config

    def slow_write(*args: object, **kwargs: object) -> None:
        time.sleep(0.3)  # the other thread reads the file meanwhile, unless it waits
        real_write(*args, **kwargs)

    monkeypatch.setattr(configuration, "write_config", slow_write)
    threads = [threading.Thread(target=add, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(load_config(path).models) == ["a", "b", "first"]


def test_a_full_disk_while_staging_is_an_export_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing a TorchScript file to a full disk raised a bare OSError, naming neither the
    problem's place nor what to do; the previous files stay as they were."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU)
    outputs = workdir / "outputs"
    before = {p: p.read_bytes() for p in outputs.rglob("*") if p.is_file()}
    real_copy = shutil.copyfileobj

    def full(source, target, *args, **kwargs):
        if "ZipWrite" in type(target).__name__:  # an entry of the .pt archive being written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(ExportError, match=r"No space left on device\. Nothing in .* changed"):
        protector.protect_updated_model(
            mlp(1), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
        )
    assert {p: p.read_bytes() for p in outputs.rglob("*") if p.is_file()} == before


def test_another_applications_configuration_is_named_as_such_before_the_export(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration copied from another application is refused before the export, and the
    error names that application instead of blaming a lost master secret only."""
    other_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    _add(workdir / "outputs" / "app" / "skconfig.json", "first", "other_app", other_key)
    monkeypatch.setattr(pipeline, "get_exporter", no_export)
    with pytest.raises(ConfigurationError, match=r"'other_app'.*another application's file"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(), "net", INPUTS, model_export_formats=EF.ONNX
        )


def test_a_failure_is_said_once_on_stderr(tmp_path: Path) -> None:
    """Without save_logs, Python's last-resort log handler printed the failure's traceback on
    stderr before the exception itself was raised (and every warning twice)."""
    script = (
        "import torch\n"
        "from skprotect_pytorch.errors import InvalidArgumentError\n"
        "from skprotect_pytorch.protect import SkProtectorPyTorch\n"
        "model = torch.nn.Linear(8, 4).double()\n"
        "try:\n"
        "    SkProtectorPyTorch().protect_new_model(model, 'm', [torch.randn(2, 8).double()])\n"
        "except InvalidArgumentError:\n"
        "    pass\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "protection of" not in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_killed_protections_staging_folder_is_removed_by_the_next(workdir: Path) -> None:
    """A protection killed before its commit (out of memory in an AOTInductor compile) left a
    hidden staging folder in outputs/, shipped with it: locked models, their keys, even the
    plaintext originals of save_original. The next protection removes it; a running
    protection's folder and a backup kept for a manual restore stay."""
    fcntl = pytest.importorskip("fcntl")
    app = workdir / "outputs" / "app"
    names = (".staging-0a", ".staging-0b-backup", ".staging-0c")
    orphan, backup, running = (app / name for name in names)
    for folder in (orphan, backup, running):
        (folder / "x" / "original").mkdir(parents=True)
        (folder / "x" / "original" / "x_onnx.onnx").write_bytes(b"plaintext weights")
    held = os.open(running, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the running protection does
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
        )
    finally:
        os.close(held)
    assert not orphan.exists()
    assert backup.is_dir() and running.is_dir()
    assert sorted(p.name for p in app.iterdir()) == [
        ".staging-0b-backup",
        ".staging-0c",
        "net",
        "skconfig.json",
    ]


def test_a_log_folder_that_cannot_be_written_is_one_clear_error(workdir: Path) -> None:
    """save_logs=True where ./log cannot be created raised a bare OSError."""
    (workdir / "log").write_text("a file where the log folder should be")
    with pytest.raises(InvalidArgumentError, match=r"save_logs=True, but the log cannot be"):
        SkProtectorPyTorch(application_name="app", save_logs=True)


def test_a_filesystem_that_refuses_folder_locks_still_protects(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS emulates flock with POSIX locks, and an exclusive one needs a descriptor open for
    writing, which a folder never has: every protection on NFS failed with "Cannot write to
    outputs/app (Bad file descriptor)". It now runs unlocked, and a staging folder whose
    protection cannot be told running or dead is kept, not deleted."""
    fcntl = pytest.importorskip("fcntl")
    real_flock = fcntl.flock

    def nfs_flock(fd: int, operation: int) -> None:
        read_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        if operation & fcntl.LOCK_EX and read_only:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    other = workdir / "outputs" / "app" / ".staging-0c"
    other.mkdir(parents=True)
    SkProtectorPyTorch(application_name="app").protect_new_model(
        mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
    )
    assert list(load_config(workdir / "outputs" / "app" / "skconfig.json").models) == ["net"]
    assert other.is_dir()


def test_a_staging_folder_removed_during_the_orphan_scan_is_passed_over(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A protection finishing (its cleanup removes its staging folder) while another one's
    orphan scan looked at that folder failed the other with "Cannot write to outputs/app"."""
    app = workdir / "outputs" / "app"
    finishing = app / ".staging-0d"
    finishing.mkdir(parents=True)
    real_is_dir = Path.is_dir

    def finishes_meanwhile(self: Path) -> bool:
        found = real_is_dir(self)
        if self == finishing:
            shutil.rmtree(finishing)  # listed and checked, then gone
        return found

    monkeypatch.setattr(Path, "is_dir", finishes_meanwhile)
    SkProtectorPyTorch(application_name="app").protect_new_model(
        mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
    )
    assert list(load_config(app / "skconfig.json").models) == ["net"]


def test_two_protectors_in_two_threads_each_log_into_their_own_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call's file took the records of every thread (the other protector's too), and the
    first call to end put the logger back to its level while the other still ran, whose later
    records were then dropped from its file."""
    first_started, first_done = threading.Event(), threading.Event()

    def fake_run(request: pipeline.ProtectRequest, state: object) -> None:
        name = request.model_name
        get_logger().info("start %s", name)
        if name == "m1":
            first_started.set()
            time.sleep(0.2)  # m2 starts meanwhile
        else:
            first_started.wait(5)
            first_done.wait(5)  # m1 has ended: its file's block is over
        get_logger().info("end %s", name)

    monkeypatch.setattr(protect, "run_protection", fake_run)
    level = get_logger().level
    first = SkProtectorPyTorch(application_name="a1", save_logs=True)
    second = SkProtectorPyTorch(application_name="a2", save_logs=True)

    def run_first() -> None:
        first.protect_new_model(mlp(), "m1", INPUTS)
        first_done.set()

    threads = [
        threading.Thread(target=run_first),
        threading.Thread(target=second.protect_new_model, args=(mlp(), "m2", INPUTS)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first_log, second_log = first.log_path.read_text(), second.log_path.read_text()
    assert "start m1" in first_log and "end m1" in first_log and "m2" not in first_log
    assert "start m2" in second_log and "end m2" in second_log and "m1" not in second_log
    assert get_logger().level == level  # as before the calls


def test_a_log_folder_removed_after_the_protector_was_made(workdir: Path) -> None:
    """Each call opens its log again: a ./log cleaned up after the protector was created made
    the next protection fail with a bare FileNotFoundError; a log that cannot be written then
    is one clear error."""
    protector = SkProtectorPyTorch(application_name="app", save_logs=True)
    shutil.rmtree(workdir / "log")
    protector.protect_new_model(mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU)
    assert "protecting 'net'" in protector.log_path.read_text()
    shutil.rmtree(workdir / "log")
    (workdir / "log").write_text("a file where the log folder was")
    with pytest.raises(InvalidArgumentError, match=r"cannot be written.*save_logs=False"):
        protector.protect_updated_model(
            mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
        )


def test_the_log_file_keeps_its_records_when_logging_leaves_out_threads(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``logging.logThreads = False`` no record says its thread: the file must still get
    the call's records rather than none."""
    monkeypatch.setattr(logging, "logThreads", False)

    def fake_run(request: pipeline.ProtectRequest, state: object) -> None:
        get_logger().info("protecting model %s", request.model_name)

    monkeypatch.setattr(protect, "run_protection", fake_run)
    protector = SkProtectorPyTorch(application_name="app", save_logs=True)
    protector.protect_new_model(mlp(), "m1", INPUTS)
    assert "protecting model m1" in protector.log_path.read_text()


def test_a_staging_folder_that_cannot_be_locked_stops_the_protection(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging folder left unlocked (here: no descriptor left) would look like a killed
    protection's to the next one, which would delete it mid-run; the protection stops at once
    instead, and leaves no folder behind."""
    real_lock = configuration.lock_folder

    def no_descriptor_left(folder: Path) -> int | None:
        if Path(folder).name.startswith(".staging-"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_lock(folder)

    monkeypatch.setattr(configuration, "lock_folder", no_descriptor_left)
    monkeypatch.setattr(staging, "lock_folder", no_descriptor_left)
    with pytest.raises(ExportError, match="Too many open files"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(), "net", INPUTS, model_export_formats=EF.TORCHSCRIPT_CPU
        )
    assert list((workdir / "outputs" / "app").iterdir()) == []
