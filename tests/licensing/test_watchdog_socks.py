"""The watchdog that bounds a request's whole exchange armed only on the connection event of a
direct (or HTTP proxy's) connection, ``connection.connect_tcp.complete``: through a SOCKS
proxy (``ALL_PROXY=socks5://...``, which the client takes once ``socksio`` is installed)
``httpcore`` names it ``socks.connect_tcp.complete``, so nothing was watched and a server
sending its headers a byte at a time held the runtime for hours again."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from skruntime.licensing.client import _Watchdog


class _Stream:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self._sock if name == "socket" else None


@pytest.mark.parametrize("event", ["connection.connect_tcp.complete", "socks.connect_tcp.complete"])
def test_the_watchdog_shuts_down_a_connection_through_a_socks_proxy_too(event: str) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        watchdog = _Watchdog(0.2)
        watchdog.trace(event, {"return_value": _Stream(ours)})
        theirs.settimeout(5)
        start = time.monotonic()
        assert theirs.recv(1) == b""  # shut down: the other end reads its end
        assert time.monotonic() - start < 4
        assert watchdog.fired
        watchdog.cancel()
