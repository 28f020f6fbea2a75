"""What ``server_keys.json`` notes across a rotation of the server's signing key (same URL):
a runtime pinning the current key and the next noted the key it first saw the server sign
with (the old one) and kept that note after the server switched to the new key, so the release
pinning the new key alone did not take the note: in a fresh process, an unsigned 422 about
``renews`` from the network path was taken as the server's (the licence at the contract end
kept and noted as checked for a day) although the server was known to sign its answers."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.licensing.server_helpers import APP, device_client
from tests.licensing.test_contract_end_checks import DAY, audited, contract
from tests.licensing.test_unsigned_renews_refusal import FakesRenewsRefusal

from sklicense.api.main import create_app
from sklicense.crypto import create_signing_key
from sklicense.settings import Settings
from skruntime.errors import LicenceError
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import b64, unb64


def runtime(
    client: Any, clock: Any, folder: Any, keys: list[bytes], network: Any = None, **options: Any
) -> LicenceClient:
    """A device of customer 42 pinning ``keys``: 30-day overlap, allowances of 50."""
    transport = network or client._transport
    options = {"overlap_seconds": 30 * DAY, "requested_inferences": 50} | options
    return device_client("http://testserver", transport, keys, folder, clock, **options)


def public(client: Any) -> bytes:
    return unb64(client.get("/v1/public-key").json()["public_key"])


def test_the_notes_follow_the_key_the_server_signs_with(
    client, settings, sessions, clock, tmp_path, caplog
) -> None:
    start = clock.now
    contract(sessions, clock, 40)  # licences expire at the contract end, day 40
    folder = tmp_path / "device"
    create_signing_key(tmp_path / "next" / "server.key")
    rotated = Settings(database_url=settings.database_url, state_dir=tmp_path / "next")
    with TestClient(create_app(rotated, clock)) as next_client:
        old, new = public(client), public(next_client)
        both = runtime(client, clock, folder, [old, new], requested_inferences=1)
        both.consume()
        both.close()
        assert json.loads((folder / "server_keys.json").read_text())["signs"] == {
            "http://testserver": b64(old)
        }
        # the server's key is replaced (same URL and database); licences of 2 are renewed
        clock.now = start + DAY
        both = runtime(next_client, clock, folder, [old, new], requested_inferences=2)
        for _ in range(3):
            both.consume()
        both.close()
        issued = audited(sessions, "licence.allow")
        notes = json.loads((folder / "server_keys.json").read_text())
        assert notes == {
            "checked": {"http://testserver": b64(new)},
            "signs": {"http://testserver": b64(new)},
        }
        # a runtime of this device still pinning the old key alone asks for the server's key
        # again: refused before its licence request, nothing charged
        old_only = runtime(next_client, clock, folder, [old])
        with pytest.raises(LicenceError, match=re.escape(f"presents the public key {b64(new)}")):
            old_only.ensure_licence()
        assert audited(sessions, "licence.allow") == issued
        # the next release pins the new key alone; the network path fakes the old server's 422
        path = FakesRenewsRefusal(next_client._transport)
        path.on = True
        clock.now = start + 11 * DAY  # in the overlap window, at the contract end
        alone = runtime(next_client, clock, folder, [new], path, retry_seconds=300)
        with caplog.at_level(logging.WARNING, logger="skruntime.licensing.client"):
            alone.consume()
        assert path.faked == 1
        assert "does not know the renews field" not in caplog.text
        assert "Licence renewal failed" in caplog.text
        cached = json.loads((folder / f"licence_{APP}.json").read_text())
        assert cached.get("checked_at") != clock.now  # not noted as checked
        alone.close()
