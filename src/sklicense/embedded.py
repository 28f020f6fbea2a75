"""An ``sklicense`` server embedded in the calling process: uvicorn in a background thread.

For the quickstart and for tests. It serves the same application as ``sklicense serve`` over
real HTTP on loopback; production deployments run ``sklicense serve`` processes instead.

>>> with EmbeddedServer(settings) as server:  # doctest: +SKIP
...     httpx.get(server.url + "/v1/health")
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sklicense import db
from sklicense.crypto import create_signing_key, load_signing_key
from sklicense.settings import Settings

__all__ = ["EmbeddedServer", "free_port", "init_state"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_state(settings: Settings) -> bytes:
    """What ``sklicense init`` does: create the signing key (if absent) and migrate the
    database. Returns the server's raw 32-byte Ed25519 public key (to pin in the runtime)."""
    from cryptography.hazmat.primitives import serialization

    create_signing_key(settings.key_path)
    db.upgrade(settings.database_url)
    return (
        load_signing_key(settings.key_path)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


class EmbeddedServer:
    """Serve ``create_app(settings, clock)`` on ``host:port`` (a free port by default) from a
    daemon thread; :meth:`stop` (or leaving the ``with`` block) shuts it down."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        clock: Callable[[], int] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port or free_port(host)
        self.clock = clock
        self.startup_timeout = startup_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._engine: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmbeddedServer:
        import uvicorn

        from sklicense.api.main import create_app

        app = create_app(self.settings, self.clock)  # refuses an unmigrated database here
        self._engine = app.state.engine
        config = uvicorn.Config(
            app, host=self.host, port=self.port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name=f"sklicense-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the embedded licence server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut the server down, wait for its thread and close its database connections (its
        engine is not the one of ``db.get_engine(url)``: it has the pool timeout of the
        settings), so that the database file can go (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._engine is not None:
            self._engine.dispose()
        self._server = None
        self._thread = None
        self._engine = None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
