"""A torch backend whose load fails leaves the process as it was; run and temp-folder failures
say what to do.

The AOTInductor and TorchScript backends set process-wide torch settings (``intra_op_threads``,
``inter_op_threads``, on CUDA TF32 off and cuDNN benchmarking off) before loading, and left
them changed when the load failed: ``torch.get_num_threads()`` went from 2 to 1 after a failed
load with ``intra_op_threads=1``. onnxruntime's run failures said no more than
"onnxruntime failed to run m.onnx: <its error>"; with no usable temporary folder, an
AOTInductor load said "torch could not load ... Re-deploy the file written by skprotect"."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from skruntime.backends.base import BackendOptions
from skruntime.backends.gpu import gpu_settings, restore_gpu_settings
from skruntime.backends.inductor import InductorBackend, load_settings
from skruntime.backends.onnxruntime import OnnxRuntimeBackend
from skruntime.backends.torchscript import TorchScriptBackend
from skruntime.errors import BackendError

BACKENDS = {"inductor": InductorBackend, "torchscript": TorchScriptBackend}


@pytest.fixture
def threads() -> int:
    """torch's intra-op thread count, put back after the test whatever it did."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_failed_load_leaves_the_thread_count(backend: str, tmp_path: Path, threads: int) -> None:
    damaged = tmp_path / "m.bin"
    damaged.write_bytes(b"not a model")
    wanted = threads + 1
    with pytest.raises(BackendError, match="Re-deploy the file written by skprotect"):
        BACKENDS[backend](damaged, BackendOptions(intra_op_threads=wanted))
    assert torch.get_num_threads() == threads


def test_gpu_settings_are_put_back_when_the_load_fails() -> None:
    """The CUDA settings, on a CPU machine too (they are plain torch flags): kept after a load
    that succeeds, put back after one that fails."""
    saved = gpu_settings()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        before = gpu_settings()
        with pytest.raises(BackendError), load_settings(BackendOptions(), cuda=True):
            assert gpu_settings() == (False, False, "highest", False)
            raise BackendError("the load failed")
        assert gpu_settings() == before
        with load_settings(BackendOptions(), cuda=True):
            pass
        assert gpu_settings() == (False, False, "highest", False)
    finally:
        restore_gpu_settings(saved)


INTER_OP = """
import sys, torch
from skruntime.backends.base import BackendOptions
from skruntime.backends.inductor import InductorBackend
from skruntime.errors import BackendError
before = torch.get_num_interop_threads()
try:
    InductorBackend(sys.argv[1], BackendOptions(inter_op_threads=before + 1))
except BackendError:
    pass
print(before == torch.get_num_interop_threads())
torch.set_num_interop_threads(before + 2)  # still free to set, once per process
print(torch.get_num_interop_threads() == before + 2)
"""


def test_a_failed_load_leaves_the_inter_op_thread_count_unset(tmp_path: Path) -> None:
    """torch sets it once per process: a failed load that set it took that choice away from
    the next (good) load, which then failed with "inter_op_threads=... cannot be applied"."""
    damaged = tmp_path / "m.pt2"
    damaged.write_bytes(b"not a package")
    child = subprocess.run(
        [sys.executable, "-c", INTER_OP, str(damaged)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["True", "True"]


def empty_package(path: Path) -> Path:
    """An archive of no entries: :func:`check_package` passes it, so the load goes on."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass
    path.write_bytes(buffer.getvalue())
    return path


def test_no_usable_temporary_folder_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python found no writable temporary folder (none of TMPDIR, /tmp, /var/tmp, /usr/tmp and
    the current folder)."""
    package = empty_package(tmp_path / "m.pt2")
    missing = tmp_path / "missing"
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(missing)])
    with pytest.raises(BackendError) as caught:
        InductorBackend(package, BackendOptions())
    assert str(caught.value) == (
        f"The AOTInductor package {package} could not be loaded: torch extracts it into a "
        f"temporary folder, and none could be created: No usable temporary directory found in "
        f"['{missing}']. Point TMPDIR to a writable folder with room for about twice the "
        f"package's size ({package.stat().st_size:,} bytes)."
    )


@pytest.fixture(scope="module")
def expanding(tmp_path_factory: pytest.TempPathFactory) -> OnnxRuntimeBackend:
    """An ONNX model that expands its float input to 2^40 floats (4 TiB)."""
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [1 << 20, 1 << 20])
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return OnnxRuntimeBackend(path, BackendOptions())


def test_onnxruntime_out_of_memory_says_what_to_do(expanding: OnnxRuntimeBackend) -> None:
    with pytest.raises(BackendError) as caught:
        expanding.run([np.ones(1, np.float32)])
    message = str(caught.value)
    assert message.startswith("onnxruntime failed to run big.onnx: [ONNXRuntimeError]")
    assert "Failed to allocate memory for requested buffer of size 4398046511104. " in message
    assert message.endswith(
        "It ran out of memory: run fewer inputs at once (a smaller batch), or on a machine "
        "(or GPU) with more free memory."
    )


def test_onnxruntime_other_run_failures_say_what_to_do(expanding: OnnxRuntimeBackend) -> None:
    with pytest.raises(BackendError) as caught:
        expanding.run([np.ones(1, np.int64)])
    message = str(caught.value)
    assert "Unexpected input data type" in message
    assert message.endswith(
        "Check the inputs' shapes and dtypes against the model's inputs (the key last); if "
        "they are right, re-deploy the file written by skprotect."
    )
