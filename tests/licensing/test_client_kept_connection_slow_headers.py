"""The whole exchange is bounded by a watchdog that shuts down the connection the request
opens; a ``transport=`` given to the client (custom networking) keeps connections alive,
whatever the client's own limits, so a request on a kept connection opened none, was not
watched, and a server sending its headers a byte at a time held ``ensure_licence()`` for
hours again. Now every request asks for its connection to be closed after the answer."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skruntime.errors import LicenceUnavailableError
from skruntime.licensing.client import LicenceClient

KEY = b"k" * 32


@pytest.fixture
def keep_alive_then_drip() -> Iterator[str]:
    """A server that answers ``GET /v1/public-key`` with the key (the connection kept alive,
    unless the request says ``Connection: close``), and any other request with a status line,
    then a header byte every 0.1 s, for ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    body = json.dumps({"public_key": base64.b64encode(KEY).decode()}).encode()

    def serve(connection: socket.socket) -> None:
        with connection:
            try:
                while request := connection.recv(65536):
                    if not request.startswith(b"GET /v1/public-key "):
                        connection.sendall(b"HTTP/1.1 200 OK\r\n")
                        while not stop.wait(0.1):
                            connection.sendall(b"X")
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
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_a_request_on_a_given_transport_is_bounded_too(
    keep_alive_then_drip: str, tmp_path: Path
) -> None:
    client = LicenceClient(
        keep_alive_then_drip,
        state_dir=tmp_path / "state",
        server_public_key=KEY,
        application="app",
        customer_id=7,
        models=["net"],
        config_sha256="ab" * 32,
        timeout=0.5,
        transport=httpx.HTTPTransport(),
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
