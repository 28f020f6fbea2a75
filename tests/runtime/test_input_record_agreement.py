"""``load()`` compares the model file's input record (``skprotect.inputs``) with the signed
configuration's inputs and key, and refuses a disagreement with ``IntegrityError``.

The files are written by the protector, then the record is changed and every other file made
to agree with the new model file (the configuration's SHA-256 signed again, the key-params
file's seal redone), as ``test_deployed_file_fuzz`` does: before the comparison such a file
loaded and every call was refused with a message that contradicted the configuration (or, in
ONNX, ran unchecked)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from tests.runtime.test_deployed_file_fuzz import dumps, reseal_params, write_config
from tests.runtime.test_inductor_package_fuzz import metadata as package_metadata
from tests.runtime.test_inductor_package_fuzz import with_metadata
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.backends.inputs import INPUTS_METADATA
from skruntime.config import sha256_file
from skruntime.errors import IntegrityError

EF = SkProtectorPyTorch.ExportFormat
X = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
FORMATS = {"onnx": "m/onnx/m.onnx", "torchscript_cpu": "m/cpu/m.pt"}
FILES = {**FORMATS, "inductor_cpu": "m/cpu/m.pt2"}


@pytest.fixture(scope="module")
def deployed(module_workdir: Path) -> tuple[Path, np.ndarray]:
    """A TXT deployment of an MLP (batch dynamic up to 16) in ONNX and TorchScript, and its
    outputs on :data:`X`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "m",
        [torch.from_numpy(X)],
        model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU,
        dynamic_shapes=[{0: torch.export.Dim("batch", max=16)}],
    )
    with torch.no_grad():
        return module_workdir / "outputs/app", model(torch.from_numpy(X)).numpy()


def read_record(fmt: str, path: Path) -> list[dict] | None:
    if fmt == "onnx":
        props = {p.key: p.value for p in onnx.load(path).metadata_props}
        raw = props.get(INPUTS_METADATA)
    elif fmt == "inductor_cpu":
        raw = package_metadata(path.read_bytes())[INPUTS_METADATA]
    else:
        extra = {INPUTS_METADATA: ""}
        torch.jit.load(str(path), _extra_files=extra)
        raw = extra[INPUTS_METADATA] or None
    return None if raw is None else json.loads(raw)


def write_record(fmt: str, path: Path, record: list[dict] | None) -> None:
    """Rewrite the model file with ``record`` (None: without one, as older protectors)."""
    if fmt == "onnx":
        proto = onnx.load(path)
        kept = [p for p in proto.metadata_props if p.key != INPUTS_METADATA]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        if record is not None:
            proto.metadata_props.add(key=INPUTS_METADATA, value=json.dumps(record))
        onnx.save(proto, path)
    elif fmt == "inductor_cpu":  # both metadata entries, stored with their CRCs redone
        data = path.read_bytes()
        doc = package_metadata(data) | {INPUTS_METADATA: json.dumps(record)}
        path.write_bytes(with_metadata(data, dumps(doc)))
    else:
        extra = {} if record is None else {INPUTS_METADATA: json.dumps(record)}
        torch.jit.save(torch.jit.load(str(path)), str(path), _extra_files=extra)


def redeployed(
    source: Path,
    target: Path,
    fmt: str,
    edit: Callable[[list[dict]], Any] | None,
    edit_config: Callable[[dict], Any] | None = None,
) -> Path:
    """A copy of ``source`` whose ``fmt`` file has its record edited (``edit=None``: removed),
    with the configuration (SHA-256, signed again) and key-params file made to agree."""
    folder = Path(shutil.copytree(source, target / "app"))
    file = folder / FILES[fmt]
    record = read_record(fmt, file)
    if edit is not None:
        edit(record)
    old = sha256_file(file)
    write_record(fmt, file, None if edit is None else record)
    new = sha256_file(file)

    def agree(doc: dict) -> dict:
        entry = doc["payload"]["models"]["m"]
        entry["formats"][fmt]["sha256"] = new
        if edit_config is not None:
            edit_config(entry)
        return doc

    write_config(folder, "TXT", agree)
    params_path = file.parent / "key_params_m.json"
    params = json.loads(params_path.read_bytes())
    params["model_sha256"] = [new if h == old else h for h in params["model_sha256"]]
    params_path.write_bytes(dumps(reseal_params(params)))
    return folder


def _static_batch(record: list[dict]) -> None:
    record[0]["shape"][0] = 2
    record[0].pop("ranges", None)


EDITS: dict[str, tuple[Callable[[list[dict]], Any], str]] = {
    "key length": (
        lambda r: r[-1].update(shape=[5]),
        "the key 'key_vector' has length 5 in the file, 75",
    ),
    "dtype": (
        lambda r: r[0].update(dtype="float64"),
        "has dtype float64 in the file, but the configuration says float32",
    ),
    "static size": (
        lambda r: r[0]["shape"].__setitem__(1, 7),
        "axis 1 has size 7 in the file, 6 in the configuration",
    ),
    "rank": (
        lambda r: r[0]["shape"].append(1),
        "has 3 axes in the file, 2 in the configuration",
    ),
    "dynamic axis made static": (
        _static_batch,
        "axis 0 is static (2) in the file, dynamic ('batch')",
    ),
    "range leaving out the example": (
        lambda r: r[0].update(ranges={"0": [4, 8]}),
        "takes sizes 4 to 8 in the file, which leave out the configuration's example size 2",
    ),
    "name": (
        lambda r: r[0].update(name="y"),
        "input #0 is named 'y' in the file, 'input.1' in the configuration",
    ),
    "key flag": (
        lambda r: r[0].update(key=True),
        "marks input #0 ('input.1') as the key",
    ),
    "count": (
        lambda r: r.insert(0, {"shape": [3], "dtype": "float32", "name": "z"}),
        "the file records 3 inputs ('z', 'input.1', 'key_vector'), the configuration 1 and the key",
    ),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", EDITS)
def test_a_record_that_disagrees_with_the_configuration_is_refused(
    deployed, tmp_path, fmt: str, case: str
) -> None:
    edit, expected = EDITS[case]
    folder = redeployed(deployed[0], tmp_path, fmt, edit)
    with pytest.raises(IntegrityError) as refused:
        SkRuntime(folder).load("m", fmt)
    message = str(refused.value)
    for part in (expected, Path(FORMATS[fmt]).name, "skconfig.json", INPUTS_METADATA, "re-deploy"):
        assert part in message, message


@pytest.mark.parametrize("fmt", FORMATS)
def test_agreeing_and_missing_records_load(deployed, tmp_path, fmt: str) -> None:
    """The record as written (saved again), none at all (files of older protectors), and a
    dynamic record axis the configuration fixes to its example size (a trace's ``Dim.AUTO``
    axis that torch.export made static) all load and run."""

    def static_in_config(entry: dict) -> None:
        entry["inputs"][0]["dynamic_dims"] = {}

    cases = {
        "as written": (lambda r: None, None),
        "no record": (None, None),
        "config static, record dynamic": (lambda r: None, static_in_config),
    }
    for name, (edit, edit_config) in cases.items():
        folder = redeployed(deployed[0], tmp_path / name, fmt, edit, edit_config)
        with SkRuntime(folder).load("m", fmt) as model:
            np.testing.assert_allclose(np.asarray(model(X)), deployed[1], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def deployed_aoti(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A TXT deployment of the MLP as an AOTInductor package compiled for batches of 2 (one
    compile), and its outputs on :data:`X`."""
    root = tmp_path_factory.mktemp("aoti")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("SKPROTECT_STATE_DIR", raising=False)
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model, "m", [torch.from_numpy(X)], model_export_formats=EF.INDUCTOR_CPU
        )
    with torch.no_grad():
        return root / "outputs/app", model(torch.from_numpy(X)).numpy()


@pytest.mark.slow
def test_an_aoti_record_promising_another_batch_is_refused(deployed_aoti, tmp_path) -> None:
    """A record promising a batch of 1 to a library compiled for 2 (the call of 1 it let
    through was read past its end), a record of another key length; the record as written
    loads."""
    source, expected = deployed_aoti
    cases = {
        "batch": (lambda r: r[0]["shape"].__setitem__(0, 1), "axis 0 has size 1 in the file, 2"),
        "key": (lambda r: r[-1].update(shape=[5]), "has length 5 in the file, 75"),
    }
    for name, (edit, part) in cases.items():
        folder = redeployed(source, tmp_path / name, "inductor_cpu", edit)
        with pytest.raises(IntegrityError, match=re.escape(part)) as refused:
            SkRuntime(folder).load("m", "inductor_cpu")
        assert "m.pt2" in str(refused.value)
    folder = redeployed(source, tmp_path / "as written", "inductor_cpu", lambda r: None)
    with SkRuntime(folder).load("m", "inductor_cpu") as model:
        np.testing.assert_allclose(np.asarray(model(X)), expected, rtol=1e-4, atol=1e-5)
