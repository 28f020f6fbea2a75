"""Configuration operations of the protector: add/replace, migrations, customer updates."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import skruntime.config as cfgmod
from skprotect_pytorch import Customer
from skprotect_pytorch.configuration import add_model, migrate_configuration, update_customer
from skprotect_pytorch.errors import ConfigurationError, InvalidArgumentError, SkProtectError
from skprotect_pytorch.formats import ExportPlatform
from skruntime.config import CustomerEntry, FormatEntry, ModelEntry, load_config, public_key_bytes

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

# A frozen platform-version-0 file (written by 0.2.0-era layout, signed by KEY), kept verbatim
# so that migrations are proven on an old file, not on one the current code just wrote.
FROZEN_V0_PAYLOAD = (
    '{"platform_version":0,"platform":"TXT","application":"legacy_app","skprotect_version":'
    '"0.2.0","models":{"mlp":{"key_epoch":0,"inputs":[{"name":"input.1","shape":[1,4],"dtype":'
    '"float32","dynamic_dims":{}}],"outputs":[{"name":"output.1"}],"key":{"name":"sk_key",'
    '"length":12},"formats":{"onnx":{"group":"onnx","file":"mlp/onnx/mlp.onnx","key_files":'
    '["mlp/onnx/key_vector_inv_mlp.txt","mlp/onnx/key_params_mlp.json"]},"torchscript_cpu":'
    '{"group":"cpu","file":"mlp/cpu/mlp.pt","key_files":["mlp/cpu/key_vector_inv_mlp.txt",'
    '"mlp/cpu/key_params_mlp.json"]}}}}}'
)
FROZEN_V0 = (
    '{"format":"skprotect-config","payload":' + FROZEN_V0_PAYLOAD + ',"signature":'
    '"dksylwMN/tIa+JZ+c84SDcYDo9nbo8aekVbia0JntGI4AnyXk8w3AW73KNaPBrn21+4f+Ltbi2SUGBLNnZmBBA==",'
    '"public_key":"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="}'
)


def entry(name: str = "mlp", sha: str | None = "ab" * 32) -> ModelEntry:
    return ModelEntry(
        key_epoch=0,
        inputs=[{"name": "x", "shape": [1, 4], "dtype": "float32", "dynamic_dims": {}}],
        outputs=[{"name": "y"}],
        key={"name": "sk_key", "length": 12},
        formats={
            "onnx": FormatEntry(
                group="onnx",
                file=f"{name}/onnx/{name}.onnx",
                key_files=[f"{name}/onnx/key_vector_inv_{name}.txt"],
                sha256=sha,
            )
        },
    )


def add(path: Path, name: str = "mlp", *, version: int = 2, replace: bool = False, **kw):
    args = dict(
        platform=ExportPlatform.TXT,
        platform_version=version,
        customer=Customer(),
        application="app",
        signing_key=KEY,
        replace=replace,
    )
    return add_model(path, name, kw.pop("model_entry", entry(name)), **(args | kw))


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path / "outputs" / "app" / "skconfig.json"


# ----------------------------------------------------------------------------- add / replace


def test_new_model_creates_the_file(cfg: Path) -> None:
    config = add(cfg, customer=Customer(42, "ACME"))
    loaded = load_config(cfg, public_key=public_key_bytes(KEY))
    assert loaded == config
    assert loaded.platform_version == 2
    assert loaded.customer is not None and loaded.customer.id == 42
    assert loaded.skprotect_version == "0.3.0"
    assert list(loaded.models) == ["mlp"]


def test_version_0_drops_sha256(cfg: Path) -> None:
    config = add(cfg, version=0)
    assert config.models["mlp"].formats["onnx"].sha256 is None
    assert config.customer is None


def test_version_1_requires_sha256(cfg: Path) -> None:
    with pytest.raises(ConfigurationError, match="sha256 is required from platform version 1"):
        add(cfg, version=1, model_entry=entry(sha=None))
    assert not cfg.exists()


def test_second_model_is_added(cfg: Path) -> None:
    add(cfg, "a")
    config = add(cfg, "b")
    assert sorted(config.models) == ["a", "b"]


def test_new_model_already_present(cfg: Path) -> None:
    add(cfg)
    with pytest.raises(ConfigurationError) as e:
        add(cfg)
    assert f"Model 'mlp' is already in {cfg}; use protect_updated_model to replace it" in str(
        e.value
    )


def test_replace_missing_model_names_existing(cfg: Path) -> None:
    add(cfg, "a")
    add(cfg, "b")
    with pytest.raises(ConfigurationError, match=r"models there: a, b") as e:
        add(cfg, "c", replace=True)
    assert "Model 'c' is not in" in str(e.value)


def test_replace_without_file(cfg: Path) -> None:
    with pytest.raises(ConfigurationError, match="no configuration file") as e:
        add(cfg, replace=True)
    assert "protect_new_model" in str(e.value)


def test_replace_existing_model(cfg: Path) -> None:
    add(cfg)
    new = entry(sha="cd" * 32)
    config = add(cfg, replace=True, model_entry=new)
    assert config.models["mlp"].formats["onnx"].sha256 == "cd" * 32


def test_lower_version_file_is_migrated_in_the_same_write(cfg: Path) -> None:
    """The usage document: protecting at a higher version migrates the configuration."""
    add(cfg, version=0)
    model_file = cfg.parent / "mlp" / "onnx" / "mlp.onnx"
    before = cfg.read_bytes()
    with pytest.raises(ConfigurationError, match=r"mlp\.onnx are missing"):
        add(cfg, "b", version=2, customer=Customer(4, "Four"))
    assert cfg.read_bytes() == before  # nothing written
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"old protected model")
    config = add(cfg, "b", version=2, customer=Customer(4, "Four"))
    assert load_config(cfg, public_key=public_key_bytes(KEY)) == config
    assert config.platform_version == 2 and sorted(config.models) == ["b", "mlp"]
    assert config.customer == CustomerEntry(4, "Four")
    digest = hashlib.sha256(b"old protected model").hexdigest()
    assert config.models["mlp"].formats["onnx"].sha256 == digest


def test_higher_version_file_is_not_downgraded(cfg: Path) -> None:
    add(cfg, version=2)
    with pytest.raises(ConfigurationError, match="never downgraded"):
        add(cfg, "b", version=1)


def test_platform_mismatch(cfg: Path) -> None:
    add(cfg)
    with pytest.raises(ConfigurationError, match="is a TXT configuration, but the LINUX platform"):
        add(cfg, "b", platform=ExportPlatform.LINUX)


def test_application_mismatch(cfg: Path) -> None:
    add(cfg)
    with pytest.raises(ConfigurationError, match="belongs to application 'app', not 'other'"):
        add(cfg, "b", application="other")


def test_customer_mismatch_on_v2(cfg: Path) -> None:
    add(cfg, customer=Customer(42, "ACME"))
    with pytest.raises(ConfigurationError, match=r"licensed to Customer\(42, 'ACME'\)") as e:
        add(cfg, "b", customer=Customer())
    assert "update_customer" in str(e.value)


def test_customer_needs_v2(cfg: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="requires platform_version=2"):
        add(cfg, version=1, customer=Customer(5, "x"))


def test_unsupported_version_argument(cfg: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="platform_version must be one of 0, 1, 2"):
        add(cfg, version=3)


def test_file_signed_by_another_key(cfg: Path) -> None:
    add(cfg)
    with pytest.raises(ConfigurationError, match="signed by a different application key") as e:
        add(cfg, "b", signing_key=OTHER_KEY)
    assert "master.key" in str(e.value)


def test_tampered_file_is_a_protector_error(cfg: Path) -> None:
    add(cfg)
    doc = json.loads(cfg.read_text(encoding="utf-8"))
    doc["payload"]["application"] = "evil"
    cfg.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="invalid signature") as e:
        add(cfg, "b")
    assert isinstance(e.value, SkProtectError)


def test_failed_write_keeps_previous_file(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add(cfg, "a")
    before = cfg.read_bytes()

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cfgmod.os, "write", full_disk)
    with pytest.raises(ConfigurationError, match="No space left on device") as e:
        add(cfg, "b")
    assert isinstance(e.value, SkProtectError)
    assert cfg.read_bytes() == before


# ----------------------------------------------------------------------------- migrations


def _write_model_files(outputs: Path, names=("mlp/onnx/mlp.onnx",)) -> dict[str, str]:
    hashes = {}
    for rel in names:
        path = outputs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"model bytes of {rel}".encode()
        path.write_bytes(data)
        hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes


def test_migrate_0_to_1_hashes_model_files(cfg: Path) -> None:
    add(cfg, version=0)
    hashes = _write_model_files(cfg.parent)
    config = migrate_configuration(cfg, 1, outputs_dir=cfg.parent, signing_key=KEY)
    assert config.platform_version == 1
    assert config.models["mlp"].formats["onnx"].sha256 == hashes["mlp/onnx/mlp.onnx"]
    assert load_config(cfg) == config


def test_migrate_0_to_1_missing_model_file(cfg: Path) -> None:
    add(cfg, version=0)
    before = cfg.read_bytes()
    with pytest.raises(ConfigurationError, match="are missing") as e:
        migrate_configuration(cfg, 1, signing_key=KEY)
    assert str(cfg.parent / "mlp/onnx/mlp.onnx") in str(e.value)
    assert "re-protect all models in a clean environment" in str(e.value)
    assert cfg.read_bytes() == before


def test_migrate_1_to_2_adds_customer(cfg: Path) -> None:
    add(cfg, version=1)
    config = migrate_configuration(
        cfg, 2, outputs_dir=cfg.parent, customer=Customer(9, "Nine"), signing_key=KEY
    )
    assert config.platform_version == 2
    assert config.customer is not None and (config.customer.id, config.customer.name) == (9, "Nine")
    assert config.models["mlp"].formats["onnx"].sha256 == "ab" * 32


def test_migrate_1_to_2_default_customer(cfg: Path) -> None:
    add(cfg, version=1)
    config = migrate_configuration(cfg, 2, signing_key=KEY)
    assert config.customer is not None and (config.customer.id, config.customer.name) == (1, "")


def test_migrate_frozen_v0_file_0_to_1_to_2(cfg: Path) -> None:
    cfg.parent.mkdir(parents=True)
    cfg.write_text(FROZEN_V0, encoding="utf-8")
    old = load_config(cfg, public_key=public_key_bytes(KEY))
    assert old.platform_version == 0 and old.skprotect_version == "0.2.0"
    hashes = _write_model_files(cfg.parent, ["mlp/onnx/mlp.onnx", "mlp/cpu/mlp.pt"])
    v1 = migrate_configuration(cfg, 1, signing_key=KEY)
    assert v1.models["mlp"].formats["torchscript_cpu"].sha256 == hashes["mlp/cpu/mlp.pt"]
    v2 = migrate_configuration(cfg, 2, customer=Customer(3, "C"), signing_key=KEY)
    assert v2.platform_version == 2
    assert v2.models["mlp"].formats["onnx"].sha256 == hashes["mlp/onnx/mlp.onnx"]
    assert v2.models["mlp"].inputs == old.models["mlp"].inputs
    assert load_config(cfg, public_key=public_key_bytes(KEY)) == v2


def test_migrate_frozen_v0_file_straight_to_2(cfg: Path) -> None:
    cfg.parent.mkdir(parents=True)
    cfg.write_text(FROZEN_V0, encoding="utf-8")
    _write_model_files(cfg.parent, ["mlp/onnx/mlp.onnx", "mlp/cpu/mlp.pt"])
    config = migrate_configuration(cfg, 2, customer=Customer(3, "C"), signing_key=KEY)
    assert config.platform_version == 2 and config.customer is not None
    assert all(f.sha256 for f in config.models["mlp"].formats.values())


def test_frozen_v0_signature_is_still_valid() -> None:
    doc = json.loads(FROZEN_V0)
    assert base64.b64decode(doc["public_key"]) == public_key_bytes(KEY)


def test_migrate_same_version_is_a_no_op(cfg: Path) -> None:
    add(cfg, version=1)
    before = cfg.read_bytes()
    mtime = cfg.stat().st_mtime_ns
    config = migrate_configuration(cfg, 1, signing_key=KEY)
    assert config.platform_version == 1
    assert cfg.read_bytes() == before and cfg.stat().st_mtime_ns == mtime


def test_migrate_downgrade(cfg: Path) -> None:
    add(cfg, version=2)
    with pytest.raises(ConfigurationError, match="from platform version 2 down to 1"):
        migrate_configuration(cfg, 1, signing_key=KEY)


@pytest.mark.parametrize("version", [3, -1, "2", None])
def test_migrate_unknown_version(cfg: Path, version: object) -> None:
    add(cfg, version=0)
    with pytest.raises(InvalidArgumentError, match="version must be"):
        migrate_configuration(cfg, version, signing_key=KEY)  # type: ignore[arg-type]


def test_migrate_without_file(cfg: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no configuration file .* to migrate"):
        migrate_configuration(cfg, 2, signing_key=KEY)


# ----------------------------------------------------------------------------- customer


def test_update_customer(cfg: Path) -> None:
    add(cfg, customer=Customer(1, ""))
    config = update_customer(cfg, Customer(77, "Big Co"), signing_key=KEY)
    assert config.customer is not None and (config.customer.id, config.customer.name) == (
        77,
        "Big Co",
    )
    assert load_config(cfg).customer == config.customer
    add(cfg, "b", customer=Customer(77, "Big Co"))  # later models follow the new customer


def test_update_customer_on_v1_fails(cfg: Path) -> None:
    add(cfg, version=1)
    before = cfg.read_bytes()
    with pytest.raises(ConfigurationError, match="needs a platform version 2") as e:
        update_customer(cfg, Customer(5), signing_key=KEY)
    assert "migrate_configuration(2" in str(e.value)
    assert cfg.read_bytes() == before


def test_update_customer_without_file(cfg: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"no configuration file .* to update"):
        update_customer(cfg, Customer(5), signing_key=KEY)


def test_update_customer_type(cfg: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"must be a skprotect_pytorch\.Customer"):
        update_customer(cfg, {"id": 5}, signing_key=KEY)  # type: ignore[arg-type]
