"""``sklicense serve`` refuses an address it cannot listen on in one ``Error:`` line, exit code 1,
before uvicorn starts: uvicorn logged these after starting and exited 3, and an empty ``--host``
(a shell variable left unset) listened on every interface instead of the loopback."""

from __future__ import annotations

import socket
from typing import Any


def test_an_empty_host_is_refused(serve: Any) -> None:
    result = serve("--host", "")
    assert (result.exit_code, result.output) == (
        1,
        "Error: --host is empty, which listens on every interface: pass an address, e.g. "
        "127.0.0.1 (the default), or 0.0.0.0 to listen on all IPv4 interfaces\n",
    )
    assert serve.started == []


def test_a_port_in_use_is_refused(serve: Any) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = serve("--port", str(port))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot listen on 127.0.0.1 port {port} (Address already in use): stop what "
        "uses that port, or pass another --port or --host\n"
    )
    assert serve.started == []


def test_a_host_that_does_not_resolve_is_refused(serve: Any) -> None:
    result = serve("--host", "sklicense.invalid")  # .invalid never resolves (RFC 2606)
    assert result.exit_code == 1
    assert result.output.startswith("Error: --host 'sklicense.invalid' cannot be resolved (")
    assert serve.started == []


def test_a_free_address_starts_the_server(serve: Any) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = serve("--port", str(port))
    assert result.exit_code == 0, result.output
    assert [(s["host"], s["port"]) for s in serve.started] == [("127.0.0.1", port)]
