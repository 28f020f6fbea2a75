"""A damaged model file records no inputs (:func:`~skruntime.backends.inputs.recorded_inputs`
is None), whatever the damage: the runtime reads a TXT-keyed model file's record before building
its backend (:func:`~skruntime.backends.inputs.recorded_commitment`, on files whose SHA-256 the
configuration does not record: platform version 0), and the protector the record of a file
already at its output path, so each raised another error than the one promised.

In an ONNX file a field length past the end (up to 2**70, a varint of 10 bytes) raised
``OverflowError`` from the seek past the field, or ``MemoryError`` from reading it, where
``ValueError`` is promised; in an archive, a damaged member raised ``zlib.error``, one
compressed or encrypted in a way ``zipfile`` cannot read ``NotImplementedError`` or
``RuntimeError``, an AOTInductor metadata file not holding an object ``AttributeError`` or
``TypeError``."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest

from skruntime.backends.inputs import recorded_commitment, recorded_inputs
from skruntime.backends.onnx_props import metadata_props

GRAPH, METADATA_PROPS = 7, 14  # ModelProto fields
LENGTH = 2  # the wire type of a length-delimited field


def field_of_length(number: int, length: int) -> bytes:
    """The header of a length-delimited field ``number`` claiming ``length`` bytes, then 10."""
    header, rest = bytearray([number << 3 | LENGTH]), length
    while rest >= 0x80:
        header.append(rest & 0x7F | 0x80)
        rest >>= 7
    return bytes([*header, rest]) + b"x" * 10


@pytest.mark.parametrize("number", [GRAPH, METADATA_PROPS], ids=["skipped", "read"])
@pytest.mark.parametrize("length", [2**56, 2**63, 2**69], ids=["2**56", "2**63", "2**69"])
def test_a_length_past_the_end_is_a_damaged_file(tmp_path: Path, number: int, length: int):
    data = field_of_length(number, length)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    for source in (data, path):  # the runtime's bytes, the protector's path
        with pytest.raises(ValueError, match="the file ends inside a field"):
            metadata_props(source)
        assert recorded_inputs(source) is None
        assert recorded_commitment(source) is None


def archive(member: str, content: bytes, method: int = zipfile.ZIP_STORED) -> bytearray:
    """A zip archive of one ``member`` holding ``content``, as TorchScript and AOTInductor
    write theirs (``method``: the member's compression)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as written:
        written.writestr(member, content)
    return bytearray(buffer.getvalue())


def with_header_field(data: bytearray, local: int, central: int, value: int) -> bytes:
    """``data`` with the 2-byte field at offset ``local`` of the member's local header and at
    ``central`` of its central directory entry set to ``value``."""
    for offset in (local, data.find(b"PK\x01\x02") + central):
        data[offset : offset + 2] = struct.pack("<H", value)
    return bytes(data)


RECORD = json.dumps([{"name": "x", "key_commitment": "0" * 64}]).encode() * 4
TORCHSCRIPT_RECORD = "m/extra/skprotect.inputs"


def damaged_deflate() -> bytes:
    data = archive(TORCHSCRIPT_RECORD, RECORD, zipfile.ZIP_DEFLATED)
    start = data.find(TORCHSCRIPT_RECORD.encode()) + len(TORCHSCRIPT_RECORD)
    data[start : start + 8] = b"\xff" * 8
    return bytes(data)


@pytest.mark.parametrize(
    "make",
    [
        damaged_deflate,  # zlib.error
        lambda: with_header_field(archive(TORCHSCRIPT_RECORD, RECORD), 8, 10, 99),  # method 99
        lambda: with_header_field(archive(TORCHSCRIPT_RECORD, RECORD), 6, 8, 1),  # encrypted
        lambda: bytes(archive("m/x_metadata.json", b"[1, 2]")),  # AttributeError
        lambda: bytes(archive("m/x_metadata.json", b'{"skprotect.inputs": 3}')),  # TypeError
    ],
    ids=["damaged member", "unknown compression", "encrypted", "list", "number"],
)
def test_a_damaged_archive_records_nothing(make) -> None:
    """A damaged or unreadable archive member raised zlib's, zipfile's or json's own error
    where "records none" (None) was promised."""
    assert recorded_inputs(make()) is None


@pytest.mark.parametrize("commitment", [5, ["0" * 64], "not hex", "A" * 64])
def test_a_malformed_commitment_is_none(commitment: object) -> None:
    """The record is read unchecked: a commitment that is not 64 hex digits was returned as it
    was (a number, a list), and the runtime compared TXT key files with it, refusing them as
    edited (KeyFileError) where the backend refuses the damaged record (BackendError)."""
    record = json.dumps([{"name": "key_vector", "key_commitment": commitment}]).encode()
    assert recorded_commitment(bytes(archive(TORCHSCRIPT_RECORD, record))) is None
