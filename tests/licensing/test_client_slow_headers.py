"""A server (or a proxy) that sends its answer's headers a byte at a time, each within the
client's ``timeout``, kept ``ensure_licence()`` (a load, an inference that renews, ``close()``)
waiting for hours: ``httpx`` bounds each read, not the whole answer, and the runtime bounded
only the body after the headers. Now the whole exchange is bounded to 4 timeouts, and a
server this slow is an unreachable one (``LicenceUnavailableError``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skruntime.errors import LicenceUnavailableError
from skruntime.licensing.client import LicenceClient


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """A server that answers every request with a status line, then a header byte every
    0.1 s, for ever."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip(connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.1):
                    connection.sendall(b"X")
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_headers_sent_a_byte_at_a_time_are_an_unreachable_server(
    dripping_server: str, tmp_path: Path
) -> None:
    client = LicenceClient(
        dripping_server,
        state_dir=tmp_path / "state",
        server_public_key=b"k" * 32,
        application="app",
        customer_id=7,
        models=["net"],
        config_sha256="ab" * 32,
        timeout=0.5,
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
    assert len(raised) == 1 and isinstance(raised[0], LicenceUnavailableError)
    assert "was not whole 2 s after the request began" in str(raised[0])
