"""Shared fixtures: every test that protects runs in its own folder (outputs/, private state)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:
    # One torch thread per worker (and per process a test starts): with -n 2 on two cores, each
    # worker's two OpenMP threads spun waiting for the other worker's, and a training that takes
    # 0.2 s took 8.7 s. Tests of thread settings set theirs explicitly.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current directory: outputs/, log/ and .skprotect_private/ land here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKPROTECT_STATE_DIR", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def module_workdir(tmp_path_factory: pytest.TempPathFactory):
    """Like ``workdir`` but shared by a module's tests, to reuse expensive exports."""
    path = tmp_path_factory.mktemp("protect")
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)


def _protect_linear(
    application: str,
    model_name: str,
    features: tuple[int, int],
    *,
    batch: int = 2,
    test_key: bool = True,
) -> Path:
    """Protect a seeded ``nn.Linear(*features)`` as ONNX model ``model_name`` of ``application``
    in the current folder, exported on ``batch`` rows; returns the application's folder."""
    import torch
    from torch import nn

    from skprotect_pytorch.protect import SkProtectorPyTorch

    torch.manual_seed(0)
    SkProtectorPyTorch(application_name=application).protect_new_model(
        nn.Sequential(nn.Linear(*features)).eval(),
        model_name,
        [torch.randn(batch, features[0])],
        model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        test_key=test_key,
    )
    return Path.cwd() / "outputs" / application


@pytest.fixture(scope="session")
def protect_linear() -> Callable[..., Path]:
    """The one tiny model the command-line and runtime tests protect (test key by default):
    ``protect_linear(application, model_name, (in, out), batch=2, test_key=True)``."""
    return _protect_linear


def _no_training(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the quickstart trained before its checks")


@pytest.fixture
def untrained(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder, with the quickstart's training (and the data loading before it)
    failing loudly: what it checks first must stop it before."""
    from skprotect_pytorch import quickstart

    monkeypatch.setattr(quickstart, "train", _no_training)
    monkeypatch.setattr(quickstart, "load_digits_split", _no_training)
    return workdir
