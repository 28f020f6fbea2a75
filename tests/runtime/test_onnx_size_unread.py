"""An ``.onnx`` file over protobuf's 2 GiB is refused before a byte of it is read.

``load()`` read the whole file and hashed it before the ONNX backend looked at its size: a
2,306,867,200-byte (sparse) file put in place of a protected model was read whole (2.3 GB read,
14 s, peak memory +2.2 GiB) and then refused as tampered (IntegrityError), not for its size.
The size now comes from the open file's ``fstat``, before the read and the SHA-256 check."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.models import deploy_lifecycle, replace_by_sparse_file

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.backends import BackendOptions, ModelFile
from skruntime.backends.base import MAX_ONNX_BYTES
from skruntime.backends.onnxruntime import OnnxRuntimeBackend
from skruntime.errors import BackendError

SPARSE_SIZE = 2200 * 2**20
"""Over the limit; a sparse file of this size takes no disk space."""


def bytes_read() -> int:
    """Bytes this process has read so far (``rchar`` of ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def refusal(path: Path) -> str:
    return (
        f"{path} is {SPARSE_SIZE:,} bytes, over the {MAX_ONNX_BYTES:,} bytes (2 GiB) one ONNX "
        "file can hold (protobuf's limit), so onnxruntime cannot load it; skprotect never "
        "writes such a file. Re-deploy the file written by skprotect; protect a model this "
        "large to a TorchScript or AOTInductor format, which have no such limit."
    )


@pytest.fixture(scope="module")
def deployed(module_workdir: Path) -> Path:
    return deploy_lifecycle(SkProtectorPyTorch.ExportFormat.ONNX)


def test_load_refuses_an_oversized_onnx_file_unread(deployed: Path) -> None:
    (model,) = deployed.rglob("*.onnx")
    replace_by_sparse_file(model, SPARSE_SIZE)
    runtime = SkRuntime(deployed)
    before = bytes_read()
    with pytest.raises(BackendError) as info:
        runtime.load("m", "onnx")
    assert bytes_read() - before < 2**20  # the configuration and key files, not the model
    assert str(info.value) == refusal(deployed / model.relative_to(deployed))


def test_the_backend_refuses_an_oversized_onnx_path_unread(tmp_path: Path) -> None:
    model = tmp_path / "big.onnx"
    model.touch()
    replace_by_sparse_file(model, SPARSE_SIZE)
    before = bytes_read()
    with pytest.raises(BackendError) as info:
        OnnxRuntimeBackend(model, BackendOptions())
    assert bytes_read() - before < 2**20
    assert str(info.value) == refusal(model)


def test_model_file_read_checks_the_size_of_the_open_file(tmp_path: Path) -> None:
    """The size checked is that of the descriptor read from, given with the path."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"12345")
    seen: list[tuple[Path, int]] = []
    read = ModelFile.read(model, lambda path, size: seen.append((path, size)))
    assert seen == [(model, 5)]
    assert read.data == b"12345"
