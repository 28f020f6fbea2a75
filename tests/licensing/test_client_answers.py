"""The licence client: what answers that are not a licence say."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.licensing.test_client import URL, Clock, FakeServer, make_client

from skruntime.errors import LicenceError
from skruntime.licensing import protocol
from skruntime.licensing.protocol import LICENCES_PATH


def test_a_json_answer_that_is_no_licence_names_the_server_and_what_to_check(
    tmp_path: Path,
) -> None:
    """A 200 JSON answer without a licence (a proxy's, or a ``keep`` nobody asked for) raised
    "The licence document is not a {licence, signature} object.": no server, nothing to do."""
    server = FakeServer()
    keep = {"decision": "keep", "licence_id": "x", "expires_at": 1, "detail": ""}
    server.answer = lambda request: httpx.Response(200, json=keep)
    client = make_client(server, tmp_path / "state", Clock())
    with pytest.raises(LicenceError) as err:
        client.ensure_licence()
    assert str(err.value).startswith(
        f"The licence server at {URL} answered a licence request with "
        """'{"decision":"keep","""
    )
    assert str(err.value).endswith(
        "not a licence document ({licence, signature}). Check the server URL: a proxy or a "
        "captive portal may be in the way, or it is not an sklicense server."
    )
    client.close()


def test_a_signed_422_is_not_blamed_on_a_missing_signature(tmp_path: Path) -> None:
    """The server's own (signed) 422 said "not a licence or a denial signed by the pinned
    server key ... does not sign its answers: upgrade it ... a man in the middle", which sent
    the user after the network instead of the field the server refused."""
    server = FakeServer()
    error = {"type": "string_too_long", "loc": ["application"], "msg": "String too long"}
    client = make_client(server, tmp_path / "state", Clock())

    def refuse(request: httpx.Request) -> httpx.Response:
        answer = {"detail": [error]}
        message = protocol.answer_message(LICENCES_PATH, 422, request.content, answer)
        headers = {protocol.SIGNATURE_HEADER: protocol.sign(message, server.key)}
        return httpx.Response(422, json=answer, headers=headers)

    server.answer = refuse
    with pytest.raises(LicenceError) as err:
        client.ensure_licence()
    message = str(err.value)
    assert message.startswith(
        f"The licence server at {URL} refused the licence request with HTTP 422 "
        """'{"detail":[{"type":"string_too_long","loc":["application"]"""
    )
    assert "neither a licence nor a denial" in message and "fix the field" in message
    assert "man in the middle" not in message
    client.close()
