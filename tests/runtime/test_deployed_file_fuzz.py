"""Fuzzing the runtime's readers of deployed files (one MLP protected once, ONNX, TXT and LINUX).

Each test mutates one file of a deployed folder (bit flips, truncation, byte insertion, or
JSON-aware edits of the parsed JSON: wrong types, huge numbers, NaN, deep nesting, unicode,
extra and missing fields) and loads and runs the model. It either runs with the original
outputs (a mutation that changes nothing meaningful) or raises one of the documented errors
with a message naming the file. Signatures, seals and encryption are redone after a JSON-aware
edit (a fresh signing key, the key-params seal, the KEK) so that the edit reaches the field
checks behind them. ``parse_specs`` and ``range_problem`` are fuzzed directly as well."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.backends.inputs import (
    INPUTS_METADATA,
    parse_specs,
    range_problem,
    spec_ranges,
)
from skruntime.config import canonical_json, public_key_bytes, sha256_file
from skruntime.errors import (
    BackendError,
    ConfigurationError,
    InputError,
    IntegrityError,
    KeyFileError,
    ModelFileError,
    ModelNotFoundError,
)
from skruntime.keyfile import _params_sha256
from skruntime.mev import MEV_MAGIC, NONCE_SIZE, _aad

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
DOCUMENTED = (
    ConfigurationError,
    KeyFileError,
    ModelFileError,
    IntegrityError,
    BackendError,
    InputError,
    ModelNotFoundError,  # a valid configuration edited to hold no model "m"
)
X = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
CONFIG = {"TXT": "skconfig.json", "LINUX": "skrpl"}
MODEL = "m/onnx/m.onnx"
PARAMS = "m/onnx/key_params_m.json"
TXT_KEY = "m/onnx/key_vector_inv_m.txt"
MEV = "m/onnx/mev_m_onnx.bin"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Deployed:
    """The two deployed folders (``root / "TXT"``, ``root / "LINUX"``), their KEK and the
    model's outputs on :data:`X`."""

    root: Path
    kek: bytes
    expected: np.ndarray

    def kek_for(self, platform: str) -> bytes | None:
        return self.kek if platform == "LINUX" else None


@pytest.fixture(scope="module")
def deployed(module_workdir: Path) -> Deployed:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    protector = SkProtectorPyTorch(application_name="app")
    for platform in (EP.TXT, EP.LINUX):
        protector.protect_new_model(
            model,
            "m",
            [torch.from_numpy(X)],
            model_export_formats=EF.ONNX,
            deployment_platform=platform,
        )
    source = module_workdir / "outputs/app"
    for platform, other in (("TXT", "LINUX"), ("LINUX", "TXT")):
        folder = module_workdir / platform
        shutil.copytree(source, folder)
        (folder / CONFIG[other]).unlink()
        for name in (MEV,) if platform == "TXT" else (PARAMS, TXT_KEY):
            (folder / name).unlink()
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    return Deployed(module_workdir, protector.state.kek, expected)


@pytest.fixture
def scratch(deployed: Deployed) -> Iterator[Callable[[str], Path]]:
    """A fresh copy of a platform's deployed folder for each call (each hypothesis example)."""
    made: list[Path] = []

    def copy(platform: str) -> Path:
        parent = Path(tempfile.mkdtemp(dir=deployed.root))
        made.append(parent)
        return Path(shutil.copytree(deployed.root / platform, parent / "app"))

    yield copy
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def run_or_refuse(
    deployed: Deployed,
    folder: Path,
    platform: str,
    named: tuple[str, ...],
    *,
    same_outputs: bool = True,
) -> None:
    """Load and run the model: the original outputs (any outputs unless ``same_outputs``: the
    weights themselves were changed), or a documented error whose message names one of
    ``named`` (file names). Anything else fails the test."""
    try:
        with SkRuntime(folder, kek=deployed.kek_for(platform)) as rt:
            y = rt.load("m")(X)
    except DOCUMENTED as e:
        problem = f"{type(e).__name__} names none of {named}: {e}"
        assert any(name in str(e) for name in named), problem
        event(type(e).__name__)  # --hypothesis-show-statistics: how far the mutations reach
        return
    event("ran")
    if same_outputs:
        np.testing.assert_allclose(y, deployed.expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- mutations


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one bit flipped, cut short, or with bytes inserted or overwritten."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    junk = draw(st.binary(min_size=1, max_size=64))
    if kind == "insert":
        return data[:at] + junk + data[at:]
    return data[:at] + junk + data[at + len(junk) :]


DEEP, HUGE_INT, HUGE_FLOAT, LONE_SURROGATE = (
    "\x00deep\x00",
    "\x00huge_int\x00",
    "\x00huge_float\x00",
    "\x00surrogate\x00",
)
"""Placeholders for what ``json.dumps`` cannot write, replaced in the text by :func:`dumps`."""
_RAW = {
    json.dumps(DEEP): "[" * 100_000 + "]" * 100_000,
    json.dumps(HUGE_INT): "9" * 5000,
    json.dumps(HUGE_FLOAT): "1e999",
    json.dumps(LONE_SURROGATE): '"\\ud800"',
}

leaf_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 0, 2**31, 2**63, -(2**63) - 1, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "..", "/etc/passwd", "a/../b", "é", "\x00", "💥" * 5, "1" * 2000]),
    st.sampled_from([DEEP, HUGE_INT, HUGE_FLOAT, LONE_SURROGATE]),
)
json_values = st.recursive(
    leaf_values,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)


def dumps(value: Any) -> bytes:
    """JSON text of ``value`` with the placeholders replaced by what they stand for."""
    text = json.dumps(value, allow_nan=True)
    for placeholder, raw in _RAW.items():
        text = text.replace(placeholder, raw)
    return text.encode("utf-8")


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def json_mutations(draw: st.DrawFn, doc: Any) -> Any:
    """A copy of ``doc`` with one value replaced, one field or item removed, or a field
    added."""
    root = [json.loads(json.dumps(doc))]  # the document as item 0, so that it can be replaced
    path = (0, *draw(st.sampled_from(list(_paths(root[0])))))
    kind = draw(st.sampled_from(["replace", "remove", "add"]))
    if path == (0,) and kind == "remove":
        kind = "add"
    parent = root
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if kind == "remove":
        del parent[last]
    elif kind == "add" and isinstance(parent[last], dict):
        parent[last][draw(st.text(max_size=8))] = draw(json_values)
    elif kind == "add" and isinstance(parent[last], list):
        parent[last].append(draw(json_values))
    else:
        parent[last] = draw(json_values)
    return root[0]


def _sign(doc: dict) -> dict:
    """``doc`` (a configuration) signed again by a fresh key, when its payload can be signed."""
    try:
        payload = canonical_json(doc["payload"])
    except (KeyError, TypeError, ValueError):
        return doc
    key = Ed25519PrivateKey.generate()
    return doc | {
        "signature": base64.b64encode(key.sign(payload)).decode(),
        "public_key": base64.b64encode(public_key_bytes(key)).decode(),
    }


def write_config(folder: Path, platform: str, edit: Callable[[dict], Any]) -> None:
    """Apply ``edit`` to the configuration's document and write it signed again."""
    path = folder / CONFIG[platform]
    doc = json.loads(path.read_bytes())
    doc = edit(doc)
    if isinstance(doc, dict) and set(doc) >= {"payload", "signature", "public_key"}:
        doc = _sign(doc)
    path.write_bytes(dumps(doc))


def reseal_params(doc: Any) -> Any:
    """A key-params document with its ``params_sha256`` seal recomputed, where it can be."""
    if isinstance(doc, dict) and "params_sha256" in doc:
        try:
            return doc | {"params_sha256": _params_sha256(doc)}
        except (TypeError, ValueError):
            return doc
    return doc


def mev_plaintext(deployed: Deployed, data: bytes, sha256: str) -> bytes:
    nonce = data[len(MEV_MAGIC) : len(MEV_MAGIC) + NONCE_SIZE]
    return AESGCM(deployed.kek).decrypt(
        nonce, data[len(MEV_MAGIC) + NONCE_SIZE :], _aad("m", "onnx", sha256)
    )


def mev_bytes(deployed: Deployed, plaintext: bytes, sha256: str) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(deployed.kek).encrypt(nonce, plaintext, _aad("m", "onnx", sha256))
    return MEV_MAGIC + nonce + sealed


def redeploy_model(deployed: Deployed, folder: Path, platform: str, data: bytes) -> None:
    """Replace the model file with ``data`` and make every other file agree with it: the
    configuration's SHA-256 (signed again), the key-params file's model_sha256 (sealed again)
    or the encrypted key file's AAD (encrypted again)."""
    old = sha256_file(folder / MODEL)
    (folder / MODEL).write_bytes(data)
    new = sha256_file(folder / MODEL)

    def set_sha(doc: dict) -> dict:
        doc["payload"]["models"]["m"]["formats"]["onnx"]["sha256"] = new
        return doc

    write_config(folder, platform, set_sha)
    if platform == "TXT":
        params = json.loads((folder / PARAMS).read_bytes())
        params["model_sha256"] = [new]
        (folder / PARAMS).write_bytes(dumps(reseal_params(params)))
    else:
        plain = mev_plaintext(deployed, (folder / MEV).read_bytes(), old)
        (folder / MEV).write_bytes(mev_bytes(deployed, plain, new))


# --------------------------------------------------------------------------- whole files

PLATFORM = st.sampled_from(["TXT", "LINUX"])


@FUZZ
@given(data=st.data())
def test_bytes_of_the_configuration(deployed: Deployed, scratch, data: st.DataObject) -> None:
    platform = data.draw(PLATFORM)
    folder = scratch(platform)
    path = folder / CONFIG[platform]
    path.write_bytes(data.draw(byte_mutations(path.read_bytes())))
    run_or_refuse(deployed, folder, platform, (CONFIG[platform],))


@FUZZ
@given(data=st.data())
def test_json_of_the_configuration(deployed: Deployed, scratch, data: st.DataObject) -> None:
    """Signed again: the edit reaches the field checks. A valid edit may point the model at
    other files (its message names them) or change the inputs (InputError on the call)."""
    platform = data.draw(PLATFORM)
    folder = scratch(platform)
    write_config(folder, platform, lambda doc: data.draw(json_mutations(doc)))
    named = (CONFIG[platform], str(folder), "m.onnx", "input")
    run_or_refuse(deployed, folder, platform, named)


@FUZZ
@given(data=st.data())
def test_bytes_of_the_key_files(deployed: Deployed, scratch, data: st.DataObject) -> None:
    platform = data.draw(PLATFORM)
    folder = scratch(platform)
    name = MEV if platform == "LINUX" else data.draw(st.sampled_from([PARAMS, TXT_KEY]))
    path = folder / name
    path.write_bytes(data.draw(byte_mutations(path.read_bytes())))
    run_or_refuse(deployed, folder, platform, (Path(name).name,))


@FUZZ
@given(data=st.data())
def test_json_of_the_key_params_file(deployed: Deployed, scratch, data: st.DataObject) -> None:
    """Sealed again: the edit reaches the field checks. The seal is a plain SHA-256, so an
    edited share that is still valid makes another key and other outputs, unnoticed: only
    edits that leave the shares as they are must keep the outputs."""
    folder = scratch("TXT")
    path = folder / PARAMS
    params = json.loads(path.read_bytes())
    mutated = data.draw(json_mutations(params))
    path.write_bytes(dumps(reseal_params(mutated)))
    shares_kept = isinstance(mutated, dict) and all(
        mutated.get(share) == params[share]
        for share in ("perm_offsets", "u_exponents", "v_exponents")
    )
    named = (Path(PARAMS).name, Path(TXT_KEY).name, "key files")
    run_or_refuse(deployed, folder, "TXT", named, same_outputs=shares_kept)


@FUZZ
@given(data=st.data())
def test_header_of_the_encrypted_key_file(deployed: Deployed, scratch, data: st.DataObject) -> None:
    """Encrypted again with the KEK: the edit reaches the header checks."""
    folder = scratch("LINUX")
    path = folder / MEV
    sha = sha256_file(folder / MODEL)
    plain = mev_plaintext(deployed, path.read_bytes(), sha)
    size = int.from_bytes(plain[:4], "little")
    header, body = json.loads(plain[4 : 4 + size]), plain[4 + size :]
    if data.draw(st.booleans()):
        text = dumps(data.draw(json_mutations(header)))
    else:
        text = data.draw(byte_mutations(json.dumps(header).encode()))
    body_kept = data.draw(st.booleans())
    if not body_kept:  # another key, encrypted with the KEK: other outputs
        body = data.draw(byte_mutations(body))
    path.write_bytes(mev_bytes(deployed, len(text).to_bytes(4, "little") + text + body, sha))
    run_or_refuse(deployed, folder, "LINUX", (Path(MEV).name,), same_outputs=body_kept)


@FUZZ
@given(data=st.data())
def test_bytes_of_the_model_file(deployed: Deployed, scratch, data: st.DataObject) -> None:
    """As deployed (the SHA-256 refuses it), or with the other files made to agree so that
    onnxruntime parses it: then changed weights give other outputs."""
    platform = data.draw(PLATFORM)
    folder = scratch(platform)
    mutated = data.draw(byte_mutations((folder / MODEL).read_bytes()))
    agree = data.draw(st.booleans())
    if agree:
        redeploy_model(deployed, folder, platform, mutated)
    else:
        (folder / MODEL).write_bytes(mutated)
    run_or_refuse(deployed, folder, platform, ("m.onnx",), same_outputs=not agree)


@FUZZ
@given(data=st.data())
def test_input_record_of_the_model_file(deployed: Deployed, scratch, data: st.DataObject) -> None:
    """The ``skprotect.inputs`` metadata property replaced by generated JSON (or by an edit of
    the original), with the other files made to agree."""
    platform = data.draw(PLATFORM)
    folder = scratch(platform)
    proto = onnx.load_from_string((folder / MODEL).read_bytes())
    (prop,) = (p for p in proto.metadata_props if p.key == INPUTS_METADATA)
    if data.draw(st.booleans()):
        prop.value = dumps(data.draw(json_mutations(json.loads(prop.value)))).decode()
    else:
        prop.value = dumps(data.draw(input_records)).decode()
    redeploy_model(deployed, folder, platform, proto.SerializeToString())
    run_or_refuse(deployed, folder, platform, ("m.onnx", "input"))


# --------------------------------------------------------------------------- parse_specs

sizes = st.one_of(st.none(), st.integers(-2, 10), st.sampled_from([2**63, True]))
range_bounds = st.lists(st.one_of(st.none(), st.integers(-2, 10), json_values), max_size=3)
input_records = (
    st.lists(
        st.fixed_dictionaries(
            {"shape": st.one_of(st.lists(sizes, max_size=4), json_values)},
            optional={
                "dtype": st.one_of(st.sampled_from(["float32", "int64", "bfloat16"]), json_values),
                "name": json_values,
                "key": json_values,
                "ranges": st.one_of(
                    st.dictionaries(
                        st.one_of(
                            st.sampled_from(["0", "1", "2", "٣", "²", "01", "-1"]), st.text()
                        ),
                        range_bounds,
                        max_size=3,
                    ),
                    json_values,
                ),
            },
        ),
        max_size=3,
    )
    | json_values
)


@settings(max_examples=400, deadline=None)
@given(record=input_records, shape=st.lists(st.integers(0, 12), min_size=4, max_size=4))
def test_parse_specs_and_range_checks(record: Any, shape: list[int]) -> None:
    """Any record is parsed or refused with BackendError naming the file; a parsed one's
    ranges check any input of its rank without error."""
    try:
        specs, names, key_name = parse_specs(dumps(record).decode(), "f.onnx")
    except BackendError as e:
        assert "f.onnx" in str(e)
        return
    assert len(names) == len(specs)
    assert key_name is None or key_name in names
    for spec in specs:
        ranges = spec_ranges(spec)
        assert all(0 <= axis < len(spec["shape"]) for axis in ranges)
        problem = range_problem((shape * 2)[: len(spec["shape"])], ranges)
        assert problem is None or "on axis" in problem


# --------------------------------------------------------------------------- found by fuzzing


def test_an_input_record_nested_too_deeply_is_refused() -> None:
    """json.loads raised RecursionError, which escaped parse_specs (and load())."""
    with pytest.raises(BackendError, match=r"f\.onnx has unreadable skprotect\.inputs"):
        parse_specs("[" * 100_000 + "]" * 100_000, "f.onnx")


def test_a_key_params_file_nested_just_below_the_recursion_limit_is_refused(
    deployed: Deployed, scratch
) -> None:
    """A field nested a little less deeply than json.loads' limit parsed, and hashing it for the
    seal raised RecursionError out of load(). Which depths do depends on the stack, so every
    depth up to the limit is tried."""
    folder = scratch("TXT")
    path = folder / PARAMS
    text = json.dumps(json.loads(path.read_text()))
    for depth in range(700, 1000):
        path.write_text(text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}")
        with pytest.raises(KeyFileError, match=f"Key file {path} is corrupted"):
            SkRuntime(folder).load("m")


@pytest.mark.parametrize("platform", ["TXT", "LINUX"])
def test_a_configuration_listing_no_key_files_is_named(
    deployed: Deployed, scratch, platform: str
) -> None:
    folder = scratch(platform)

    def no_key_files(doc: dict) -> dict:
        doc["payload"]["models"]["m"]["formats"]["onnx"]["key_files"] = []
        return doc

    write_config(folder, platform, no_key_files)
    with pytest.raises(KeyFileError, match=f"The configuration {folder / CONFIG[platform]} lists"):
        SkRuntime(folder, kek=deployed.kek_for(platform)).load("m")


@pytest.mark.parametrize("platform", ["TXT", "LINUX"])
def test_a_model_file_whose_metadata_is_not_utf8_is_refused(
    deployed: Deployed, scratch, platform: str
) -> None:
    """onnxruntime loads it, and reading its metadata raised UnicodeDecodeError out of load()."""
    folder = scratch(platform)
    data = (folder / MODEL).read_bytes()
    assert data.count(b'"name": "input.1"}') == 1  # in the skprotect.inputs record only
    redeploy_model(deployed, folder, platform, data.replace(b'"input.1"}', b'"input\xff1"}'))
    with pytest.raises(BackendError, match=f"{folder / MODEL} holds .* not UTF-8 text"):
        SkRuntime(folder, kek=deployed.kek_for(platform)).load("m")
