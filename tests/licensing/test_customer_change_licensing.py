"""The licensing side of a deployment's lifecycle: a LINUX configuration whose customer is
changed with ``update_customer``, then a model updated for the new customer, run by the
runtime against a real licence server (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sklicense.embedded import EmbeddedServer
from skruntime.errors import LicenceDeniedError
from skruntime.licensing.protocol import unb64

torch = pytest.importorskip("torch")

APPLICATION = "custapp"


def mlp(seed: int) -> Any:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def admin_customer(http: httpx.Client, customer_id: int, name: str) -> None:
    body = {
        "id": customer_id,
        "name": name,
        "contract_end": (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat(),
        "inference_quota": 1000,
        "max_devices": 5,
        "default_licence_seconds": 3600,
    }
    response = http.post("/v1/admin/customers", json=body)
    assert response.status_code < 300, response.text


def granted(http: httpx.Client, customer_id: int) -> int:
    return http.get(f"/v1/admin/customers/{customer_id}").json()["inferences_granted"]


def test_a_customer_changed_after_deployment_is_licensed_as_the_new_one(
    workdir: Path, settings: Any, tokens: dict[str, str]
) -> None:
    from skprotect_pytorch import Customer
    from skprotect_pytorch.protect import SkProtectorPyTorch
    from skruntime import SkRuntime

    ep = SkProtectorPyTorch.ExportPlatform
    x = torch.randn(2, 6)
    protector = SkProtectorPyTorch(application_name=APPLICATION)

    def protect(method: Any, seed: int, customer: Customer) -> None:
        """Protect version ``seed`` of the MLP as ``net`` (ONNX, LINUX) for ``customer``."""
        method(
            mlp(seed),
            "net",
            [x],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
            deployment_platform=ep.LINUX,
            customer=customer,
        )

    protect(protector.protect_new_model, 0, Customer(7, "ACME"))
    settings = dataclasses.replace(settings, licence_requests_per_minute=1000)
    with (
        EmbeddedServer(settings) as server,
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=10
        ) as http,
    ):
        server_key = unb64(httpx.get(f"{server.url}/v1/public-key").json()["public_key"])
        import base64

        application = {
            "name": APPLICATION,
            "kek": base64.b64encode(protector.state.kek).decode(),
            "public_key": base64.b64encode(protector.state.public_key_bytes).decode(),
        }
        assert http.post("/v1/admin/applications", json=application).status_code < 300
        admin_customer(http, 7, "ACME")
        admin_customer(http, 8, "Beta")

        def run(state: Path, seed: int) -> float:
            with (
                SkRuntime(
                    protector.outputs_dir,
                    licence_server=server.url,
                    server_public_key=server_key,
                    state_dir=state,
                ) as runtime,
                runtime.load("net") as net,
            ):
                got = net(x.numpy())
            with torch.no_grad():
                expected = mlp(seed)(x).numpy()
            return float(np.abs(got - expected).max())

        assert run(workdir / "device7", 0) < 1e-4
        assert granted(http, 7) > 0 and granted(http, 8) == 0
        protector.update_customer(Customer(8, "Beta"), ep.LINUX)
        before7 = granted(http, 7)
        with pytest.raises(LicenceDeniedError) as info:
            run(workdir / "device7", 0)  # the device registered for customer 7
        assert info.value.reason == "device_customer_mismatch"
        assert run(workdir / "device8", 0) < 1e-4
        assert granted(http, 8) > 0 and granted(http, 7) == before7
        protect(protector.protect_updated_model, 1, Customer(8, "Beta"))
        assert run(workdir / "device8", 1) < 1e-4
