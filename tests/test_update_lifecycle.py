"""Lifecycle of a deployed model: updates that cannot write a deployed format, copies and files
that an update or a fresh start leaves behind, and old argument names next to new ones."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path

import pytest
import torch
from tests.models import LIFECYCLE_INPUT, lifecycle_mlp

import skprotect_pytorch.pipeline as pipeline
from skprotect_pytorch import Customer
from skprotect_pytorch.configuration import add_model
from skprotect_pytorch.errors import ConfigurationError, ExportError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.config import FormatEntry, load_config

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
X = LIFECYCLE_INPUT
mlp = lifecycle_mlp


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def runs_like(protector: SkProtectorPyTorch, name: str, seed: int) -> bool:
    with SkRuntime(protector.outputs_dir, platform="TXT").load(name) as model:
        got = model(X.numpy())
    with torch.no_grad():
        expected = mlp(seed)(X).numpy()
    return bool(abs(got - expected).max() < 1e-4)


def add_gpu_format(protector: SkProtectorPyTorch, name: str) -> list[str]:
    """Record an INDUCTOR_GPU format in the model's entry, as a protection on a CUDA machine
    would have; returns its files."""
    folder = protector.outputs_dir / name / "gpu"
    folder.mkdir()
    written = {f"{name}.pt2": b"gpu model", f"key_params_{name}.json": b"{}"}
    for file, data in written.items():
        (folder / file).write_bytes(data)
    config_path = protector.config_path(EP.TXT)
    entry = load_config(config_path).models[name]
    gpu = FormatEntry(
        group="gpu",
        file=f"{name}/gpu/{name}.pt2",
        key_files=[f"{name}/gpu/key_params_{name}.json"],
        sha256=hashlib.sha256(b"gpu model").hexdigest(),
    )
    add_model(
        config_path,
        name,
        dataclasses.replace(entry, formats={**entry.formats, "inductor_gpu": gpu}),
        platform="TXT",
        platform_version=2,
        customer=Customer(),
        application=protector.application_name,
        signing_key=protector.state.signing_key,
        replace=True,
    )
    return [f"{name}/gpu/{file}" for file in written]


def test_an_update_without_cuda_keeps_the_deployed_gpu_format(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU format was skipped with a warning, and the update then removed the deployed
    GPU file and key as if the format had been left out on purpose."""
    monkeypatch.setattr(pipeline, "cuda_available", lambda: False)
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(mlp(0), "m", [X], model_export_formats=EF.ONNX)
    gpu_files = add_gpu_format(protector, "m")
    before = {f: (protector.outputs_dir / f).read_bytes() for f in files(protector.outputs_dir)}
    with (
        pytest.warns(RuntimeWarning, match="INDUCTOR_GPU skipped"),
        pytest.raises(ExportError, match=r"deployed in INDUCTOR_GPU \(m/gpu/m\.pt2\).*leave "),
    ):
        protector.protect_updated_model(
            mlp(1), "m", [X], model_export_formats=EF.ONNX | EF.INDUCTOR_GPU
        )
    after = {f: (protector.outputs_dir / f).read_bytes() for f in files(protector.outputs_dir)}
    assert after == before
    # left out on purpose, the GPU format is removed with its files
    protector.protect_updated_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)
    assert list(load_config(protector.config_path(EP.TXT)).models["m"].formats) == ["onnx"]
    assert not any((protector.outputs_dir / f).exists() for f in gpu_files)
    assert runs_like(protector, "m", 1)


def test_an_update_saving_fewer_originals_warns_about_the_copy_left(workdir: Path) -> None:
    """save_original=True with fewer formats left the previous version's unlocked copy of the
    dropped format in original/ without a word (the warning came only without save_original)."""
    protector = SkProtectorPyTorch(application_name="app")
    both = EF.ONNX | EF.TORCHSCRIPT_CPU
    protector.protect_new_model(mlp(0), "m", [X], model_export_formats=both, save_original=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*unlocked copies")  # every copy written again
        protector.protect_updated_model(
            mlp(1), "m", [X], model_export_formats=both, save_original=True
        )
    with pytest.warns(UserWarning, match="unlocked copies") as caught:
        protector.protect_updated_model(
            mlp(2), "m", [X], model_export_formats=EF.ONNX, save_original=True
        )
    (message,) = [str(w.message) for w in caught if "unlocked copies" in str(w.message)]
    assert "(m_torchscript_cpu.pt)" in message  # the copy left, not the one just written
    assert runs_like(protector, "m", 2)


def test_files_no_configuration_lists_are_warned_about(workdir: Path) -> None:
    """Deleting the configuration to start again, then protecting the model anew, left the
    earlier protection's locked model and keys in its folder, untracked, without a word."""
    protector = SkProtectorPyTorch(application_name="app")
    both = EF.ONNX | EF.TORCHSCRIPT_CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plain keys beside LINUX files, said elsewhere
        warnings.filterwarnings("error", ".*no configuration lists")  # every file is listed
        protector.protect_new_model(mlp(0), "m", [X], model_export_formats=both)
        protector.protect_new_model(
            mlp(0), "m", [X], model_export_formats=both, deployment_platform=EP.LINUX
        )
        protector.protect_updated_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)
    protector.config_path(EP.TXT).unlink()
    protector.config_path(EP.LINUX).unlink()
    with pytest.warns(UserWarning, match="no configuration lists") as caught:
        protector.protect_new_model(mlp(2), "m", [X], model_export_formats=EF.ONNX)
    (message,) = [str(w.message) for w in caught if "no configuration lists" in str(w.message)]
    assert "(m/cpu/m.pt, m/cpu/mev_m_torchscript_cpu.bin, m/onnx/mev_m_onnx.bin)" in message
    assert runs_like(protector, "m", 2)


def test_an_old_argument_name_with_its_new_one_is_refused(workdir: Path) -> None:
    """protect_new_model(model, name, [x], list_input_tensor=[y]) protected with [y] and
    dropped [x] silently, after a DeprecationWarning only."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(TypeError, match="both 'list_input_tensor' and its new name"):
        protector.protect_new_model(mlp(0), "m", [X], list_input_tensor=[X[:1]])
    with pytest.raises(TypeError, match="'protected_model_format' and its new name"):
        protector.protect_updated_model(
            mlp(0),
            "m",
            [X],
            model_export_formats=EF.ONNX,
            protected_model_format=EF.TORCHSCRIPT_CPU,
        )
    assert not protector.outputs_dir.exists()
    with pytest.warns(DeprecationWarning, match="'list_input_tensor' was renamed") as caught:
        protector.protect_new_model(
            mlp(0), "m", list_input_tensor=[X], model_export_formats=EF.ONNX
        )
    # said at the caller's line, where Python shows deprecations by default (in __main__)
    assert [w.filename for w in caught if w.category is DeprecationWarning] == [__file__]
    assert runs_like(protector, "m", 0)


def test_the_constructor_refuses_the_protect_calls_old_arguments(workdir: Path) -> None:
    """SkProtectorPyTorch(list_input_tensor=...) warned "update the call to
    SkProtectorPyTorch" with the new name, which the constructor does not take, and dropped
    the value."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'list_input_tensor'"):
        SkProtectorPyTorch(application_name="app", list_input_tensor=[X])
    with pytest.raises(TypeError, match="unexpected keyword argument 'protected_model_format'"):
        SkProtectorPyTorch(protected_model_format=EF.ONNX)


def test_a_model_of_the_other_platform_is_named_not_protected_anew(workdir: Path) -> None:
    """Updating a LINUX model without deployment_platform (TXT by default) advised
    protect_new_model, which writes plain TXT key files beside the LINUX deployment; migrating
    or setting the customer of the wrong platform advised protecting a model first."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        mlp(0), "m", [X], model_export_formats=EF.ONNX, deployment_platform=EP.LINUX
    )
    forgotten = r"It is in the LINUX configuration \(skrpl\): pass deployment_platform=.*LINUX"
    no_txt = r"skconfig\.json yet, .* to replace\. "
    with pytest.raises(ConfigurationError, match=no_txt + forgotten):
        protector.protect_updated_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)
    for call in (
        lambda: protector.migrate_configuration(2, EP.TXT),
        lambda: protector.update_customer(Customer(3, "C"), EP.TXT),
    ):
        with pytest.raises(ConfigurationError, match=r"but there is the LINUX one \(skrpl\)"):
            call()
    protector.protect_new_model(mlp(2), "other", [X], model_export_formats=EF.ONNX)
    with pytest.raises(ConfigurationError, match=r"\(models there: other\)\. " + forgotten):
        protector.protect_updated_model(mlp(1), "m", [X], model_export_formats=EF.ONNX)
    assert files(protector.outputs_dir / "m") == ["onnx/m.onnx", "onnx/mev_m_onnx.bin"]


def test_migrate_update_and_change_customer_keep_every_model_running(workdir: Path) -> None:
    """The lifecycle end to end, on both platforms of one application: version-0 files
    migrated, a model updated after the migration, the customer changed, a model added for
    the new customer; every model then runs in the runtime like its original."""
    protector = SkProtectorPyTorch(application_name="app")
    for platform in EP:
        for name, seed in (("a", 0), ("b", 1)):
            protector.protect_new_model(
                mlp(seed),
                name,
                [X],
                model_export_formats=EF.ONNX,
                deployment_platform=platform,
                platform_version=0,
            )
    protector.migrate_configuration(1, EP.TXT)
    protector.migrate_configuration(2, EP.TXT, Customer(3, "C"))
    protector.migrate_configuration(2, EP.LINUX, Customer(3, "C"))
    seeds = {"a": 2, "b": 1}
    for platform in EP:
        protector.protect_updated_model(
            mlp(2),
            "a",
            [X],
            model_export_formats=EF.ONNX,
            deployment_platform=platform,
            customer=Customer(3, "C"),
        )
        protector.update_customer(Customer(4, "D"), platform)
    protector.protect_new_model(
        mlp(3), "c", [X], model_export_formats=EF.ONNX, customer=Customer(4, "D")
    )
    seeds["c"] = 3
    for platform, kek in ((EP.TXT, None), (EP.LINUX, protector.state.kek)):
        runtime = SkRuntime(protector.outputs_dir, platform=platform.value, kek=kek)
        assert runtime.config.customer == {"id": 4, "name": "D"}
        for name in runtime.models():
            with runtime.load(name) as model, torch.no_grad():
                got, expected = model(X.numpy()), mlp(seeds[name])(X).numpy()
            assert abs(got - expected).max() < 1e-4, (platform, name)
    assert sorted(SkRuntime(protector.outputs_dir, platform="TXT").models()) == ["a", "b", "c"]
