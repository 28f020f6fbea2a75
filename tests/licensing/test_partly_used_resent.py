"""A process's licence request was granted (licence L, 10 inferences), its answers lost;
another process of the device sent it again, got L, ran 5 inferences on it, and renewed it
while it was valid (its renewal window opens earlier). Its close() reported L and, with 65
other idle counter entries in the usage file (unused licences, valid after L), dropped L's,
the oldest: entries of replaced licences beyond 64 were dropped, partly used or not. The first
process's next request superseded the lost one, the server sent L again (valid, 5 of 10
reported), and that process counted it from 0: 15 inferences ran on L's allowance of 10. Of
the entries of replaced licences, those that count inferences against an allowance are now
kept first (64 in all, the file's bound). Against the real server app, SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.licensing.server_helpers import APP, CONFIG_SHA, T0
from tests.licensing.test_lost_answer_resent_later import granted, start
from tests.licensing.test_resend_superseded import start_again

from sklicense import crud
from sklicense.models import Licence
from skruntime.errors import LicenceUnavailableError
from skruntime.licensing.client import LicenceClient


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
    assert len(kept) == 1 + 64 and not {"idle-00", "idle-01"} & set(kept)  # L, 63 unused


def test_the_usage_file_keeps_64_replaced_licences_partly_used_ones_first(
    client, sessions, clock, tmp_path: Path
) -> None:
    """Processes of two model sets started in turn, each taking a licence of a week and running
    one inference: every partly used licence's entry stayed (80 after 80 starts; 200 after 200,
    33 hours). Now the 64 latest of the replaced ones stay, with the current licence's."""
    folder = tmp_path / "device"
    _, slow, pinned = start(client, sessions, clock, folder, late=0)
    with sessions.begin() as session:
        crud.update_customer(session, 42, "test", inference_quota=10_000)
    for start_number in range(80):
        models = ["model-a"] if start_number % 2 else ["model-b"]
        process = LicenceClient(
            "http://testserver",
            state_dir=folder,
            server_public_key=pinned,
            application=APP,
            customer_id=42,
            models=models,
            config_sha256=CONFIG_SHA,
            clock=clock,
            transport=slow,
            persist_every=1,
            requested_inferences=10,
        )
        process.consume()
        process.close()
        clock.now += 600
    with sessions() as session:
        issued = list(session.scalars(select(Licence.id).order_by(Licence.issued_at)))
    kept = json.loads((folder / "usage_demo-app.json").read_text())["licences"]
    assert len(issued) == 80
    assert set(kept) == set(issued[-65:])
    assert {entry["counter"] for entry in kept.values()} == {1}
