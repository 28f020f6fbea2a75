"""A state folder that fills up while the server issues a licence, then takes writes again.

The licence the cache file could not take was used from memory by that process only, and
never cached afterwards: every process started later took the licence cached before it (used
up, or none) and drew another allowance. Measured on a 64 KiB tmpfs, allowances of 10: a
renewal issued on the full folder, 12 inferences run by two processes, 30 granted (before) and
20 (now); a first licence issued on it, 3 inferences, 20 granted (before) and 10 (now). Out of
inodes, the cache's lock file could not even be created, and the licence was lost at once.
Against the real server app, SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.licensing.server_helpers import device_client, make_application, make_customer

from sklicense import crud
from sklicense.models import Customer, Licence
from skruntime.errors import LicenceDeniedError, LicenceError
from skruntime.licensing.identity import _state_error
from skruntime.licensing.protocol import unb64


class Disk:
    """The state folder's disk: while ``full``, every state file write fails as ENOSPC does;
    ``out_of_inodes_at``: the lock file whose creation fails so (the inodes ran out just
    before; None: none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import skruntime.licensing.client as client_module

        self.full = False
        self.out_of_inodes_at: str | None = None
        real_write, real_lock = client_module.write_private, client_module.state_lock

        def write_private(path: Path, data: bytes) -> None:
            if self.full:
                raise _state_error(path, OSError(28, "No space left on device"))
            real_write(path, data)

        def state_lock(state_dir: Path, name: str = "state", **options: Any) -> Any:
            path = state_dir / f".{name}.lock"
            if name == self.out_of_inodes_at and not path.exists():
                raise _state_error(path, OSError(28, "No space left on device"))
            return real_lock(state_dir, name, **options)

        monkeypatch.setattr(client_module, "write_private", write_private)
        monkeypatch.setattr(client_module, "state_lock", state_lock)


def granted(sessions: Any) -> tuple[int, int]:
    """The customer's granted total and the number of licences issued."""
    with sessions() as session:
        total = session.get(Customer, 42).inferences_granted
        return total, len(session.scalars(select(Licence.id)).all())


@pytest.fixture
def device(client: Any, sessions: Any, clock: Any, tmp_path: Path) -> Any:
    """A new process's licence client on the device's state folder (allowances of 10)."""
    make_application(sessions)
    make_customer(sessions, inference_quota=1000)
    pinned = unb64(client.get("/v1/public-key").json()["public_key"])
    return lambda: device_client("http://testserver", client._transport, pinned, tmp_path, clock)


def test_a_renewal_issued_on_a_full_folder_is_cached_once_it_has_room(
    device, sessions, monkeypatch
) -> None:
    disk, first = Disk(monkeypatch), device()
    for _ in range(10):
        first.consume()
    disk.full = True
    full = pytest.raises(LicenceError, match="No space left on device")
    with pytest.warns(RuntimeWarning, match="used from memory"), full:
        first.consume()  # renewed, but its count cannot be saved: it does not run
    assert granted(sessions) == (20, 2)
    disk.full = False
    first.consume()
    renewal = first.ensure_licence()
    first.close()
    second = device()
    assert second.ensure_licence() == renewal  # before: the used-up licence, then a third
    second.consume()
    second.close()
    assert granted(sessions) == (20, 2)
    assert second.usage(renewal.licence_id) == {"counter": 2, "reported": 2}


def test_a_first_licence_issued_on_a_full_folder_is_cached_at_close(
    device, sessions, monkeypatch
) -> None:
    """No inference is counted once there is room: ``close()`` caches it."""
    disk, first = Disk(monkeypatch), device()
    first._now()  # the last time seen is saved: the licence request comes first
    disk.full = True
    full = pytest.raises(LicenceError, match=r"usage_demo-app\.json: No space left on device")
    with pytest.warns(RuntimeWarning, match="used from memory"), full:
        first.ensure_licence()  # its counter entry cannot be written
    licence = first.ensure_licence()
    disk.full = False
    first.close()
    second = device()
    assert second.ensure_licence() == licence
    second.consume()
    second.close()
    assert granted(sessions) == (10, 1)


def test_a_licence_whose_cache_lock_cannot_be_created_is_kept(
    device, sessions, monkeypatch
) -> None:
    """Out of inodes as the licence arrives: the cache's lock file cannot be created. Before,
    the licence was lost with a LicenceError and each call asked, and paid, for another
    (measured on a tmpfs: 30 granted for three calls, none usable, then 40 for 3 inferences)."""
    disk, first = Disk(monkeypatch), device()
    first._now()
    disk.out_of_inodes_at = "licence_demo-app"
    with pytest.warns(RuntimeWarning, match=r"licence_demo-app\.lock: No space left"):
        licence = first.ensure_licence()
    assert first.ensure_licence() == licence
    disk.out_of_inodes_at = None
    first.consume()
    first.close()
    assert device().ensure_licence() == licence
    assert granted(sessions) == (10, 1)


def test_a_licence_the_server_ended_meanwhile_is_not_cached(
    device, sessions, clock, monkeypatch, tmp_path: Path
) -> None:
    """The device is revoked before there is room: the licence dropped at its renewal is not
    written back for later processes to use."""
    disk, first = Disk(monkeypatch), device()
    first._now()
    disk.full = True
    with pytest.warns(RuntimeWarning), pytest.raises(LicenceError):
        first.ensure_licence()
    licence = first.ensure_licence()
    disk.full = False
    with sessions.begin() as session:
        crud.update_device(session, licence.device_id, "test", status="revoked")
    clock.now = licence.expires_at - 30  # inside the renewal window
    with pytest.raises(LicenceDeniedError, match="device_revoked"):
        first.ensure_licence()
    first.close()
    assert not (tmp_path / "licence_demo-app.json").exists()


def test_every_call_is_refused_while_the_last_time_seen_cannot_be_saved(
    device, sessions, clock, monkeypatch
) -> None:
    """``clock.json`` not saved for over a minute refuses inferences (a clock set back could
    not be told otherwise). The time was noted before the save: a failed save was not tried
    again in that second, and every other call in it ran."""
    disk, first = Disk(monkeypatch), device()
    first.consume()
    licence = first.ensure_licence()
    clock.now += 61
    disk.full = True
    for _ in range(3):  # one second: before, the first refused and the next two ran
        with pytest.raises(LicenceError, match=r"clock\.json: No space left on device"):
            first.consume()
    disk.full = False
    first.consume()
    first.close()
    assert first.usage(licence.licence_id) == {"counter": 2, "reported": 2}
