"""A process's licence request was granted (licence L, 10 inferences), its answers lost;
another process of the device sent it again, got L, ran 5 inferences on it, and renewed it
while it was valid (its renewal window opens earlier). Its close() reported L and, with 65
other idle counter entries in the usage file (unused licences, valid after L), dropped L's,
the oldest: entries of replaced licences beyond 64 were dropped, partly used or not. The first
process's next request superseded the lost one, the server sent L again (valid, 5 of 10
reported), and that process counted it from 0: 15 inferences ran on L's allowance of 10. A
counter entry that counts inferences against an allowance is now kept until its licence
expires or is used up (of the others, the latest 64 stay). Against the real server app,
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.licensing.server_helpers import T0
from tests.licensing.test_lost_answer_resent_later import granted, start
from tests.licensing.test_resend_superseded import start_again

from sklicense import crud
from skruntime.errors import LicenceUnavailableError


def idle_entries(count: int, counter: int) -> dict[str, dict[str, int]]:
    """Reported counter entries of replaced licences of 10 inferences, valid after L."""
    return {
        f"idle-{i:02d}": {
            "counter": counter,
            "reported": counter,
            "expires_at": T0 + 7200 + i,
            "inferences": 10,
        }
        for i in range(count)
    }


def test_a_partly_used_licence_sent_again_is_counted_from_its_count(
    client, sessions, clock, tmp_path: Path
) -> None:
    folder = tmp_path / "device"
    first, slow, pinned = start(client, sessions, clock, folder, late=3)
    with sessions.begin() as session:  # licences of an hour
        crud.update_customer(session, 42, "test", default_licence_seconds=3600)
    with pytest.raises(LicenceUnavailableError):
        first.ensure_licence()  # granted L, every answer lost
    clock.now += 100
    other = start_again(slow, pinned, folder, clock)
    other.overlap_seconds = 600  # its renewal window opens at T0 + 3000
    lost = other.ensure_licence()  # the pending request sent again: L
    for _ in range(5):
        other.consume()
    usage = folder / "usage_demo-app.json"
    entries = json.loads(usage.read_text())["licences"] | idle_entries(65, 0)
    usage.write_text(json.dumps({"licences": entries}))
    clock.now = T0 + 3005
    assert other.ensure_licence() != lost  # renewed while valid, 5 of 10 used
    other.close()  # L reported, idle: 66 idle entries
    kept = json.loads(usage.read_text())["licences"]
    ran: dict[str, int] = {}
    for _ in range(25):  # the renewal's 10, then L sent again for the lost request
        first.consume()
        ran[first._licence.licence_id] = ran.get(first._licence.licence_id, 0) + 1
    first.close()
    assert ran[lost.licence_id] == 5  # 10 in all, with the other process's 5 (before: 10)
    assert granted(sessions) == (30, [10, 10, 10])
    assert kept[lost.licence_id] == {
        "counter": 5,
        "reported": 5,
        "expires_at": lost.expires_at,
        "inferences": 10,
    }
    assert len(kept) == 1 + 1 + 64 and "idle-00" not in kept  # the latest 64 unused ones
