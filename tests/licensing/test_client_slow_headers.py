"""A server (or a proxy) that sends its answer's headers a byte at a time, each within the
client's ``timeout``, kept ``ensure_licence()`` (a load, an inference that renews, ``close()``)
waiting for hours: ``httpx`` bounds each read, not the whole answer, and the runtime bounded
only the body after the headers. Now the whole exchange is bounded to 4 timeouts, and a
server this slow is an unreachable one (``LicenceUnavailableError``). The watchdog shuts down
the connection a request opens, so every request asks for its connection to be closed after
the answer: a ``transport=`` given to the client keeps connections alive whatever the client's
own limits, and a request on a kept connection opened none and was not watched."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from skruntime.errors import LicenceUnavailableError
from skruntime.licensing.client import LicenceClient

KEY = b"k" * 32


def _drip(connection: socket.socket, stop: threading.Event) -> None:
    """Answer with a status line, then a header byte every 0.1 s until ``stop``."""
    connection.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.1):
        connection.sendall(b"X")


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], str]]:
    """Starts a local server whose connections ``serve(connection, stop)`` answers; its URL."""
    stop = threading.Event()
    listeners: list[socket.socket] = []

    def start(serve: Callable[[socket.socket, threading.Event], None]) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def handle(connection: socket.socket) -> None:
            with connection, contextlib.suppress(OSError):
                serve(connection, stop)

        def accept() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=handle, args=(connection,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stop.set()
    for listener in listeners:
        listener.close()


def _unreachable_within_5_s(url: str, tmp_path: Path, **options: Any) -> BaseException:
    """``ensure_licence()`` of a client of ``url`` (timeout 0.5 s), which must raise
    :class:`LicenceUnavailableError` within 5 s; the error."""
    client = LicenceClient(
        url,
        state_dir=tmp_path / "state",
        server_public_key=KEY,
        application="app",
        customer_id=7,
        models=["net"],
        config_sha256="ab" * 32,
        timeout=0.5,
        **options,
    )
    client.resend_delays = ()
    raised: list[BaseException] = []

    def ask() -> None:
        try:
            client.ensure_licence()
        except BaseException as e:
            raised.append(e)

    start = time.monotonic()
    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(15)
    assert not asking.is_alive(), "ensure_licence() still waits for the headers after 15 s"
    assert time.monotonic() - start < 5
    assert len(raised) == 1 and isinstance(raised[0], LicenceUnavailableError), raised
    return raised[0]


def test_headers_sent_a_byte_at_a_time_are_an_unreachable_server(server, tmp_path) -> None:
    def serve(connection: socket.socket, stop: threading.Event) -> None:
        connection.recv(65536)
        _drip(connection, stop)

    error = _unreachable_within_5_s(server(serve), tmp_path)
    assert "was not whole 2 s after the request began" in str(error)


def test_a_request_on_a_given_transport_is_bounded_too(server, tmp_path) -> None:
    """The public key is answered on a connection kept alive unless the request says
    ``Connection: close``; the licence request then drips."""
    body = json.dumps({"public_key": base64.b64encode(KEY).decode()}).encode()

    def serve(connection: socket.socket, stop: threading.Event) -> None:
        while request := connection.recv(65536):
            if not request.startswith(b"GET /v1/public-key "):
                _drip(connection, stop)
                return
            close = b"connection: close" in request.lower()
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            if close:
                return

    _unreachable_within_5_s(server(serve), tmp_path, transport=httpx.HTTPTransport())
