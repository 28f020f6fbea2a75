"""The protector's AOTInductor verification leaves nothing in ``TMPDIR``.

It loaded packages with torch's ``aoti_load_package`` itself, which extracts a package into a
new ``$TMPDIR/aotinductor_*`` folder and leaves it behind when the load fails: two folders per
failed verification load (a package without its library). It now loads them as the runtime
does (:func:`skruntime.backends.inductor.load_package`): torch's folder inside a private one,
removed at once when the load fails, else with the loaded package."""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp
from tests.runtime.test_inductor_package_fuzz import MODEL, SO, without

from skprotect_pytorch.errors import VerificationError
from skprotect_pytorch.export.base import get_exporter, load_artifact
from skprotect_pytorch.export.options import ExportOptions
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.protect import SkProtectorPyTorch

EXPORTER = get_exporter(ExportFormat.INDUCTOR_CPU)
OPTIONS = ExportOptions(["x"], ["y"], key_name="key")


@pytest.fixture(scope="module")
def tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh, empty temporary folder for torch (``TMPDIR``) and Python (``tempfile``), for
    the whole module: the protection included."""
    folder = tmp_path_factory.mktemp("tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        patch.setattr(tempfile, "tempdir", str(folder))
        yield folder


@pytest.fixture(scope="module")
def package(module_workdir: Path, tmpdir: Path) -> Path:
    """The package of a protection run with ``TMPDIR`` set to ``tmpdir``."""
    SkProtectorPyTorch(application_name="app").protect_new_model(
        lifecycle_mlp(0),
        "m",
        [LIFECYCLE_INPUT],
        model_export_formats=SkProtectorPyTorch.ExportFormat.INDUCTOR_CPU,
    )
    return module_workdir / "outputs/app" / MODEL


def left_in(folder: Path) -> list[str]:
    """What is in ``folder``, but for torch's compile cache (``torchinductor_<user>``), which
    torch keeps there on purpose."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_"))


def test_a_protection_leaves_nothing_in_tmpdir(package: Path, tmpdir: Path) -> None:
    """Its verification loaded the package (and released it): a protection run again and again
    (CI) leaves no folder behind."""
    gc.collect()
    assert package.is_file()
    assert left_in(tmpdir) == []


def test_a_failed_verification_load_leaves_nothing_in_tmpdir(
    package: Path, tmp_path: Path, tmpdir: Path
) -> None:
    damaged = tmp_path / "m.pt2"
    damaged.write_bytes(without(package.read_bytes(), SO))
    for _ in range(2):
        with pytest.raises(VerificationError, match="could not be loaded"):
            load_artifact(EXPORTER, damaged, OPTIONS)
    assert left_in(tmpdir) == []
    assert os.environ["TMPDIR"] == str(tmpdir)  # restored after the load


def test_a_verification_load_keeps_its_folder_until_released(package: Path, tmpdir: Path) -> None:
    run = load_artifact(EXPORTER, package, OPTIONS)
    (private,) = left_in(tmpdir)
    assert private.startswith("skruntime-aoti-")
    assert [p.name.startswith("aotinductor_") for p in (tmpdir / private).iterdir()] == [True]
    del run
    gc.collect()
    assert left_in(tmpdir) == []


def test_no_usable_temporary_folder_says_what_to_do(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python found no writable temporary folder: the message said "Check the export log;
    re-export the model", which fails again the same way."""
    missing = tmp_path / "missing"
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(missing)])
    with pytest.raises(VerificationError) as caught:
        load_artifact(EXPORTER, package, OPTIONS)
    assert str(caught.value) == (
        f"The AOTInductor package {package} could not be loaded: torch extracts it into a "
        f"temporary folder, and none could be created: No usable temporary directory found in "
        f"['{missing}']. Point TMPDIR to a writable folder with room for about twice the "
        f"package's size ({package.stat().st_size:,} bytes). Then protect again."
    )
