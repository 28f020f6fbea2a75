"""The licence client checks each signature once. The server's signed answer to a licence
request was verified again by each reader (a renewal's licence or ``keep``: twice; a ``422``:
twice; each check also reading ``server_keys.json``), and a used-up licence waiting for
``retry_seconds`` read, and verified, the cached licence twice per refused call."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.licensing.test_client import DAY, Clock, FakeServer, make_client

from skruntime.errors import QuotaExhaustedError
from skruntime.licensing import protocol


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The signature checks made, by what is signed: ``answer`` (the server's answer to a
    device request) or ``licence`` (a licence document, from an answer or the cache)."""
    seen: Counter[str] = Counter()
    real = protocol.verify

    def counted(body: Any, signature: str, key: Any) -> bool:
        if "request_sha256" in body:
            seen["answer"] += 1
        elif "request_nonce" in body:
            seen["licence"] += 1
        return real(body, signature, key)

    monkeypatch.setattr(protocol, "verify", counted)
    return seen


def _answers(server: FakeServer) -> int:
    """The signed answers the server gave: one per device request (a POST)."""
    return sum(path != "/v1/public-key" for path in server.calls)


def test_each_answer_to_a_licence_request_is_verified_once(
    tmp_path: Path, checks: Counter[str]
) -> None:
    server, clock = FakeServer(duration=40 * DAY), Clock()
    client = make_client(server, tmp_path / "state", clock, overlap_seconds=30 * DAY)
    first = client.ensure_licence()
    assert (checks["answer"], _answers(server)) == (1, 1)
    server.contract_end = first.issued_at + 50 * DAY
    clock.t += 15 * DAY  # in the window: renewed, to the contract end
    renewed = client.ensure_licence()
    assert renewed.licence_id != first.licence_id
    assert (checks["answer"], _answers(server)) == (2, 2)
    clock.t += 6 * DAY  # in the window again: the server answers keep
    assert client.ensure_licence().licence_id == renewed.licence_id
    assert len(server.kept) == 1
    assert (checks["answer"], _answers(server)) == (3, 3)
    server.knows_renews = False
    clock.t += DAY  # the daily check, answered with a signed 422 about renews
    assert client.ensure_licence().licence_id == renewed.licence_id
    assert (checks["answer"], _answers(server)) == (4, 4)
    client.close()


def test_a_refused_call_on_a_used_up_licence_reads_the_cache_once(
    tmp_path: Path, checks: Counter[str]
) -> None:
    server, clock = FakeServer(quota=3), Clock()
    client = make_client(server, tmp_path / "state", clock, requested_inferences=3)
    client.consume(3)
    with pytest.raises(QuotaExhaustedError, match="grants no more"):
        client.consume(1)  # renewal denied: quota_exhausted
    asked = len(server.calls)
    for calls in range(1, 4):
        checks.clear()
        with pytest.raises(QuotaExhaustedError, match="Next attempt after"):
            client.consume(1)
        assert checks == {"licence": 1}, calls  # the cached licence, read once
    assert len(server.calls) == asked
    client.close()
