"""The licence client sends the configuration's signed payload, so that a server holding the
application's public key can check the customer (docs/licensing.md, customer binding)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from skruntime.errors import LicenceError
from skruntime.licensing.client import LicenceClient
from skruntime.licensing.protocol import MAX_DEVICE_BODY

SIGNED = {
    "payload": {"application": "app", "customer": {"id": 7, "name": "ACME"}, "models": {}},
    "signature": "c2lnbmF0dXJl",
}


def client(
    state: Path, configuration: Any, transport: Any = None, models: Any = ("net",)
) -> LicenceClient:
    return LicenceClient(
        "http://127.0.0.1:9",
        state_dir=state,
        server_public_key=bytes(32),
        application="app",
        customer_id=7,
        models=list(models),
        config_sha256="ab" * 32,
        configuration=configuration,
        transport=transport,
        retry_seconds=0,
    )


def test_every_licence_request_carries_the_signed_configuration(tmp_path: Path) -> None:
    bodies: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/public-key":  # the pinned key, bytes(32), checked first
            return httpx.Response(200, json={"public_key": "A" * 43 + "="})
        bodies.append(json.loads(request.content))
        return httpx.Response(403, json={"decision": "deny", "reason": "x", "detail": "y"})

    with pytest.raises(LicenceError):
        client(tmp_path, SIGNED, httpx.MockTransport(handle)).ensure_licence()
    assert bodies and bodies[0]["configuration"] == SIGNED
    bodies.clear()
    with pytest.raises(LicenceError):
        client(tmp_path / "b", None, httpx.MockTransport(handle)).ensure_licence()
    assert bodies and "configuration" not in bodies[0]


@pytest.mark.parametrize(
    ("configuration", "message"),
    [
        ({"payload": {}, "signature": "x"}, "of a platform version 2 configuration"),
        ({"payload": SIGNED["payload"]}, "of a platform version 2 configuration"),
        ("not a mapping", "of a platform version 2 configuration"),
        (
            {**SIGNED, "payload": {**SIGNED["payload"], "customer": {"id": 8}}},
            "names application 'app' and customer 8, not 'app' and 7",
        ),
        (
            {**SIGNED, "payload": {**SIGNED["payload"], "models": {"m": "x" * MAX_DEVICE_BODY}}},
            "a licence request may carry",
        ),
    ],
    ids=["no-customer", "no-signature", "not-a-mapping", "other-customer", "too-large"],
)
def test_a_configuration_the_server_would_refuse_is_refused_here(
    tmp_path: Path, configuration: Any, message: str
) -> None:
    with pytest.raises(LicenceError, match=message):
        client(tmp_path, configuration)


def test_the_model_names_count_towards_the_request_size(tmp_path: Path) -> None:
    """A configuration just under the limit, with many model names, drew a 413 that the
    client took for a proxy in the way."""
    names = [f"model-{i:05d}-{'n' * 40}" for i in range(MAX_DEVICE_BODY // 50)]
    with pytest.raises(LicenceError, match="signed payload and model names take"):
        client(tmp_path, SIGNED, models=names)
    client(tmp_path, SIGNED, models=names[:100])  # well under: accepted
