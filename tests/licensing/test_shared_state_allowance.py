"""Runtimes sharing a state folder reserve inferences by blocks; a usage report counted every
block reserved as run, those of runtimes still running included, and a block is never given
back below what was reported: two processes with blocks of 5 running one inference each and
closing in turn left 6 of a licence's 10 inferences to run (the rest lost for good). A report
now counts what runtimes still running hold as not run: each notes in the counter file what it
has left at each write, and holds a lock file while it runs (``skruntime.licensing.holders``);
what a killed runtime held counts as run, so a report may still over-count, never
under-count."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from tests.licensing.test_client import Clock, FakeServer, make_client

from skruntime.errors import LicenceError


def killed(client) -> int:
    """What the system does to a killed runtime's lock file: releases its lock. Returns what
    the runtime had reserved and not run, which now counts as run."""
    if client._holder._fd is not None:
        os.close(client._holder._fd)
        client._holder._fd = None
    return client._available


def test_processes_closing_in_turn_give_back_what_they_did_not_run(tmp_path: Path) -> None:
    server, clock, state = FakeServer(quota=10), Clock(), tmp_path / "state"
    a, b = (make_client(server, state, clock, persist_every=5) for _ in range(2))
    a.consume()
    b.consume()
    a.close()
    b.close()
    assert list(server.counters.values()) == [2]  # before: 6
    c = make_client(server, state, clock, persist_every=5)
    ran = 0
    with pytest.raises(LicenceError):
        for _ in range(20):
            c.consume()
            ran += 1
    assert ran == 8  # before: 4, the allowance of one licence, all of its 10 then run
    assert len(server.licence_requests) == 2  # the first licence, then the refused renewal


def test_a_killed_runtimes_reservation_counts_as_run(tmp_path: Path) -> None:
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    a, b = (make_client(server, state, clock, persist_every=5) for _ in range(2))
    a.consume()  # reserves 5
    killed(a)
    b.consume()
    b.close()
    assert list(server.counters.values()) == [6]  # a's whole block, never under the 2 run
    assert sorted(p.name for p in state.glob(".holder_*")) == []  # a's lock file swept


def test_a_running_runtimes_reservation_is_not_reported_and_reports_only_grow(
    tmp_path: Path,
) -> None:
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    a, b = (make_client(server, state, clock, persist_every=5) for _ in range(2))
    for _ in range(3):
        a.consume()  # one block of 5: 2 left, noted 4 left at its last write
    b.consume()
    b.close()  # a's noted 4 not run: its first inference and b's
    a.close()
    assert [r["counter"] for r in server.usage_requests] == [2, 4]  # exact once a closed


@pytest.mark.parametrize("seed", range(3))
def test_interleaved_runtimes_report_exactly_what_ran(tmp_path: Path, seed: int) -> None:
    """Four runtimes at a time, inferences in random turns, one closing now and then and a
    new one taking its place, one in twenty killed: reports never go back, and once all are
    closed they count exactly what ran, plus what the killed ones held."""
    rng = random.Random(seed)
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    runtimes = [make_client(server, state, clock, persist_every=7) for _ in range(4)]
    ran = lost = 0
    for _ in range(400):
        i = rng.randrange(4)
        if rng.random() < 0.9:
            runtimes[i].consume()
            ran += 1
            continue
        if rng.random() < 0.2:
            lost += killed(runtimes[i])
        else:
            runtimes[i].close()
        runtimes[i] = make_client(server, state, clock, persist_every=7)
    for runtime in runtimes:
        runtime.close()
    reported = [r["counter"] for r in server.usage_requests]
    assert reported == sorted(reported)
    assert list(server.counters.values()) == [ran + lost]
