"""A process whose licence is used up and whose last renewal was refused less than
retry_seconds ago is told so at once (QuotaExhaustedError), even while another process holds
the renewal lock (renewing against a slow server, stopped, or a forked child that kept it):
consume() is on the inference path, and nothing is asked of the server before retry_seconds."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest
from tests.licensing.test_client import DAY, Clock, FakeServer, make_client

from skruntime.licensing.client import QuotaExhaustedError


def test_a_used_up_licence_fails_fast_while_another_process_renews(tmp_path: Path) -> None:
    clock, server = Clock(), FakeServer(duration=100 * DAY, quota=2)
    state = tmp_path / "state"
    client = make_client(server, state, clock, requested_inferences=2, persist_every=1)
    client.consume()
    client.consume()  # the allowance, and the server's quota, used up
    with pytest.raises(QuotaExhaustedError):
        client.consume()  # the renewal is denied: no retry before retry_seconds
    fd = os.open(state / ".renew_app.lock", os.O_RDWR)  # another process renewing
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(QuotaExhaustedError, match="granted no more at the last attempt"):
            client.consume()
        waited = time.monotonic() - start
    finally:
        os.close(fd)
    client.close()
    assert waited < 1.0, f"consume() waited {waited:.1f} s for the renewal lock"
