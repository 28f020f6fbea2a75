"""THE QUOTA PROOF: two real server processes on one PostgreSQL database, 8 concurrent devices
asking for chunks of 7 inferences against a quota of 100: exactly 100 are granted in total."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from tests.licensing.server_helpers import FakeDevice, make_application, make_customer

from sklicense import db
from sklicense.models import AuditLog, Customer

QUOTA = 100
CHUNK = 7
THREADS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, state_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "SKLICENSE_DATABASE_URL": url,
        "SKLICENSE_STATE_DIR": str(state_dir),
        "SKLICENSE_LICENCE_REQUESTS_PER_MINUTE": "1000",
    }
    command = [sys.executable, "-m", "sklicense", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server on port {port} exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server on port {port} did not start: {log.read_text()}")


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_quota_is_never_exceeded_across_two_servers(request, backend, state_dir, tmp_path) -> None:
    """PostgreSQL (SELECT … FOR UPDATE) is the proof the issue asks for; SQLite (BEGIN
    IMMEDIATE, one file shared by both processes) must hold the same invariant."""
    from tests.licensing.conftest import clean

    url = request.getfixturevalue(f"{backend}_url")
    clean(url)
    sessions = db.session_factory(url)
    make_application(sessions)
    make_customer(sessions, inference_quota=QUOTA, max_devices=1000)
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"server-{p}.log" for p in ports]
    servers = [start_server(url, state_dir, p, lg) for p, lg in zip(ports, logs, strict=True)]
    try:
        for port, server, log in zip(ports, servers, logs, strict=True):
            wait_healthy(port, server, log)
        granted: list[int] = []
        denials: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        def device_loop(index: int) -> None:
            device = FakeDevice(f"quota-dev-{index}")
            base = f"http://127.0.0.1:{ports[index % 2]}"
            with httpx.Client(base_url=base, timeout=30) as http:
                start.wait()
                for _ in range(QUOTA):  # bounded: at most QUOTA requests per device
                    body = device.licence_request(42, int(time.time()), requested_inferences=CHUNK)
                    response = http.post("/v1/licences", json=body, headers=device.headers(body))
                    with lock:
                        if response.status_code == 200:
                            granted.append(response.json()["licence"]["inferences"])
                            continue
                        if response.json().get("reason") == "quota_exhausted":
                            denials.append(device.id)
                        else:
                            errors.append(f"{response.status_code} {response.text}")
                    return

        threads = [threading.Thread(target=device_loop, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert sum(granted) == QUOTA
        assert len(granted) == -(-QUOTA // CHUNK)  # 14 chunks of 7 and one of 2
        assert sorted(granted)[0] == QUOTA % CHUNK
        assert len(denials) == THREADS  # every device ended on quota_exhausted
        with sessions() as session:
            assert session.get(Customer, 42).inferences_granted == QUOTA
            allows = session.scalar(
                select(func.count()).select_from(AuditLog).where(AuditLog.action == "licence.allow")
            )
            assert allows == len(granted)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
