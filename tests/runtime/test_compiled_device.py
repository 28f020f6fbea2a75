"""AOTInductor formats run only on the device kind they are compiled for: ``load()`` says which
device (or format) to use, before any file is read."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skruntime import SkRuntime
from skruntime.config import Config, CustomerEntry, FormatEntry, ModelEntry, write_config
from skruntime.errors import BackendError, ModelFileError

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _app(folder: Path, formats: list[str]) -> Path:
    """A signed TXT configuration of model ``m`` in ``formats``, whose files are not there:
    the device check comes before any of them is read."""
    entries = {}
    for fmt in formats:
        group = {"onnx": "onnx"}.get(fmt, fmt.rsplit("_", 1)[-1])
        entries[fmt] = FormatEntry(
            group=group,
            file=f"m/{group}/m.{'onnx' if fmt == 'onnx' else 'pt2'}",
            key_files=[f"m/{group}/key_vector_inv_m.txt", f"m/{group}/key_params_m.json"],
            sha256="ab" * 32,
        )
    model = ModelEntry(
        key_epoch=0,
        inputs=[{"name": "x", "shape": [2, 3], "dtype": "float32"}],
        outputs=[{"name": "y"}],
        key={"name": "key", "length": 10},
        formats=entries,
    )
    config = Config(
        platform_version=2,
        platform="TXT",
        application="app",
        skprotect_version="0.3.0",
        models={"m": model},
        customer=CustomerEntry(1, "ACME"),
    )
    write_config(folder / "skconfig.json", config, KEY)
    return folder


@pytest.mark.parametrize(
    ("formats", "fmt", "device", "message"),
    [
        (
            ["inductor_cpu", "inductor_gpu"],
            "inductor_gpu",
            "cpu",
            "Format 'inductor_gpu' of model 'm' is compiled for CUDA GPUs and cannot run on "
            "device='cpu': load it with device='cuda' or 'cuda:N' (skprotect run: --device "
            "cuda), or load format 'inductor_cpu' for device='cpu'.",
        ),
        (
            ["inductor_cpu"],
            "inductor_cpu",
            "cuda:1",
            "Format 'inductor_cpu' of model 'm' is compiled for the CPU and cannot run on "
            "device='cuda:1': load it with device='cpu' (skprotect run: --device cpu), or "
            "protect the model for inductor_gpu too to run it on device='cuda:1'.",
        ),
    ],
    ids=["gpu-package-on-cpu", "cpu-package-on-cuda"],
)
def test_an_inductor_format_on_the_other_device_kind_is_refused(
    tmp_path: Path, formats: list[str], fmt: str, device: str, message: str
) -> None:
    """inductor_gpu with the default device='cpu' went on to torch, which loads a GPU package
    on the current GPU whatever the device, and was fed CPU inputs; inductor_cpu with a CUDA
    device was refused as if a GPU format had been asked for ("the AOTInductor GPU format
    needs a CUDA GPU"), or by torch ("Incorrect device passed to aoti_runner_cpu") followed by
    the advice to re-deploy the file."""
    rt = SkRuntime(_app(tmp_path, formats))
    with pytest.raises(BackendError) as caught:
        rt.load("m", fmt, device=device)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("fmt", "device"),
    [("inductor_cpu", "cpu"), ("onnx", "cpu"), ("torchscript_cpu", "cpu")],
)
def test_a_format_on_its_own_device_kind_goes_on_to_its_file(
    tmp_path: Path, fmt: str, device: str
) -> None:
    """The check lets the matching device through: load() gets as far as the model file."""
    rt = SkRuntime(_app(tmp_path, ["onnx", "torchscript_cpu", "inductor_cpu", "inductor_gpu"]))
    with pytest.raises(ModelFileError, match="not found"):
        rt.load("m", fmt, device=device)
