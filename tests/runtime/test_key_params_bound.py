"""A protected model file records the commitment of its key (``"key_commitment"`` in the key's
``skprotect.inputs`` spec), and ``load()`` refuses TXT key files that combine into another key.

The key-params file's ``params_sha256`` is a plain hash: an edited share B, resealed, combined
into another valid key and the model loaded and gave wrong outputs without an error. The model
file's SHA-256 is in the signed configuration, so the commitment it records cannot be changed or
removed without re-signing; a model file that records none (protected before commitments were
recorded) loads as before."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from tests.models import LIFECYCLE_INPUT, deploy_lifecycle, lifecycle_mlp
from tests.runtime.test_deployed_file_fuzz import dumps, reseal_params, write_config
from tests.runtime.test_input_record_agreement import FILES, read_record, redeployed, write_record
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime, runtime
from skruntime.backends import backend_class
from skruntime.config import sha256_file
from skruntime.errors import KeyFileError
from skruntime.keyfile import _parse_txt, read_txt_keys

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = LIFECYCLE_INPUT.numpy()


def expected() -> np.ndarray:
    with torch.no_grad():
        return lifecycle_mlp(0)(LIFECYCLE_INPUT).numpy()


@pytest.fixture(scope="module")
def deployed(module_workdir: Path) -> Path:
    """Model ``m`` protected for TXT in ONNX and TorchScript (two format groups)."""
    return deploy_lifecycle(EF.ONNX | EF.TORCHSCRIPT_CPU)


@pytest.fixture(scope="module")
def deployed_aoti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model ``m`` protected for TXT as an AOTInductor package."""
    root = tmp_path_factory.mktemp("aoti")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("SKPROTECT_STATE_DIR", raising=False)
        return deploy_lifecycle(EF.INDUCTOR_CPU)


def reseal_another_key(folder: Path, fmt: str) -> None:
    """Edit share B of ``fmt``'s key-params file so that the two files combine into another
    valid key (the output slot's first two indices swapped) and redo its seal, as someone who
    can write the folder can."""
    group = Path(FILES[fmt]).parent
    key = read_txt_keys(folder / group, "m").static_key()
    params_path = folder / group / "key_params_m.json"
    params = json.loads(params_path.read_bytes())
    share = _parse_txt(params_path, (folder / group / "key_vector_inv_m.txt").read_bytes())
    sizes = params["spec"]["perm_sizes"]
    start, n = sum(sizes[:-1]), sizes[-1]
    swapped = key[start : start + n].astype(np.int64)
    swapped[[0, 1]] = swapped[[1, 0]]
    offsets = (share[start : start + n].astype(np.int64) - swapped) % n
    params["perm_offsets"][start : start + n] = [int(v) for v in offsets]
    params_path.write_bytes(dumps(reseal_params(params)))
    combined = read_txt_keys(folder / group, "m").static_key()  # sealed, and a valid key
    assert not np.array_equal(combined, key)


def edited_copy(source: Path, target: Path, fmt: str) -> Path:
    folder = Path(shutil.copytree(source, target / "app"))
    reseal_another_key(folder, fmt)
    return folder


def assert_refused(folder: Path, fmt: str, platform: str | None = None) -> None:
    with pytest.raises(KeyFileError) as refused:
        SkRuntime(folder, platform=platform).load("m", fmt)
    message = str(refused.value)
    for part in (Path(FILES[fmt]).name, "do not belong to model file", "Re-deploy the key files"):
        assert part in message, message


@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_genuine_key_files_load(deployed: Path, fmt: str) -> None:
    record = read_record(fmt, deployed / FILES[fmt])
    assert len(record[-1]["key_commitment"]) == 64
    with SkRuntime(deployed).load("m", fmt) as model:
        assert_equivalent(np.asarray(model(X)), expected())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_resealed_key_params_of_another_key_are_refused(
    deployed: Path, tmp_path: Path, fmt: str
) -> None:
    folder = edited_copy(deployed, tmp_path, fmt)
    assert_refused(folder, fmt)


def not_to_be_built(name: str) -> type:
    """``backend_class`` for a load that must be refused before its backend is built."""
    real = backend_class(name)

    class NotToBeBuilt(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError(f"the {name} backend was built")

    return NotToBeBuilt


@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_edited_key_files_are_refused_before_the_backend_is_built(
    deployed: Path, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commitment is read from the model file's bytes: edited key files were refused only
    after the backend was built (an onnxruntime session, a TorchScript module, an AOTInductor
    package loaded, its library extracted), the whole cost of a load for nothing."""
    folder = edited_copy(deployed, tmp_path, fmt)
    monkeypatch.setattr(runtime, "backend_class", not_to_be_built)
    assert_refused(folder, fmt)


def test_a_commitment_only_the_backend_reads_is_checked_after_it(
    deployed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the record read from the bytes miss the commitment that the backend reads, the
    key files are still checked, the session key wiped and the backend closed."""
    keys: list[np.ndarray] = []
    closed: list[bool] = []
    real_session_key, real_backend_class = runtime.session_key, runtime.backend_class

    def kept_key(material: object) -> np.ndarray:
        keys.append(real_session_key(material))
        return keys[-1]

    def closing_noted(name: str) -> type:
        real = real_backend_class(name)

        class Noted(real):  # type: ignore[misc, valid-type]
            def close(self) -> None:
                closed.append(True)
                super().close()

        return Noted

    folder = edited_copy(deployed, tmp_path, "onnx")
    monkeypatch.setattr(runtime, "recorded_commitment", lambda _data: None)
    monkeypatch.setattr(runtime, "session_key", kept_key)
    monkeypatch.setattr(runtime, "backend_class", closing_noted)
    assert_refused(folder, "onnx")
    assert closed == [True] and len(keys) == 1 and not keys[0].any()


def test_the_refusal_is_a_key_error_of_skprotect_run(deployed: Path, tmp_path: Path) -> None:
    folder = edited_copy(deployed, tmp_path, "onnx")
    np.save(tmp_path / "x.npy", X)
    args = ["run", str(folder), "m", "--format", "onnx", "-i", str(tmp_path / "x.npy")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4, result.output
    assert "do not belong to model file" in result.stderr


def test_key_params_without_the_nonce_are_refused(deployed: Path, tmp_path: Path) -> None:
    """Removing the nonce (and resealing) does not switch the check off."""
    folder = Path(shutil.copytree(deployed, tmp_path / "app"))
    params_path = folder / "m/onnx/key_params_m.json"
    params = json.loads(params_path.read_bytes())
    del params["commitment_nonce"]
    params_path.write_bytes(dumps(reseal_params(params)))
    assert_refused(folder, "onnx")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_a_model_file_without_commitment_loads(deployed: Path, tmp_path: Path, fmt: str) -> None:
    """A model file protected before commitments were recorded (the field removed, the
    configuration signed again for the new file) loads with its key files, and runs; edited
    key files are not detected there (the limit of such older files)."""
    folder = redeployed(deployed, tmp_path, fmt, lambda r: r[-1].pop("key_commitment"))
    assert "key_commitment" not in read_record(fmt, folder / FILES[fmt])[-1]
    with SkRuntime(folder).load("m", fmt) as model:
        assert_equivalent(np.asarray(model(X)), expected())
    reseal_another_key(folder, fmt)
    with SkRuntime(folder).load("m", fmt) as model:
        assert_garbage(np.asarray(model(X)), expected())


@pytest.mark.slow
def test_aoti_key_params_are_bound(
    deployed_aoti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SkRuntime(deployed_aoti).load("m", "inductor_cpu") as model:
        assert_equivalent(np.asarray(model(X)), expected())
    with monkeypatch.context() as mp:  # refused before the package is loaded
        mp.setattr(runtime, "backend_class", not_to_be_built)
        edited = edited_copy(deployed_aoti, tmp_path / "edited", "inductor_cpu")
        assert_refused(edited, "inductor_cpu")
    legacy = redeployed(
        deployed_aoti, tmp_path / "legacy", "inductor_cpu", lambda r: r[-1].pop("key_commitment")
    )
    with SkRuntime(legacy).load("m", "inductor_cpu") as model:
        assert_equivalent(np.asarray(model(X)), expected())


def strip_commitment(folder: Path, platform: str, fmt: str) -> None:
    """Make ``platform``'s ``fmt`` model file one an older protector wrote: without the key
    commitment, its configuration's SHA-256 (signed again) and TXT key files made to agree."""
    path = folder / FILES[fmt]
    record = read_record(fmt, path)
    record[-1].pop("key_commitment")
    old = sha256_file(path)
    write_record(fmt, path, record)
    new = sha256_file(path)

    def agree(doc: dict) -> dict:
        doc["payload"]["models"]["m"]["formats"][fmt]["sha256"] = new
        return doc

    write_config(folder, platform, agree)
    params_path = path.parent / "key_params_m.json"
    if params_path.is_file():
        params = json.loads(params_path.read_bytes())
        params["model_sha256"] = [new if h == old else h for h in params["model_sha256"]]
        params_path.write_bytes(dumps(reseal_params(params)))


def test_txt_protection_does_not_keep_the_other_platforms_file_without_commitment(
    workdir: Path,
) -> None:
    """A model file that an older protector wrote for LINUX, which the TXT protection would
    otherwise keep (it computes the same model with the same key), records no commitment: kept,
    the TXT key files written beside it stayed unbound however often the model was protected
    again, and an edited key-params file gave wrong outputs. It is replaced, with the warning
    that LINUX must protect again."""
    protector = SkProtectorPyTorch(application_name="app")
    protect = {"model_export_formats": EF.ONNX}
    protector.protect_new_model(
        lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], deployment_platform=EP.LINUX, **protect
    )
    folder = workdir / "outputs/app"
    strip_commitment(folder, "LINUX", "onnx")
    with pytest.warns(RuntimeWarning, match="was the LINUX deployment's file"):
        protector.protect_new_model(lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], **protect)
    assert len(read_record("onnx", folder / FILES["onnx"])[-1]["key_commitment"]) == 64
    reseal_another_key(folder, "onnx")
    assert_refused(folder, "onnx", "TXT")


def test_linux_protection_keeps_the_txt_file_without_commitment(workdir: Path) -> None:
    """A LINUX protection writes no TXT key files: the TXT deployment's older file (no
    commitment) is kept, and that deployment still loads (its key files as before)."""
    protector = SkProtectorPyTorch(application_name="app")
    protect = {"model_export_formats": EF.ONNX}
    protector.protect_new_model(lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], **protect)
    folder = workdir / "outputs/app"
    strip_commitment(folder, "TXT", "onnx")
    legacy = sha256_file(folder / FILES["onnx"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        protector.protect_new_model(
            lifecycle_mlp(0), "m", [LIFECYCLE_INPUT], deployment_platform=EP.LINUX, **protect
        )
    assert not [w for w in caught if "was the TXT deployment's file" in str(w.message)]
    assert sha256_file(folder / FILES["onnx"]) == legacy
    with SkRuntime(folder, platform="TXT").load("m", "onnx") as model:
        assert_equivalent(np.asarray(model(X)), expected())
