"""TorchScript and AOTInductor runtime backends, on models written by the protector.

Each format is protected once per module (the AOTInductor compile takes 10-20 s, so its tests
are ``slow``); the backends are loaded directly, with the static key of ``test_key=True``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.formats import ExportFormat as EF
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.backends import BackendOptions, backend_class, inductor
from skruntime.backends.gpu import apply_gpu_determinism, gpu_float32
from skruntime.backends.inductor import InductorBackend
from skruntime.backends.torchscript import TorchScriptBackend
from skruntime.errors import BackendError, InputError

CUDA = torch.cuda.is_available()
BATCH = ({0: torch.export.Dim("batch", min=1, max=64)},)
TS = pytest.param("torchscript_cpu", id="torchscript")
AOTI = pytest.param("inductor_cpu", id="inductor", marks=pytest.mark.slow)
FORMATS = [TS, AOTI]
SUFFIX = {"torchscript": ".pt", "inductor": ".pt2"}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@dataclass
class Protected:
    model: nn.Module
    key: np.ndarray
    folder: Path  # outputs/app/net/<group>

    def path(self, fmt: str) -> Path:
        return self.folder / f"net{SUFFIX[fmt.split('_')[0]]}"


def protect(root: Path, formats: EF, group: str) -> Protected:
    torch.manual_seed(0)
    model = Net().eval()
    previous = Path.cwd()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SKPROTECT_STATE_DIR", raising=False)
        os.chdir(root)
        try:
            SkProtectorPyTorch(application_name="app").protect_new_model(
                model,
                "net",
                [torch.randn(2, 3, 8, 8)],
                model_export_formats=formats,
                test_key=True,
                dynamic_shapes=BATCH,
            )
        finally:
            os.chdir(previous)
    folder = root / "outputs/app/net" / group
    text = (folder / "key_vector_inv_net.txt").read_text().split()
    return Protected(model, np.array([np.float32(v) for v in text], np.float32), folder)


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """``protected(fmt)``: the TorchScript-only app, or the TorchScript + AOTInductor one."""
    cache: dict[str, Protected] = {}

    def get(fmt: str) -> Protected:
        name = "ts" if fmt == "torchscript_cpu" else "both"
        if name not in cache:
            formats = EF.TORCHSCRIPT_CPU if name == "ts" else EF.TORCHSCRIPT_CPU | EF.INDUCTOR_CPU
            cache[name] = protect(tmp_path_factory.mktemp(name), formats, "cpu")
        return cache[name]

    return get


def load(p: Protected, fmt: str, **options):
    return backend_class(fmt)(p.path(fmt), BackendOptions(**options))


def rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def expected(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("batch", [1, 3, 40])  # 40 > 15: the AOTI input check bug is avoided
def test_numpy_in_numpy_out(protected, fmt, batch):
    p = protected(fmt)
    backend = load(p, fmt)
    x = torch.randn(batch, 3, 8, 8)
    out = backend.run([x.numpy(), p.key])
    assert len(out) == 1 and type(out[0]) is np.ndarray and out[0].shape == (batch, 4)
    assert rel(out[0], expected(p.model, x)) < 1e-4
    wrong = backend.run([x.numpy(), np.zeros_like(p.key)])[0]
    assert rel(wrong, expected(p.model, x)) > 0.1  # the key matters
    backend.close()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("batch", [1, 3, 40])
def test_tensor_in_tensor_out(protected, fmt, batch):
    p = protected(fmt)
    backend = load(p, fmt)
    x = torch.randn(batch, 3, 8, 8)
    out = backend.run([x, torch.from_numpy(p.key)])
    assert len(out) == 1 and isinstance(out[0], torch.Tensor) and out[0].device.type == "cpu"
    assert rel(out[0].numpy(), expected(p.model, x)) < 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "layout",
    [
        lambda x: x.to(memory_format=torch.channels_last),
        lambda x: x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
        lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
        lambda x: x.repeat_interleave(2, 0)[::2],
    ],
    ids=["channels_last", "permuted", "transposed", "strided_batch"],
)
def test_non_contiguous_tensors(protected, fmt, layout):
    """The same values in other memory layouts give the same outputs (AOTInductor indexed them
    as row-major: channels_last gave outputs off by 1e2)."""
    p = protected(fmt)
    backend = load(p, fmt)
    x = torch.randn(3, 3, 8, 8)
    view = layout(x)
    assert torch.equal(view, x) and not view.is_contiguous()
    key = torch.from_numpy(p.key)
    assert torch.equal(backend.run([view, key])[0], backend.run([x, key])[0])
    assert rel(backend.run([view, key])[0].numpy(), expected(p.model, x)) < 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_outputs_are_ordinary_tensors(protected, fmt):
    """Not inference tensors: callers may modify them in place and use them with autograd."""
    p = protected(fmt)
    backend = load(p, fmt)
    x = torch.randn(2, 3, 8, 8)
    y = backend.run([x, torch.from_numpy(p.key)])[0]
    assert not y.is_inference() and not y.requires_grad
    want = expected(p.model, x)
    y += 1
    assert rel(y.numpy() - 1, want) < 1e-4
    weight = torch.ones(4, requires_grad=True)
    (y.requires_grad_() * weight).sum().backward()
    assert torch.equal(weight.grad, y.detach().sum(0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_registry_and_read_only_inputs(protected, fmt):
    p = protected(fmt)
    cls = {"torchscript_cpu": TorchScriptBackend, "inductor_cpu": InductorBackend}[fmt]
    assert backend_class(fmt) is cls
    backend = load(p, fmt)
    assert backend.input_names == ["input.1", "key_vector"]
    x = torch.randn(2, 3, 8, 8).numpy()
    x.flags.writeable = False
    key = p.key.copy()
    key.flags.writeable = False
    assert rel(backend.run([x, key])[0], expected(p.model, torch.from_numpy(x.copy()))) < 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("length", [68, 70, 0])
def test_wrong_key_length_is_a_clear_error(protected, fmt, length):
    p = protected(fmt)
    backend = load(p, fmt)
    kind = "TorchScript" if fmt.startswith("torchscript") else "AOTInductor"
    bad = np.resize(p.key, length).astype(np.float32)
    with pytest.raises(InputError) as info:
        backend.run([np.zeros((2, 3, 8, 8), np.float32), bad])
    assert str(info.value) == (
        f'The {kind} model {p.path(fmt).name} rejected its key "key_vector" (shape ({length},), '
        f"dtype float32): expected shape ({p.key.size},), dtype float32. Pass it with the shape "
        "and dtype it was exported with (the key is a float32 vector of fixed length)."
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_dtype_shape_and_count_are_clear_errors(protected, fmt):
    p = protected(fmt)
    backend = load(p, fmt)
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(InputError, match=r'rejected its key "key_vector" .*dtype float64'):
        backend.run([x, p.key.astype(np.float64)])
    with pytest.raises(InputError, match=r'rejected its key "key_vector" .*dtype float64'):
        backend.run([torch.from_numpy(x), torch.from_numpy(p.key).double()])
    with pytest.raises(InputError, match=r'rejected its input "input\.1" \(shape \(2, 3, 7, 8\)'):
        backend.run([np.zeros((2, 3, 7, 8), np.float32), p.key])
    with pytest.raises(InputError, match=r"expected shape \('dynamic', 3, 8, 8\), dtype float32"):
        backend.run([x[0], p.key])
    with pytest.raises(InputError, match=r"takes 2 input\(s\) \(input\.1, key_vector\) but got 1"):
        backend.run([x])
    assert rel(backend.run([x + 1, p.key])[0], expected(p.model, torch.from_numpy(x + 1))) < 1e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_closed_backend_refuses_to_run(protected, fmt):
    p = protected(fmt)
    backend = load(p, fmt)
    backend.close()
    with pytest.raises(BackendError, match="is closed"):
        backend.run([np.zeros((1, 3, 8, 8), np.float32), p.key])


@pytest.mark.skipif(CUDA, reason="checks the refusal on machines without CUDA")
@pytest.mark.parametrize("fmt", ["torchscript_gpu", "inductor_gpu", "torchscript_cpu"])
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path, fmt, device):
    with pytest.raises(BackendError) as info:
        backend_class(fmt)(tmp_path / "m.pt", BackendOptions(device=device))
    assert str(info.value).startswith(f"device={device!r}: the ")
    assert "format needs a CUDA GPU, but torch.cuda.is_available() is False" in str(info.value)


def test_intra_op_threads_are_applied(protected):
    p = protected("torchscript_cpu")
    before = torch.get_num_threads()
    try:  # another count than the process's (1 per worker under pytest -n)
        backend = load(p, "torchscript_cpu", intra_op_threads=before + 1)
        assert torch.get_num_threads() == before + 1
        x = torch.randn(3, 3, 8, 8)
        assert rel(backend.run([x.numpy(), p.key])[0], expected(p.model, x)) < 1e-4
    finally:
        torch.set_num_threads(before)


def test_inter_op_threads_set_once(protected, monkeypatch):
    p = protected("torchscript_cpu")
    current = torch.get_num_interop_threads()
    load(p, "torchscript_cpu", inter_op_threads=current)  # the value in use: nothing to set

    def refuse(n):
        raise RuntimeError("Error: cannot set number of interop threads after parallel work")

    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    with pytest.raises(BackendError) as info:
        load(p, "torchscript_cpu", inter_op_threads=current + 1)
    assert str(info.value).startswith(
        f"inter_op_threads={current + 1} cannot be applied: torch sets its inter-op thread count "
        "once per process"
    )


@pytest.mark.parametrize("fmt", ["torchscript_cpu", "inductor_cpu"])
def test_unknown_session_option(tmp_path, fmt):
    with pytest.raises(BackendError, match=r"Unknown .* session option\(s\) threads\. Valid: "):
        backend_class(fmt)(tmp_path / "m", BackendOptions(session_options={"threads": 2}))


def test_optimize_for_inference_option(protected):
    p = protected("torchscript_cpu")
    backend = load(p, "torchscript_cpu", session_options={"optimize_for_inference": True})
    x = torch.randn(5, 3, 8, 8)
    assert rel(backend.run([x.numpy(), p.key])[0], expected(p.model, x)) < 1e-4


@pytest.mark.parametrize(("fmt", "name"), [("torchscript_cpu", "m.pt"), ("inductor_cpu", "m.pt2")])
def test_file_that_is_not_a_model(tmp_path, fmt, name):
    path = tmp_path / name
    path.write_bytes(b"not a model")
    with pytest.raises(BackendError) as info:
        backend_class(fmt)(path, BackendOptions())
    refused = (
        rf"AOTInductor package {re.escape(str(path))} is not a whole, undamaged package "
        if fmt == "inductor_cpu"  # read before torch sees it
        else rf"torch could not load the .* {re.escape(str(path))} \(RuntimeError: "
    )
    assert re.match(refused, str(info.value))


def test_pt2_without_metadata_is_refused(tmp_path, monkeypatch):
    class Package:
        def get_metadata(self):
            return {"AOTI_DEVICE_KEY": "cpu"}

    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: Package())
    monkeypatch.setattr(inductor, "check_package", lambda model: None)  # not an archive
    (tmp_path / "m.pt2").write_bytes(b"package without metadata")  # packages are shared by bytes
    with pytest.raises(BackendError) as info:
        InductorBackend(tmp_path / "m.pt2", BackendOptions())
    assert str(info.value) == (
        "m.pt2 was not written by skprotect (no skprotect.inputs metadata), so its inputs cannot "
        "be checked. Re-export it with skprotect."
    )


def test_pt2_with_corrupt_metadata_is_refused(tmp_path, monkeypatch):
    class Package:
        def get_metadata(self):
            return {"skprotect.inputs": '[{"shape": [-1], "dtype": "float32"}]'}

    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: Package())
    monkeypatch.setattr(inductor, "check_package", lambda model: None)  # not an archive
    (tmp_path / "m.pt2").write_bytes(b"package with corrupt metadata")
    with pytest.raises(BackendError, match=r"^m\.pt2 has unreadable skprotect\.inputs metadata"):
        InductorBackend(tmp_path / "m.pt2", BackendOptions())


def test_torchscript_without_metadata_runs_and_wraps_torch_errors(tmp_path):
    """A .pt not written by skprotect: no input checks, but torch's errors name the file."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 2).eval()
    torch.jit.save(torch.jit.trace(lin, torch.randn(2, 4)), str(tmp_path / "plain.pt"))
    backend = TorchScriptBackend(tmp_path / "plain.pt", BackendOptions())
    assert backend.input_names == ["input"]
    x = torch.randn(3, 4)
    assert rel(backend.run([x.numpy()])[0], expected(lin, x)) < 1e-6
    with pytest.raises(BackendError) as info:
        backend.run([np.zeros((3, 5), np.float32)])
    message = str(info.value)
    assert message.startswith("The TorchScript model plain.pt failed (RuntimeError: ")
    assert message.endswith("Check the input count, shapes and dtypes: it takes input.")
    assert "\n" not in message


def _gpu_settings() -> tuple:
    return (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.benchmark,
    )


def test_gpu_determinism_settings_inside_gpu_float32_only():
    saved = _gpu_settings()
    try:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        before = _gpu_settings()
        with gpu_float32():
            assert _gpu_settings() == (False, False, "highest", False)
        assert _gpu_settings() == before  # the caller's settings come back
        apply_gpu_determinism()  # the runtime's process-wide form
        assert _gpu_settings() == (False, False, "highest", False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.backends.cudnn.allow_tf32 = saved[1]
        torch.set_float32_matmul_precision(saved[2])
        torch.backends.cudnn.benchmark = saved[3]


def test_skruntime_torch_backends_never_import_the_protector():
    code = (
        "import sys, skruntime.backends as b\n"
        "b.backend_class('torchscript_cpu'); b.backend_class('inductor_cpu')\n"
        "assert 'skprotect_pytorch' not in sys.modules, 'skruntime imported skprotect_pytorch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("fmt", ["torchscript_gpu", "inductor_gpu"])
def test_gpu_formats_match_the_cpu_model(tmp_path_factory, fmt):
    p = protect(tmp_path_factory.mktemp("gpu"), EF.TORCHSCRIPT_GPU | EF.INDUCTOR_GPU, "gpu")
    backend = load(p, fmt, device="cuda")
    assert torch.backends.cudnn.allow_tf32 is False
    for batch in (1, 40):
        x = torch.randn(batch, 3, 8, 8)
        assert rel(backend.run([x.numpy(), p.key])[0], expected(p.model, x)) < 1e-4
        out = backend.run([x.cuda(), torch.from_numpy(p.key).cuda()])[0]
        assert out.device.type == "cuda"
        assert rel(out.cpu().numpy(), expected(p.model, x)) < 1e-4
    with pytest.raises(InputError, match=r'rejected its key "key_vector" \(shape \(7,\)'):
        backend.run([x.numpy(), p.key[:7]])
