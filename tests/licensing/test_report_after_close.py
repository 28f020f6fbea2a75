"""``report_usage()`` of a closed client, whose report failed at ``close()`` (the server
unreachable then), raised ``httpx``'s ``RuntimeError`` ("Cannot send a request, as the client
has been closed") through the caller: now a ``LicenceError`` saying what to do, and the usage
stays pending for the next runtime of the state folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.licensing.test_client import Clock, FakeServer, make_client

from skruntime.errors import LicenceError


def test_report_usage_of_a_closed_client_is_a_licence_error(tmp_path: Path) -> None:
    server, clock, state = FakeServer(), Clock(), tmp_path / "state"
    client = make_client(server, state, clock)
    licence = client.ensure_licence()
    client.consume(2)
    server.up = False
    client.close()  # its report fails: kept
    server.up = True
    with pytest.raises(LicenceError, match=r"client is closed.*create a\s+new runtime"):
        client.report_usage()
    assert server.counters == {}
    other = make_client(server, state, clock)
    assert other.report_usage() is True
    assert server.counters == {licence.licence_id: 2}
    other.close()
