"""The licence client reads at most MAX_ANSWER_BYTES of an answer, within its timeout, and
follows no redirect: each is a clear error instead of memory, time or a misleading message."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.licensing.test_client import URL, Clock, FakeServer, make_client

from skruntime.errors import LicenceError, LicenceUnavailableError
from skruntime.licensing.client import MAX_ANSWER_BYTES, LicenceClient

CHUNK = 64 * 1024
HUGE = 64 * MAX_ANSWER_BYTES // CHUNK  # chunks of a 64 MiB answer


class Download:
    """A 64 MiB answer body, counting the chunks the client took."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(HUGE):
            self.taken += 1
            yield b"<" * CHUNK


def test_a_huge_licence_answer_is_refused_once_the_bound_arrived(tmp_path: Path) -> None:
    """A 400 MiB answer (a proxy's download) grew the client's memory by 800 MiB, then said
    'non-JSON content'; now about 1 MiB of it is read, and the error says why."""
    server, body = FakeServer(), Download()
    server.answer = lambda request: httpx.Response(
        200, content=body, headers={"Content-Type": "text/html"}
    )
    client = make_client(server, tmp_path / "state", Clock())
    with pytest.raises(LicenceError) as err:
        client.ensure_licence()
    assert body.taken <= MAX_ANSWER_BYTES // CHUNK + 1
    assert str(err.value).startswith(
        f"The licence server at {URL} answered POST /v1/licences with HTTP 200 (text/html) of "
        f"more than {MAX_ANSWER_BYTES} bytes"
    )
    assert "proxy or a captive portal" in str(err.value)
    client.close()


def test_a_huge_answer_to_a_usage_report_keeps_the_report(tmp_path: Path) -> None:
    server, body = FakeServer(), Download()
    handle, huge = server.handle, []

    def answer(request: httpx.Request) -> httpx.Response:
        if huge and request.url.path == "/v1/usage":
            return httpx.Response(200, content=body)
        return handle(request)

    server.handle = answer  # type: ignore[method-assign]
    client = make_client(server, tmp_path / "state", Clock())
    client.consume(3)
    client.flush()
    huge.append(True)
    assert client.report_usage() is False  # kept, sent again later
    assert body.taken <= MAX_ANSWER_BYTES // CHUNK + 1
    assert client.usage()["reported"] == 0
    client.close()


@pytest.mark.parametrize("path", ["/v1/public-key", "/v1/licences"])
def test_a_redirect_names_the_url_to_give_instead(tmp_path: Path, path: str) -> None:
    """A server behind a proxy redirecting http:// to https:// was answered 'HTTP 301 ... not a
    licence or a denial signed by a pinned server key ... upgrade it'."""
    server = FakeServer()
    handle = server.handle

    def redirect(request: httpx.Request) -> httpx.Response:
        if request.url.path == path:
            return httpx.Response(308, headers={"Location": f"https://licence.test{path}"})
        return handle(request)

    server.handle = redirect  # type: ignore[method-assign]
    client = make_client(server, tmp_path / "state", Clock())
    with pytest.raises(LicenceError) as err:
        client.ensure_licence()
    method = "GET" if path == "/v1/public-key" else "POST"
    assert str(err.value) == (
        f"The licence server at {URL} redirects {method} {path} to https://licence.test{path} "
        "(HTTP 308); the runtime follows no redirect of the licence server. Give the server URL "
        "that the redirect names instead (probably 'https://licence.test'), or check the network "
        "path: a proxy or a captive portal may be in the way."
    )
    client.close()


def test_an_answer_sent_a_byte_at_a_time_times_out(tmp_path: Path) -> None:
    """httpx's timeout bounds each read: 20 bytes sent every 0.3 s kept a client with a 1 s
    timeout for 6.1 s (a 1 MiB answer so: days); now the answer must be whole within the
    timeout after its headers, or it is a lost answer (the server is unreachable)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
                for _ in range(40):
                    if stop.wait(0.1):
                        return
                    try:
                        connection.sendall(b"x")
                    except OSError:
                        break

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    server = FakeServer()
    client = LicenceClient(
        f"http://127.0.0.1:{listener.getsockname()[1]}",
        state_dir=tmp_path / "state",
        server_public_key=server.public_key,
        application="app",
        customer_id=7,
        models=["net"],
        config_sha256="ab" * 32,
        timeout=0.5,
    )
    started = time.monotonic()
    try:
        with pytest.raises(LicenceUnavailableError, match=r"not whole 0\.5 s after its headers"):
            client.ensure_licence()
        assert time.monotonic() - started < 2.0
    finally:
        stop.set()
        listener.close()
        client.close()
        thread.join(5)
