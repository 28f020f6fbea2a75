"""Runtimes sharing a state folder reserve inferences by blocks; a usage report counted every
block reserved as run, those of runtimes still running included, and a block is never given
back below what was reported: two processes with blocks of 5 running one inference each and
closing in turn left 6 of a licence's 10 inferences to run (the rest lost for good). A report
now counts what runtimes still running hold as not run: each notes in the counter file what it
has left at each write, and holds a lock file while it runs (``skruntime.licensing.holders``);
what a killed runtime held counts as run, so a report may still over-count, never
under-count."""

from __future__ import annotations

import contextlib
import os
import random
import threading
from pathlib import Path

import pytest
from tests.licensing.test_client import Clock, FakeServer, make_client

from skruntime.errors import LicenceError
from skruntime.licensing import holders


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


def test_a_sweep_between_a_lock_files_creation_and_its_lock_does_not_end_its_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime of another application sweeps the lock files under its own counter lock, not
    this one's: a sweep just after a lock file's creation removed it before it was locked, and
    its runtime then counted as ended for good (its unused block lost, as before 2026-12-07)."""
    server, clock, state = FakeServer(quota=10), Clock(), tmp_path / "state"
    a, b = (make_client(server, state, clock, persist_every=5) for _ in range(2))
    real_open, swept = holders.os.open, []

    def open_then_sweep(path, flags, *mode):
        fd = real_open(path, flags, *mode)
        if flags & os.O_CREAT and a._holder.token in str(path) and not swept:
            swept.append(path)
            holders.sweep(state)  # the other application's report
        return fd

    monkeypatch.setattr(holders.os, "open", open_then_sweep)
    a.consume()
    monkeypatch.setattr(holders.os, "open", real_open)
    assert swept and holders.running(state, a._holder.token)
    b.consume()
    b.close()
    a.close()
    assert list(server.counters.values()) == [2]  # before: 6, a's 4 unused counted as run


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_keep_a_killed_runtime_running(tmp_path: Path) -> None:
    """A child forked by a runtime (a multiprocessing worker) shared its lock: a runtime killed
    while the child lived still looked running, and its reservation, all of it run, was not
    reported (2 of 6); the child's close() removed the runtime's lock file."""
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    a = make_client(server, state, clock, persist_every=5)
    for _ in range(5):
        a.consume()  # noted 4 left at its write; all 5 ran
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.read(read, 1)
        os._exit(0)
    try:
        killed(a)
        b = make_client(server, state, clock, persist_every=5)
        b.consume()
        b.close()
        assert list(server.counters.values()) == [6]  # before: 2 while the child lived
    finally:
        os.write(write, b"x")
        os.waitpid(child, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_run_its_parents_reservation(tmp_path: Path) -> None:
    """A forked child inherited the reservation in memory and ran it as the parent did: a
    licence of 5 ran 9 (the parent's 5, the child's 4 of the parent's block)."""
    server, clock, state = FakeServer(quota=5), Clock(), tmp_path / "state"
    a = make_client(server, state, clock, persist_every=5)
    a.consume()  # reserves the whole licence: 4 left
    server.deny = ("quota_exceeded", "no more")  # no other licence
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        ran = 0
        with contextlib.suppress(LicenceError):
            for _ in range(4):
                a.consume()
                ran += 1
        os.write(write, bytes([ran]))
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 1) == b"\x00"  # before: 4, of the parent's reservation
    for _ in range(4):
        a.consume()


def test_the_lock_files_of_runtimes_killed_noting_nothing_are_swept(tmp_path: Path) -> None:
    """A runtime killed while it noted nothing (its block used up at its write) left its lock
    file for good: sweeps ran only when a report dropped a killed runtime's note."""
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    for _ in range(3):
        runtime = make_client(server, state, clock, persist_every=5)
        runtime.consume(5)  # nothing left, so nothing noted
        killed(runtime)
    b = make_client(server, state, clock, persist_every=5)
    b.consume()
    b.close()
    assert list(state.glob(".holder_*")) == []  # before: 3


def test_a_counter_file_naming_a_path_as_a_runtime_is_refused(tmp_path: Path) -> None:
    """The notes' tokens name lock files of the state folder: a note naming ``../x`` (or a
    FIFO, which a look at its lock would block on) is a malformed counter file."""
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    a = make_client(server, state, clock, persist_every=5)
    a.consume()
    path = state / "usage_app.json"
    text = path.read_text().replace(a._holder.token, "../../fifo0000000")
    os.chmod(path, 0o600)
    path.write_text(text)
    with pytest.raises(LicenceError, match="reservations of licence"):
        make_client(server, state, clock, persist_every=5).consume()


def test_a_fifo_in_place_of_a_lock_file_does_not_stop_a_report(tmp_path: Path) -> None:
    """Opening a FIFO waits for a writer: a look at a lock file made a FIFO by the device's
    owner would have stopped every report of the state folder."""
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    a = make_client(server, state, clock, persist_every=5)
    a.consume()
    os.mkfifo(state / ".holder_0123456789abcdef.lock")
    closing = threading.Thread(target=a.close, daemon=True)  # before: waited for ever
    closing.start()
    closing.join(60)
    assert not closing.is_alive()
    assert list(server.counters.values()) == [1]
