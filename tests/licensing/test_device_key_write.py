"""The device key is written whole before it is linked into place: ``os.write`` may write less
than asked (a disk filling up), and a key cut short was linked as ``device.key``, which every
later start then refused as corrupted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from skruntime.licensing.identity import DeviceIdentity


def test_a_short_write_of_the_device_key_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls: list[int] = []

    def short_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[: max(len(data) // 2, 1)]))

    monkeypatch.setattr(os, "write", short_write)
    created = DeviceIdentity.load_or_create(tmp_path / "state")
    monkeypatch.undo()
    assert len(calls) > 1  # the write was cut short and completed
    assert DeviceIdentity.load_or_create(tmp_path / "state").device_id == created.device_id
