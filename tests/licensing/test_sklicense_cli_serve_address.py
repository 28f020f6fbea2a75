"""``sklicense serve`` refuses an address it cannot listen on in one ``Error:`` line, exit code 1,
before uvicorn starts: uvicorn logged these after starting and exited 3, and an empty ``--host``
(a shell variable left unset) listened on every interface instead of the loopback."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from sklicense.cli import app


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``sklicense serve`` with the given options on an initialised SQLite database; uvicorn's
    start is recorded in ``serve.started``, not run."""
    for name in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    where = ["--state-dir", str(tmp_path / "state")]
    where += ["--database-url", f"sqlite:///{tmp_path / 'sklicense.db'}"]
    assert CliRunner().invoke(app, ["init", *where]).exit_code == 0
    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(kwargs))
    for name in ("SKLICENSE_DATABASE_URL", "SKLICENSE_STATE_DIR"):  # serve sets them
        monkeypatch.setenv(name, "")

    def run(*options: str) -> Any:
        return CliRunner().invoke(app, ["serve", *options, *where])

    run.started = started
    return run


def test_an_empty_host_is_refused(serve: Any) -> None:
    result = serve("--host", "")
    assert (result.exit_code, result.output) == (
        1,
        "Error: --host is empty, which listens on every interface: pass an address, e.g. "
        "127.0.0.1 (the default), or 0.0.0.0 to listen on all IPv4 interfaces\n",
    )
    assert serve.started == []


def test_a_port_in_use_is_refused(serve: Any) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = serve("--port", str(port))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot listen on 127.0.0.1 port {port} (Address already in use): stop what "
        "uses that port, or pass another --port or --host\n"
    )
    assert serve.started == []


def test_a_host_that_does_not_resolve_is_refused(serve: Any) -> None:
    result = serve("--host", "sklicense.invalid")  # .invalid never resolves (RFC 2606)
    assert result.exit_code == 1
    assert result.output.startswith("Error: --host 'sklicense.invalid' cannot be resolved (")
    assert serve.started == []


def test_a_free_address_starts_the_server(serve: Any) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = serve("--port", str(port))
    assert result.exit_code == 0, result.output
    assert [(s["host"], s["port"]) for s in serve.started] == [("127.0.0.1", port)]
