"""Rotating the licence server's signing key without moving the devices to another URL: a
runtime pins the current key and the next (``server_public_key=[current, next]``), and keeps
running while the server's key is replaced under it. End to end, a real ``sklicense`` server
on one loopback port (SQLite and PostgreSQL), its key replaced between two runs.

Until 2026-12-07 a runtime pinned one key: after the swap its next licence request was
granted and charged, then refused ("does not verify with the pinned server public key"), so a
rotation needed a second server on another URL and every runtime shipped again with it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from tests.licensing.server_helpers import device_client, make_application, make_customer

from sklicense.crypto import create_signing_key, load_signing_key
from sklicense.embedded import EmbeddedServer, free_port
from sklicense.models import Customer, Device, UsageReport
from sklicense.settings import Settings
from skruntime.errors import LicenceError
from skruntime.licensing import protocol
from skruntime.licensing.client import Licence

QUOTA = 100


def public(key_file: Path) -> bytes:
    return load_signing_key(key_file).public_key().public_bytes_raw()


def signed_by(licence: Licence, key: bytes) -> bool:
    document = licence.document
    return protocol.verify(
        document["licence"], document["signature"], Ed25519PublicKey.from_public_bytes(key)
    )


def granted(sessions: Any) -> tuple[int, int]:
    """The inferences granted to customer 42 and the devices registered."""
    with sessions() as session:
        return (
            session.get(Customer, 42).inferences_granted,
            session.scalar(select(func.count()).select_from(Device)),
        )


def reported(sessions: Any) -> int:
    """The inferences the device reported, over all its licences."""
    with sessions() as session:
        latest = select(func.max(UsageReport.counter)).group_by(UsageReport.licence_id)
        return sum(session.scalars(latest))


def test_a_runtime_pinning_the_next_key_runs_across_the_rotation(
    settings: Settings, sessions: Any, tmp_path: Path
) -> None:
    make_application(sessions)
    make_customer(sessions, inference_quota=QUOTA)
    current = public(settings.key_path)
    create_signing_key(tmp_path / "next" / "server.key")
    upcoming = public(tmp_path / "next" / "server.key")
    rotated = Settings(database_url=settings.database_url, state_dir=tmp_path / "next")
    device, port = tmp_path / "device", free_port()

    def runtime(pins: list[bytes], folder: Path = device) -> Any:
        return device_client(server.url, None, pins, folder, time.time, requested_inferences=2)

    with EmbeddedServer(settings, port=port) as server, runtime([current, upcoming]) as lc:
        for _ in range(3):  # two licences of 2
            lc.consume()
        before = lc.ensure_licence()
    assert signed_by(before, current) and granted(sessions) == (4, 1)
    with EmbeddedServer(rotated, port=port) as server:  # same URL and database, the next key
        with runtime([current, upcoming]) as lc:
            assert lc.ensure_licence() == before  # cached, signed by the old key: still taken
            for _ in range(4):  # the rest of it (1), then licences signed by the new key
                lc.consume()
            after = lc.ensure_licence()
        assert signed_by(after, upcoming) and not signed_by(after, current)
        assert granted(sessions) == (8, 1)  # the same device, charged only what it was granted
        # a runtime still pinning only the old key is refused before it asks: nothing charged
        with runtime([current], tmp_path / "old-release") as lc, pytest.raises(LicenceError) as e:
            lc.ensure_licence()
        assert f"presents the public key {protocol.b64(upcoming)}" in str(e.value)
        assert granted(sessions) == (8, 1)
        # the release after the rotation pins the new key alone: the cached licence is its own
        with runtime([upcoming]) as lc:
            assert lc.ensure_licence() == after
            lc.consume()
    assert granted(sessions) == (8, 1) and reported(sessions) == 8  # every inference, once


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ([], "server_public_key must be one key or a list of 1 to 8 keys"),
        ([bytes(32)] * 9, "server_public_key must be one key or a list of 1 to 8 keys"),
        ([bytes(32), "AAAA"], "server_public_key[1] must be the licence server's raw 32-byte"),
        ({bytes(32)}, "but got a set: pass list(...) of the keys"),
        ((k for k in [bytes(32)]), "but got a generator: pass list(...) of the keys"),
    ],
    ids=["none", "nine", "text-second", "set", "generator"],
)
def test_pinned_keys_are_checked(tmp_path: Path, pins: Any, message: str) -> None:
    """Each refusal says what was given, and which key of the list is wrong."""
    with pytest.raises(LicenceError) as raised:
        device_client("http://127.0.0.1:9", None, pins, tmp_path, time.time)
    assert message in str(raised.value)
