"""End-to-end tests of SkProtectorPyTorch: files, keys, configuration, errors, atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.export.toy_models import DoublesInPlace
from torch import nn

from skprotect_pytorch import Customer
from skprotect_pytorch.errors import (
    ConfigurationError,
    ExportError,
    InvalidArgumentError,
    RemovedAPIError,
    SkProtectError,
    VerificationError,
)
from skprotect_pytorch.lock.coverage import PlaintextWeight
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.config import load_config
from skruntime.keyfile import read_txt_keys, session_key

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallNet()
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


INPUTS = [torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))]
BATCH = ({0: torch.export.Dim("batch", min=1, max=64)},)


def onnx_run(path: Path, x: np.ndarray, key: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {names[0]: x, names[-1]: key})[0]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def read_static_key(path: Path) -> np.ndarray:
    return np.array([np.float32(line) for line in path.read_text().split()], dtype=np.float32)


def test_onnx_txt_test_key_end_to_end(workdir: Path) -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # the user's mode must survive
    protector = SkProtectorPyTorch(save_logs=True, application_name="app")
    result = protector.protect_new_model(
        model, "net", INPUTS, model_export_formats=EF.ONNX, test_key=True, dynamic_shapes=BATCH
    )
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    onnx_path = workdir / "outputs/app/net/onnx/net.onnx"
    assert result.formats["onnx"].path == onnx_path and onnx_path.exists()
    assert sorted(p.name for p in onnx_path.parent.iterdir()) == [
        "key_params_net.json",
        "key_vector_inv_net.txt",
        "net.onnx",
    ]
    key = read_static_key(onnx_path.parent / "key_vector_inv_net.txt")
    assert key.size == result.formats["onnx"].key_length
    names = [i.name for i in ort.InferenceSession(str(onnx_path)).get_inputs()]
    assert names == ["input.1", "key_vector"]
    for batch in (2, 5):
        x = torch.randn(batch, 3, 4, 4)
        with torch.no_grad():
            expected = model(x).numpy()
        assert rel(onnx_run(onnx_path, x.numpy(), key), expected) < 1e-4
        assert rel(onnx_run(onnx_path, x.numpy(), np.zeros_like(key)), expected) > 0.5
        random_key = np.random.default_rng(batch).standard_normal(key.size).astype(np.float32)
        assert rel(onnx_run(onnx_path, x.numpy(), random_key), expected) > 0.5
    assert result.formats["onnx"].max_rel_error < 1e-4
    assert result.formats["onnx"].no_key_rel_diff > 0.5
    assert [d.name for d in result.locked_layers] == ["conv", "fc"]
    assert result.folded_batchnorms == [("conv", "bn")]
    assert "net" in str(result) and str(onnx_path) in str(result)
    logs = list((workdir / "log").glob("skprotect_*.log"))
    assert logs and "layer conv (Conv2d): locked" in logs[0].read_text()
    config = load_config(workdir / "outputs/app/skconfig.json")
    assert config.platform_version == 2 and config.customer == {"id": 1, "name": ""}
    assert config.models["net"].formats["onnx"].sha256


def test_session_keys_without_test_key(workdir: Path) -> None:
    model = make_model()
    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(model, "net", INPUTS, model_export_formats=EF.ONNX)
    folder = result.formats["onnx"].path.parent
    share = read_static_key(folder / "key_vector_inv_net.txt")
    with torch.no_grad():
        expected = model(INPUTS[0]).numpy()
    assert rel(onnx_run(result.formats["onnx"].path, INPUTS[0].numpy(), share), expected) > 0.5
    material = read_txt_keys(folder, "net")
    k1, k2 = session_key(material), session_key(material)
    assert k1.tobytes() != k2.tobytes()
    y1 = onnx_run(result.formats["onnx"].path, INPUTS[0].numpy(), k1)
    y2 = onnx_run(result.formats["onnx"].path, INPUTS[0].numpy(), k2)
    assert np.array_equal(y1, y2)
    assert rel(y1, expected) < 1e-4


def test_layer_filter_called_once_per_layer_across_groups(workdir: Path) -> None:
    calls: list[str] = []

    def only_fc(name: str, module: nn.Module) -> bool:
        calls.append(name)
        return name == "fc"

    said = r"1 weight tensor\(s\) of 'net' are stored in plaintext"
    with pytest.warns(RuntimeWarning, match=said) as seen:
        result = SkProtectorPyTorch(application_name="app").protect_new_model(
            make_model(),
            "net",
            INPUTS,
            layer_filter=only_fc,
            model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU,
        )
    assert calls == ["conv", "fc"]
    assert [d.name for d in result.locked_layers] == ["fc"]
    assert [(d.name, d.reason) for d in result.skipped_layers] == [
        ("conv", "excluded by layer_filter")
    ]
    # the excluded conv's kernel ships unlocked: said once (not per format group) and listed
    assert len([w for w in seen if "plaintext" in str(w.message)]) == 1
    assert result.plaintext_weights == [
        PlaintextWeight(
            "conv.weight", (8, 3, 3, 3), "layer 'conv' was not locked: excluded by layer_filter"
        )
    ]
    assert "weights stored in plaintext: 1" in str(result)
    assert result.formats["onnx"].key_length == result.formats["torchscript_cpu"].key_length


def test_groups_have_their_own_keys_and_reproducible(workdir: Path) -> None:
    model = make_model()
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        model, "net", INPUTS, model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU, test_key=True
    )
    onnx_key = read_static_key(workdir / "outputs/app/net/onnx/key_vector_inv_net.txt")
    cpu_key = read_static_key(workdir / "outputs/app/net/cpu/key_vector_inv_net.txt")
    assert not np.array_equal(onnx_key, cpu_key)
    # the CPU group's key does not unlock the ONNX file
    with torch.no_grad():
        expected = model(INPUTS[0]).numpy()
    onnx_path = workdir / "outputs/app/net/onnx/net.onnx"
    assert rel(onnx_run(onnx_path, INPUTS[0].numpy(), cpu_key), expected) > 0.5
    # re-protecting the unchanged model reproduces the keys
    protector.protect_updated_model(
        model, "net", INPUTS, model_export_formats=EF.ONNX, test_key=True
    )
    again = read_static_key(workdir / "outputs/app/net/onnx/key_vector_inv_net.txt")
    assert np.array_equal(again, onnx_key)
    # another application gets other keys
    SkProtectorPyTorch(application_name="other").protect_new_model(
        model, "net", INPUTS, model_export_formats=EF.ONNX, test_key=True
    )
    other = read_static_key(workdir / "outputs/other/net/onnx/key_vector_inv_net.txt")
    assert not np.array_equal(other, onnx_key)


def test_torchscript_cpu_runs_with_key(workdir: Path) -> None:
    model = make_model()
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "net",
        INPUTS,
        model_export_formats=EF.TORCHSCRIPT_CPU,
        test_key=True,
        dynamic_shapes=BATCH,
    )
    path = result.formats["torchscript_cpu"].path
    assert path.name == "net.pt"
    key = torch.from_numpy(read_static_key(path.parent / "key_vector_inv_net.txt"))
    loaded = torch.jit.load(str(path))
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        assert rel(loaded(x, key).numpy(), model(x).numpy()) < 1e-4
        assert rel(loaded(x, torch.zeros_like(key)).numpy(), model(x).numpy()) > 0.5


def test_new_and_updated_model_rules(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    # the errors of docs/api.md, the same ones the configuration write raises
    with pytest.raises(ConfigurationError, match="no model 'net' to replace"):
        protector.protect_updated_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)
    protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)
    with pytest.raises(ConfigurationError, match="already in"):
        protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)
    with pytest.raises(ConfigurationError, match="models there: net"):
        protector.protect_updated_model(make_model(), "nt", INPUTS, model_export_formats=EF.ONNX)
    protector.protect_new_model(make_model(1), "net2", INPUTS, model_export_formats=EF.ONNX)
    config = load_config(protector.config_path(EP.TXT))
    assert sorted(config.models) == ["net", "net2"]


def test_failure_leaves_outputs_untouched(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)
    config_path = protector.config_path(EP.TXT)
    before_config = config_path.read_bytes()
    onnx_path = workdir / "outputs/app/net/onnx/net.onnx"
    before_model = onnx_path.read_bytes()

    import skprotect_pytorch.pipeline as pipeline

    def broken(*args, **kwargs):
        raise VerificationError("simulated failure")

    monkeypatch.setattr(pipeline, "check_outputs", broken)
    with pytest.raises(VerificationError):
        protector.protect_updated_model(make_model(3), "net", INPUTS, model_export_formats=EF.ONNX)
    with pytest.raises(VerificationError):
        protector.protect_new_model(make_model(3), "net3", INPUTS, model_export_formats=EF.ONNX)
    assert config_path.read_bytes() == before_config
    assert onnx_path.read_bytes() == before_model
    assert not (workdir / "outputs/app/net3").exists()
    assert [p.name for p in (workdir / "outputs/app").iterdir() if p.name.startswith(".")] == []


def test_config_write_failure_restores_files(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)
    onnx_path = workdir / "outputs/app/net/onnx/net.onnx"
    before_model = onnx_path.read_bytes()
    before_config = protector.config_path(EP.TXT).read_bytes()

    import skprotect_pytorch.pipeline as pipeline

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "add_model", disk_full)
    with pytest.raises(ExportError, match=r"No space left on device.*previous files are restored"):
        protector.protect_updated_model(make_model(5), "net", INPUTS, model_export_formats=EF.ONNX)
    assert onnx_path.read_bytes() == before_model
    assert protector.config_path(EP.TXT).read_bytes() == before_config


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_failure_while_moving_files_in_restores_every_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after the first file of an update is in place: every file, keys
    included, is the previous one again, and no staging or backup folder is left."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)
    before = _tree(workdir / "outputs")
    real_replace, moves = os.replace, []

    def fills_up(src, dst):
        if ".staging" in str(src) and ".staging" not in str(dst):
            moves.append(dst)
            if len(moves) == 2:
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fills_up)
    with pytest.raises(ExportError, match="previous files are restored"):
        protector.protect_updated_model(make_model(5), "net", INPUTS, model_export_formats=EF.ONNX)
    assert _tree(workdir / "outputs") == before


def test_a_failed_restore_keeps_the_backups_and_says_where(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)

    import skprotect_pytorch.pipeline as pipeline

    real_replace = os.replace

    def no_way_back(src, dst):
        if "-backup" in str(src):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "add_model", disk_full)
    monkeypatch.setattr(os, "replace", no_way_back)
    with pytest.raises(ExportError, match=r"previous files are kept in .*-backup"):
        protector.protect_updated_model(make_model(5), "net", INPUTS, model_export_formats=EF.ONNX)
    backups = [p for p in (workdir / "outputs/app").iterdir() if p.name.endswith("-backup")]
    assert len(backups) == 1 and any(p.is_file() for p in backups[0].rglob("*"))


def test_save_original(workdir: Path) -> None:
    model = make_model()
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "net",
        INPUTS,
        model_export_formats=EF.ONNX,
        save_original=True,
        onnx_params={"input_names": ["pixels"], "output_names": ["logits"], "dynamic_axes": None},
    )
    [original] = result.original_files
    assert original == workdir / "outputs/app/net/original/net_onnx.onnx"
    session = ort.InferenceSession(str(original))
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    with torch.no_grad():
        expected = model(INPUTS[0]).numpy()
    assert rel(session.run(None, {"pixels": INPUTS[0].numpy()})[0], expected) < 1e-5


def test_linux_platform(workdir: Path) -> None:
    from skruntime.mev import read_mev

    model = make_model()
    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        model,
        "net",
        INPUTS,
        model_export_formats=EF.ONNX,
        deployment_platform=EP.LINUX,
        customer=Customer(7, "ACME"),
    )
    assert result.config_path == workdir / "outputs/app/skrpl"
    config = load_config(result.config_path)
    assert config.customer == {"id": 7, "name": "ACME"} and config.platform == "LINUX"
    entry = config.models["net"].formats["onnx"]
    mev = workdir / "outputs/app" / entry.key_files[0]
    assert mev.name.startswith("mev") and mev.exists()
    assert not list(mev.parent.glob("key_vector_inv_*"))
    material = read_mev(
        mev, model_name="net", fmt_slug="onnx", model_sha256=entry.sha256, kek=protector.state.kek
    )
    with torch.no_grad():
        expected = model(INPUTS[0]).numpy()
    out = onnx_run(workdir / "outputs/app" / entry.file, INPUTS[0].numpy(), session_key(material))
    assert rel(out, expected) < 1e-4
    with pytest.raises(SkProtectError):
        read_mev(
            mev, model_name="net", fmt_slug="onnx", model_sha256="0" * 64, kek=protector.state.kek
        )


def test_migrate_and_update_customer(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        make_model(), "net", INPUTS, model_export_formats=EF.ONNX, platform_version=0
    )
    path = protector.config_path(EP.TXT)
    assert load_config(path).models["net"].formats["onnx"].sha256 is None
    with pytest.raises(SkProtectError):
        protector.update_customer(Customer(3, "x"), EP.TXT)
    with pytest.raises(InvalidArgumentError, match="platform version 2 configurations only"):
        protector.migrate_configuration(1, EP.TXT, Customer(7, "ACME"))  # it would be dropped
    protector.migrate_configuration(1, EP.TXT)
    config = load_config(path)
    digest = config.models["net"].formats["onnx"].sha256
    assert config.platform_version == 1 and len(digest) == 64
    protector.migrate_configuration(2, EP.TXT, Customer(4, "Four"))
    assert load_config(path).customer == {"id": 4, "name": "Four"}
    protector.update_customer(Customer(5, "Five"), EP.TXT)
    assert load_config(path).customer == {"id": 5, "name": "Five"}
    with pytest.raises(InvalidArgumentError, match="Use update_customer"):
        protector.migrate_configuration(2, EP.TXT, Customer(9, "Other"))  # a no-op otherwise
    protector.migrate_configuration(2, EP.TXT, Customer(5, "Five"))  # the same: nothing to do
    protector.migrate_configuration(2, EP.TXT)
    assert load_config(path).customer == {"id": 5, "name": "Five"}
    with pytest.raises(SkProtectError):
        protector.migrate_configuration(1, EP.TXT)


def test_protecting_at_a_higher_version_migrates_the_configuration(workdir: Path) -> None:
    """The usage document: "If models were protected with a lower version ..., the script will
    automatically perform a migration" (it needs the old protected models in outputs/)."""
    from skruntime import SkRuntime

    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        make_model(), "net", INPUTS, model_export_formats=EF.ONNX, platform_version=0
    )
    path = protector.config_path(EP.TXT)
    old_file = protector.outputs_dir / "net" / "onnx" / "net.onnx"
    old_file.rename(old_file.with_suffix(".moved"))
    before = path.read_bytes()
    with pytest.raises(SkProtectError, match=r"net\.onnx are missing.*Put the old protected"):
        protector.protect_new_model(make_model(1), "other", INPUTS, model_export_formats=EF.ONNX)
    assert path.read_bytes() == before
    assert not (protector.outputs_dir / "other").exists()  # refused before the export
    old_file.with_suffix(".moved").rename(old_file)
    protector.protect_new_model(
        make_model(1), "other", INPUTS, model_export_formats=EF.ONNX, customer=Customer(6, "Six")
    )
    config = load_config(path)
    assert config.platform_version == 2 and config.customer == {"id": 6, "name": "Six"}
    assert (
        config.models["net"].formats["onnx"].sha256
        == hashlib.sha256(old_file.read_bytes()).hexdigest()
    )
    runtime = SkRuntime(protector.outputs_dir, platform="TXT")
    for name, seed in (("net", 0), ("other", 1)):
        with torch.no_grad():
            expected = make_model(seed)(INPUTS[0]).numpy()
        with runtime.load(name) as model:
            assert rel(model(INPUTS[0].numpy()), expected) < 1e-5


def test_updating_a_model_migrates_without_its_old_files(workdir: Path) -> None:
    """The replaced model's old files are not hashed: an update that drops a format (whose old
    file is retired before the configuration is written) or whose old files are gone works."""
    protector = SkProtectorPyTorch(application_name="app")
    both = EF.ONNX | EF.TORCHSCRIPT_CPU
    protector.protect_new_model(
        make_model(), "net", INPUTS, model_export_formats=both, platform_version=0
    )
    (protector.outputs_dir / "net" / "onnx" / "net.onnx").unlink()
    protector.protect_updated_model(make_model(1), "net", INPUTS, model_export_formats=EF.ONNX)
    config = load_config(protector.config_path(EP.TXT))
    assert config.platform_version == 2 and list(config.models["net"].formats) == ["onnx"]
    assert not (protector.outputs_dir / "net" / "cpu" / "net.pt").exists()  # retired


class _MaskedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, key_padding_mask=mask, need_weights=False)[0]


def test_example_inputs_giving_nan_are_refused_before_the_export(workdir: Path) -> None:
    """A fully masked sequence: torch's fast path returns NaN, which no file can be checked
    against; this used to fail after the export with "report this with the logs"."""
    torch.manual_seed(0)
    model, x = _MaskedAttention().eval(), torch.randn(2, 5, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match=r"output\(s\) \[0\] hold NaN"):
        protector.protect_new_model(model, "m", [x, mask.index_fill(0, torch.tensor([1]), True)])
    assert not (workdir / "outputs" / "app" / "m").exists()
    result = protector.protect_new_model(model, "m", [x, mask], model_export_formats=EF.ONNX)
    assert result.formats["onnx"].max_rel_error < 1e-4


def test_another_customer_is_refused_before_the_export(workdir: Path) -> None:
    """One configuration, one customer: the refusal came after the export and left empty
    model folders behind."""
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(
        make_model(), "net", INPUTS, model_export_formats=EF.ONNX, customer=Customer(5, "Five")
    )
    before = sorted(p.relative_to(workdir) for p in (workdir / "outputs").rglob("*"))
    with pytest.raises(SkProtectError, match=r"licensed to Customer\(5, 'Five'\) but customer="):
        protector.protect_new_model(make_model(1), "other", INPUTS, model_export_formats=EF.ONNX)
    assert sorted(p.relative_to(workdir) for p in (workdir / "outputs").rglob("*")) == before


def test_tampered_configuration_is_refused(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=EF.ONNX)
    path = protector.config_path(EP.TXT)
    document = json.loads(path.read_text())
    document["payload"]["customer"]["id"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(SkProtectError, match="signature"):
        load_config(path)
    with pytest.raises(SkProtectError):
        protector.protect_new_model(make_model(), "x", INPUTS, model_export_formats=EF.ONNX)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "not a model"}, InvalidArgumentError, "torch.nn.Module"),
        ({"model_name": "../evil"}, InvalidArgumentError, "model_name"),
        ({"input_tensors": []}, InvalidArgumentError, "non-empty list"),
        ({"input_tensors": [np.zeros(3)]}, InvalidArgumentError, "torch.Tensor"),
        ({"layer_filter": "conv"}, InvalidArgumentError, "layer_filter"),
        ({"model_export_formats": "onnx"}, InvalidArgumentError, "ExportFormat"),
        ({"deployment_platform": "TXT"}, InvalidArgumentError, "ExportPlatform"),
        ({"platform_version": 3}, InvalidArgumentError, "platform_version"),
        ({"platform_version": 1, "customer": Customer(2)}, InvalidArgumentError, ">= 2"),
        ({"customer": 1}, InvalidArgumentError, "Customer"),
        ({"test_key": "yes"}, InvalidArgumentError, "test_key"),
        ({"lock_preset": "fast"}, InvalidArgumentError, "lock_preset must be one of"),
        ({"lock_preset": 1}, InvalidArgumentError, "lock_preset"),
        ({"inductor_configs": [1]}, InvalidArgumentError, "inductor_configs"),
        ({"onnx_params": {"input_names": []}}, InvalidArgumentError, "input_names"),
        (
            {
                "dynamic_shapes": ({0: torch.export.Dim("b")},),
                "input_tensors": [torch.randn(1, 3, 4, 4)],
            },
            InvalidArgumentError,
            "size",
        ),
        ({"model_export_formats": EF.TORCHSCRIPT_GPU | EF.INDUCTOR_GPU}, ExportError, "CUDA"),
        ({"debug_logs": True}, RemovedAPIError, "save_logs"),
        ({"layer_types_to_protect": [nn.Linear]}, RemovedAPIError, "layer_filter"),
        ({"filtered_layers": ["fc"]}, RemovedAPIError, "layer_filter"),
        ({"protected_model_format": "onnx"}, RemovedAPIError, "model_export_formats"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_arguments(workdir: Path, kwargs: dict, error: type, message: str) -> None:
    if torch.cuda.is_available() and error is ExportError:
        pytest.xfail("GPU formats are available on this machine")
    call = {
        "model": make_model(),
        "model_name": "net",
        "input_tensors": INPUTS,
        "model_export_formats": EF.ONNX,
        **kwargs,
    }
    with pytest.raises(error, match=message):
        SkProtectorPyTorch(application_name="app").protect_new_model(**call)
    assert not (workdir / "outputs/app/net").exists()


def test_lock_preset_changes_the_stored_weights_not_the_outputs(workdir: Path) -> None:
    """``balanced`` mixes one side of each layer, ``strong`` (the default) both: same outputs
    with the test key, different stored weights."""
    model, x = make_model(), INPUTS[0].numpy()
    ref = model(INPUTS[0]).detach().numpy()
    protector = SkProtectorPyTorch(application_name="app")
    weights = {}
    for name, preset in (("strong", None), ("balanced", "balanced")):
        kwargs = {} if preset is None else {"lock_preset": preset}
        protector.protect_new_model(
            model, name, INPUTS, model_export_formats=EF.ONNX, test_key=True, **kwargs
        )
        folder = workdir / f"outputs/app/{name}/onnx"
        key = read_static_key(folder / f"key_vector_inv_{name}.txt")
        path = next(folder.glob("*.onnx"))
        assert rel(onnx_run(path, x, key), ref) < 1e-4
        assert rel(onnx_run(path, x, np.zeros_like(key)), ref) > 0.5
        model_proto = __import__("onnx").load(str(path))
        weights[name] = sorted(tuple(t.dims) for t in model_proto.graph.initializer)
    assert weights["strong"] != weights["balanced"], weights


def test_gpu_formats_skipped_with_warning(workdir: Path) -> None:
    if torch.cuda.is_available():
        pytest.xfail("GPU formats are available on this machine")
    protector = SkProtectorPyTorch(application_name="app", save_logs=True)
    with pytest.warns(RuntimeWarning, match="CUDA is not available") as said:
        result = protector.protect_new_model(
            make_model(), "net", INPUTS, model_export_formats=EF.ONNX | EF.TORCHSCRIPT_GPU
        )
    assert list(result.formats) == ["onnx"]
    assert "CUDA" in result.skipped_formats["torchscript_gpu"]
    (warned,) = [w for w in said if "skipped" in str(w.message)]
    assert warned.filename == __file__  # the protector's caller, not the library
    (log,) = (workdir / "log").glob("skprotect_*.log")
    assert f"WARNING {warned.message}\n" in log.read_text()


def test_legacy_api(workdir: Path) -> None:
    with pytest.raises(RemovedAPIError, match="output_path"):
        SkProtectorPyTorch(output_path="x")
    with pytest.raises(RemovedAPIError, match="protect_new_model"):
        SkProtectorPyTorch().protect(make_model())
    with pytest.raises(RemovedAPIError, match="SkProtectorPyTorch"):
        from skprotect_pytorch.protect import SkProtector  # noqa: F401
    with pytest.raises(RemovedAPIError, match="TORCHSCRIPT_CPU"):
        _ = EF.TORCHSCRIPT
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = SkProtectorPyTorch(application_name="app").protect_new_model(
            make_model(), "net", list_input_tensor=INPUTS, protected_model_format=EF.ONNX
        )
    assert list(result.formats) == ["onnx"]
    assert any("input_tensors" in str(w.message) for w in caught)
    assert any("model_export_formats" in str(w.message) for w in caught)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.a(h), self.b(h)


def test_every_output_is_named_in_file_and_configuration(workdir: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6)
    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        TwoHeads().eval(), "two", [x], model_export_formats=EF.ONNX
    )
    session = ort.InferenceSession(str(result.formats["onnx"].path))
    assert [o.name for o in session.get_outputs()] == ["output.1", "output.2"]
    config = load_config(result.config_path)
    assert [o.name for o in config.models["two"].outputs] == ["output.1", "output.2"]
    with pytest.raises(InvalidArgumentError, match="has 3 names"):
        protector.protect_new_model(
            TwoHeads().eval(),
            "three",
            [x],
            model_export_formats=EF.ONNX,
            onnx_params={"input_names": ["x"], "output_names": ["a", "b", "c"]},
        )


class _Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom")


def test_a_model_that_fails_on_the_inputs_is_an_input_error(workdir: Path) -> None:
    protector = SkProtectorPyTorch(application_name="app")
    cases = [
        (make_model(), [torch.randn(2, 3, 5, 5)], r"\(2, 3, 5, 5\) float32 on cpu"),
        (make_model(), [INPUTS[0].double()], "float64"),
        (make_model(), [INPUTS[0], INPUTS[0]], "2 tensor"),
        (_Boom().eval(), [torch.randn(1, 4)], "ValueError: boom"),
    ]
    for model, inputs, detail in cases:
        with pytest.raises(InvalidArgumentError, match="The model fails on input_tensors") as err:
            protector.protect_new_model(model, "net", inputs, model_export_formats=EF.ONNX)
        assert re.search(detail, str(err.value)), str(err.value)
    assert not (workdir / "outputs/app/net").exists()


def test_the_requested_opset_is_written_or_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's dynamo exporter only logs that it could not convert to an older opset: the
    legacy exporter is tried then, and an opset no exporter wrote is an error."""
    import onnx

    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        make_model(),
        "net",
        INPUTS,
        model_export_formats=EF.ONNX,
        onnx_params={"input_names": ["x"], "opset_version": 11},
    )
    path = result.formats["onnx"].path
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain == ""] == [11]
    assert result.formats["onnx"].exporter == "torch.onnx dynamo=False opset 11"
    with pytest.raises(InvalidArgumentError, match="must be an integer from 9 to"):
        protector.protect_new_model(
            make_model(),
            "n2",
            INPUTS,
            model_export_formats=EF.ONNX,
            onnx_params={"input_names": ["x"], "opset_version": 99},
        )

    import skprotect_pytorch.export.onnx as onnx_export

    calls = []

    def disk_full(*args, **kwargs):
        calls.append(kwargs["dynamo"])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "_torch_onnx_export", disk_full)
    with pytest.raises(ExportError, match=r"could not write to .*No space left on device"):
        protector.protect_new_model(make_model(), "n3", INPUTS, model_export_formats=EF.ONNX)
    assert calls == [True]  # no second attempt with the other exporter on a full disk


def test_an_update_with_fewer_formats_removes_the_old_ones(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No locked model or key of the previous version stays beside the configuration untracked;
    a failed update puts them back with the rest."""
    protector = SkProtectorPyTorch(application_name="app")
    both = EF.ONNX | EF.TORCHSCRIPT_CPU
    protector.protect_new_model(make_model(), "net", INPUTS, model_export_formats=both)
    cpu = workdir / "outputs/app/net/cpu"
    before = _tree(workdir / "outputs")
    assert sorted(p.name for p in cpu.iterdir()) == [
        "key_params_net.json", "key_vector_inv_net.txt", "net.pt"
    ]  # fmt: skip

    import skprotect_pytorch.pipeline as pipeline

    real_add_model = pipeline.add_model

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "add_model", disk_full)
    with pytest.raises(ExportError, match="previous files are restored"):
        protector.protect_updated_model(make_model(3), "net", INPUTS, model_export_formats=EF.ONNX)
    assert _tree(workdir / "outputs") == before
    monkeypatch.setattr(pipeline, "add_model", real_add_model)
    protector.protect_updated_model(make_model(3), "net", INPUTS, model_export_formats=EF.ONNX)
    assert list(load_config(protector.config_path(EP.TXT)).models["net"].formats) == ["onnx"]
    assert not any(p.is_file() for p in cpu.rglob("*"))


def test_an_unwritable_outputs_folder_is_said_up_front(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if ".staging-" in self.name:
            raise OSError(30, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ExportError, match=r"Cannot write to .*Read-only file system"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            make_model(), "net", INPUTS, model_export_formats=EF.ONNX
        )


def test_dynamic_axes_are_checked_at_another_size(workdir: Path) -> None:
    """An axis declared dynamic is verified at a second size: one the model cannot vary (a
    Linear's features) is refused, where it used to be recorded as dynamic and fail at run
    time; a real batch axis passes."""
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match=r"cannot vary: with f=9 .* mat1 and mat2"):
        protector.protect_new_model(
            mlp, "m", [torch.randn(2, 8)], model_export_formats=EF.ONNX,
            dynamic_shapes=[{1: torch.export.Dim("f")}],
        )  # fmt: skip
    at_max = [{0: torch.export.Dim("batch", min=1, max=2)}]  # 2 is the maximum: checked at 1
    result = protector.protect_new_model(
        mlp, "m", [torch.randn(2, 8)], model_export_formats=EF.ONNX, dynamic_shapes=at_max
    )
    assert result.formats["onnx"].max_rel_error < 1e-4


SEED_ORDER = [
    "model",
    "model_name",
    "input_tensors",
    "layer_filter",
    "model_export_formats",
    "deployment_platform",
    "dynamic_shapes",
    "onnx_params",
    "inductor_configs",
    "save_original",
    "quantize_compatibility",
    "test_key",
    "platform_version",
    "customer",
]


@pytest.mark.parametrize("method", ["protect_new_model", "protect_updated_model"])
def test_parameters_keep_the_usage_documents_order(method: str) -> None:
    """Positional calls written against the usage document must keep working: our own
    ``lock_preset`` is keyword-only, after the document's parameters."""
    import inspect

    params = inspect.signature(getattr(SkProtectorPyTorch, method)).parameters
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["self", *SEED_ORDER]
    assert params["lock_preset"].kind is inspect.Parameter.KEYWORD_ONLY


def test_a_positional_call_in_the_usage_documents_order(workdir: Path) -> None:
    from skprotect_pytorch.protect import default_onnx_params, inductor_configs

    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        make_model(), "net", INPUTS, None, EF.ONNX, EP.TXT, None, default_onnx_params,
        inductor_configs, False, False, True, 2, Customer(3, "Positional"),
    )  # fmt: skip
    assert list(result.formats) == ["onnx"]
    config = load_config(protector.config_path(EP.TXT))
    assert (config.customer.id, config.customer.name) == (3, "Positional")
    assert config.models["net"].formats["onnx"]


def test_no_copy_of_the_model_is_kept_longer_than_needed(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each copy of the weights is as large as the model: the protector's reference copy was
    kept through the last group's exports and checks, the ONNX group's locked model through
    its artifact's check and the next group, where onnxscript's rewrite rules kept the last
    exported graph, with every weight of the locked model, until the next ONNX export (the
    graph still holds some biases there: small, one value per channel)."""
    import gc
    import weakref

    import skprotect_pytorch.pipeline as pipeline

    references: list[weakref.ref] = []
    onnx_weights: list[weakref.ref] = []  # the first group's (ONNX) weight matrices
    seen: list[tuple[bool, int]] = []  # at each artifact check: reference alive, ONNX alive

    def copy_model(model: nn.Module) -> nn.Module:
        copied = real_copy(model)
        references.append(weakref.ref(copied))
        return copied

    def lock_model(*args, **kwargs):
        locked = real_lock(*args, **kwargs)
        if not onnx_weights:
            onnx_weights.extend(weakref.ref(p) for p in locked.keyed.parameters() if p.dim() > 1)
        return locked

    def load_artifact(*args, **kwargs):
        gc.collect()
        seen.append((references[0]() is not None, sum(w() is not None for w in onnx_weights)))
        return real_load(*args, **kwargs)

    real_copy, real_lock, real_load = (
        pipeline.copy_model,
        pipeline.lock_model,
        pipeline.load_artifact,
    )
    monkeypatch.setattr(pipeline, "copy_model", copy_model)
    monkeypatch.setattr(pipeline, "lock_model", lock_model)
    monkeypatch.setattr(pipeline, "load_artifact", load_artifact)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", [torch.randn(2, 6)], model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU
    )
    # the ONNX group's check: the CPU group still locks from the reference
    assert seen == [(True, 0), (False, 0)]
    gc.collect()
    assert [w for w in [*references, *onnx_weights] if w() is not None] == []


def test_the_exports_take_input_mutation_from_the_checked_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch exporters ran the locked model once more each to find the inputs its forward
    changes in place, beside the protector's own checked run: now that run says it, once per
    format group, and the artifact still copies such an input before changing it."""
    import skprotect_pytorch.export.base as base

    def no_second_run(*args, **kwargs):
        raise AssertionError("the exporter ran the model again to find input mutation")

    monkeypatch.setattr(base, "mutated_inputs", no_second_run)
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        DoublesInPlace().eval(),
        "net",
        [torch.randn(2, 3)],
        model_export_formats=EF.TORCHSCRIPT_CPU,
        test_key=True,
    )
    path = result.formats["torchscript_cpu"].path
    key = torch.from_numpy(read_static_key(path.parent / "key_vector_inv_net.txt"))
    x = torch.ones(2, 3)
    with torch.no_grad():
        torch.jit.load(str(path))(x, key)
    assert torch.equal(x, torch.ones(2, 3))  # the caller's input, as it was


@pytest.mark.parametrize(
    ("save_original", "in_place"), [(False, [False, True]), (True, [False, False])]
)
def test_the_last_lock_takes_the_reference_copy(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, save_original: bool, in_place: list[bool]
) -> None:
    """The lock's working copy beside the protector's reference copy set the peak memory: the
    last group locks the reference itself, unless the originals are still to be exported."""
    import skprotect_pytorch.pipeline as pipeline

    calls: list[bool] = []

    def lock_model(*args, **kwargs):
        calls.append(kwargs["in_place"])
        return real_lock(*args, **kwargs)

    real_lock = pipeline.lock_model
    monkeypatch.setattr(pipeline, "lock_model", lock_model)
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "net",
        INPUTS,
        model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU,
        save_original=save_original,
    )
    assert calls == in_place
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
