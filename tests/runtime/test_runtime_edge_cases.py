"""skruntime edge cases: the licence request carries the verified configuration bytes,
and the defects a demanding user hits (threads, repeated loads, odd inputs, the command line)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.cli import app as cli_app
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import InputError, SkRuntime
from skruntime.backends import inductor
from skruntime.backends.base import BackendOptions
from skruntime.backends.inductor import INPUTS_METADATA, InductorBackend
from skruntime.cli import write_outputs

EF = SkProtectorPyTorch.ExportFormat
FORMATS = ("onnx", "torchscript_cpu", "inductor_cpu")
X = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
BATCH = torch.export.Dim("batch", min=1, max=64)
#: nothing listens on port 9 (discard): a licence request would fail
UNREACHABLE = "http://127.0.0.1:9"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _net()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def outputs(module_workdir: Path) -> Path:
    """``app``: a platform-version-2 TXT application, every CPU format, dynamic batch axis."""
    SkProtectorPyTorch(application_name="app").protect_new_model(
        _net(),
        "net",
        [torch.from_numpy(X)],
        model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU | EF.INDUCTOR_CPU,
        dynamic_shapes=({0: BATCH},),
    )
    return module_workdir / "outputs"


@pytest.fixture
def app(outputs: Path, tmp_path: Path) -> Path:
    """A private copy of the application, free to damage."""
    return shutil.copytree(outputs / "app", tmp_path / "app")


@pytest.mark.parametrize("replacement", ["reformatted", "garbage"])
def test_the_licence_request_carries_the_verified_configuration(
    app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replacement: str
) -> None:
    """The configuration is read once: a file replaced between its verification and the
    licence client's creation changes nothing the client sends (it was read a second time, so
    a request could describe a configuration other than the one verified)."""
    config_path = app / "skconfig.json"
    verified = config_path.read_bytes()
    reformatted = json.dumps(json.loads(verified), indent=4).encode()  # valid, other SHA-256
    new = {"reformatted": reformatted, "garbage": b"{not json"}[replacement]
    make_client = SkRuntime._make_licence_client

    def replace_then_make(self: SkRuntime, *args: object) -> object:
        config_path.write_bytes(new)
        return make_client(self, *args)

    monkeypatch.setattr(SkRuntime, "_make_licence_client", replace_then_make)
    rt = SkRuntime(
        app, licence_server=UNREACHABLE, server_public_key=bytes(32), state_dir=tmp_path / "s"
    )
    assert config_path.read_bytes() == new
    signed = json.loads(verified)
    assert rt.licence_client.config_sha256 == hashlib.sha256(verified).hexdigest()
    assert rt.licence_client.configuration == {
        "payload": signed["payload"],
        "signature": signed["signature"],
    }


def _deleted_mappings() -> int:
    """Memory mappings of deleted files: what an AOTInductor load leaves behind (its library,
    extracted to a temporary file that is removed but stays mapped)."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return sum(line.rstrip().endswith("(deleted)") for line in maps)


def test_loading_an_inductor_package_again_reuses_it(outputs: Path) -> None:
    """torch never unloads an AOTInductor package: each load mapped one more copy of its
    library (code and weights), kept until the process exits, so a service reloading its model
    ran out of memory, temporary space or memory mappings. Models of the same file share one
    package now, and each still gives the right outputs after another one is closed."""
    rt = SkRuntime(outputs / "app")
    first = rt.load("net", "inductor_cpu")
    before = _deleted_mappings()
    for _ in range(4):
        with rt.load("net", "inductor_cpu") as again:
            np.testing.assert_allclose(again(X), _expected(X), rtol=1e-4, atol=1e-5)
    assert _deleted_mappings() == before
    np.testing.assert_allclose(first(X), _expected(X), rtol=1e-4, atol=1e-5)
    first.close()


class _Probe:
    """A stand-in AOTInductor package that counts the calls running at the same time."""

    def __init__(self) -> None:
        self.running = self.most = 0
        self.lock = threading.Lock()

    def get_metadata(self) -> dict[str, str]:
        specs = [{"shape": [None, 6], "dtype": "float32"}, {"shape": [4], "dtype": "float32"}]
        return {INPUTS_METADATA: json.dumps(specs)}

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.lock:
            self.running -= 1
        return tensors[0]


@pytest.mark.parametrize("single_threaded", [True, False])
def test_a_single_threaded_package_runs_one_call_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_threaded: bool
) -> None:
    """``run_single_threaded=True`` turns torch's thread synchronisation off ("obviously unsafe
    to use in a threaded environment"), but LoadedModels may be called from several threads:
    the backend serialises those calls itself (and only those)."""
    probe = _Probe()
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: probe)
    monkeypatch.setattr(inductor, "check_package", lambda model: None)  # not an archive
    path = tmp_path / f"m{single_threaded}.pt2"
    path.write_bytes(b"package")
    options = BackendOptions(session_options={"run_single_threaded": single_threaded})
    backend = InductorBackend(path, options)
    inputs = [X, np.zeros(4, np.float32)]
    threads = [threading.Thread(target=backend.run, args=(inputs,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert probe.most == (1 if single_threaded else 4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensors_without_dense_values_are_input_errors(outputs: Path, fmt: str) -> None:
    """A sparse tensor or one on the meta device raised each framework's own error (TypeError,
    RuntimeError, NotImplementedError), not an InputError saying what to pass."""
    with SkRuntime(outputs / "app").load("net", fmt) as model:
        with pytest.raises(InputError, match="is a sparse_coo tensor: pass a dense tensor"):
            model(torch.from_numpy(X).to_sparse())
        with pytest.raises(InputError, match="is a tensor on the meta device"):
            model(torch.empty(X.shape, device="meta"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_lazily_negated_tensor_is_read_with_its_values(outputs: Path, fmt: str) -> None:
    """The imaginary part of a conjugated tensor is a view with torch's neg bit set, which
    ``tensor.numpy()`` refuses: the ONNX backend failed on it with a raw RuntimeError."""
    z = torch.complex(torch.zeros(X.shape), torch.from_numpy(X))
    negated = z.conj().imag
    assert negated.is_neg()
    with SkRuntime(outputs / "app").load("net", fmt) as model:
        y = model(negated)
    np.testing.assert_allclose(np.asarray(y), _expected(-X), rtol=1e-4, atol=1e-5)


def test_an_unreadable_kek_file_is_one_key_error_line(
    outputs: Path, tmp_path: Path, deny_reading: Callable[[Path], None]
) -> None:
    """A --kek file without read permission ended as "error: [Errno 13] Permission denied:
    'kek'" and exit code 1, not as a key error saying what to do (tests run as root, who reads
    any file: the permission error is simulated)."""
    kek = tmp_path / "kek"
    kek.write_bytes(bytes(32))
    np.save(tmp_path / "x.npy", X)
    deny_reading(kek)
    args = ["run", str(outputs / "app"), "net", "-i", str(tmp_path / "x.npy"), "--kek", str(kek)]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 4
    assert result.output == (
        f"error: --kek {kek} cannot be read: Permission denied. Give this user read access to "
        "the key-encryption key file.\n"
    )


@pytest.mark.parametrize("name", ["allow_pickle", "file"])
def test_every_output_name_is_written_to_the_npz(tmp_path: Path, name: str) -> None:
    """Outputs went to ``np.savez(f, **outputs)``, whose own parameters took an output named
    ``allow_pickle`` (as the flag: the output was silently missing from the file) or ``file``
    (a TypeError)."""
    outputs = [np.arange(3, dtype=np.float32), np.ones((2, 2), np.int64)]
    write_outputs(tmp_path / "y.npz", outputs, [name, "other"])
    with np.load(tmp_path / "y.npz") as written:
        assert sorted(written.files) == sorted([name, "other"])
        for key, array in zip([name, "other"], outputs, strict=True):
            assert written[key].dtype == array.dtype
            np.testing.assert_array_equal(written[key], array)
