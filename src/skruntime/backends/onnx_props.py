"""An ONNX file's metadata properties, read without parsing its graph (torch-free: the runtime
reads a model file's input record with it before building its backend, the protector to compare
records).

``onnx.load(path, load_external_data=False)`` parses the whole file, weights included (they are
inside our files): reading the input record of a 200 MB model that way took 0.25-0.3 s and
+400 MiB of peak memory (the file's bytes and the parsed model). The properties are top-level
fields of the ``ModelProto`` message, so this reads the top-level fields' headers and seeks past
every other field: a few kilobytes read, whatever the model's size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto
_KEY, _VALUE = 1, 2  # StringStringEntryProto.key, .value
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5  # protobuf wire types
_TRUNCATED = "the file ends inside a field"


def _varint(read: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = read.read(1)
        if not byte:
            raise ValueError(_TRUNCATED)
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes: not a protobuf message")


def _fields(read: BinaryIO, end: int, wanted: set[int]) -> Iterator[tuple[int, bytes]]:
    """The length-delimited fields numbered in ``wanted`` of the message in ``read`` (up to
    offset ``end``), as ``(number, bytes)``; every other field is skipped with a seek."""
    while read.tell() < end:
        tag = _varint(read)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _varint(read)
        elif wire in (_FIXED64, _FIXED32):
            read.seek(8 if wire == _FIXED64 else 4, io.SEEK_CUR)
        elif wire == _LENGTH:
            length = _varint(read)
            if length > end - read.tell():  # a length up to 2**70 overflowed a seek, or read()
                raise ValueError(_TRUNCATED)  # tried to allocate it (MemoryError)
            if number not in wanted:
                read.seek(length, io.SEEK_CUR)
                continue
            data = read.read(length)
            if len(data) != length:
                raise ValueError(_TRUNCATED)
            yield number, data
        else:
            raise ValueError(f"wire type {wire} in a field header: not an ONNX model")
    if read.tell() > end:  # a seek past the end: the last field was cut short
        raise ValueError(_TRUNCATED)


def metadata_props(source: Path | bytes) -> dict[str, str]:
    """The metadata properties of the ONNX model at ``source``, a path or the file's bytes
    (the runtime's, read once), the first value of a key given twice. Raises ValueError when
    the file is not a protobuf message or ends inside a field (a truncated file), OSError when
    it cannot be read."""
    props: dict[str, str] = {}
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as read:
        size = read.seek(0, io.SEEK_END)
        read.seek(0)
        for _, entry in _fields(read, size, {_METADATA_PROPS}):
            parts = dict(_fields(io.BytesIO(entry), len(entry), {_KEY, _VALUE}))
            props.setdefault(parts.get(_KEY, b"").decode(), parts.get(_VALUE, b"").decode())
    return props
