"""TorchScript files whose code is bound to one device are refused on another when loaded, with
the device or format to use; files free of device-bound code load on any device.

``map_location`` moves a module's tensors, not the devices its code names: a GPU-made file on
``device="cpu"`` loaded, then every call failed deep inside torch ("PythonDispatcher:
registered at ..."), reported as a wrong input. No GPU here: the CUDA side is checked on the
graph (:func:`device_problem`), which is what the backend checks before moving anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.backends import backend_class
from skruntime.backends.base import BackendOptions
from skruntime.backends.torchscript import TorchScriptBackend, device_problem
from skruntime.errors import BackendError


class _MadeOnGpu(nn.Module):
    """What a trace on CUDA records for ``torch.zeros(n, device=x.device)``."""

    def forward(self, x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(x.shape[1], device=torch.device("cuda:0")) + key.sum() * 0


class _FusedOnGpu(nn.Module):
    """What ``optimize_for_inference`` makes of a frozen CUDA graph's conv + relu."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        w, b = self.conv.weight, self.conv.bias
        return torch.cudnn_convolution_relu(x, w, b, [1, 1], [0, 0], [1, 1], 1) + key.sum() * 0


class _MadeOnCpu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(x.shape[1])


@pytest.mark.parametrize(
    ("module", "x", "problem"),
    [
        (_MadeOnGpu, np.ones((2, 3), np.float32), "aten::zeros creates tensors on cuda:0"),
        (
            _FusedOnGpu,
            np.ones((1, 1, 2, 2), np.float32),
            "it calls aten::cudnn_convolution_relu, which runs only on CUDA",
        ),
    ],
    ids=["device_constant", "cudnn_op"],
)
def test_a_gpu_bound_file_is_refused_on_the_cpu_when_loaded(
    tmp_path: Path, module: type[nn.Module], x: np.ndarray, problem: str
) -> None:
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(module().eval()), str(path))
    with pytest.raises(BackendError) as info:
        TorchScriptBackend(path, BackendOptions(device="cpu"))
    assert str(info.value) == (
        f"The TorchScript file {path} cannot run on device='cpu': {problem}. Load it with "
        "device='cuda" + (":0" if "cuda:0" in problem else "") + "', or load the model's "
        "format for the CPU (onnx, torchscript_cpu or inductor_cpu)."
    )


def test_a_cpu_bound_graph_is_refused_for_cuda_and_accepted_for_the_cpu() -> None:
    traced = torch.jit.trace(_MadeOnCpu(), torch.zeros(2, 3))
    assert device_problem(traced, "cpu") is None
    assert device_problem(traced, "cuda:0") == (
        "aten::ones creates tensors on cpu. Load it with device='cpu', or load the model's "
        "format for CUDA (onnx, torchscript_gpu or inductor_gpu)"
    )


class _CpuIndexOnGpu(nn.Module):
    """What a trace on CUDA records for a CPU index tensor reading a CUDA tensor: the CPU
    constant ran beside CUDA tensors then, and does again on any GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, torch.arange(2, device=torch.device("cpu"))]


def test_cpu_made_tensors_of_a_cuda_trace_are_accepted_on_cuda() -> None:
    """A ``torchscript_gpu`` file (traced on CUDA) with a CPU index tensor was refused on the
    GPU it was made for, and told to load its format for CUDA, which it is."""
    scripted = torch.jit.script(_CpuIndexOnGpu())
    assert device_problem(scripted, "cuda:0", traced_on_cuda=True) is None
    assert device_problem(scripted, "cpu", traced_on_cuda=True) is None
    # a CPU trace's CPU-made tensors never met CUDA weights: still refused there
    assert "creates tensors on cpu" in str(device_problem(scripted, "cuda:0"))
    assert backend_class("torchscript_gpu").traced_on_cuda
    assert not backend_class("torchscript_cpu").traced_on_cuda
    # a CUDA trace's tensors made on one GPU still need that GPU
    gpu = torch.jit.script(_MadeOnGpu())
    assert "Load it with device='cuda:0'" in str(device_problem(gpu, "cuda:1", traced_on_cuda=True))
    assert "Load it with device='cuda:0'" in str(device_problem(gpu, "cpu", traced_on_cuda=True))


def test_a_graph_bound_to_one_gpu_is_refused_on_another() -> None:
    scripted = torch.jit.script(_MadeOnGpu())
    assert device_problem(scripted, "cuda:0") is None
    assert "creates tensors on cuda:0. Load it with device='cuda:0'" in str(
        device_problem(scripted, "cuda:1")
    )


def test_protected_torchscript_files_run_on_either_device(workdir: Path) -> None:
    """The protector's files name no device in their code: a CPU file is not refused on CUDA
    (its weights move there), so no working pair is refused."""
    torch.manual_seed(0)
    x = torch.randn(2, 4)
    SkProtectorPyTorch(application_name="app").protect_new_model(
        nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval(),
        "net",
        [x],
        model_export_formats=SkProtectorPyTorch.ExportFormat.TORCHSCRIPT_CPU,
    )
    module = torch.jit.load(str(workdir / "outputs/app/net/cpu/net.pt"))
    assert device_problem(module, "cpu") is None
    assert device_problem(module, "cuda:0") is None


class _Helper(nn.Module):
    """A scripted module whose device-bound code is in a submodule's helper method, beside a
    container (``ModuleList``) that has no method at all."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 3)])
        self.inner = _Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.inner(x)


class _Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset(x.shape[1])

    @torch.jit.export
    def offset(self, n: int) -> torch.Tensor:
        return torch.ones(n, device=torch.device("cuda"))


def test_every_method_of_every_submodule_is_checked() -> None:
    scripted = torch.jit.script(_Helper())
    assert device_problem(scripted, "cuda:0") is None
    assert str(device_problem(scripted, "cpu")).startswith("aten::ones creates tensors on cuda.")
