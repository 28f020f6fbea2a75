"""A protection whose AOTInductor check fails for a missing or read-only ``TMPDIR`` says so: it
said "Check the export log; re-export the model", which fails again the same way."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from skprotect_pytorch.errors import VerificationError
from skprotect_pytorch.export.base import load_artifact
from skprotect_pytorch.export.options import ExportOptions
from skprotect_pytorch.formats import ExportFormat


def _unpacking_fails(path: Path, options: ExportOptions) -> None:
    raise RuntimeError("Error generating temporary directory: No such file or directory")


def test_a_tmpdir_torch_cannot_use_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", "/nonexistent/tmp")
    exporter = SimpleNamespace(fmt=ExportFormat.INDUCTOR_CPU, load=_unpacking_fails)
    with pytest.raises(VerificationError) as caught:
        load_artifact(exporter, Path("m.pt2"), ExportOptions(["x"], ["y"]))
    message = str(caught.value)
    assert "in TMPDIR (/nonexistent/tmp) and could not (RuntimeError: Error generating" in message
    assert "Point TMPDIR to a writable folder or unset it" in message
    assert "re-export the model" not in message


def test_the_runtime_names_a_tmpdir_torch_cannot_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime's load of a package said "torch could not load ... Re-deploy the file",
    which would fail again the same way."""
    import torch

    from skruntime.backends import inductor
    from skruntime.backends.base import BackendOptions
    from skruntime.errors import BackendError

    monkeypatch.setenv("TMPDIR", "/nonexistent/tmp")
    monkeypatch.setattr(inductor, "check_package", lambda model: None)  # not an archive
    monkeypatch.setattr(
        torch._inductor,
        "aoti_load_package",
        lambda *a, **k: _unpacking_fails(tmp_path, ExportOptions(["x"], ["y"])),
    )
    (tmp_path / "m.pt2").write_bytes(b"package unpacked nowhere " + str(tmp_path).encode())
    with pytest.raises(BackendError) as caught:
        inductor.InductorBackend(tmp_path / "m.pt2", BackendOptions())
    assert str(caught.value) == (
        f"The AOTInductor package {tmp_path / 'm.pt2'} could not be loaded: torch unpacks it in "
        "TMPDIR (/nonexistent/tmp) and could not (RuntimeError: Error generating temporary "
        "directory: No such file or directory); it does not fall back to /tmp as Python does. "
        "Point TMPDIR to a writable folder or unset it."
    )
