"""TXT key files, KeyMaterial and session keys."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from skruntime.errors import KeyFileError
from skruntime.keyfile import (
    KeyMaterial,
    _params_sha256,
    key_params_filename,
    key_txt_filename,
    read_txt_keys,
    session_key,
    validate_spec,
    write_txt_keys,
)


def make_key(seed: int = 0, perm_sizes=(3, 5, 64), scale_sizes=(4, 64)):
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n).astype(np.float32) for n in perm_sizes]
    scales = [
        (rng.uniform(0.5, 2.0, n) * rng.choice([-1, 1], n)).astype(np.float32) for n in scale_sizes
    ]
    ones = [np.ones(n, np.float32) for n in scale_sizes]
    key = np.concatenate(perms + scales + ones).astype(np.float32)
    spec = {
        "length": int(key.size),
        "perm_sizes": list(perm_sizes),
        "scale_sizes": list(scale_sizes),
    }
    return key, spec


def split(key: np.ndarray, spec: dict):
    p = sum(spec["perm_sizes"])
    s = sum(spec["scale_sizes"])
    return key[:p], key[p : p + s], key[p + s :]


def moduli(spec: dict) -> np.ndarray:
    return np.repeat(spec["perm_sizes"], spec["perm_sizes"])


# ----------------------------------------------------------------------------- files


def test_an_unreadable_key_file_says_what_to_do(tmp_path: Path) -> None:
    """A folder where a key file belongs: the error gave errno's text and no way out."""
    key, spec = make_key()
    txt, _ = write_txt_keys(tmp_path, "mlp", key, spec, test_key=False, rng=np.random.default_rng())
    txt.unlink()
    txt.mkdir()
    with pytest.raises(KeyFileError) as e:
        read_txt_keys(tmp_path, "mlp")
    assert str(e.value) == (
        f"Key file {txt} is a folder, not a regular file: it cannot be read as a key. Replace "
        "it with the file the protector wrote (copy it from the protector's outputs/ folder), "
        "or re-protect the model."
    )


@pytest.mark.parametrize("test_key", [True, False], ids=["static", "shares"])
def test_round_trip(tmp_path: Path, test_key: bool) -> None:
    key, spec = make_key()
    paths = write_txt_keys(
        tmp_path, "mlp", key, spec, test_key=test_key, rng=np.random.default_rng(1)
    )
    assert [p.name for p in paths] == ["key_vector_inv_mlp.txt", "key_params_mlp.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    material = read_txt_keys(tmp_path, "mlp")
    assert material.static_key().tobytes() == key.tobytes()
    assert material.spec == spec


def test_static_txt_is_the_key_exactly(tmp_path: Path) -> None:
    key, spec = make_key()
    key[len(key) // 2] = np.float32(0.1)  # a value that needs the shortest-repr round trip
    txt, params = write_txt_keys(
        tmp_path, "m", key, spec, test_key=True, rng=np.random.default_rng()
    )
    lines = txt.read_text(encoding="ascii").split("\n")
    assert lines[-1] == ""
    values = np.array([np.float32(x) for x in lines[:-1]], dtype=np.float32)
    assert values.tobytes() == key.tobytes()
    assert lines[0] == str(np.float32(key[0]))
    doc = json.loads(params.read_text(encoding="utf-8"))
    assert doc["format"] == "skprotect-key-params"
    assert doc["version"] == 1
    assert doc["static"] is True
    assert doc["spec"] == spec
    assert "perm_offsets" not in doc


def test_txt_share_alone_is_not_the_key(tmp_path: Path) -> None:
    key, spec = make_key()
    txt, params = write_txt_keys(
        tmp_path, "m", key, spec, test_key=False, rng=np.random.default_rng(3)
    )
    share = np.array(txt.read_text(encoding="ascii").split(), dtype=np.float64).astype(np.float32)
    assert share.size == key.size
    p_share, u_share, v_share = split(share, spec)
    p_key, u_key, v_key = split(key, spec)
    assert not np.array_equal(np.mod(p_share, moduli(spec)), p_key)
    assert np.mean(np.mod(p_share, moduli(spec)) == p_key) < 0.5
    assert not np.array_equal(u_share * v_share, u_key * v_key)
    doc = json.loads(params.read_text(encoding="utf-8"))
    assert doc["static"] is False
    assert len(doc["perm_offsets"]) == sum(spec["perm_sizes"])
    # the json alone holds no key values at all
    assert set(doc) == {
        "format", "version", "model", "static", "spec", "txt_sha256", "params_sha256",
        "perm_offsets", "u_exponents", "v_exponents",
    }  # fmt: skip


def test_shares_are_reproducible_with_the_same_rng(tmp_path: Path) -> None:
    key, spec = make_key()
    a = write_txt_keys(tmp_path / "a", "m", key, spec, test_key=False, rng=np.random.default_rng(5))
    b = write_txt_keys(tmp_path / "b", "m", key, spec, test_key=False, rng=np.random.default_rng(5))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_empty_key(tmp_path: Path) -> None:
    spec = {"length": 0, "perm_sizes": [], "scale_sizes": []}
    write_txt_keys(
        tmp_path, "m", np.zeros(0, np.float32), spec, test_key=False, rng=np.random.default_rng()
    )
    material = read_txt_keys(tmp_path, "m")
    assert material.length == 0
    assert session_key(material).size == 0


def test_filenames() -> None:
    assert key_txt_filename("resnet") == "key_vector_inv_resnet.txt"
    assert key_params_filename("resnet") == "key_params_resnet.json"
    with pytest.raises(ValueError, match="model name must be"):
        key_txt_filename("../x")


# ----------------------------------------------------------------------------- malformed files


@pytest.fixture
def written(tmp_path: Path):
    key, spec = make_key()
    txt, params = write_txt_keys(
        tmp_path, "m", key, spec, test_key=False, rng=np.random.default_rng(0)
    )
    return tmp_path, txt, params


def _edit_json(path: Path, *, reseal: bool = True, **changes) -> None:
    """Change fields; ``reseal`` recomputes params_sha256, so that the checks after the seal
    (which also guard files written before it existed) are what is tested."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    for k, v in changes.items():
        if v is None:
            doc.pop(k)
        else:
            doc[k] = v
    if reseal and "params_sha256" in doc:
        doc["params_sha256"] = _params_sha256(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("field", ["perm_offsets", "u_exponents", "v_exponents", "static"])
def test_an_edited_share_is_refused_not_combined(written, field: str) -> None:
    """A changed exponent combined into a valid but wrong key: silently wrong outputs."""
    folder, _, params = written
    doc = json.loads(params.read_text(encoding="utf-8"))
    value = not doc[field] if field == "static" else [doc[field][0] + 1, *doc[field][1:]]
    _edit_json(params, reseal=False, **{field: value})
    with pytest.raises(
        KeyFileError, match=r"key_params_m\.json is corrupted: its content does not match its"
    ):
        read_txt_keys(folder, "m")


def test_a_nan_in_the_params_is_refused(written) -> None:
    folder, _, params = written
    text = params.read_text(encoding="utf-8").replace('"version": 1', '"version": NaN')
    params.write_text(text, encoding="utf-8")
    with pytest.raises(KeyFileError, match="does not match its params_sha256"):
        read_txt_keys(folder, "m")


def test_params_written_before_the_seal_are_read(written) -> None:
    folder, _, params = written
    sealed = read_txt_keys(folder, "m").static_key()
    _edit_json(params, params_sha256=None)
    assert np.array_equal(read_txt_keys(folder, "m").static_key(), sealed)


def test_missing_txt(written) -> None:
    folder, txt, _ = written
    txt.unlink()
    with pytest.raises(KeyFileError, match=r"key_vector_inv_m\.txt not found"):
        read_txt_keys(folder, "m")


def test_missing_json(written) -> None:
    folder, _, params = written
    params.unlink()
    with pytest.raises(KeyFileError, match=r"key_params_m\.json not found"):
        read_txt_keys(folder, "m")


def test_truncated_txt(written) -> None:
    folder, txt, _ = written
    lines = txt.read_text(encoding="ascii").splitlines()
    txt.write_text("\n".join(lines[:-3]) + "\n", encoding="ascii")
    with pytest.raises(KeyFileError, match=r"key_vector_inv_m.txt is corrupted: it has \d+ values"):
        read_txt_keys(folder, "m")


def test_non_number_in_txt(written) -> None:
    folder, txt, _ = written
    lines = txt.read_text(encoding="ascii").splitlines()
    lines[4] = "abc"
    txt.write_text("\n".join(lines) + "\n", encoding="ascii")
    with pytest.raises(KeyFileError, match="line 5 is not a number"):
        read_txt_keys(folder, "m")


def test_nan_in_txt(written) -> None:
    folder, txt, _ = written
    lines = txt.read_text(encoding="ascii").splitlines()
    lines[1] = "nan"
    txt.write_text("\n".join(lines) + "\n", encoding="ascii")
    with pytest.raises(KeyFileError, match="line 2 is not a finite float32"):
        read_txt_keys(folder, "m")


def test_binary_txt(written) -> None:
    folder, txt, _ = written
    txt.write_bytes(b"\xff\xfe")
    with pytest.raises(KeyFileError, match="is not ASCII text"):
        read_txt_keys(folder, "m")


def test_modified_txt_value(written) -> None:
    folder, txt, _ = written
    lines = txt.read_text(encoding="ascii").splitlines()
    lines[0] = str(float(lines[0]) + 1)
    txt.write_text("\n".join(lines) + "\n", encoding="ascii")
    with pytest.raises(KeyFileError, match="do not belong together"):
        read_txt_keys(folder, "m")


def test_swapped_txt_from_other_run(tmp_path: Path) -> None:
    key, spec = make_key()
    write_txt_keys(tmp_path / "a", "m", key, spec, test_key=False, rng=np.random.default_rng(1))
    write_txt_keys(tmp_path / "b", "m", key, spec, test_key=False, rng=np.random.default_rng(2))
    (tmp_path / "a" / "key_vector_inv_m.txt").write_bytes(
        (tmp_path / "b" / "key_vector_inv_m.txt").read_bytes()
    )
    with pytest.raises(KeyFileError, match="do not belong together"):
        read_txt_keys(tmp_path / "a", "m")


def test_key_files_of_another_protection_run_are_refused(tmp_path: Path) -> None:
    """The whole pair left from an earlier run beside a new model file: refused, by hash."""
    key, spec = make_key()
    old_model, new_model, other_format = "a" * 64, "b" * 64, "c" * 64
    write_txt_keys(
        tmp_path, "m", key, spec, test_key=False, rng=np.random.default_rng(1),
        model_sha256=[old_model, other_format],
    )  # fmt: skip
    assert read_txt_keys(tmp_path, "m", old_model).static_key().tobytes() == key.tobytes()
    assert read_txt_keys(tmp_path, "m", other_format).static_key().tobytes() == key.tobytes()
    with pytest.raises(KeyFileError, match="written for another protection of model 'm'"):
        read_txt_keys(tmp_path, "m", new_model)
    # files from before the hashes were recorded, and a reader that knows no hash: accepted
    params_path = tmp_path / "key_params_m.json"
    _edit_json(params_path, model_sha256=None)
    assert read_txt_keys(tmp_path, "m", new_model).static_key().tobytes() == key.tobytes()
    _edit_json(params_path, model_sha256=["not a digest"])
    with pytest.raises(KeyFileError, match="model_sha256 must be a list of SHA-256"):
        read_txt_keys(tmp_path, "m", new_model)


def test_json_not_json(written) -> None:
    folder, _, params = written
    params.write_text("{", encoding="utf-8")
    with pytest.raises(KeyFileError, match=r"key_params_m\.json is corrupted: it is not valid"):
        read_txt_keys(folder, "m")


def test_json_wrong_format(written) -> None:
    folder, _, params = written
    _edit_json(params, format="other")
    with pytest.raises(KeyFileError, match='not a "skprotect-key-params" file'):
        read_txt_keys(folder, "m")


def test_json_too_new(written) -> None:
    folder, _, params = written
    _edit_json(params, version=2)
    with pytest.raises(KeyFileError, match="has version 2; this skruntime reads version 1"):
        read_txt_keys(folder, "m")


def test_json_other_model(written) -> None:
    folder, _, params = written
    _edit_json(params, model="other")
    with pytest.raises(KeyFileError, match="belongs to model 'other', not 'm'"):
        read_txt_keys(folder, "m")


def test_json_bad_spec(written) -> None:
    folder, _, params = written
    doc = json.loads(params.read_text(encoding="utf-8"))
    _edit_json(params, spec=doc["spec"] | {"length": 1})
    with pytest.raises(KeyFileError, match="spec length must be"):
        read_txt_keys(folder, "m")


def test_json_truncated_offsets(written) -> None:
    folder, _, params = written
    doc = json.loads(params.read_text(encoding="utf-8"))
    _edit_json(params, perm_offsets=doc["perm_offsets"][:-1])
    with pytest.raises(KeyFileError, match=r"perm_offsets has \d+ entries, expected"):
        read_txt_keys(folder, "m")


def test_json_missing_exponents(written) -> None:
    folder, _, params = written
    _edit_json(params, u_exponents=None)
    with pytest.raises(KeyFileError, match="u_exponents must be a list of integers"):
        read_txt_keys(folder, "m")


def test_json_static_not_bool(written) -> None:
    folder, _, params = written
    _edit_json(params, static="yes")
    with pytest.raises(KeyFileError, match="static must be true or false"):
        read_txt_keys(folder, "m")


def test_modified_offsets_break_the_permutation(written) -> None:
    folder, _, params = written
    doc = json.loads(params.read_text(encoding="utf-8"))
    offsets = doc["perm_offsets"]
    offsets[0] += 1
    _edit_json(params, perm_offsets=offsets)
    with pytest.raises(KeyFileError, match="permutation slot 0 is not a permutation"):
        read_txt_keys(folder, "m")


# ----------------------------------------------------------------------------- KeyMaterial


def test_key_material_repr_hides_the_key() -> None:
    key, spec = make_key()
    material = KeyMaterial(key, spec, source="x.txt")
    text = repr(material) + str(material)
    assert "length=" in text
    for value in key[:10]:
        assert str(value) not in text.replace(f"length={key.size}", "")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(material)


def test_key_material_is_canonical_and_read_only() -> None:
    key, spec = make_key()
    s = session_key(KeyMaterial(key, spec), np.random.default_rng(0))
    material = KeyMaterial(s, spec)
    assert material.static_key().tobytes() == key.tobytes()
    out = material.static_key()
    out[0] = 99
    assert material.static_key()[0] == key[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda k: k.__setitem__(0, 0.5), "non-integer"),
        (lambda k: k.__setitem__(0, np.nan), "NaN or infinite"),
        (lambda k: k.__setitem__(1, k[0]), "slot 0 is not a permutation"),
        (lambda k: k.__setitem__(-1, 0.0), "finite and non-zero"),
        (lambda k: k.__setitem__(0, -1.0), "must be in [0,"),
    ],
)
def test_key_material_rejects_invalid_keys(mutate, message: str) -> None:
    key, spec = make_key()
    mutate(key)
    with pytest.raises(KeyFileError, match="Invalid key") as e:
        KeyMaterial(key, spec)
    assert message in str(e.value)


def test_validate_spec() -> None:
    assert validate_spec({"length": 4, "perm_sizes": [2], "scale_sizes": [1]})["length"] == 4
    with pytest.raises(ValueError, match="missing: scale_sizes"):
        validate_spec({"length": 4, "perm_sizes": [2]})
    with pytest.raises(ValueError, match="= 4, but got 5"):
        validate_spec({"length": 5, "perm_sizes": [2], "scale_sizes": [1]})


# ----------------------------------------------------------------------------- session keys


def test_session_keys_differ_but_decode_identically() -> None:
    key, spec = make_key(perm_sizes=(3, 5, 64, 1000), scale_sizes=(4, 64, 500))
    material = KeyMaterial(key, spec)
    p0, u0, v0 = split(key, spec)
    seen = set()
    for _ in range(5):
        s = session_key(material)
        assert s.dtype == np.float32 and s.shape == key.shape
        assert s.tobytes() != key.tobytes()
        seen.add(s.tobytes())
        p, u, v = split(s, spec)
        assert np.array_equal(np.mod(p, moduli(spec)).astype(np.float32), p0)
        assert np.all(p < 2**24) and np.all(p == np.round(p))
        assert ((u * v).view(np.uint32) == (u0 * v0).view(np.uint32)).all()
        assert not np.array_equal(u, u0)
    assert len(seen) == 5


def test_session_key_keeps_large_slots_exact() -> None:
    n = 300_000  # n * 63 would exceed 2**24: t is capped
    key, spec = make_key(perm_sizes=(n,), scale_sizes=(1,))
    s = session_key(KeyMaterial(key, spec), np.random.default_rng(0))
    assert np.all(s[:n] < 2**24)
    assert np.array_equal(np.mod(s[:n].astype(np.int64), n), key[:n].astype(np.int64))


def test_session_key_extreme_scales_stay_exact() -> None:
    spec = {"length": 6, "perm_sizes": [], "scale_sizes": [3]}
    key = np.array([3e38, 1e-37, 1.5, 1, 1, 1], dtype=np.float32)
    material = KeyMaterial(key, spec)
    for seed in range(20):
        s = session_key(material, np.random.default_rng(seed))
        assert np.all(np.isfinite(s))
        assert ((s[:3] * s[3:]).view(np.uint32) == key[:3].view(np.uint32)).all()


def test_session_key_with_torch_decoder() -> None:
    """The in-graph decoder (if torch is installed) gives identical perms and scales."""
    torch = pytest.importorskip("torch")
    from skprotect_pytorch.lock.key_layout import KeyDecoder

    key, spec = make_key()
    decoder = KeyDecoder(spec["perm_sizes"], spec["scale_sizes"])
    ref_p, ref_s = decoder(torch.from_numpy(key))
    s = session_key(KeyMaterial(key, spec))
    got_p, got_s = decoder(torch.from_numpy(s))
    for a, b in zip(ref_p, got_p, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ref_s, got_s, strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
