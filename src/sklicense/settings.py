"""Server settings: a frozen dataclass read from the environment (``SKLICENSE_*``) or the CLI."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", int, float)
DEFAULT_DATABASE_URL = "sqlite:///./sklicense.db"
DEFAULT_POOL_TIMEOUT_S = 3.0
"""How long a request waits for a free database connection when all of the pool's are in use
(slow transactions, more concurrent requests than connections), and in all for the locks that
other connections hold (SQLite's write lock, PostgreSQL rows: another server process, an admin
command), before it is answered 503 with ``Retry-After``: less than the runtime's 5 s request
timeout, so that a device gets that answer instead of timing out and asking again while the
server still works on its request (SQLAlchemy's pool default and SQLite's former busy timeout,
30 s each, and PostgreSQL's lock waits, without end, outlasted every client)."""
MAX_POOL_TIMEOUT_S = 3600.0
"""The longest ``database_pool_timeout_s``: PostgreSQL refuses a ``lock_timeout`` over
2,147,483,647 ms and Python a lock wait over ``threading.TIMEOUT_MAX``, which failed every
request; an hour is far past any client's own timeout already."""
ENVIRONMENTS = ("local", "production")
#: Admin tokens that are refused outside local use (copied from examples and templates).
WEAK_ADMIN_TOKENS = frozenset({"", "changethis", "change-me", "admin", "secret"})
ADMIN_TOKEN_PATTERN = re.compile(r"[!-~](?:[ -~]*[!-~])?")
"""What a configured admin token can be: printable ASCII, spaces only inside. It travels in an
HTTP header, which the server reads as Latin-1 and strips: a token with other characters, or
with a space at either end, could never match (and a lone surrogate, from an environment
variable that is not UTF-8, failed every admin request with a 500)."""


class SettingsError(ValueError):
    """The server settings are invalid; the message says which one and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """Licence server settings.

    ``signing_key_file`` defaults to ``<state_dir>/server.key`` (created by ``sklicense init``);
    ``admin_token``, when set, is accepted as an admin bearer token besides the database tokens.
    In ``production`` both must be given explicitly (no default key path, no weak token).
    ``database_pool_timeout_s``: how long a request waits for a free database connection, or
    for the locks of other connections (:data:`DEFAULT_POOL_TIMEOUT_S`), before it is answered
    503.
    """

    database_url: str = DEFAULT_DATABASE_URL
    state_dir: Path = Path("./sklicense_state")
    environment: str = "local"
    signing_key_file: Path | None = None
    admin_token: str | None = None
    licence_requests_per_minute: int = 30
    admin_auth_failures_per_minute: int = 10
    new_device_requests_per_minute: int = 120
    usage_reports_per_minute: int = 60
    database_pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.environment not in ENVIRONMENTS:
            raise SettingsError(
                f"environment must be one of {', '.join(ENVIRONMENTS)} (set "
                f"SKLICENSE_ENVIRONMENT to one of them), but got {self.environment!r}"
            )
        for name in (
            "licence_requests_per_minute",
            "admin_auth_failures_per_minute",
            "new_device_requests_per_minute",
            "usage_reports_per_minute",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SettingsError(  # named by the variable that sets it, too
                    f"{name} must be a positive integer (set SKLICENSE_{name.upper()} to 1 or "
                    f"more), but got {value!r}"
                )
        timeout = self.database_pool_timeout_s
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (0 < timeout <= MAX_POOL_TIMEOUT_S)
        ):
            raise SettingsError(
                "database_pool_timeout_s (SKLICENSE_DATABASE_POOL_TIMEOUT_S) must be a finite "
                f"number of seconds > 0 and at most {MAX_POOL_TIMEOUT_S:g} (less than a "
                f"device's request timeout serves devices best; default "
                f"{DEFAULT_POOL_TIMEOUT_S:g}), but got {timeout!r}"
            )
        if not self.database_url:
            raise SettingsError("database_url must be set, but got an empty string")
        if self.admin_token and not ADMIN_TOKEN_PATTERN.fullmatch(self.admin_token):
            raise SettingsError(  # never the token itself: it is a secret
                "admin_token (SKLICENSE_ADMIN_TOKEN) must be printable ASCII, without a space at "
                "either end (it is sent in an HTTP header), but the one given is not: generate "
                "one with `openssl rand -hex 32`"
            )

    @property
    def key_path(self) -> Path:
        """Where the server's Ed25519 signing key lives."""
        return self.signing_key_file or (Path(self.state_dir) / "server.key")

    def check_production(self) -> None:
        """Refuse default secrets outside local use (called before serving)."""
        if self.environment != "production":
            return
        if self.signing_key_file is None:
            raise SettingsError(
                "environment is 'production' but no signing key is configured: set "
                "SKLICENSE_SIGNING_KEY_FILE to the server key file (created by `sklicense init`)."
            )
        token = self.admin_token or ""
        if token.lower() in WEAK_ADMIN_TOKENS or len(token) < 32:
            raise SettingsError(
                "environment is 'production' but no strong admin token is configured: set "
                "SKLICENSE_ADMIN_TOKEN to a random secret of at least 32 characters."
            )

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with the non-None ``overrides`` applied (CLI options)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read ``SKLICENSE_DATABASE_URL``, ``SKLICENSE_STATE_DIR``, ``SKLICENSE_ENVIRONMENT``,
        ``SKLICENSE_SIGNING_KEY_FILE``, ``SKLICENSE_ADMIN_TOKEN``,
        ``SKLICENSE_LICENCE_REQUESTS_PER_MINUTE``, ``SKLICENSE_ADMIN_AUTH_FAILURES_PER_MINUTE``,
        ``SKLICENSE_NEW_DEVICE_REQUESTS_PER_MINUTE``, ``SKLICENSE_USAGE_REPORTS_PER_MINUTE``,
        ``SKLICENSE_DATABASE_POOL_TIMEOUT_S``."""
        env = os.environ if environ is None else environ

        def number(name: str, default: T, parse: Callable[[str], T], kind: str) -> T:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return parse(raw)
            except ValueError:
                raise SettingsError(f"{name} must be {kind}, but got {raw!r}") from None

        def integer(name: str, default: int) -> int:
            return number(name, default, int, "an integer")

        key_file = env.get("SKLICENSE_SIGNING_KEY_FILE")
        return cls(
            database_url=env.get("SKLICENSE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            state_dir=Path(env.get("SKLICENSE_STATE_DIR") or "./sklicense_state"),
            environment=env.get("SKLICENSE_ENVIRONMENT") or "local",
            signing_key_file=Path(key_file) if key_file else None,
            admin_token=env.get("SKLICENSE_ADMIN_TOKEN") or None,
            licence_requests_per_minute=integer("SKLICENSE_LICENCE_REQUESTS_PER_MINUTE", 30),
            admin_auth_failures_per_minute=integer("SKLICENSE_ADMIN_AUTH_FAILURES_PER_MINUTE", 10),
            new_device_requests_per_minute=integer("SKLICENSE_NEW_DEVICE_REQUESTS_PER_MINUTE", 120),
            usage_reports_per_minute=integer("SKLICENSE_USAGE_REPORTS_PER_MINUTE", 60),
            database_pool_timeout_s=number(
                "SKLICENSE_DATABASE_POOL_TIMEOUT_S",
                DEFAULT_POOL_TIMEOUT_S,
                float,
                "a number of seconds",
            ),
        )
