"""Edges of the unanswered licence request (``pending_<application>.json``): a device clock
stepped back a little by NTP after the answers were lost, a pending file that is not owner-only
or not a file, and a state folder where the pending file's lock cannot be created. Against the
real server app."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.licensing.test_lost_answer_resent_later import granted, start

from skruntime.errors import LicenceUnavailableError


def test_a_clock_stepped_back_still_resends_the_request(client, sessions, clock, tmp_path) -> None:
    """NTP steps the device's clock back 5 s after every answer was lost: the request's
    timestamp is then 5 s ahead of the clock, well inside the server's ±300 s window."""
    device, slow, _ = start(client, sessions, clock, tmp_path / "device", late=3)
    with pytest.raises(LicenceUnavailableError):
        device.ensure_licence()
    clock.now -= 5
    assert device.ensure_licence().inferences == 10
    device.close()
    assert len(set(slow.nonces)) == 1  # one request, sent again
    assert granted(sessions) == (10, [10])


@pytest.mark.parametrize("kind", ["group-readable", "folder"])
def test_a_pending_file_that_cannot_be_used_is_replaced(
    client, sessions, clock, tmp_path, caplog, kind: str
) -> None:
    """Restored from a backup readable by others, or a folder in its place: ignored with a
    warning (it holds no secret: a request, its signature made again), as a malformed one is."""
    folder = tmp_path / "device"
    device, _, _ = start(client, sessions, clock, folder, late=0)
    pending = folder / "pending_demo-app.json"
    if kind == "folder":
        pending.mkdir(parents=True)
    else:
        pending.write_bytes(b"{}")
        pending.chmod(0o644)
    assert device.ensure_licence().inferences == 10
    device.close()
    assert "Ignoring" in caplog.text and str(pending) in caplog.text
    assert granted(sessions) == (10, [10])


@pytest.mark.parametrize("failure", ["unlink", "lock"])
def test_a_pending_file_that_cannot_be_removed_keeps_the_licence(
    client, sessions, clock, tmp_path, monkeypatch, caplog, failure: str
) -> None:
    """The state folder turns read-only (or full) while the request is on its way: the licence
    the server granted is used, not lost to a raw OSError or a LicenceError about the pending
    file's lock; the file stays, with a warning."""
    import skruntime.licensing.client as client_module
    from skruntime.errors import LicenceError

    folder = tmp_path / "device"
    device, slow, _ = start(client, sessions, clock, folder, late=0)
    real_unlink, real_lock = client_module.os.unlink, client_module.state_lock

    def unlink(path: object, *args: object, **kw: object) -> None:
        if Path(str(path)).name.startswith("pending_"):
            raise OSError(30, "Read-only file system", str(path))
        real_unlink(path, *args, **kw)

    def lock(state_dir: Path, name: str = "state", **kw: object):  # type: ignore[no-untyped-def]
        if name.startswith("pending_") and (folder / "pending_demo-app.json").exists():
            raise LicenceError(f"Cannot write {state_dir}/.{name}.lock: No space left on device.")
        return real_lock(state_dir, name, **kw)

    if failure == "unlink":
        monkeypatch.setattr(client_module.os, "unlink", unlink)
    else:
        monkeypatch.setattr(client_module, "state_lock", lock)
    licence = device.ensure_licence()
    assert device.ensure_licence() == licence and licence.inferences == 10
    assert "stays in" in caplog.text and (folder / "pending_demo-app.json").exists()
    monkeypatch.undo()
    device.close()
    assert len(slow.nonces) == 1 and granted(sessions) == (10, [10])
