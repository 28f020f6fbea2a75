"""Processes sharing a state folder: clock confirmations and the licence cache.

- A clock before the last time seen, with no licence to report on, is confirmed by a licence
  request, which draws an allowance. It was sent without the renewal lock: processes
  confirming together drew one allowance each. One process at a time asks now; the others
  take its licence, just issued within ``clock_tolerance`` of their clock (the server's word on
  the time), never a licence cached before they began (issued long ago, it may match a clock
  set back to then).
- A licence just issued was written over the cache unconditionally: a process that waited
  past the renewal lock's bound and renewed alone could write its licence over a newer one
  another process cached meanwhile, and processes starting afterwards took the older one. The
  cache now keeps the licence issued later (also one that expires no later: the contract end,
  or earlier: a contract shortened); a cached licence that does not verify with the pinned key
  is written over, whatever issue time it claims.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pytest
from tests.licensing.test_client import DAY, T0, Clock, FakeServer, make_client
from tests.licensing.test_concurrent_renewals import processes

from skruntime.errors import ClockRollbackError
from skruntime.licensing import protocol
from skruntime.licensing.identity import ensure_state_dir, write_private

JUMPED = T0 + 180 * DAY
"""The time in ``clock.json`` once the clock had jumped ahead."""


def jumped(state: Path) -> None:
    """A state folder whose clock once jumped 180 days ahead (no licence cached)."""
    ensure_state_dir(state)
    write_private(state / "clock.json", protocol.canonical_bytes({"last_seen": JUMPED}))


def last_seen(state: Path) -> int:
    return json.loads((state / "clock.json").read_text())["last_seen"]


def cached_issue_time(state: Path) -> int:
    return json.loads((state / "licence_app.json").read_text())["licence"]["issued_at"]


def test_processes_confirming_a_clock_together_draw_one_licence(tmp_path: Path) -> None:
    state = tmp_path / "state"
    jumped(state)
    clock, server = Clock(), FakeServer(duration=100 * DAY, quota=10**6)
    first, *others = processes(server, state, clock, count=3)
    waiting = [threading.Thread(target=other.ensure_licence) for other in others]

    def the_others_confirm_meanwhile() -> None:
        for thread in waiting:
            thread.start()
        time.sleep(0.5)  # they reach the renewal lock

    first.network.during = the_others_confirm_meanwhile
    licence = first.ensure_licence()
    for thread in waiting:
        thread.join()
    assert len(server.licence_requests) == 1  # before: 3, an allowance per process
    assert [other.ensure_licence() for other in others] == [licence, licence]
    assert last_seen(state) == T0
    for client in (first, *others):
        client.close()


def test_a_licence_cached_before_does_not_confirm_a_clock_set_back(tmp_path: Path) -> None:
    """The cached licence was issued at the time the clock was set back to: within tolerance
    of that clock, but long ago, so it proves nothing; the server refuses the request."""
    state = tmp_path / "state"
    clock, server = Clock(), FakeServer(duration=365 * DAY)
    old = make_client(server, state, clock)
    licence = old.ensure_licence()  # issued at T0, valid for a year
    clock.t = server.time = T0 + 200 * DAY
    assert old.ensure_licence() == licence  # the last time seen: 200 days on
    old.close()
    clock.t = T0  # set back to the licence's issue time, to use it again
    # a tolerance below the server's window: a licence request, not a usage report, confirms
    back = make_client(server, state, clock, clock_tolerance=10)
    with pytest.raises(ClockRollbackError, match=r"did not confirm this clock.*stale_request"):
        back.ensure_licence()
    assert last_seen(state) == T0 + 200 * DAY
    assert back._licence is None and cached_issue_time(state) == licence.issued_at
    back.close()


def test_a_licence_issued_beyond_the_tolerance_does_not_confirm_a_waiting_clock(
    tmp_path: Path,
) -> None:
    """A process whose clock is further back than the licence another one cached meanwhile
    asks the server itself, which refuses its clock."""
    state = tmp_path / "state"
    jumped(state)
    clock, server = Clock(), FakeServer(duration=100 * DAY)
    server.time = T0
    (first,) = processes(server, state, clock, count=1)
    behind = make_client(server, state, Clock(T0 - 10 * DAY), transport=first.network.transport())
    failed: list[BaseException] = []

    def confirm() -> None:
        try:
            behind.ensure_licence()
        except ClockRollbackError as e:
            failed.append(e)

    waiting = threading.Thread(target=confirm)

    def it_confirms_meanwhile() -> None:
        waiting.start()
        time.sleep(0.5)

    first.network.during = it_confirms_meanwhile
    first.ensure_licence()
    waiting.join()
    assert len(failed) == 1 and "stale_request" in str(failed[0])
    assert len(server.licence_requests) == 1  # the second was refused before it counted
    assert server.calls.count("/v1/licences") == 2
    first.close()
    behind.close()


def test_a_process_renewing_past_the_lock_bound_keeps_a_newer_cached_licence(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    clock, server = Clock(), FakeServer(duration=10 * DAY, quota=10**6)
    late, other = processes(server, state, clock)
    late.consume()
    other.consume()
    late._timeout = 0.2  # the renewal lock's bound is 3 x timeout: 0.6 s
    clock.t = T0 + 20 * DAY  # expired
    holder = os.open(state / ".renew_app.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a renewing process stopped, then resumed

    def the_other_renews_meanwhile() -> None:
        os.close(holder)
        clock.t += 60
        other.ensure_licence()  # issued a minute after the late process asked

    late.network.during = the_other_renews_meanwhile
    mine = late.ensure_licence()  # waited past the bound, renewed alone; answered last
    newer = other.ensure_licence()
    assert mine.issued_at == T0 + 20 * DAY and newer.issued_at == mine.issued_at + 60
    assert late.ensure_licence() == mine  # it goes on with its own
    assert cached_issue_time(state) == newer.issued_at  # before: the late process's older one
    assert make_client(server, state, clock).ensure_licence() == newer
    assert len(server.licence_requests) == 3
    late.close()
    other.close()


def test_a_licence_issued_later_is_cached_though_it_expires_earlier(tmp_path: Path) -> None:
    """A contract shortened: the renewal's licence ends earlier than the one it replaces."""
    state = tmp_path / "state"
    clock, server = Clock(), FakeServer(duration=100 * DAY)
    client = make_client(server, state, clock, overlap_seconds=30 * DAY)
    client.ensure_licence()
    server.contract_end = T0 + 80 * DAY
    clock.t = T0 + 75 * DAY  # in the renewal window
    renewed = client.ensure_licence()
    assert renewed.expires_at == T0 + 80 * DAY
    assert cached_issue_time(state) == T0 + 75 * DAY
    assert make_client(server, state, clock).ensure_licence() == renewed
    client.close()


def test_a_cached_licence_of_another_server_key_is_replaced(tmp_path: Path) -> None:
    """The server key rotated: the licence the old key signed claims a later issue time (its
    server's clock was ahead), but it is no licence for the key pinned now."""
    state = tmp_path / "state"
    clock, old_server, server = Clock(), FakeServer(), FakeServer()
    old_server.time = T0 + 200  # ahead, within the clock tolerance
    make_client(old_server, state, clock).ensure_licence()
    assert cached_issue_time(state) == T0 + 200
    licence = make_client(server, state, clock).ensure_licence()
    assert licence.issued_at == T0
    assert cached_issue_time(state) == T0
    assert make_client(server, state, clock).ensure_licence() == licence
    assert len(server.licence_requests) == 1
