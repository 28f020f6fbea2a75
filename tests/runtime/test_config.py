"""The configuration file format: round trips, golden bytes, one test per malformed input, fuzz."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skruntime import config as cfgmod
from skruntime.config import (
    CONFIG_FILENAMES,
    MAX_CONFIG_BYTES,
    SUPPORTED_PLATFORM_VERSIONS,
    Config,
    CustomerEntry,
    FormatEntry,
    InputSpec,
    ModelEntry,
    canonical_json,
    load_config,
    public_key_bytes,
    sha256_file,
    write_config,
)
from skruntime.errors import ConfigurationError, SkRuntimeError

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SHA = "ab" * 32


def make_entry(version: int = 1) -> ModelEntry:
    return ModelEntry(
        key_epoch=0,
        inputs=[
            {"name": "input.1", "shape": [2, 3], "dtype": "float32", "dynamic_dims": {"0": "b"}}
        ],
        outputs=[{"name": "output.1"}],
        key={"name": "sk_key", "length": 10},
        formats={
            "onnx": FormatEntry(
                group="onnx",
                file="mlp/onnx/mlp.onnx",
                key_files=["mlp/onnx/key_vector_inv_mlp.txt", "mlp/onnx/key_params_mlp.json"],
                sha256=SHA if version >= 1 else None,
            )
        },
    )


def make_config(version: int = 2, platform: str = "TXT") -> Config:
    return Config(
        platform_version=version,
        platform=platform,
        application="default_app",
        skprotect_version="0.3.0",
        models={"mlp": make_entry(version)},
        customer=CustomerEntry(7, "ACME") if version == 2 else None,
    )


def write_raw(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def signed_document(payload: object, key: Ed25519PrivateKey = KEY) -> dict:
    return {
        "format": "skprotect-config",
        "payload": payload,
        "signature": base64.b64encode(key.sign(canonical_json(payload))).decode(),
        "public_key": base64.b64encode(public_key_bytes(key)).decode(),
    }


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("version", SUPPORTED_PLATFORM_VERSIONS, ids=lambda v: f"v{v}")
@pytest.mark.parametrize("platform", ["TXT", "LINUX"])
def test_round_trip(tmp_path: Path, version: int, platform: str) -> None:
    path = tmp_path / CONFIG_FILENAMES[platform]
    config = make_config(version, platform)
    write_config(path, config, KEY)
    loaded = load_config(path, public_key=public_key_bytes(KEY))
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    assert Config.from_dict(config.to_dict()) == config


def test_config_filenames() -> None:
    assert CONFIG_FILENAMES == {"TXT": "skconfig.json", "LINUX": "skrpl"}
    assert SUPPORTED_PLATFORM_VERSIONS == (0, 1, 2)


def test_dynamic_dims_axis_keys_are_ints_in_python_and_strings_in_json() -> None:
    entry = make_entry()
    assert entry.inputs[0].dynamic_dims == {0: "b"}
    assert entry.to_dict()["inputs"][0]["dynamic_dims"] == {"0": "b"}


def test_format_entry_mutation_after_model_entry_does_not_leak() -> None:
    fmt = FormatEntry(group="onnx", file="m/onnx/m.onnx", sha256=SHA)
    entry = ModelEntry(0, [], [{"name": "y"}], {"name": "k", "length": 1}, {"onnx": fmt})
    fmt.key_files = ["../evil"]
    assert entry.formats["onnx"].key_files == ()


# ----------------------------------------------------------------------------- golden bytes


def test_canonical_json_golden_bytes() -> None:
    assert canonical_json({"b": 1, "a": ["é", {"d": 2, "c": None}]}) == (
        '{"a":["é",{"c":null,"d":2}],"b":1}'.encode()
    )


def test_payload_golden_bytes() -> None:
    payload = make_config(1).to_dict()
    assert canonical_json(payload) == (
        b'{"application":"default_app","models":{"mlp":{"formats":{"onnx":{"file":'
        b'"mlp/onnx/mlp.onnx","group":"onnx","key_files":["mlp/onnx/key_vector_inv_mlp.txt",'
        b'"mlp/onnx/key_params_mlp.json"],"sha256":"' + SHA.encode() + b'"}},"inputs":'
        b'[{"dtype":"float32","dynamic_dims":{"0":"b"},"name":"input.1","shape":[2,3]}],'
        b'"key":{"length":10,"name":"sk_key"},"key_epoch":0,"outputs":[{"name":"output.1"}]}},'
        b'"platform":"TXT","platform_version":1,"skprotect_version":"0.3.0"}'
    )


def test_file_layout_and_signature(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(2), KEY)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert list(doc) == ["format", "payload", "signature", "public_key"]
    assert doc["format"] == "skprotect-config"
    assert base64.b64decode(doc["public_key"]) == public_key_bytes(KEY)
    sig = base64.b64decode(doc["signature"])
    KEY.public_key().verify(sig, canonical_json(doc["payload"]))
    assert doc["payload"]["customer"] == {"id": 7, "name": "ACME"}
    # Ed25519 is deterministic: the same config and key give the same bytes.
    first = path.read_bytes()
    write_config(path, make_config(2), KEY)
    assert path.read_bytes() == first


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk_size=7) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- malformed input


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found") as e:
        load_config(tmp_path / "skconfig.json")
    assert "protect_new_model" in str(e.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_config(tmp_path)


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    with open(path, "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(ConfigurationError, match="too large") as e:
        load_config(path)
    assert str(MAX_CONFIG_BYTES) in str(e.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ConfigurationError, match="not valid UTF-8 JSON"):
        load_config(path)


def test_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    path.write_text('{"format": ', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not valid UTF-8 JSON"):
        load_config(path)


def test_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    path.write_text('{"format": "skprotect-config", "format": "x"}', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="duplicate key 'format'"):
        load_config(path)


def test_nan_constant(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    path.write_text('{"format": NaN}', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="NaN is not allowed"):
        load_config(path)


def test_deep_nesting(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    path.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not valid UTF-8 JSON"):
        load_config(path)


def test_huge_integer(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    path.write_text('{"format": ' + "9" * 5000 + "}", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not valid UTF-8 JSON"):
        load_config(path)


@pytest.mark.parametrize("document", [[], {"format": "other"}, {"payload": {}}])
def test_not_a_config(tmp_path: Path, document: object) -> None:
    with pytest.raises(ConfigurationError, match='expected "format": "skprotect-config"'):
        load_config(write_raw(tmp_path / "c.json", document))


def test_unsigned(tmp_path: Path) -> None:
    doc = signed_document(make_config(2).to_dict())
    del doc["signature"]
    with pytest.raises(ConfigurationError, match="missing: signature") as e:
        load_config(write_raw(tmp_path / "c.json", doc))
    assert "Unsigned" in str(e.value)


def test_unknown_top_level_field(tmp_path: Path) -> None:
    doc = signed_document(make_config(2).to_dict()) | {"extra": 1}
    with pytest.raises(ConfigurationError, match="unknown: extra"):
        load_config(write_raw(tmp_path / "c.json", doc))


def test_payload_not_object(tmp_path: Path) -> None:
    doc = signed_document(make_config(2).to_dict()) | {"payload": [1]}
    with pytest.raises(ConfigurationError, match="payload must be an object, but got list"):
        load_config(write_raw(tmp_path / "c.json", doc))


def test_bad_base64(tmp_path: Path) -> None:
    doc = signed_document(make_config(2).to_dict()) | {"signature": "***"}
    with pytest.raises(ConfigurationError, match="signature is not valid base64"):
        load_config(write_raw(tmp_path / "c.json", doc))


def test_signature_wrong_length(tmp_path: Path) -> None:
    doc = signed_document(make_config(2).to_dict()) | {"signature": "AAAA"}
    with pytest.raises(ConfigurationError, match="signature must be 64 bytes, but got 3"):
        load_config(write_raw(tmp_path / "c.json", doc))


def test_public_key_not_string(tmp_path: Path) -> None:
    doc = signed_document(make_config(2).to_dict()) | {"public_key": 5}
    with pytest.raises(ConfigurationError, match="public_key must be a base64 string"):
        load_config(write_raw(tmp_path / "c.json", doc))


def test_tampered_payload(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(2), KEY)
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["payload"]["customer"]["id"] = 8
    write_raw(path, doc)
    with pytest.raises(ConfigurationError, match="invalid signature") as e:
        load_config(path)
    assert "modified after protection" in str(e.value)


def test_tampered_signature(tmp_path: Path) -> None:
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(2), KEY)
    doc = json.loads(path.read_text(encoding="utf-8"))
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    write_raw(path, doc)
    with pytest.raises(ConfigurationError, match="invalid signature"):
        load_config(path)


def test_resigned_with_other_key_passes_unpinned_but_fails_pinned(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "c.json", signed_document(make_config(2).to_dict(), OTHER_KEY))
    assert load_config(path) == make_config(2)
    with pytest.raises(ConfigurationError, match="signed by a different key"):
        load_config(path, public_key=public_key_bytes(KEY))
    with pytest.raises(ConfigurationError, match="signed by a different key"):
        load_config(path, public_key=KEY.public_key())


def test_too_new_version(tmp_path: Path) -> None:
    payload = make_config(2).to_dict() | {"platform_version": 3, "new_field": 1}
    with pytest.raises(ConfigurationError, match="newer than this skruntime") as e:
        load_config(write_raw(tmp_path / "c.json", signed_document(payload)))
    assert "supported: 0, 1, 2" in str(e.value)
    assert "upgrade skruntime" in str(e.value)


def test_unknown_version(tmp_path: Path) -> None:
    payload = make_config(2).to_dict() | {"platform_version": -1}
    with pytest.raises(ConfigurationError, match=r"version -1 is unknown \(supported: 0, 1, 2\)"):
        load_config(write_raw(tmp_path / "c.json", signed_document(payload)))


def _payload_with(mutate) -> dict:
    payload = make_config(1).to_dict()
    mutate(payload)
    return payload


def _onnx(p: dict) -> dict:
    return p["models"]["mlp"]["formats"]["onnx"]


INVALID_PAYLOADS = {
    "missing_field": (lambda p: p.pop("application"), "missing the field(s) application"),
    "unknown_field": (lambda p: p.update(extra=1), "unknown field(s) extra"),
    "version_not_int": (
        lambda p: p.update(platform_version="1"),
        "platform_version must be an integer, but got str",
    ),
    "bad_platform": (lambda p: p.update(platform="WIN"), "platform must be one of TXT, LINUX"),
    "bad_model_name": (
        lambda p: p["models"].update({"../x": p["models"]["mlp"]}),
        "model name must be 1-128 characters",
    ),
    "path_traversal": (
        lambda p: _onnx(p).update(file="../../etc/passwd"),
        "format 'onnx' file must be a relative '/'-separated path",
    ),
    "absolute_key_file": (
        lambda p: _onnx(p).update(key_files=["/etc/key"]),
        "key_files[0] must be a relative",
    ),
    "missing_sha256_v1": (lambda p: _onnx(p).pop("sha256"), "sha256 is required from platform"),
    "bad_sha256": (lambda p: _onnx(p).update(sha256="XYZ"), "sha256 must be 64 lower-case hex"),
    "customer_in_v1": (
        lambda p: p.update(customer={"id": 1, "name": ""}),
        "customer requires platform version 2",
    ),
    "group_mismatch": (lambda p: _onnx(p).update(group="cpu"), "group must be 'onnx'"),
    "unknown_format": (
        lambda p: p["models"]["mlp"]["formats"].update(tflite=_onnx(p)),
        "format must be one of onnx",
    ),
    "bad_dtype": (
        lambda p: p["models"]["mlp"]["inputs"][0].update(dtype="float"),
        "dtype must be one of",
    ),
    "negative_shape": (
        lambda p: p["models"]["mlp"]["inputs"][0].update(shape=[-1, 3]),
        "shape[0] must be >= 0, but got -1",
    ),
    "dynamic_axis_out_of_range": (
        lambda p: p["models"]["mlp"]["inputs"][0].update(dynamic_dims={"5": "b"}),
        "dynamic_dims axis must be an axis of its 2-d shape",
    ),
    "bool_epoch": (
        lambda p: p["models"]["mlp"].update(key_epoch=True),
        "key_epoch must be an integer, but got bool",
    ),
    "key_length_negative": (
        lambda p: p["models"]["mlp"]["key"].update(length=-3),
        "key length must be >= 0",
    ),
    "no_formats": (lambda p: p["models"]["mlp"].update(formats={}), "at least one format"),
    "duplicate_input_names": (
        lambda p: p["models"]["mlp"]["key"].update(name="input.1"),
        "input names (key included) must be unique",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_PAYLOADS))
def test_invalid_payload(tmp_path: Path, case: str) -> None:
    mutate, message = INVALID_PAYLOADS[case]
    path = write_raw(tmp_path / "c.json", signed_document(_payload_with(mutate)))
    with pytest.raises(ConfigurationError) as e:
        load_config(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_customer_entry_equals_its_dict() -> None:
    assert CustomerEntry(7, "ACME") == {"id": 7, "name": "ACME"}
    assert CustomerEntry(7, "ACME") != {"id": 7, "name": "X"}
    assert CustomerEntry(7, "ACME") == CustomerEntry(7, "ACME")
    assert len({CustomerEntry(7, "ACME"), CustomerEntry(7, "ACME")}) == 1


def test_customer_required_in_v2() -> None:
    with pytest.raises(ConfigurationError, match="customer is required from platform version 2"):
        Config(2, "TXT", "app", "0.3.0", {"mlp": make_entry(1)})


def test_input_spec_validation() -> None:
    with pytest.raises(ConfigurationError, match="input 'x' dtype must be one of"):
        InputSpec("x", (1,), "torch.float32")


# ----------------------------------------------------------------------------- atomic writes


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_keeps_old_file_when_replace_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(1), KEY)
    before = path.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(cfgmod.os, "replace", failing_replace)
    with pytest.raises(ConfigurationError, match="previous file, if any, is unchanged"):
        write_config(path, make_config(2), KEY)
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_atomic_write_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(1), KEY)
    before = path.read_bytes()

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cfgmod.os, "write", full_disk)
    with pytest.raises(ConfigurationError, match="No space left on device") as e:
        write_config(path, make_config(2), KEY)
    assert "free disk space" in str(e.value)
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)
    assert load_config(path) == make_config(1)


def test_an_immutable_configuration_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """root's rename over a file marked immutable (``chattr +i``) fails with EPERM: the message
    named only the folder's permissions, which were fine."""
    path = tmp_path / "my app" / "skconfig.json"
    write_config(path, make_config(1), KEY)
    before = path.read_bytes()

    def immutable(src: str, dst: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(cfgmod.os, "replace", immutable)
    with pytest.raises(ConfigurationError) as e:
        write_config(path, make_config(2), KEY)
    assert f"lsattr -d '{path}' '{path.parent}'" in str(e.value)
    assert "chattr -i -a" in str(e.value) and "free disk space" not in str(e.value)
    assert path.read_bytes() == before and _no_temp_files(path.parent)


def test_atomic_write_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash (here KeyboardInterrupt) between fsync and replace leaves the old file."""
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(1), KEY)
    before = path.read_bytes()

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cfgmod.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_config(path, make_config(2), KEY)
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_write_creates_folder_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "outputs" / "app" / "skrpl"
    write_config(path, make_config(0, "LINUX"), KEY)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert load_config(path).platform == "LINUX"


def test_write_rejects_non_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="config must be a Config, but got dict"):
        write_config(tmp_path / "c.json", make_config(1).to_dict(), KEY)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fuzzing


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048))
def test_fuzz_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.json"
    path.write_bytes(data)
    with pytest.raises(ConfigurationError):
        load_config(path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _mutated_payload(draw_value: object, where: int) -> dict:
    payload = make_config(2).to_dict()
    targets = [
        (payload, "models"),
        (payload["models"]["mlp"], "inputs"),
        (payload["models"]["mlp"], "key"),
        (payload["models"]["mlp"]["formats"], "onnx"),
        (payload["models"]["mlp"]["formats"]["onnx"], "key_files"),
        (payload["models"]["mlp"]["inputs"][0], "dynamic_dims"),
        (payload, "customer"),
        (payload, "platform_version"),
    ]
    obj, key = targets[where % len(targets)]
    obj[key] = draw_value
    return payload


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=_json, where=st.integers(0, 7))
def test_fuzz_signed_structures(tmp_path: Path, value: object, where: int) -> None:
    """Signed but structurally random payloads: a Config or a ConfigurationError, nothing else."""
    path = write_raw(tmp_path / "fuzz.json", signed_document(_mutated_payload(value, where)))
    with contextlib.suppress(ConfigurationError):
        assert isinstance(load_config(path), Config)


# ----------------------------------------------------------------------------- no torch


def test_runtime_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; "
        "import skruntime, skruntime.config, skruntime.keyfile, skruntime.mev, skruntime.errors; "
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_error_hierarchy() -> None:
    from skruntime.errors import IntegrityError, KeyFileError, SkProtectError

    for error in (ConfigurationError, IntegrityError, KeyFileError):
        assert issubclass(error, SkRuntimeError)
        assert issubclass(error, SkProtectError)
