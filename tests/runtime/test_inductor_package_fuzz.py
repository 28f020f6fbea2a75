"""Damaged and tampered AOTInductor packages (``.pt2``) deployed for the runtime.

One MLP is protected once (``inductor_cpu``, TXT); each test changes a copy of its package (its
bytes, its zip entries, its metadata JSON, the input record in it) and makes the configuration
(signed again) and the key-params file (sealed again) agree with the new bytes, so that the
change reaches the runtime's reading of the package instead of the SHA-256 check. Loading and
running must then give the original outputs or a documented error naming the file, never a
crash, a file written outside torch's folder, or outputs computed from other bytes."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.runtime.test_deployed_file_fuzz import (
    byte_mutations,
    dumps,
    input_records,
    json_mutations,
    json_values,
    reseal_params,
    write_config,
)
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime
from skruntime.backends.inputs import INPUTS_METADATA
from skruntime.config import sha256_file
from skruntime.errors import BackendError, InputError, IntegrityError

EF = SkProtectorPyTorch.ExportFormat
FMT = "inductor_cpu"
MODEL = "m/cpu/m.pt2"
PARAMS = "m/cpu/key_params_m.json"
X = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Deployed:
    """The deployed TXT folder and the model's outputs on :data:`X`."""

    folder: Path
    expected: np.ndarray


@pytest.fixture(scope="module")
def deployed(module_workdir: Path) -> Deployed:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "m", [torch.from_numpy(X)], model_export_formats=EF.INDUCTOR_CPU
    )
    with torch.no_grad():
        expected = model(torch.from_numpy(X)).numpy()
    return Deployed(module_workdir / "outputs/app", expected)


@pytest.fixture
def scratch(deployed: Deployed) -> Iterator[Callable[[], Path]]:
    """A fresh copy of the deployed folder for each call (each hypothesis example)."""
    made: list[Path] = []

    def copy() -> Path:
        parent = Path(tempfile.mkdtemp(dir=deployed.folder.parent))
        made.append(parent)
        return Path(shutil.copytree(deployed.folder, parent / "app"))

    yield copy
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


def redeploy(folder: Path, data: bytes) -> None:
    """Replace the package with ``data``; sign its SHA-256 into the configuration again and
    seal it into the key-params file again."""
    (folder / MODEL).write_bytes(data)
    new = sha256_file(folder / MODEL)

    def set_sha(doc: dict) -> dict:
        doc["payload"]["models"]["m"]["formats"][FMT]["sha256"] = new
        return doc

    write_config(folder, "TXT", set_sha)
    params = json.loads((folder / PARAMS).read_bytes())
    params["model_sha256"] = [new]
    (folder / PARAMS).write_bytes(dumps(reseal_params(params)))


def outputs(folder: Path) -> np.ndarray:
    with SkRuntime(folder) as rt:
        return rt.load("m", FMT)(X)


def run_or_refuse(deployed: Deployed, folder: Path, *, also: tuple[type, ...] = ()) -> None:
    """Load and run the model (in a hypothesis example): the original outputs, or a
    BackendError naming the package (or one of ``also``)."""
    try:
        y = outputs(folder)
    except (BackendError, *also) as e:
        assert "m.pt2" in str(e) or isinstance(e, also), f"{type(e).__name__}: {e}"
        event(type(e).__name__)
        return
    event("ran")
    np.testing.assert_allclose(y, deployed.expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- archive editing


def entries(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def rezip(items: list[tuple[zipfile.ZipInfo | str, bytes]], **options: int) -> bytes:
    """An archive of ``items`` (stored unless ``compression`` is given; names may repeat)."""
    out = io.BytesIO()
    with (
        warnings.catch_warnings(action="ignore", category=UserWarning),  # "Duplicate name"
        zipfile.ZipFile(out, "w", options.get("compression", zipfile.ZIP_STORED)) as archive,
    ):
        for info, content in items:
            archive.writestr(info, content)
    return out.getvalue()


def with_metadata(data: bytes, text: bytes, which: str = "metadata.json") -> bytes:
    """The package with every entry whose name ends with ``which`` replaced by ``text``."""
    return rezip([(i, text if i.filename.endswith(which) else b) for i, b in entries(data)])


def metadata(data: bytes) -> dict:
    """The package's metadata, which its wrapper and kernel metadata files both hold."""
    texts = {i.filename: b for i, b in entries(data) if i.filename.endswith("metadata.json")}
    assert len(set(texts.values())) == 1, f"the metadata files differ or are missing: {texts}"
    return json.loads(next(iter(texts.values())))


def renamed(data: bytes, suffix: str, name: str) -> bytes:
    return rezip([(name if i.filename.endswith(suffix) else i, b) for i, b in entries(data)])


def without(data: bytes, suffix: str) -> bytes:
    return rezip([(i, b) for i, b in entries(data) if not i.filename.endswith(suffix)])


def flipped_in_library(data: bytes) -> bytes:
    """One bit of the compiled library's ELF header flipped (e_phnum), in place."""
    (info,) = [i for i, _ in entries(data) if i.filename.endswith(".so")]
    name_size, extra_size = struct.unpack_from("<HH", data, info.header_offset + 26)
    at = info.header_offset + 30 + name_size + extra_size + 0x38
    return data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1 :]


def declared_huge(data: bytes) -> bytes:
    """The metadata entry declaring 4 GiB once extracted (central directory and local header)."""
    out = bytearray(data)
    for info, _ in entries(data):
        if info.filename.endswith("wrapper_metadata.json"):
            struct.pack_into("<I", out, info.header_offset + 22, 0xFFFF_FFF0)
            central = out.index(b"PK\x01\x02")  # the entry's record in the central directory
            while not out[central + 46 :].startswith(info.filename.encode()):
                central = out.index(b"PK\x01\x02", central + 4)
            struct.pack_into("<I", out, central + 24, 0xFFFF_FFF0)
    return bytes(out)


def symlink_entry(data: bytes) -> bytes:
    items = []
    for info, content in entries(data):
        if info.filename.endswith("wrapper_metadata.json"):
            info = zipfile.ZipInfo(info.filename)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            content = b"/etc/passwd"
        items.append((info, content))
    return rezip(items)


def nested(data: bytes, depth: int) -> bytes:
    """Both metadata entries with a field nested ``depth`` levels deep."""
    text = json.dumps(metadata(data))[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    return with_metadata(data, text.encode())


def edited_metadata(data: bytes, tail: bytes) -> bytes:
    return with_metadata(data, json.dumps(metadata(data)).encode()[:-1] + tail)


OUTSIDE = Path(tempfile.gettempdir()) / f"skprotect-fuzz-outside-{os.getpid()}.so"
"""Where an entry named ``../../…`` would be extracted: a path only this process uses."""
SO = ".wrapper.so"
CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda d: b"", "is not a whole, undamaged package"),
    "truncated": (lambda d: d[: len(d) // 2], "is not a whole, undamaged package"),
    "last byte cut": (lambda d: d[:-1], "is not a whole, undamaged package"),
    "not a zip": (lambda d: b"\x7fELF" + d[4:], "is not a whole, undamaged package"),
    "bytes prepended": (lambda d: bytes(64) + d, "has 64 bytes that none of its entries"),
    "library bit flipped": (flipped_in_library, "Bad CRC-32 for file"),
    "library removed": (lambda d: without(d, SO), "torch could not load the AOTInductor"),
    "metadata removed": (
        lambda d: without(d, "kernel_metadata.json"),
        "torch could not load the AOTInductor",
    ),
    "entry outside the folder": (
        lambda d: renamed(d, SO, "archive/data/aotinductor/model/" + "../" * 16 + str(OUTSIDE)[1:]),
        "which torch would extract outside its folder",
    ),
    "absolute entry": (lambda d: renamed(d, SO, str(OUTSIDE)), "would extract outside"),
    "duplicate entry": (
        lambda d: rezip([*entries(d), *[(i.filename, b"{}") for i, _ in entries(d)[:1]]]),
        "two entries named",
    ),
    "symbolic link entry": (symlink_entry, "stored as a symbolic link"),
    "compressed entries": (
        lambda d: rezip([(i.filename, b) for i, b in entries(d)], compression=zipfile.ZIP_DEFLATED),
        "a compressed entry",
    ),
    "declared 4 GiB": (declared_huge, "declares 4294967280 bytes but stores"),
    "metadata nested 200,000 deep": (lambda d: nested(d, 200_000), "nested too deeply"),
    "metadata nested 2,000 deep": (lambda d: nested(d, 2_000), "nested too deeply"),
    "metadata not UTF-8": (lambda d: edited_metadata(d, b', "\xff": "a"}'), "is not UTF-8 JSON"),
    "metadata lone surrogate": (
        lambda d: edited_metadata(d, b', "x": "\\ud800"}'),
        "is not UTF-8 JSON",
    ),
    "metadata huge integer": (
        lambda d: edited_metadata(d, b', "x": ' + b"9" * 5000 + b"}"),
        "JSON",
    ),
    "metadata huge float": (
        lambda d: edited_metadata(d, b', "x": 1e999}'),
        "is not a JSON object of text values",
    ),
    "metadata value not text": (
        lambda d: edited_metadata(d, b', "x": {"a": "b"}}'),
        "is not a JSON object of text values",
    ),
    "metadata a list": (lambda d: with_metadata(d, b"[]"), "is not a JSON object of text values"),
    "record removed": (
        lambda d: with_metadata(d, b'{"AOTI_DEVICE_KEY": "cpu"}'),
        f"no {INPUTS_METADATA} metadata",
    ),
    "device key removed": (
        lambda d: with_metadata(d, json.dumps({INPUTS_METADATA: "[]"}).encode()),
        "torch could not load the AOTInductor",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_package_is_refused(deployed: Deployed, scratch, case: str) -> None:
    """Before the check torch wrote the renamed library outside its folder and ran it, ran a
    library with a flipped bit (no CRC check), inflated compressed entries to any size, and
    died of a segmentation fault on metadata nested 200,000 deep."""
    edit, message = CASES[case]
    folder = scratch()
    OUTSIDE.unlink(missing_ok=True)
    redeploy(folder, edit((folder / MODEL).read_bytes()))
    with pytest.raises(BackendError, match=r"m\.pt2") as raised:
        SkRuntime(folder).load("m", FMT)
    assert message in str(raised.value)
    assert not OUTSIDE.exists()


def test_harmless_archive_changes_keep_the_outputs(deployed: Deployed, scratch) -> None:
    """Entries torch's loader does not read (the sources, the archive's version files) may go,
    and the library may be renamed: the model still runs, with its outputs."""
    folder = scratch()
    data = (folder / MODEL).read_bytes()
    data = without(without(data, "archive_version"), ".wrapper.cpp")
    redeploy(folder, renamed(data, SO, "archive/data/aotinductor/model/renamed.so"))
    np.testing.assert_allclose(outputs(folder), deployed.expected, rtol=1e-4, atol=1e-5)


def test_a_link_to_the_package_loads_it(deployed: Deployed, scratch, tmp_path: Path) -> None:
    folder = scratch()
    target = tmp_path / "elsewhere.pt2"
    shutil.move(folder / MODEL, target)
    (folder / MODEL).symlink_to(target)
    np.testing.assert_allclose(outputs(folder), deployed.expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- fuzzing


@FUZZ
@given(data=st.data())
def test_bytes_of_the_package(deployed: Deployed, scratch, data: st.DataObject) -> None:
    """Any change to an entry's bytes fails its CRC; a change to the zip's own fields either
    changes nothing torch reads (same outputs) or is refused."""
    folder = scratch()
    redeploy(folder, data.draw(byte_mutations((folder / MODEL).read_bytes())))
    run_or_refuse(deployed, folder)


@FUZZ
@given(data=st.data())
def test_metadata_of_the_package(deployed: Deployed, scratch, data: st.DataObject) -> None:
    """One or both metadata entries replaced by generated JSON or an edit of the original; the
    input record in them too. An edited record may contradict the configuration (refused by
    load(): IntegrityError) or refuse the call's inputs (InputError)."""
    folder = scratch()
    original = (folder / MODEL).read_bytes()
    doc = metadata(original)
    kind = data.draw(st.sampled_from(["document", "record", "generated"]))
    if kind == "document":
        text = dumps(data.draw(json_mutations(doc)))
    elif kind == "record":
        record = data.draw(json_mutations(json.loads(doc[INPUTS_METADATA])) | input_records)
        text = dumps(doc | {INPUTS_METADATA: dumps(record).decode()})
    else:
        text = dumps(data.draw(json_values))
    which = data.draw(st.sampled_from(["metadata.json", "kernel_metadata.json"]))
    redeploy(folder, with_metadata(original, text, which))
    run_or_refuse(deployed, folder, also=(InputError, IntegrityError))
