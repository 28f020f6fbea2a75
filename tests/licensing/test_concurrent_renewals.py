"""Processes sharing a state folder whose licence falls due together renew it once.

Each renewal draws a new allowance from the customer's quota (an unused one is not given back).
Before, every process of the device that entered the renewal window or found its licence
expired while another one's renewal was in flight renewed too: with two processes, two
allowances were drawn and each process went on with its own licence, the rest of the other's
lost. Now one process at a time renews: one renewing a valid licence goes
on with it while another renews, and takes the new licence from the cache at its next call;
one without a valid licence waits for the other's renewal and takes its licence.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.licensing.test_client import DAY, T0, Clock, FakeServer, make_client


class InFlight:
    """The network to ``server``; ``during`` runs while a licence request is at the server."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.during: Any = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/licences" and self.during is not None:
            during, self.during = self.during, None
            during()
        return self.server.handle(request)


def processes(server: FakeServer, state: Path, clock: Clock, count: int = 2) -> list[Any]:
    network = InFlight(server)
    clients = [
        make_client(
            server,
            state,
            clock,
            transport=network.transport(),
            overlap_seconds=30 * DAY,
            requested_inferences=1000,
            persist_every=1,
        )
        for _ in range(count)
    ]
    for client in clients:
        client.network = network
    return clients


def test_processes_entering_the_renewal_window_together_renew_once(tmp_path) -> None:
    clock = Clock()
    server = FakeServer(duration=100 * DAY, quota=10**6)
    first, second = processes(server, tmp_path / "state", clock)
    first.consume()
    second.consume()
    clock.t = T0 + 75 * DAY  # in the window of both
    first.network.during = second.consume  # while the first one's renewal is in flight
    first.consume()
    assert len(server.licence_requests) == 2  # before: 3, a renewal per process
    renewed = first.ensure_licence()
    assert renewed.issued_at == T0 + 75 * DAY
    assert second.ensure_licence() == renewed  # taken from the cache, not renewed
    second.consume()
    assert len(server.licence_requests) == 2
    assert [lic["inferences"] for lic in server.issued.values()] == [1000, 1000]
    first.close()
    second.close()
    assert first.usage(renewed.licence_id) == {"counter": 2, "reported": 2}


def test_processes_whose_licence_expired_renew_once(tmp_path) -> None:
    clock = Clock()
    server = FakeServer(duration=10 * DAY, quota=10**6)
    first, second = processes(server, tmp_path / "state", clock)
    first.consume()
    second.consume()
    clock.t = T0 + 20 * DAY  # expired: the second one must wait for a licence
    waiting = threading.Thread(target=second.consume)

    def second_asks_meanwhile() -> None:
        waiting.start()
        time.sleep(0.5)  # the second one reaches the renewal lock

    first.network.during = second_asks_meanwhile
    first.consume()
    waiting.join()
    assert len(server.licence_requests) == 2  # before: 3
    assert second.ensure_licence() == first.ensure_licence()
    first.close()
    second.close()


def test_a_process_holding_the_renewal_lock_for_ever_delays_the_others_a_bounded_time(
    tmp_path,
) -> None:
    """A process stopped while it renews (SIGSTOP, a debugger), or a forked child that kept
    the lock, made every other process whose licence expired wait for ever; with the server
    down, each waiter waited for every failure before its own. The wait is now about one
    renewal's requests (3 x timeout), then the process renews alone."""
    clock = Clock()
    server = FakeServer(duration=10 * DAY, quota=10**6)
    (client,) = processes(server, tmp_path / "state", clock, count=1)
    client.consume()
    client._timeout = 0.2  # the bound is 3 x timeout: 0.6 s
    clock.t = T0 + 20 * DAY  # expired
    holder = os.open(tmp_path / "state" / ".renew_app.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: a process that never lets go
    renewing = threading.Thread(target=client.consume, daemon=True)
    try:
        start = time.monotonic()
        renewing.start()
        renewing.join(timeout=5)  # before: blocked until the holder let go
        waited = time.monotonic() - start
        assert not renewing.is_alive()
    finally:
        os.close(holder)
        renewing.join()
    assert 0.6 <= waited < 5
    assert len(server.licence_requests) == 2  # renewed alone after the wait
    client.close()
