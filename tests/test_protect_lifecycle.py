"""A user's protection lifecycle across calls and scripts: what a protection does when the
application's files changed since the last call."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

from skprotect_pytorch.errors import (
    ConfigurationError,
    ExportError,
    InvalidArgumentError,
    StateError,
)
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = LIFECYCLE_INPUT
mlp = lifecycle_mlp


@pytest.mark.parametrize("platform", [EP.TXT, EP.LINUX])
def test_a_protection_without_the_applications_state_creates_no_master_secret(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, platform: EP
) -> None:
    """A protection script run without the state folder of an application already protected
    here (another SKPROTECT_STATE_DIR) created a new master.key, then failed with "signed by a
    different application key", leaving a secret that unlocks none of the application's files."""
    first = SkProtectorPyTorch(application_name="app")
    first.protect_new_model(
        mlp(0), "m", [X], model_export_formats=EF.ONNX, deployment_platform=platform
    )
    config = first.config_path(platform)
    before = config.read_bytes()
    elsewhere = workdir / "elsewhere"
    monkeypatch.setenv("SKPROTECT_STATE_DIR", str(elsewhere))
    lost = SkProtectorPyTorch(application_name="app")
    for call in (lost.protect_updated_model, lost.protect_new_model):
        name = "m" if call == lost.protect_updated_model else "n"
        with pytest.raises(StateError, match=r"no master secret .* move .*outputs/app away"):
            call(mlp(1), name, [X], model_export_formats=EF.ONNX, deployment_platform=platform)
        assert not (elsewhere / "app" / "master.key").exists()
        assert config.read_bytes() == before
    monkeypatch.delenv("SKPROTECT_STATE_DIR")  # back in the scripts' setting, it goes on
    first.protect_new_model(
        mlp(1), "n", [X], model_export_formats=EF.ONNX, deployment_platform=platform
    )


def test_the_state_folder_is_found_where_the_outputs_folder_is(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script that changed directory after making its protector wrote outputs/ in the first
    folder and the master secret in the second, where no other script of the application
    finds it."""
    protector = SkProtectorPyTorch(application_name="app")
    (workdir / "data").mkdir()
    monkeypatch.chdir(workdir / "data")
    result = protector.protect_new_model(mlp(0), "m", [X], model_export_formats=EF.ONNX)
    assert result.output_dir == workdir / "outputs" / "app"
    assert (workdir / ".skprotect_private" / "app" / "master.key").is_file()
    assert not (workdir / "data" / ".skprotect_private").exists()
    monkeypatch.chdir(workdir)  # another script of the application, from the same folder
    SkProtectorPyTorch(application_name="app").migrate_configuration(2, EP.TXT)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_model_folder_on_another_disk_is_named_with_what_to_do(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model folder linked to another disk cannot take the staged files (EXDEV): the error
    said "free space or check the folder's permissions", neither of which helps, and did not
    name the file."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(0), "m", [X], model_export_formats=EF.ONNX)
    before = _tree(workdir / "outputs")
    other_disk = str(workdir / "outputs" / "app" / "m")

    def across_disks(real):  # type: ignore[no-untyped-def]
        def move(src: os.PathLike, dst: os.PathLike) -> None:  # a rename or a hard link
            if str(src).startswith(other_disk) != str(dst).startswith(other_disk):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), str(dst))
            real(src, dst)

        return move

    monkeypatch.setattr(os, "replace", across_disks(os.replace))
    monkeypatch.setattr(os, "link", across_disks(os.link))
    with pytest.raises(ExportError) as caught:
        protector.protect_updated_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)
    message = str(caught.value)
    assert "previous files are restored" in message
    assert "key_params_m.json: Invalid cross-device link" in message
    assert "symbolic link to another disk" in message
    assert "Free space" not in message
    assert _tree(workdir / "outputs") == before


def test_a_protection_that_migrates_the_configuration_says_so(workdir: Path) -> None:
    """An update of a version-0 application with platform_version left at its default (2)
    migrated the whole configuration for good, which a version-0 runtime refuses, with only an
    info line in the log."""
    protector = SkProtectorPyTorch(application_name="app")
    for name in ("m", "n"):
        protector.protect_new_model(
            mlp(0), name, [X], model_export_formats=EF.ONNX, platform_version=0
        )
    with pytest.warns(
        UserWarning,
        match=r"skconfig.json was at platform version 0: .* to "
        r"platform_version=2, .* runtime that supports only version 0 refuses",
    ):
        protector.protect_updated_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # already at version 2: nothing to say
        protector.protect_updated_model(mlp(2), "n", [X], model_export_formats=EF.ONNX)


def test_a_new_model_named_like_another_but_for_case_is_refused(workdir: Path) -> None:
    """On a case-insensitive disk (macOS, Windows) a model 'net' beside 'Net' writes into the
    folder of 'Net' and silently replaces its files, breaking its deployment."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        mlp(0), "Net", [X], model_export_formats=EF.ONNX, deployment_platform=EP.LINUX
    )
    before = _tree(workdir / "outputs")
    for name, platform in (("net", EP.TXT), ("NET", EP.LINUX)):
        with pytest.raises(InvalidArgumentError, match=f"'{name}' differs from the model 'Net'"):
            protector.protect_new_model(
                mlp(1), name, [X], model_export_formats=EF.ONNX, deployment_platform=platform
            )
    assert _tree(workdir / "outputs") == before
    protector.protect_new_model(  # the same model for the other platform is no twin
        mlp(0), "Net", [X], model_export_formats=EF.ONNX, deployment_platform=EP.TXT
    )


def test_a_model_deployed_beside_its_case_twin_can_be_added_to_the_other_platform(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'Net' and 'net', both deployed for LINUX by an earlier release, each have their folder
    already: adding 'Net' to TXT was refused as a twin of 'net', a folder it makes no more."""
    protector = SkProtectorPyTorch(application_name="app")
    monkeypatch.setattr("skprotect_pytorch.pipeline._refuse_case_twin", lambda request: None)
    for name in ("Net", "net"):
        protector.protect_new_model(
            mlp(0), name, [X], model_export_formats=EF.ONNX, deployment_platform=EP.LINUX
        )
    monkeypatch.undo()
    protector.protect_new_model(
        mlp(0), "Net", [X], model_export_formats=EF.ONNX, deployment_platform=EP.TXT
    )
    with pytest.raises(InvalidArgumentError, match="'NET' differs from the model 'Net'"):
        protector.protect_new_model(
            mlp(0), "NET", [X], model_export_formats=EF.ONNX, deployment_platform=EP.TXT
        )


def test_a_new_model_name_with_a_file_extension_is_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usage document's model_name is "without file extension": 'resnet.onnx' was taken and
    named the files resnet.onnx.onnx. A model deployed under such a name can still be updated."""
    protector = SkProtectorPyTorch(application_name="app")
    for name, stem in (("resnet.onnx", "resnet"), ("net.v2.PT2", "net.v2"), ("w.pt", "w")):
        # the file whose extension it doubles, then the names to pass instead
        message = re.escape(f"pass model_name='{stem}', or '{stem}_")
        with pytest.raises(InvalidArgumentError, match=message):
            protector.protect_new_model(mlp(0), name, [X], model_export_formats=EF.ONNX)
    assert not (workdir / "outputs").exists()
    protector.protect_new_model(mlp(0), "net.v2", [X], model_export_formats=EF.ONNX)
    monkeypatch.setattr("skprotect_pytorch.protect.MODEL_FILE_EXTENSIONS", frozenset())
    protector.protect_new_model(mlp(0), "old.onnx", [X], model_export_formats=EF.ONNX)
    monkeypatch.undo()
    result = protector.protect_updated_model(mlp(1), "old.onnx", [X], model_export_formats=EF.ONNX)
    assert result.formats["onnx"].path.name == "old.onnx.onnx"
    # the same model for the other platform: it was refused, naming a name with other keys
    linux = protector.protect_new_model(
        mlp(1), "old.onnx", [X], model_export_formats=EF.ONNX, deployment_platform=EP.LINUX
    )
    assert linux.formats["onnx"].path == result.formats["onnx"].path


def test_format_settings_no_protected_format_takes_are_said(workdir: Path) -> None:
    """inductor_configs with no AOTInductor format, and torch.onnx.export arguments with no
    ONNX format, were accepted and silently ignored."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.warns(UserWarning, match=r"inductor_configs \(max_autotune\): not used.*\(ONNX\)"):
        protector.protect_new_model(
            mlp(0),
            "m",
            [X],
            model_export_formats=EF.ONNX,
            inductor_configs={"max_autotune": True},
        )
    with pytest.warns(UserWarning, match=r"onnx_params opset_version: not used.*TORCHSCRIPT_CPU"):
        protector.protect_new_model(
            mlp(0),
            "n",
            [X],
            model_export_formats=EF.TORCHSCRIPT_CPU,
            onnx_params={"input_names": ["x"], "opset_version": 17},
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the names serve every format
        protector.protect_updated_model(
            mlp(0),
            "n",
            [X],
            model_export_formats=EF.TORCHSCRIPT_CPU,
            onnx_params={"input_names": ["x"], "output_names": ["y"]},
        )


def test_a_damaged_configuration_says_how_to_start_over(workdir: Path) -> None:
    """A configuration cut short (a disk that filled up under another tool) was refused with
    "re-protect the models", which every protection then refused the same way."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(0), "m", [X], model_export_formats=EF.ONNX)
    config = protector.config_path(EP.TXT)
    config.write_bytes(config.read_bytes()[:100])
    with pytest.raises(ConfigurationError, match="move it away and protect every model again"):
        protector.protect_updated_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)
    config.rename(workdir / "damaged.json")  # what the message says
    protector.protect_new_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)


def test_a_shared_file_recording_other_dynamic_ranges_is_not_kept(workdir: Path) -> None:
    """The other platform's ONNX file, kept when it reproduced the outputs, recorded that
    protection's range (batch 2 to 8), so the LINUX runtime refused the batches 9 to 64 its
    own protection asked for. It is replaced now (with the warning that the other platform
    must be protected again); a file with the same range is still kept."""
    protector = SkProtectorPyTorch(application_name="app")
    x4 = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))

    def protect(platform: EP, high: int, new: bool = True) -> None:
        call = protector.protect_new_model if new else protector.protect_updated_model
        call(
            mlp(0),
            "m",
            [x4],
            model_export_formats=EF.ONNX,
            deployment_platform=platform,
            dynamic_shapes=[{0: torch.export.Dim("batch", min=2, max=high)}],
        )

    protect(EP.TXT, 8)
    shared = protector.outputs_dir / "m" / "onnx" / "m.onnx"
    before = shared.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing replaced: no warning
        protect(EP.LINUX, 8)
    assert shared.read_bytes() == before
    with pytest.warns(RuntimeWarning, match="was the TXT deployment's file"):
        protect(EP.LINUX, 64, new=False)
    runtime = SkRuntime(protector.outputs_dir, platform="LINUX", kek=protector.state.kek)
    batch = torch.randn(20, 6)
    with runtime.load("m") as model, torch.no_grad():
        assert abs(model(batch.numpy()) - mlp(0)(batch).numpy()).max() < 1e-4


def test_a_damaged_configuration_creates_no_master_secret(workdir: Path) -> None:
    """With the configuration damaged and no master secret (a new checkout of the outputs),
    a protection made a new master.key before the configuration check refused the file."""
    config = workdir / "outputs" / "app" / "skconfig.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"version": 2, "truncated')
    with pytest.raises(StateError, match=r"no master secret .* move .*outputs/app away"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            mlp(0), "m", [X], model_export_formats=EF.ONNX
        )
    assert not (workdir / ".skprotect_private" / "app" / "master.key").exists()
    assert config.read_text() == '{"version": 2, "truncated'
