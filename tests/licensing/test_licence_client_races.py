"""Races between processes sharing a state folder, and the "signs" note of ``server_keys.json``.

- A process dropping the cached licence (the server ended it: ``device_revoked``,
  ``contract_ended``) did so without the licence lock that writers hold: a process noting a
  check of that licence (after a signed ``keep``) between its check that the cache still holds
  it and its write wrote the dropped licence back, for every process to use.
- The note that a server signs its answers was taken from usage receipts, denials and ``keep``
  only, not from the signed answer to a licence request (the first answer a device gets); and a
  runtime older than the note, rewriting ``server_keys.json`` without it, lost it for good in
  a process that had seen it (it noted once per process), while this runtime's writer dropped
  entries of the file it does not know.
- Two processes whose licence's allowance was used up together renewed once each: two
  allowances drawn, most of one wasted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import httpx
from tests.licensing.test_client import DAY, T0, URL, Clock, FakeServer, make_client
from tests.licensing.test_concurrent_renewals import processes

from skruntime.licensing import protocol
from skruntime.licensing.identity import write_private


def test_a_drop_is_not_undone_by_a_check_noted_meanwhile(tmp_path: Path) -> None:
    clock, server = Clock(), FakeServer()
    state = tmp_path / "state"
    ending, checking = make_client(server, state, clock), make_client(server, state, clock)
    licence = ending.ensure_licence()
    checking.ensure_licence()
    cached_id = checking._cached_licence_id
    drop = threading.Thread(target=ending._drop_cache)

    def dropped_between_check_and_write() -> str | None:
        found = cached_id()
        drop.start()
        drop.join(0.5)  # before: the drop ran at once, inside the other one's check and write
        return found

    checking._cached_licence_id = dropped_between_check_and_write
    checking._cache(licence, only_over=licence.licence_id)  # as after a signed keep
    drop.join(5)
    assert not drop.is_alive()
    assert not (state / "licence_app.json").exists()  # before: written back
    make_client(server, state, clock).ensure_licence()  # a new process asks the server
    assert len(server.licence_requests) == 2


def _notes(state: Path) -> dict[str, dict[str, str]]:
    return json.loads((state / "server_keys.json").read_text())


def test_a_signed_licence_answer_notes_that_the_server_signs(tmp_path: Path) -> None:
    clock, server = Clock(), FakeServer()
    state = tmp_path / "state"
    make_client(server, state, clock).ensure_licence()  # no usage report yet: nothing to send
    pinned = protocol.b64(server.public_key)
    assert _notes(state) == {"checked": {URL: pinned}, "signs": {URL: pinned}}


def test_a_licence_of_a_server_that_signs_no_answer_notes_nothing(tmp_path: Path) -> None:
    """Servers older than the signed answers sign their licences, not their answers."""
    clock, server = Clock(), FakeServer()
    server.signs = False
    state = tmp_path / "state"
    make_client(server, state, clock).ensure_licence()
    assert _notes(state) == {"checked": {URL: protocol.b64(server.public_key)}}


def test_a_note_an_older_runtime_dropped_still_holds_and_is_written_again(
    tmp_path: Path, caplog
) -> None:
    clock, server = Clock(), FakeServer(duration=100 * DAY)
    state = tmp_path / "state"
    client = make_client(server, state, clock, overlap_seconds=30 * DAY, persist_every=1)
    licence = client.ensure_licence()
    pinned = protocol.b64(server.public_key)
    # an older runtime rewrites the file without "signs"; a newer one added an entry of its own
    older = {"checked": {URL: pinned}, "newer": {"x": "y"}}
    write_private(state / "server_keys.json", protocol.canonical_bytes(older))
    clock.t = T0 + 75 * DAY  # in the renewal window: the renewal names the licence it renews
    error = {"type": "extra_forbidden", "loc": ["renews"], "msg": "Extra inputs"}
    server.answer = lambda request: httpx.Response(422, json={"detail": [error]})  # unsigned
    with caplog.at_level(logging.WARNING, logger="skruntime.licensing.client"):
        assert client.ensure_licence() == licence
    assert server.calls.count("/v1/licences") == 2  # before: 3, sent again without renews
    assert "Licence renewal failed" in caplog.text
    assert "does not know the renews field" not in caplog.text
    server.answer = None
    client.consume()
    assert client.report_usage()  # a signed receipt notes it again, keeping the other entry
    notes = _notes(state)
    assert notes["signs"] == {URL: pinned} and notes["newer"] == {"x": "y"}
    client.close()


def test_processes_using_up_a_licence_together_renew_once(tmp_path: Path) -> None:
    clock = Clock()
    server = FakeServer(duration=100 * DAY, quota=10**6)
    first, second = processes(server, tmp_path / "state", clock)
    for client in (first, second):
        client.requested_inferences = 4
        client.consume()
        client.consume()  # the first licence's 4, used up
    waiting = threading.Thread(target=second.consume)

    def second_uses_it_up_meanwhile() -> None:
        waiting.start()
        time.sleep(0.5)  # the second one reaches the renewal lock

    first.network.during = second_uses_it_up_meanwhile
    first.consume()
    waiting.join()
    assert len(server.licence_requests) == 2  # before: 3, a renewal per process
    renewed = first.ensure_licence()
    assert second.ensure_licence() == renewed
    first.close()
    second.close()
    assert server.counters[renewed.licence_id] == 2


def test_a_process_finding_the_renewed_licence_reserved_whole_renews_alone(
    tmp_path: Path,
) -> None:
    """Allowances smaller than ``persist_every`` are reserved whole by the process that renews
    them (before it lets the renewal lock go): the one that waited for that renewal finds
    nothing left and renews then, once, instead of failing or taking turns with the other."""
    clock = Clock()
    server = FakeServer(duration=100 * DAY, quota=10**6)
    first, second = processes(server, tmp_path / "state", clock)
    for client in (first, second):
        client.requested_inferences = 2
        client.persist_every = 5
    first.consume()  # the first licence's 2, reserved whole by the first process
    second.consume()  # so the second one renews: 2 more, reserved whole
    first.consume()  # the first one's reservation is used up
    waiting = threading.Thread(target=second.consume)

    def second_uses_up_meanwhile() -> None:
        second.consume()  # the second one's reservation: 1 left of 2
        waiting.start()
        time.sleep(0.5)

    first.network.during = second_uses_up_meanwhile
    first.consume()
    waiting.join()
    assert len(server.licence_requests) == 4  # each renewal needed: no allowance left over
    assert first.ensure_licence() != second.ensure_licence()
    first.close()
    second.close()
    # what ran: the last two licences reserved whole, 1 of each run and given back at close
    # (before 2026-12-07 reported whole, 2 and 2, by the other process's report)
    assert list(server.counters.values()) == [2, 2, 1, 1]
