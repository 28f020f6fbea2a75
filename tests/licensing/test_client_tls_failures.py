"""A TLS handshake that fails is named with what to fix, not "unreachable": an ``https://`` URL
of a plain-HTTP server (``sklicense serve`` is one) was "unreachable ([SSL:
WRONG_VERSION_NUMBER] ...). Connect to the server once to obtain a licence.", though it was
reached; so was a server whose certificate the device does not trust."""

from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.licensing.server_helpers import device_client
from tests.licensing.test_client import Clock, FakeServer, make_client

from skruntime.licensing.client import LicenceError, LicenceUnavailableError

SERVER_KEY = bytes(32)  # never used: no answer gets that far


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _self_signed(folder: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 that no authority signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


@pytest.fixture(params=["plain HTTP", "untrusted certificate"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(the https:// URL of a server, what the error must say of it)."""
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Quiet)
    expected = "the server there does not speak TLS: give its http:// URL"
    if request.param == "untrusted certificate":
        httpd.socket = _self_signed(tmp_path).wrap_socket(httpd.socket, server_side=True)
        expected = "its certificate is not trusted by this device"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", expected
    httpd.shutdown()
    httpd.server_close()


def test_a_failed_tls_handshake_says_what_to_fix(server: tuple[str, str], tmp_path: Path) -> None:
    url, expected = server
    client = device_client(url, None, SERVER_KEY, tmp_path / "state", lambda: 1_800_000_000)
    with pytest.raises(LicenceError) as raised:
        client.ensure_licence()
    assert not isinstance(raised.value, LicenceUnavailableError)
    message = str(raised.value)
    assert message.startswith(f"The TLS handshake with the licence server at {url} failed (")
    assert expected in message and message.endswith("No licence request was sent.")


def test_a_connection_closed_in_the_handshake_is_unreachable(tmp_path: Path) -> None:
    """A server that hangs up in the handshake (overloaded, restarting behind a proxy) is
    unreachable, as one that resets the connection: it was told to fix its TLS set-up."""
    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        with suppress(OSError):  # the listener closed
            while True:
                connection = listener.accept()[0]
                # the ClientHello read first: closed with it unread, the connection was reset
                # (ECONNRESET) instead of ended, when the client was slow to send it (under load)
                connection.recv(65536)
                connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    client = device_client(url, None, SERVER_KEY, tmp_path / "state", lambda: 1_800_000_000)
    with pytest.raises(LicenceUnavailableError, match="UNEXPECTED_EOF"):
        client.ensure_licence()
    client.close()
    listener.close()


def test_a_failed_handshake_is_not_held_for_retry_seconds(tmp_path: Path) -> None:
    """No request reached the server, so no allowance is spared by waiting: a handshake that
    failed once was raised again for retry_seconds (300 s), though the server answered now."""
    server = FakeServer()
    failures = [ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")]

    def handle(request: httpx.Request) -> httpx.Response:
        if failures:
            try:
                raise failures.pop()
            except ssl.SSLError as e:
                raise httpx.ConnectError(str(e), request=request) from e
        return server.handle(request)

    clock = Clock()
    client = make_client(server, tmp_path / "state", clock, transport=httpx.MockTransport(handle))
    with pytest.raises(LicenceError, match="its certificate is not trusted"):
        client.ensure_licence()
    clock.t += 10
    assert client.ensure_licence().expires_at > clock.t
    client.close()


def test_a_refused_connection_asked_for_while_handling_an_ssl_error_is_unreachable(
    tmp_path: Path,
) -> None:
    """The handshake's error was looked for along every exception's context: a connection
    refused while the caller handled an ssl.SSLError of its own (another service's) was said
    to be a failed handshake with the licence server, naming that other error."""
    closed = socket.create_server(("127.0.0.1", 0))
    url = f"https://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there
    client = device_client(url, None, SERVER_KEY, tmp_path / "state", lambda: 1_800_000_000)
    try:
        raise ssl.SSLError(1, "the caller's own TLS failure")
    except ssl.SSLError:
        with pytest.raises(LicenceUnavailableError, match="Connection refused"):
            client.ensure_licence()
    client.close()
