"""``sklicense serve``'s check of ``--host``/``--port`` binds what uvicorn will bind.

It bound the first address the host resolved to, dual-stack: ``--host ::`` beside an IPv4
listener on the port was refused, though uvicorn with one worker (asyncio's ``create_server``,
IPv6-only sockets) listens there; and a host resolving to several addresses was accepted when
one of the others was in use, where uvicorn binds them all and exits 3.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from uvicorn.config import Config

from sklicense.cli import listen_problem


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6(), reason="needs IPv6 on the loopback")


@pytest.fixture
def ipv4_port() -> Iterator[int]:
    """A port that an IPv4 listener on every interface holds."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("0.0.0.0", 0))
        other.listen()
        yield other.getsockname()[1]


def _uvicorn_binds(host: str, port: int, workers: int) -> bool:
    """Whether uvicorn listens on ``host:port``: one worker binds in ``Server.startup`` with
    the event loop's ``create_server``, more in ``Config.bind_socket``."""
    if workers > 1:
        try:
            Config(app=None, host=host, port=port, workers=workers).bind_socket().close()
        except SystemExit:
            return False
        return True

    async def start() -> None:
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, host=host, port=port
        )
        server.close()

    try:
        asyncio.run(start())
    except OSError:
        return False
    return True


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # uvicorn's
@pytest.mark.parametrize(  # bind_socket exits without closing the socket it could not bind
    ("host", "workers"),
    [("::", 1), ("::", 2), ("0.0.0.0", 1), ("0.0.0.0", 2), ("::1", 1), ("::1", 2)],
)
def test_the_check_agrees_with_uvicorn(ipv4_port: int, host: str, workers: int) -> None:
    binds = _uvicorn_binds(host, ipv4_port, workers)
    assert (listen_problem(host, ipv4_port, workers) is None) is binds
    if (host, workers) == ("::", 1):
        assert binds  # the case the check refused


def test_every_address_of_the_host_is_checked(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dual.test`` resolves to 127.0.0.1 and ::1, and ::1 is in use."""
    resolve = socket.getaddrinfo

    def dual(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "dual.test":
            return resolve(host, port, *args, **kwargs)
        return [
            *resolve("127.0.0.1", port, *args, **kwargs),
            *resolve("::1", port, *args, **kwargs),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", dual)
    with socket.socket(socket.AF_INET6) as other:
        other.bind(("::1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = serve("--host", "dual.test", "--port", str(port))
    assert (result.exit_code, result.output) == (
        1,
        f"Error: cannot listen on dual.test (::1) port {port} (Address already in use): stop "
        "what uses that port, or pass another --port or --host\n",
    )
    assert serve.started == []
