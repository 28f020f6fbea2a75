"""TorchScript exporter (CPU; the GPU variant must refuse clearly without CUDA)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.export.toy_models import ConvNet, Toy, eager, export_onto_full_disk
from torch import nn
from torch.export import Dim

from skprotect_pytorch.errors import ExportError, VerificationError
from skprotect_pytorch.export import (
    build_export_options,
    cuda_available,
    get_exporter,
    verify_artifact,
)
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.lock import lock_model

CPU = get_exporter(ExportFormat.TORCHSCRIPT_CPU)
GPU = get_exporter(ExportFormat.TORCHSCRIPT_GPU)


TOY_PARAMS = {"input_names": ["x"], "output_names": ["y"]}


@pytest.mark.parametrize("batch", [5, 1])
def test_toy_with_key_runs_at_other_batch_sizes(tmp_path, batch):
    torch.manual_seed(0)
    model, x, key = Toy().eval(), torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], TOY_PARAMS, ({0: Dim("batch")},))
    report = CPU.export(model, (x, key), tmp_path / "toy.pt", opts, with_key=True)
    assert report.path.is_file() and report.fmt is ExportFormat.TORCHSCRIPT_CPU
    assert report.exporter == "torch.jit trace+freeze+optimize_for_inference (cpu)"
    xb = torch.randn(batch, 8)
    inputs = [xb.numpy(), key.numpy()]
    assert verify_artifact(CPU, report.path, opts, inputs, eager(model, xb, key)) < 1e-5
    with pytest.raises(VerificationError, match="differs from the reference"):
        verify_artifact(CPU, report.path, opts, inputs, [eager(model, xb, key)[0] * 2])


def test_shipped_file_names_no_path_of_the_build_machine(tmp_path):
    """torch.jit.save's .debug_pkl records hold the traced call stack: the absolute paths of
    the protection script, the model's module and the virtualenv."""
    torch.manual_seed(0)
    model, x, key = Toy().eval(), torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], TOY_PARAMS, ({0: Dim("batch")},))
    path = CPU.export(model, (x, key), tmp_path / "toy.pt", opts, with_key=True).path
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        content = b"".join(archive.read(n) for n in names)
    assert not [n for n in names if n.endswith(".debug_pkl")]
    for where in (Path(__file__).parent, Path(torch.__file__).parent, Path(sys.prefix)):
        assert str(where).encode() not in content
    inputs = [torch.randn(3, 8).numpy(), key.numpy()]
    reference = eager(model, torch.from_numpy(inputs[0]), key)
    assert verify_artifact(CPU, path, opts, inputs, reference) < 1e-5


def test_locked_conv_model_with_dynamic_axes_only(tmp_path):
    torch.manual_seed(0)
    model = ConvNet().eval()
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    key = torch.from_numpy(locked.layout.static_key())
    x = torch.randn(2, 3, 16, 16)
    params = {"input_names": ["image"], "dynamic_axes": {"image": {0: "batch"}}}
    opts = build_export_options([x], params)
    report = CPU.export(locked.keyed, (x, key), tmp_path / "m.pt", opts, with_key=True)
    # CPU convolutions become unsaveable MKLDNN constants: the frozen graph is kept instead.
    assert report.exporter == "torch.jit trace+freeze (cpu)"
    assert report.notes[0].startswith("optimize_for_inference output not saved")
    for batch in (3, 1):
        xb = torch.randn(batch, 3, 16, 16)
        inputs = [xb.numpy(), key.numpy()]
        assert verify_artifact(CPU, report.path, opts, inputs, eager(model, xb)) < 1e-4


def test_save_original_without_key(tmp_path):
    torch.manual_seed(0)
    model, x = ConvNet().eval(), torch.randn(2, 3, 16, 16)
    opts = build_export_options([x], {"input_names": ["image"]}, ({0: Dim("batch")},))
    report = CPU.export(model, (x,), tmp_path / "orig.pt", opts, with_key=False)
    x4 = torch.randn(4, 3, 16, 16)
    assert verify_artifact(CPU, report.path, opts, [x4.numpy()], eager(model, x4)) < 1e-4
    assert not any(p.device.type != "cpu" for p in model.parameters())


def test_multiple_outputs_are_flattened(tmp_path):
    class TwoHeads(nn.Module):
        def forward(self, x, key):
            return x * key[0], (x.sum(1), x - key[1])

    x, key = torch.randn(2, 4), torch.rand(3)
    opts = build_export_options([x], {"input_names": ["x"]})
    report = CPU.export(TwoHeads(), (x, key), tmp_path / "m.pt", opts, with_key=True)
    out = CPU.load(report.path, opts)([x.numpy(), key.numpy()])
    assert [o.shape for o in out] == [(2, 4), (2,), (2, 4)]


def test_tracing_failure_is_an_export_error(tmp_path):
    class NotTraceable(nn.Module):
        def forward(self, x):
            return x.numpy()

    x = torch.randn(2, 4)
    opts = build_export_options([x], {"input_names": ["x"]})
    with pytest.raises(ExportError, match=r"^TorchScript tracing failed \("):
        CPU.export(NotTraceable(), (x,), tmp_path / "m.pt", opts, with_key=False)


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on machines without CUDA")
def test_gpu_variant_requires_cuda(tmp_path):
    x, key = torch.randn(2, 8), torch.rand(10)
    opts = build_export_options([x], TOY_PARAMS)
    with pytest.raises(ExportError) as info:
        GPU.export(Toy(), (x, key), tmp_path / "m.pt", opts, with_key=True)
    assert str(info.value).startswith(
        "ExportFormat.TORCHSCRIPT_GPU requires CUDA, but torch.cuda.is_available() is False"
    )
    assert "leave the GPU formats out of model_export_formats" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not cuda_available(), reason="needs CUDA")
def test_gpu_variant_traces_on_cuda(tmp_path):
    torch.manual_seed(0)
    model = ConvNet().eval()
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    key = torch.from_numpy(locked.layout.static_key())
    x = torch.randn(2, 3, 16, 16)
    opts = build_export_options([x], {"input_names": ["image"]}, ({0: Dim("batch")},))
    report = GPU.export(locked.keyed, (x, key), tmp_path / "m.pt", opts, with_key=True)
    assert next(locked.keyed.parameters()).device.type == "cpu"  # the caller's model stays put
    x3 = torch.randn(3, 3, 16, 16)
    inputs = [x3.numpy(), key.numpy()]
    assert verify_artifact(GPU, report.path, opts, inputs, eager(model, x3), rtol=1e-3) < 1e-3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_an_os_error_not_a_crash(tmp_path):
    """torch.jit.save to a path on a full disk aborted the whole process (C++ terminate: the
    archive writer's destructor threw while its error unwound), losing the user's session;
    the protection turns an OSError into an ExportError that says to free space."""
    done = export_onto_full_disk(
        tmp_path, "TORCHSCRIPT_CPU", ".toy.pt.traced", "toy.pt", timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "OSError ENOSPC"
    assert not (tmp_path / ".toy.pt.traced").exists()  # the link is removed, not /dev/full
    assert Path("/dev/full").exists()
