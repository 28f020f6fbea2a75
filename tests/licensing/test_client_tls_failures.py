"""A TLS handshake that fails is named with what to fix, not "unreachable": an ``https://`` URL
of a plain-HTTP server (``sklicense serve`` is one) was "unreachable ([SSL:
WRONG_VERSION_NUMBER] ...). Connect to the server once to obtain a licence.", though it was
reached; so was a server whose certificate the device does not trust."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.licensing.server_helpers import device_client

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
