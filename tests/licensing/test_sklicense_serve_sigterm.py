"""``sklicense serve`` stopped by SIGTERM (``systemctl stop``, ``docker stop``) shuts down
gracefully and ends by the signal, as uvicorn alone does: the command line's SIGTERM handler made
it exit with status 143, which systemd reads as a failed service (``status=143``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from sklicense.cli import app


def _free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_listening(port: int, server: subprocess.Popen, seconds: float = 60.0) -> None:
    """Return once ``server`` accepts connections on ``port``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"sklicense serve did not listen on port {port} in {seconds:g} s")


def test_sigterm_ends_serve_by_the_signal_after_a_graceful_shutdown(tmp_path: Path) -> None:
    where = ["--state-dir", str(tmp_path / "state")]
    where += ["--database-url", f"sqlite:///{tmp_path / 'sklicense.db'}"]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SKLICENSE_SIGNING_KEY_FILE", "SKLICENSE_STATE_DIR", "SKLICENSE_DATABASE_URL")
    }
    assert CliRunner().invoke(app, ["init", *where], env=env).exit_code == 0
    port = _free_port()
    serve = ["serve", "--port", str(port), *where]
    server = subprocess.Popen(
        [sys.executable, "-c", "from sklicense.cli import main; main()", *serve],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(port, server)
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "Application shutdown complete" in stderr, stderr
    assert server.returncode == -signal.SIGTERM, (server.returncode, stderr)
