"""Runtimes sharing one state folder share a licence's allowance and never exceed it, against a
real ``sklicense`` server (SQLite) on loopback: two clients in one process in a fixed order,
then four processes racing."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from tests.licensing.server_helpers import APP, CONFIG_SHA, make_application, make_customer

from sklicense import db
from sklicense.crypto import create_signing_key
from sklicense.embedded import EmbeddedServer
from sklicense.models import Customer, UsageReport
from sklicense.settings import Settings
from skruntime.errors import QuotaExhaustedError
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import unb64

CUSTOMER = 42
HOUR = 3600


class Live:
    """A running server with one customer, and the runtime-side options to reach it."""

    def __init__(self, server: EmbeddedServer, sessions: Any, public_key: bytes) -> None:
        self.server = server
        self.sessions = sessions
        self.public_key = public_key

    def options(self, state: Path, **kwargs: Any) -> dict[str, Any]:
        return {
            "server_url": self.server.url,
            "state_dir": str(state),
            "server_public_key": self.public_key,
            "application": APP,
            "customer_id": CUSTOMER,
            "models": ["model-a"],
            "config_sha256": CONFIG_SHA,
            "overlap_seconds": 60,  # renew only in the licence's last minute
        } | kwargs

    def granted(self) -> int:
        with self.sessions() as session:
            return session.get(Customer, CUSTOMER).inferences_granted

    def reported(self) -> dict[str, int]:
        """The highest counter reported per licence."""
        with self.sessions() as session:
            rows = session.execute(
                select(UsageReport.licence_id, func.max(UsageReport.counter)).group_by(
                    UsageReport.licence_id
                )
            )
            return {licence_id: counter for licence_id, counter in rows}


@pytest.fixture
def live(sqlite_url: str, tmp_path: Path) -> Iterator[Callable[[int], Live]]:
    """``live(quota, duration)``: start the server with a customer of that inference quota and
    licence duration (seconds)."""
    from tests.licensing.conftest import clean

    servers: list[EmbeddedServer] = []

    def start(quota: int, duration: int = HOUR) -> Live:
        clean(sqlite_url)
        create_signing_key(tmp_path / "server" / "server.key")
        settings = Settings(
            database_url=sqlite_url,
            state_dir=tmp_path / "server",
            licence_requests_per_minute=1000,
        )
        sessions = db.session_factory(sqlite_url)
        make_application(sessions)
        make_customer(
            sessions,
            id=CUSTOMER,
            inference_quota=quota,
            max_devices=10,
            default_licence_seconds=duration,
        )
        server = EmbeddedServer(settings).start()
        servers.append(server)
        public_key = unb64(httpx.get(f"{server.url}/v1/public-key").json()["public_key"])
        return Live(server, sessions, public_key)

    yield start
    for server in servers:
        server.stop()


def client(live: Live, state: Path, **kwargs: Any) -> LicenceClient:
    options = live.options(state, **kwargs)
    return LicenceClient(options.pop("server_url"), **options)


def run_until_exhausted(lc: LicenceClient) -> int:
    """Inferences counted until the quota is exhausted (bounded)."""
    for count in range(10_000):
        try:
            lc.consume()
        except QuotaExhaustedError:
            return count
    raise AssertionError("the quota was never exhausted")


def test_a_renewal_by_another_runtime_does_not_let_an_allowance_be_spent_twice(
    live, tmp_path
) -> None:
    """A counts under L1; B picks up the cached L1, finds it fully reserved, renews to L2 and
    closes (reporting L1). A must not count L1 again from 0: it runs out L1, then takes L2."""
    server = live(20)
    state = tmp_path / "device"
    a = client(server, state, requested_inferences=10)
    a.consume()  # L1, a block of 10 reserved
    l1 = a.ensure_licence()
    b = client(server, state, requested_inferences=10)
    b.consume()  # L1 is fully reserved by A: B renews to L2
    l2 = b.ensure_licence()
    assert l1.inferences == l2.inferences == 10 and l1.licence_id != l2.licence_id
    b.close()
    ran_by_a = 1 + run_until_exhausted(a)
    a.close()
    assert ran_by_a == 19  # 10 under L1, then the 9 that B left of L2
    assert ran_by_a + 1 <= 20
    assert server.granted() == 20
    assert server.reported() == {l1.licence_id: 10, l2.licence_id: 10}


def test_a_reported_entry_is_kept_while_its_licence_can_be_used(live, tmp_path) -> None:
    """B renews inside its window while A still counts under L1: B's report keeps L1's entry
    (reported, not expired, not used up), and A goes on from L1's count, not from 0."""
    server = live(100, duration=400)  # licences no longer than the overlap: renewed from 200 s
    state = tmp_path / "device"
    a = client(server, state, requested_inferences=10, persist_every=3)
    a.consume()
    a.consume()  # L1: 3 reserved, 2 run
    l1 = a.ensure_licence()
    later = lambda: time.time() + 250  # noqa: E731 (B's clock, within the server's window)
    # the server's next second: a renewal in L1's second would expire with it, and be "keep"
    time.sleep(1.01 - time.time() % 1)
    b = client(server, state, requested_inferences=10, overlap_seconds=2 * HOUR, clock=later)
    l2 = b.ensure_licence()  # past L1's half-life for B: renewed
    assert l2.licence_id != l1.licence_id
    b.close()
    entries = json.loads((state / f"usage_{APP}.json").read_text())["licences"]
    assert entries[l1.licence_id] == {
        "counter": 3,
        "reported": 1,  # A still runs: of its 3, the 2 it noted left at its write are not run
        "held": {a._holder.token: 2},
        "expires_at": l1.expires_at,
        "inferences": 10,
    }
    for _ in range(8):  # L1's remaining 8, counted on from 3
        a.consume()
        assert a.ensure_licence() == l1
    assert a.usage(l1.licence_id)["counter"] == 10
    a.consume()  # L1 is used up: A takes L2, which B renewed to
    assert a.ensure_licence() == l2
    a.close()
    assert server.reported() == {l1.licence_id: 10, l2.licence_id: 1}


def _count_in_a_process(options: dict[str, Any], start: Any, results: Any) -> None:
    """A runtime process: count inferences until the quota is exhausted, report the count."""
    lc = LicenceClient(options.pop("server_url"), **options)
    start.wait(30)
    ran = run_until_exhausted(lc)
    lc.close()
    results.put(ran)


def test_four_processes_on_one_state_folder_never_exceed_the_quota(live, tmp_path) -> None:
    quota = 60
    server = live(quota)
    state = tmp_path / "device"
    client(server, state).close()  # the identity, created once
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    options = server.options(state, requested_inferences=7, persist_every=2)
    processes = [
        context.Process(target=_count_in_a_process, args=(dict(options), start, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    start.set()
    counts = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert server.granted() == quota  # every process stopped on quota_exhausted
    assert sum(counts) <= quota
    # never under-reported; a block given back while another process's report of it was on
    # the network stays counted, so the reports may exceed what ran, never what was granted
    assert sum(counts) <= sum(server.reported().values()) <= quota
