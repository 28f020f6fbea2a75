"""A proxy set in the environment that ``httpx`` cannot use (a SOCKS proxy without the
``socksio`` package, another scheme, a malformed URL) made creating the licence client raise
``ImportError``, ``ValueError`` or ``httpx.InvalidURL``: a traceback from ``SkRuntime(...)``
(or a ``ConfigurationError`` quoting httpx, naming no variable) instead of a ``LicenceError``
saying which variable to fix."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from skruntime.errors import LicenceError
from skruntime.licensing.client import LicenceClient


@pytest.mark.parametrize(
    "proxy", ["socks5://127.0.0.1:1080", "ftp://proxy.example:21", "http://[::1"]
)
def test_an_unusable_proxy_is_a_licence_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: str
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    if proxy.startswith("socks5") and importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed: httpx takes a SOCKS proxy")
    with pytest.raises(LicenceError, match="HTTPS_PROXY") as error:
        LicenceClient(
            "https://licence.example:8765",
            state_dir=tmp_path / "state",
            server_public_key=b"k" * 32,
            application="app",
            customer_id=7,
            models=["net"],
            config_sha256="ab" * 32,
        )
    assert "proxy for the licence server at https://licence.example:8765" in str(error.value)
