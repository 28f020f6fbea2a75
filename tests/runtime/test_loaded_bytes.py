"""The runtime loads exactly the model bytes whose SHA-256 it checked.

Each backend opened the model file again by its path after the integrity check: whoever could
write the deployed folder could replace the file between the check and the load (time of check
to time of use), and the replaced model ran although the check had passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import IntegrityError, SkRuntime
from skruntime.backends import inductor
from skruntime.backends.base import BackendOptions, ModelFile
from skruntime.backends.inductor import INPUTS_METADATA, InductorBackend

EF = SkProtectorPyTorch.ExportFormat
X = np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32)
FAST = EF.ONNX | EF.TORCHSCRIPT_CPU


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _protect(root: Path, seed: int, formats: Any) -> Path:
    """Protect ``_net(seed)`` as model ``net`` of application ``app`` under ``root``."""
    root.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("SKPROTECT_STATE_DIR", raising=False)
        SkProtectorPyTorch(application_name="app").protect_new_model(
            _net(seed), "net", [torch.from_numpy(X)], model_export_formats=formats
        )
    return root / "outputs/app"


def _pair(factory: pytest.TempPathFactory, formats: Any) -> tuple[Path, Path]:
    """The deployed application and an attacker's: the same model, other weights and key."""
    base = factory.mktemp("pair")
    return _protect(base / "deployed", 0, formats), _protect(base / "attacker", 1, formats)


@pytest.fixture(scope="module")
def fast_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _pair(tmp_path_factory, FAST)


@pytest.fixture(scope="module")
def inductor_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _pair(tmp_path_factory, EF.INDUCTOR_CPU)


def _expected() -> np.ndarray:
    with torch.no_grad():
        return _net(0)(torch.from_numpy(X)).numpy()


def _load_swapped(
    pair: tuple[Path, Path], fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    """Load ``fmt`` from a copy of the deployed application whose model file is replaced by the
    attacker's right after the runtime checked it (when it reads the key files, before the
    backend loads the model); check that the file was replaced and is refused from now on, and
    return the outputs of the model that was loaded."""
    deployed, attacker = pair
    app = shutil.copytree(deployed, tmp_path / "app")
    rt = SkRuntime(app)
    relative = rt.config.models["net"].formats[fmt].file
    read_keys = rt._keys.read

    def swap_then_read_keys(*args: Any) -> Any:
        shutil.copyfile(attacker / relative, app / relative)
        return read_keys(*args)

    monkeypatch.setattr(rt._keys, "read", swap_then_read_keys)
    with rt.load("net", fmt) as model:
        got = np.asarray(model(X))
    monkeypatch.undo()
    assert (app / relative).read_bytes() == (attacker / relative).read_bytes()
    with pytest.raises(IntegrityError, match="does not match the SHA-256"):
        SkRuntime(app).load("net", fmt)
    return got


@pytest.mark.parametrize("fmt", ["onnx", "torchscript_cpu"])
def test_a_model_file_replaced_after_its_check_does_not_run(
    fast_pair: tuple[Path, Path], fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: onnxruntime and torch.jit.load read the replaced file, and the model computed
    garbage (max error 1755 for ONNX, 13251 for TorchScript) instead of being refused."""
    got = _load_swapped(fast_pair, fmt, tmp_path, monkeypatch)
    np.testing.assert_allclose(got, _expected(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_an_inductor_package_is_loaded_from_a_private_copy_of_the_checked_bytes(
    inductor_pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aoti_load_package reads only a path: it gets a copy of the verified bytes in the load's
    new 0700 folder, removed once loaded (the model runs without it). Before, it read the
    replaced deployed file."""
    seen: list[tuple[Path, int, str]] = []
    load = torch._inductor.aoti_load_package

    def spy(path: str, **kwargs: Any) -> Any:
        copy = Path(path)
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
        seen.append((copy, copy.parent.stat().st_mode & 0o777, digest))
        return load(path, **kwargs)

    monkeypatch.setattr(torch._inductor, "aoti_load_package", spy)
    got = _load_swapped(inductor_pair, "inductor_cpu", tmp_path, monkeypatch)
    np.testing.assert_allclose(got, _expected(), rtol=1e-4, atol=1e-5)
    verified = SkRuntime(inductor_pair[0]).config.models["net"].formats["inductor_cpu"].sha256
    assert [(mode, digest) for _, mode, digest in seen] == [(0o700, verified)]
    assert not seen[0][0].exists()  # removed once loaded: the model ran without it


class _Package:
    """A stand-in AOTInductor package: one float32 input of 6 values, no key."""

    def get_metadata(self) -> dict[str, str]:
        return {INPUTS_METADATA: json.dumps([{"shape": [6], "dtype": "float32"}])}


def test_inductor_packages_are_shared_by_verified_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One package per verified SHA-256 (torch never unloads one): the same bytes from another
    file reuse it, other bytes are loaded anew, and what is loaded is always the bytes given,
    whatever the file at their path holds now."""
    loaded: list[bytes] = []

    def fake_load(path: str, **kwargs: Any) -> _Package:
        loaded.append(Path(path).read_bytes())
        return _Package()

    monkeypatch.setattr(torch._inductor, "aoti_load_package", fake_load)
    monkeypatch.setattr(inductor, "check_package", lambda model: None)  # not an archive
    nonce = os.urandom(16)  # bytes no other test has loaded (packages stay for the process)
    first = tmp_path / "a.pt2"
    first.write_bytes(b"verified " + nonce)
    verified = ModelFile.read(first)
    first.write_bytes(b"replaced " + nonce)
    InductorBackend(verified, BackendOptions())
    same = tmp_path / "b.pt2"
    same.write_bytes(b"verified " + nonce)
    InductorBackend(same, BackendOptions())
    InductorBackend(first, BackendOptions())
    assert loaded == [b"verified " + nonce, b"replaced " + nonce]


def test_a_licensed_runtime_parses_its_configuration_once(
    fast_pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The licence request's signed payload comes from the parse that verified it: the
    configuration's JSON was parsed a second time to take it."""
    app = fast_pair[0]
    verified = (app / "skconfig.json").read_bytes()
    parsed: list[object] = []
    loads = json.loads

    def counting_loads(text: str | bytes, **kwargs: Any) -> Any:
        if text in (verified, verified.decode()):
            parsed.append(text)
        return loads(text, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)
    rt = SkRuntime(
        app,
        licence_server="http://127.0.0.1:9",  # never asked: building the client sends nothing
        server_public_key=bytes(32),
        state_dir=tmp_path / "state",
    )
    signed = loads(verified)
    assert len(parsed) == 1
    assert rt.licence_client.configuration == {
        "payload": signed["payload"],
        "signature": signed["signature"],
    }
