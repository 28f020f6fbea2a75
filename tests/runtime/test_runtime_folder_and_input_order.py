"""SkRuntime keeps reading its own folder after the application changes its working folder,
refuses inputs given in no order (a set), and says "not found" where a folder on a file's path
is a file."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from skruntime import InputError, KeyFileError, ModelFileError, SkRuntime
from skruntime.config import InputSpec, OutputSpec
from skruntime.keyfile import read_txt_keys
from skruntime.mev import read_mev
from skruntime.runtime import LoadedModel


def test_a_relative_outputs_folder_still_loads_after_a_change_of_folder(
    workdir: Path, protect_linear: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that creates its SkRuntime, then changes its working folder (a daemon's
    chdir("/")), loaded the model files of another folder: "not found", or a misleading
    "a new version was deployed" where that folder held another deployment."""
    protect_linear("app", "net", (4, 3))
    rt = SkRuntime("outputs/app")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with rt.load("net", static_key=True) as model:
        assert model(np.ones((2, 4), np.float32)).shape == (2, 3)
    assert rt.outputs_dir == workdir / "outputs" / "app"


class _Echo:
    """A backend that returns its inputs (the key last) as they were fed."""

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        return list(inputs[:-1])

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kind", [set, frozenset, lambda d: dict.fromkeys(d).keys()])
def test_run_refuses_an_unordered_collection_of_inputs(kind: Callable[[list], Any]) -> None:
    """torch tensors are hashable, so a set of them was accepted and fed in its arbitrary
    iteration order: inputs of the same shape went to other inputs, wrong outputs without an
    error (three tensors: about 40 % of sets iterate out of order)."""
    specs = [InputSpec(n, (2,), "float32") for n in ("a", "b", "c")]
    model = LoadedModel(
        "m", "torchscript_cpu", specs, [OutputSpec("y")], np.zeros(1, np.float32), _Echo()
    )
    tensors = [torch.rand(2) for _ in specs]
    with pytest.raises(InputError, match=r"whose order is arbitrary: pass a list"):
        model.run(kind(tensors))
    assert all(o is t for o, t in zip(model.run(tensors), tensors, strict=True))
    assert all(o is t for o, t in zip(model.run(iter(tensors)), tensors, strict=True))


def test_a_model_folder_that_is_a_file_is_not_found_not_a_permission_problem(
    workdir: Path, protect_linear: Callable[..., Path]
) -> None:
    """A file where the model's format folder belongs (ENOTDIR) was "cannot be read: Not a
    directory. Give this user read access to it", advice that cannot help."""
    out = protect_linear("app", "net", (4, 3))
    folder = out / "net" / "onnx"
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    with pytest.raises(ModelFileError, match=r"net\.onnx of model 'net' \(onnx\) not found\."):
        SkRuntime(out).load("net")


def test_key_files_under_a_file_are_not_found(tmp_path: Path) -> None:
    """The key readers say the same of a key file whose folder is a file."""
    folder = tmp_path / "onnx"
    folder.write_text("not a folder")
    with pytest.raises(KeyFileError, match=r"key_params_m\.json not found\."):
        read_txt_keys(folder, "m")
    with pytest.raises(KeyFileError, match=r"mev_m_onnx\.bin not found\."):
        read_mev(
            folder / "mev_m_onnx.bin",
            model_name="m",
            fmt_slug="onnx",
            model_sha256="0" * 64,
            kek=bytes(32),
        )
