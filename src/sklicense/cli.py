"""The ``sklicense`` command line: server, migrations, and admin commands on the database."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.orm import Session

from sklicense import crud, db
from sklicense.crypto import (
    SigningKeyError,
    create_signing_key,
    load_signing_key,
    loose_permissions,
    public_key_b64,
)
from sklicense.schemas import (
    INT32_MAX,
    INT64_MAX,
    MAX_LICENCE_SECONDS,
    aware_datetime,
    text_problem,
)
from sklicense.settings import DEFAULT_DATABASE_URL, Settings, SettingsError
from skruntime.cli import (
    OutputGroup,
    discard_stdout,
    sigterm_as_interrupt,
    sigterm_handled_by,
)
from skruntime.cli_errors import empty_path
from skruntime.files import open_regular
from skruntime.versions import version_option

GROUP: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": "markdown"}
"""Every command group's settings: markdown joins a docstring's lines in the command list
("rich" kept their line breaks)."""


class _Group(OutputGroup):
    """sklicense's top group: a failed standard output is an ``Error:`` line like the others."""

    def say(self, message: str) -> None:
        """Print the ``Error:`` line of a failed standard output (:func:`say`)."""
        say("Error", message, typer.colors.RED)


app = typer.Typer(help="skprotect licence server.", cls=_Group, **GROUP)
db_app = typer.Typer(help="Database migrations.", **GROUP)
token_app = typer.Typer(help="Admin API bearer tokens.", **GROUP)
app_app = typer.Typer(help="Applications and their key-encryption keys.", **GROUP)
customer_app = typer.Typer(help="Customers and their policies.", **GROUP)
device_app = typer.Typer(help="Devices.", **GROUP)
licence_app = typer.Typer(help="Issued licences.", **GROUP)


@app.callback()
def _options(version: version_option("sklicense") = False) -> None:  # type: ignore[valid-type]
    """skprotect licence server."""


app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(app_app, name="app")
app.add_typer(customer_app, name="customer")
app.add_typer(device_app, name="device")
app.add_typer(licence_app, name="licence")

CLI_ACTOR = "cli"
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help=f"SQLAlchemy URL (default: $SKLICENSE_DATABASE_URL, else {DEFAULT_DATABASE_URL}).",
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Folder of the server key server.key (default: $SKLICENSE_STATE_DIR, else "
        "./sklicense_state); refused while $SKLICENSE_SIGNING_KEY_FILE names another key file.",
    ),
]


def say(label: str, message: str, colour: str) -> None:
    """``label: message`` on stderr, in ``colour`` on a terminal unless ``NO_COLOR`` is set to
    anything but an empty string (https://no-color.org)."""
    plain = bool(os.environ.get("NO_COLOR"))
    typer.secho(f"{label}: {message}", fg=colour, err=True, color=False if plain else None)


def fail(message: str) -> None:
    say("Error", message, typer.colors.RED)
    raise typer.Exit(code=1)


def main() -> None:
    """The ``sklicense`` command: what the database, the key file or the disk refuse is said in
    one line (exit code 1), not as a traceback of hundreds of lines; SIGTERM exits 143 after
    cleaning up as Ctrl-C does (:func:`~skruntime.cli.sigterm_as_interrupt`)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with sigterm_as_interrupt():
            app(prog_name="sklicense")  # exits itself on success, usage errors and fail()
    except SQLAlchemyError as err:
        if db.is_busy(err):  # not the URL's or the disk's fault
            _stop(
                db.locked_message(
                    "the database",
                    "another sklicense command, or a transaction of the server",
                    "the command",
                )
            )
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        _stop(f"the database refused: {reason}. {_refusal_advice(err, reason)}")
    except ImportError as err:
        _stop(f"{err}: the database URL names a driver that is not installed.")
    except (SigningKeyError, OSError) as err:
        _stop(str(err))


def _refusal_advice(err: Exception, reason: str) -> str:
    """What to do about a database that refused the command: PostgreSQL's missing database is
    created first (``db upgrade`` creates tables, not databases); the advice about a database
    file and its folder is SQLite's only (it was given for PostgreSQL's refusals too)."""
    where = "Check --database-url (or SKLICENSE_DATABASE_URL)"
    if "psycopg" not in type(getattr(err, "orig", None)).__module__:
        return (
            f"{where}, that the server is reachable, and that the database file and its "
            "folder are writable with space left."
        )
    if missing := re.search(r'database "(.+)" does not exist', reason):
        name = missing[1]  # quoted for the shell and for SQL: a name may hold ' ', ';' or '"'
        return (
            f"{where}, or create the database first (createdb {shlex.quote(name)}, or CREATE "
            f'DATABASE "{name.replace(chr(34), 2 * chr(34))}" in psql), then run '
            "`sklicense db upgrade`."
        )
    return f"{where}: that the server is reachable and its user, password and database exist."


def _stop(message: str) -> None:
    say("Error", message, typer.colors.RED)
    raise SystemExit(1)


def settings_for(database_url: str | None = None, state_dir: Path | None = None) -> Settings:
    """The environment's settings with the command's options; ``--state-dir`` is refused when
    ``SKLICENSE_SIGNING_KEY_FILE`` names another key file than the folder's ``server.key``,
    since it would be ignored (``init`` created the key elsewhere than the folder given). The
    same file named both ways, as a service unit written before this check may, is accepted.
    An empty ``--state-dir`` (typer reads it as ``.``: a shell variable left unset) is refused:
    ``init`` wrote the signing key into the current folder."""
    if state_dir is not None and (problem := empty_path(state_dir, "--state-dir", "a folder")):
        fail(problem)
    try:
        settings = Settings.from_env()
        key_file = settings.signing_key_file
        if (
            state_dir is not None
            and key_file is not None
            and (Path(state_dir) / "server.key").resolve() != Path(key_file).resolve()
        ):
            raise SettingsError(
                f"--state-dir {state_dir} would be ignored: SKLICENSE_SIGNING_KEY_FILE names the "
                f"key file ({settings.signing_key_file}). Leave out --state-dir, or unset "
                "SKLICENSE_SIGNING_KEY_FILE"
            )
        settings = settings.with_overrides(database_url=database_url, state_dir=state_dir)
    except SettingsError as e:
        fail(str(e))
        raise
    where = "--database-url" if database_url is not None else "SKLICENSE_DATABASE_URL"
    if problem := _database_url_problem(settings.database_url):
        fail(f"{where} {problem}")
    return settings


def _database_url_problem(url: str) -> str | None:
    """Why ``url`` is no database URL at all, or None: checked before any work (``init``
    created the signing key first), and said as such, not as a database that refused."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = "sqlite:////var/lib/sklicense/sklicense.db or postgresql://USER@HOST/DATABASE"
    try:
        parsed = make_url(db.normalise_url(url))
    except ArgumentError:  # not echoed: a mistyped URL may hold a password
        return f"is not a database URL (DIALECT://...); pass one such as {example}."
    except ValueError:  # SQLAlchemy's int() of the port: a traceback before
        return (
            "has a port that is not a number (HOST:PORT, e.g. localhost:5432); pass a URL "
            f"such as {example}."
        )
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        return (
            f"names a kind of database that SQLAlchemy does not know, '{parsed.drivername}'; "
            f"pass a URL such as {example}."
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        return (  # `db upgrade` migrated it and said so, then it was gone
            "names an in-memory SQLite database, which is gone when the command "
            f"ends; name a database file, e.g. {example.split(' or ')[0]}."
        )
    return None


def warn(message: str) -> None:
    """A ``Warning:`` line on stderr, yellow on a terminal like every other (:func:`say`)."""
    say("Warning", message, typer.colors.YELLOW)


def warn_loose_key(path: Path) -> None:
    """A warning on stderr when others than its owner may read or change the server key."""
    warning = loose_permissions(path)
    if warning:
        warn(warning)


def admin_session(database_url: str | None) -> Any:
    settings = settings_for(database_url)
    try:
        db.check_migrated(settings.database_url)
    except db.DatabaseNotMigratedError as e:
        fail(str(e))
    return db.session_factory(settings.database_url)


T = TypeVar("T")


def committed(
    database_url: str | None, change: Callable[[Session], T], exists: str | None = None
) -> T:
    """``change(session)`` in one admin transaction; what crud refuses is one Error line, and
    a row that already exists (409) is followed by ``exists``, the command that changes it."""
    sessions = admin_session(database_url)
    try:
        with sessions.begin() as session:
            return change(session)
    except crud.CrudError as e:
        fail(f"{e}: {exists}" if exists and e.status == 409 else str(e))
        raise


def read_kek(path: Path) -> bytes:
    """The KEK in the file `skprotect export-kek` writes; a bad file is one Error line."""
    if problem := empty_path(path, "--kek-file"):  # not "--kek-file . cannot be read"
        fail(problem)
    try:
        return crud.decode_kek(kek_text(path))
    except crud.CrudError as e:
        fail(f"--kek-file {path}: {e}")
        raise
    except OSError as e:
        fail(
            f"--kek-file {path} cannot be read ({e.strerror or e}): pass the file "
            "`skprotect export-kek` wrote"
        )
        raise


MAX_KEK_FILE = 1024
"""Bytes a KEK file may have: `skprotect export-kek` writes 45 (base64 and a newline). Reading
stops past this, so that a wrong file (a model, ``/dev/zero``) is not read whole first."""


def kek_text(path: Path) -> str:
    """The base64 text of a KEK file; a binary or large file is refused with what to pass
    instead. Opened only if it is a regular file: a named pipe blocked the command for ever."""
    with open_regular(path) as file:
        data = file.read(MAX_KEK_FILE + 1)
    if len(data) > MAX_KEK_FILE:
        fail(
            f"{path} is over {MAX_KEK_FILE} bytes, so not a KEK file: pass the file "
            "`skprotect export-kek` writes (45 bytes)"
        )
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        fail(f"{path} is not base64 text: pass the file `skprotect export-kek` writes")
        raise


def seconds_of(days: float, option: str) -> int:
    """``days`` as seconds, refused unless a finite, positive duration of at most 100 years."""
    seconds = days * 86400
    if not math.isfinite(seconds) or not 1 <= round(seconds) <= MAX_LICENCE_SECONDS:
        fail(
            f"{option} must be a number of days over 0 (1 second at least) and up to "
            f"{MAX_LICENCE_SECONDS // 86400}, but got {days}"
        )
    return round(seconds)


def in_range(value: int | None, option: str, low: int, high: int) -> None:
    """Refuse a given ``value`` outside ``[low, high]`` in one line: the database cannot bind
    it, and would fail with a traceback (SQLite) or a misleading refusal (PostgreSQL)."""
    if value is not None and not low <= value <= high:
        fail(f"{option} must be in [{low}, {high}], but got {value}")


def parse_time(
    text: str | None, option: str = "--contract-end", zone: dt.tzinfo = dt.UTC
) -> dt.datetime | None:
    """``option``'s ISO 8601 date (its midnight) or datetime, in ``zone`` when it names none
    (``--contract-end``: UTC; ``--since``/``--until``: ``--timezone``, each bound with the
    offset of its own date, so a month across a daylight saving change is still midnight to
    midnight); None when not given. An empty text is refused: only ``none`` clears a contract
    end, where the command allows it."""
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{option} must be an ISO 8601 date or datetime, but got {text!r}")
        raise
    try:
        return aware_datetime(value if value.tzinfo else value.replace(tzinfo=zone))
    except ValueError as err:
        fail(f"{option} {err}, but got {text!r}")
        raise


def migrate(url: str) -> None:
    """``db.upgrade``; a database that a newer release migrated, or a SQLite path that is a
    folder, is one error line."""
    try:
        db.upgrade(url)
    except db.DatabaseNotMigratedError as e:
        fail(str(e))


def _json_value(value: Any) -> str:
    """A value ``json`` cannot write: times in ISO 8601, as the admin API and the other
    listings write them (``str`` would put a space before the time), anything else as text."""
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


def echo_json(rows: Any) -> None:
    typer.echo(json.dumps(rows, indent=2, default=_json_value))


@app.command()
def init(state_dir: StateDir = None, database_url: DatabaseUrl = None) -> None:
    """Create the server signing key (mode 0600) and migrate the database."""
    settings = settings_for(database_url, state_dir)
    try:
        created = create_signing_key(settings.key_path)
        key = load_signing_key(settings.key_path)
    except SigningKeyError as e:
        fail(str(e))
        raise
    typer.echo(f"{'Created' if created else 'Kept existing'} signing key {settings.key_path}")
    warn_loose_key(settings.key_path)
    typer.echo(f"Server public key (pin it in the runtime): {public_key_b64(key)}")
    migrate(settings.database_url)
    typer.echo(f"Database {db.safe_url(settings.database_url)} is at revision {db.head_revision()}")
    if created:
        with db.session_factory(settings.database_url)() as session:
            issued, latest = crud.issued_licences(session)
        if issued:
            warn(
                f"the new signing key {settings.key_path} serves a database that already holds "
                f"{issued} licence(s) (the latest issued at {latest.isoformat()}), signed by "
                "another key, the one the devices pin: served with this key, each device whose "
                "runtime does not pin it too is charged at its next licence request for a "
                "licence it refuses. If the server's key was lost, delete this one and restore "
                "that key from a backup before serving; if you are rotating the key, serve it "
                "only once every device runs a runtime pinning both keys (docs/licensing.md, "
                "Rotating the signing key)"
            )


def _listen_addresses(host: str, port: int, workers: int) -> list[tuple[Any, ...]]:
    """What uvicorn binds for ``--host``/``--port`` (family, address, IPv6-only): with one
    worker, asyncio's ``create_server`` binds every address ``host`` resolves to, the IPv6 ones
    IPv6-only; with more, uvicorn's ``Config.bind_socket`` binds one socket, IPv6 when ``host``
    holds ``:``, else IPv4, which resolves ``host`` as it binds. Resolved first either way:
    raises ``socket.gaierror`` for a host that resolves to nothing."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if workers > 1:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [(family, (host, port), False)]
    return [(family, address, family == socket.AF_INET6) for family, *_, address in set(found)]


def listen_problem(host: str, port: int, workers: int = 1) -> str | None:
    """Why ``serve`` cannot listen on ``host:port``, or None: an empty host (uvicorn listened on
    every interface, not the loopback the help promises), a host that does not resolve, or an
    address in use or not allowed. uvicorn said these after starting, in a log line, exit 3.
    Binds what uvicorn will with ``workers`` (:func:`_listen_addresses`), all at once."""
    if not host.strip():
        return (
            "--host is empty, which listens on every interface: pass an address, e.g. "
            "127.0.0.1 (the default), or 0.0.0.0 to listen on all IPv4 interfaces"
        )
    try:
        addresses = _listen_addresses(host, port, workers)
    except (socket.gaierror, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or err
        return f"--host {host!r} cannot be resolved ({reason}): pass an address or a host name"
    with contextlib.ExitStack() as probes:
        for family, address, v6_only in addresses:
            probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            if v6_only:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except socket.gaierror:  # workers > 1: bind resolves it, as IPv4
                return (
                    f"--host {host} has no IPv4 address, and with --workers over 1 uvicorn "
                    "listens on IPv4 unless --host is an IPv6 address: pass its IPv6 address"
                )
            except OSError as err:
                where = host if address[0] == host else f"{host} ({address[0]})"
                in_use = "stop what uses that port, or " if err.errno == errno.EADDRINUSE else ""
                return (
                    f"cannot listen on {where} port {port} ({err.strerror or err}): {in_use}pass "
                    "another --port or --host"
                )
    return None


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    database_url: DatabaseUrl = None,
    state_dir: StateDir = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Serve the HTTP API (refuses an unmigrated database)."""
    import uvicorn

    from sklicense.api.main import create_app

    in_range(port, "--port", 1, 65535)
    in_range(workers, "--workers", 1, INT32_MAX)
    settings = settings_for(database_url, state_dir)
    try:
        settings.check_production()
        db.check_migrated(settings.database_url)
        create_app(settings)  # fail fast here rather than inside uvicorn
    except (SettingsError, db.DatabaseNotMigratedError, SigningKeyError) as e:
        fail(str(e))
    if problem := listen_problem(host, port, workers):  # last: a configuration error first
        fail(problem)
    warn_loose_key(settings.key_path)
    os.environ["SKLICENSE_DATABASE_URL"] = settings.database_url
    os.environ["SKLICENSE_STATE_DIR"] = str(settings.state_dir)
    # uvicorn stops gracefully on SIGTERM and raises it again, so the server then ends by the
    # signal, a clean stop to a service manager; main()'s handler made it exit status 143,
    # which systemd reads as a failed service
    with sigterm_handled_by(signal.SIG_DFL):
        uvicorn.run(
            "sklicense.api.main:create_app", factory=True, host=host, port=port, workers=workers
        )


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Migrate the database to the latest revision."""
    settings = settings_for(database_url)
    migrate(settings.database_url)
    typer.echo(f"Database {db.safe_url(settings.database_url)} is at revision {db.head_revision()}")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin or read-only.")] = "admin",
    expires_days: Annotated[
        float | None,
        typer.Option(help="Days until the token expires (default: valid until revoked)."),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an admin API token; it is printed once (only its SHA-256 is stored)."""
    expires_at = None
    if expires_days is not None:
        seconds = seconds_of(expires_days, "--expires-days")
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        expires_at = now + dt.timedelta(seconds=seconds)

    def create(session: Session) -> None:
        show_once(crud.create_token(session, role, CLI_ACTOR, expires_at))

    committed(database_url, create)


def show_once(token: str) -> None:
    """Print a new token within the transaction that creates it: standard output closed or a
    broken pipe fails the command and rolls the token back, where it stayed valid while nobody
    had seen it (or, with no standard output at all, was not printed without a word)."""
    try:
        if sys.stdout is None:  # started with stdout closed: click.echo prints nothing
            raise OSError(errno.EBADF, "standard output is closed")
        typer.echo(token)
    except OSError as err:
        discard_stdout()
        fail(
            f"the token could not be printed ({err.strerror or err}), so it was not created: run "
            "the command again with its output to a terminal, a file or a pipe read to its end"
        )


@token_app.command("list")
def token_list(database_url: DatabaseUrl = None) -> None:
    """List tokens: id, role, times and fingerprint, never the token.

    The fingerprint is the start of the token's SHA-256, as in the audit log's
    token:FINGERPRINT actors.
    """
    with admin_session(database_url)() as session:
        echo_json([crud.token_row(t) for t in crud.list_tokens(session)])


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The id `token list` shows.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token: its next request gets 401."""
    committed(database_url, lambda s: crud.revoke_token(s, token_id, CLI_ACTOR))
    typer.echo(f"Revoked token {token_id}")


NEW_APP_HELP = "The application's name, as its configuration files and licence requests name it."
AppName = Annotated[
    str, typer.Argument(help="The application's name (`sklicense app list` shows them).")
]
DeviceId = Annotated[
    str, typer.Argument(help="The device's id (`sklicense device list` shows them).")
]
MAX_DEVICES_HELP = "Maximum registered devices (a revoked device keeps its slot)."
PUBLIC_KEY_HELP = (
    "Base64 Ed25519 key that signs the application's configuration files (`skprotect "
    "export-kek` prints it; it is also the configuration file's public_key)."
)
PublicKeyOption = Annotated[str | None, typer.Option(help=PUBLIC_KEY_HELP)]
UNBOUND_WARNING = (
    "application {name!r} has no public key, so a device can name any customer id in "
    "its licence requests. Register it: sklicense app set-public-key {name} KEY"
)


@app_app.command("create")
def app_create(
    name: Annotated[str, typer.Argument(help=NEW_APP_HELP)],
    kek_file: Annotated[
        Path | None, typer.Option(help="The base64 file `skprotect export-kek` writes.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="A model licences may name (repeat); none given: any model."),
    ] = None,
    public_key: PublicKeyOption = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an application, optionally with its KEK, model list and configuration key.

    The configuration key is the public key that signs the application's configuration files.
    """
    kek = read_kek(kek_file) if kek_file else None
    committed(
        database_url,
        lambda s: crud.create_application(s, name, kek, CLI_ACTOR, model or None, public_key),
        exists=f"change it with sklicense app import-kek {name} --kek-file FILE, "
        f"sklicense app set-public-key {name} KEY or sklicense app set-models {name} --model M",
    )
    registered = [what for what, given in (("KEK", kek_file), ("public key", public_key)) if given]
    typer.echo(
        f"Created application {name!r}"
        + (f" with its {' and '.join(registered)}" if registered else "")
    )
    if public_key is None:
        warn(UNBOUND_WARNING.format(name=name))


@app_app.command("set-public-key")
def app_set_public_key(
    name: AppName,
    public_key: Annotated[str, typer.Argument(help=PUBLIC_KEY_HELP)],
    database_url: DatabaseUrl = None,
) -> None:
    """Register (or replace) the key that signs an application's configuration files."""
    committed(
        database_url,
        lambda s: crud.set_public_key(s, crud.get_application(s, name), public_key, CLI_ACTOR),
    )
    typer.echo(
        f"Registered the configuration key of application {name!r}: licence requests must now "
        "carry a configuration it signed for the customer they name"
    )


@app_app.command("import-kek")
def app_import_kek(
    name: AppName,
    kek_file: Annotated[Path, typer.Option(help="The base64 file `skprotect export-kek` writes.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Import (or replace) an application's key-encryption key."""
    kek = read_kek(kek_file)

    def replace(session: Session) -> str | None:
        """Import the KEK; what to warn of when it replaced another one."""
        application = crud.get_application(session, name)
        previous = application.kek
        crud.import_kek(session, application, kek, CLI_ACTOR)
        return crud.kek_warning(session, application, previous, dt.datetime.now(dt.UTC))

    warning = committed(database_url, replace)
    typer.echo(f"Imported the KEK of application {name!r}")
    if warning is not None:
        warn(warning)


@app_app.command("set-models")
def app_set_models(
    name: AppName,
    model: Annotated[
        list[str] | None, typer.Option(help="A model licences may name (repeat).")
    ] = None,
    any_model: Annotated[bool, typer.Option("--any", help="Licences may name any model.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Replace the model names an application's licences may name."""
    if bool(model) == any_model:
        fail("give --model (repeat it for each model) or --any, not both and not neither")
    committed(
        database_url,
        lambda s: crud.set_models(s, crud.get_application(s, name), model, CLI_ACTOR),
    )
    typer.echo(
        f"Application {name!r} licences may name "
        + ("any model" if any_model else ", ".join(map(repr, model or [])))
    )


@app_app.command("list")
def app_list(database_url: DatabaseUrl = None) -> None:
    """List applications."""
    with admin_session(database_url)() as session:
        echo_json(
            [
                {
                    "id": a.id,
                    "name": a.name,
                    "has_kek": a.kek is not None,
                    "models": a.models,
                    "public_key": a.public_key,
                }
                for a in crud.list_applications(session)
            ]
        )


def customer_row(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "contract_end": c.contract_end.isoformat() if c.contract_end else None,
        "inference_quota": c.inference_quota,
        "inferences_granted": c.inferences_granted,
        "max_devices": c.max_devices,
        "default_licence_seconds": c.default_licence_seconds,
    }


@customer_app.command("create")
def customer_create(
    id: Annotated[int, typer.Option("--id", help="The Customer.id of the configuration.")],
    name: Annotated[str, typer.Option(help="Customer name.")],
    contract_end: Annotated[str | None, typer.Option(help="ISO 8601, UTC if no zone.")] = None,
    quota: Annotated[int | None, typer.Option(help="Total inference quota.")] = None,
    max_devices: Annotated[int, typer.Option(help=MAX_DEVICES_HELP)] = 1,
    default_days: Annotated[float, typer.Option(help="Default licence duration (days).")] = 30,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a customer (needs --contract-end and/or --quota)."""
    in_range(id, "--id", 0, INT64_MAX)
    in_range(quota, "--quota", 0, INT64_MAX)
    in_range(max_devices, "--max-devices", 1, INT32_MAX)
    fields = {
        "id": id,
        "name": name,
        "contract_end": parse_time(contract_end),
        "inference_quota": quota,
        "max_devices": max_devices,
        "default_licence_seconds": seconds_of(default_days, "--default-days"),
    }

    def add(session: Session) -> tuple[Any, str | None]:
        customer = crud.create_customer(session, CLI_ACTOR, **fields)
        return customer, customer_warning(session, customer, fields)

    customer, warning = committed(
        database_url, add, exists=f"change it with sklicense customer edit --id {id}"
    )
    echo_json(customer_row(customer))
    if warning:
        warn(warning)


def customer_warning(session: Session, customer: Any, changes: dict[str, Any]) -> str | None:
    """What to tell the admin after ``customer create`` or ``edit`` (:func:`crud.customer_warning`:
    a contract end not in the future, a quota that licences issued without one escape)."""
    fix = f"sklicense customer edit --id {customer.id} --contract-end DATE"
    return crud.customer_warning(session, customer, changes, dt.datetime.now(dt.UTC), fix)


@customer_app.command("edit")
def customer_edit(
    id: Annotated[int, typer.Option("--id", help="The customer to edit.")],
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    contract_end: Annotated[str | None, typer.Option(help="ISO 8601; 'none' clears it.")] = None,
    quota: Annotated[int | None, typer.Option(help="Total quota; -1 clears it.")] = None,
    max_devices: Annotated[int | None, typer.Option(help=MAX_DEVICES_HELP)] = None,
    default_days: Annotated[float | None, typer.Option(help="Default duration (days).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Change a customer's policies."""
    in_range(id, "--id", 0, INT64_MAX)
    in_range(quota, "--quota", -1, INT64_MAX)
    in_range(max_devices, "--max-devices", 1, INT32_MAX)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if contract_end is not None:
        changes["contract_end"] = None if contract_end == "none" else parse_time(contract_end)
    if quota is not None:
        changes["inference_quota"] = None if quota == -1 else quota
    if max_devices is not None:
        changes["max_devices"] = max_devices
    if default_days is not None:
        changes["default_licence_seconds"] = seconds_of(default_days, "--default-days")
    if not changes:
        fail(
            "nothing would change: give at least one of --name, --contract-end, --quota, "
            "--max-devices, --default-days"
        )

    def edit(session: Session) -> tuple[Any, str | None]:
        customer = crud.update_customer(session, id, CLI_ACTOR, **changes)
        return customer, customer_warning(session, customer, changes)

    customer, warning = committed(database_url, edit)
    echo_json(customer_row(customer))
    if warning:
        warn(warning)


@customer_app.command("list")
def customer_list(database_url: DatabaseUrl = None) -> None:
    """List customers."""
    with admin_session(database_url)() as session:
        echo_json([customer_row(c) for c in crud.list_customers(session)])


@device_app.command("list")
def device_list(
    customer: Annotated[int | None, typer.Option(help="Only this customer's devices.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List devices."""
    in_range(customer, "--customer", 0, INT64_MAX)
    with admin_session(database_url)() as session:
        echo_json(
            [
                {
                    "id": d.id,
                    "customer_id": d.customer_id,
                    "status": d.status,
                    "duration_override_seconds": d.duration_override_seconds,
                    "created_at": d.created_at.isoformat(),
                }
                for d in crud.list_devices(session, customer)
            ]
        )


@device_app.command("revoke")
def device_revoke(device_id: DeviceId, database_url: DatabaseUrl = None) -> None:
    """Revoke a device: its licence requests are denied from now on."""
    _update_device(database_url, device_id, status="revoked")
    typer.echo(f"Revoked device {device_id}")


@device_app.command("edit")
def device_edit(
    device_id: DeviceId,
    duration_days: Annotated[
        float | None, typer.Option(help="Licence duration override (days); -1 clears it.")
    ] = None,
    activate: Annotated[
        bool, typer.Option("--activate", help="Reactivate a revoked device.")
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a device's duration override or reactivate it."""
    changes: dict[str, Any] = {}
    if duration_days is not None:
        changes["duration_override_seconds"] = (
            None if duration_days == -1 else seconds_of(duration_days, "--duration-days")
        )
    if activate:
        changes["status"] = "active"
    if not changes:
        fail("nothing would change: give --duration-days and/or --activate")
    _update_device(database_url, device_id, **changes)
    typer.echo(f"Updated device {device_id}")


@licence_app.command("list")
def licence_list(
    customer: Annotated[int | None, typer.Option(help="Only this customer's licences.")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device's licences.")] = None,
    limit: Annotated[int, typer.Option(help="Newest licences to show.")] = 100,
    database_url: DatabaseUrl = None,
) -> None:
    """List issued licences, newest first: device, customer, application, models, times and
    allowance (inferences; null: no quota). At most --limit of them (a device renewing daily
    adds 365 a year: listing them all took 15 s and 627 MB for 200,000); when more match, a
    note on stderr says so."""
    in_range(customer, "--customer", 0, INT64_MAX)
    in_range(limit, "--limit", 1, INT64_MAX)
    if device is not None and text_problem(device):  # no device holds one (nor can PostgreSQL)
        fail(f"--device {text_problem(device)}: pass an id `sklicense device list` shows")
    with admin_session(database_url)() as session:
        names = {a.id: a.name for a in crud.list_applications(session)}
        licences = crud.list_licences(session, customer, device, limit)
        more = len(licences) == limit and crud.list_licences(session, customer, device, 1, limit)
        echo_json(
            [
                {
                    "id": lic.id,
                    "device_id": lic.device_id,
                    "customer_id": lic.customer_id,
                    "application": names.get(lic.application_id),
                    "models": lic.models,
                    "issued_at": lic.issued_at.isoformat(),
                    "expires_at": lic.expires_at.isoformat(),
                    "inferences": lic.inferences,
                }
                for lic in licences
            ]
        )
    if more:
        say(
            "Note",
            f"only the newest {limit} licences are listed, more match: raise --limit, or "
            "choose with --customer or --device",
            typer.colors.YELLOW,
        )


def _update_device(database_url: str | None, device_id: str, **changes: Any) -> None:
    committed(database_url, lambda s: crud.update_device(s, device_id, CLI_ACTOR, **changes))


def time_zone(name: str) -> dt.tzinfo:
    """``--timezone``: UTC, or an IANA zone name such as Europe/Berlin."""
    if name.upper() == "UTC":
        return dt.UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(
            f"--timezone must be UTC or an IANA time zone name such as Europe/Berlin, but got "
            f"{name!r} (on Windows: pip install tzdata)"
        )
        raise


@app.command()
def usage(
    customer: Annotated[int | None, typer.Option(help="Only this customer.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Period start: reports received at or after it (ISO 8601 date or time)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Period end: reports received before it (ISO 8601 date or time)."),
    ] = None,
    timezone: Annotated[
        str, typer.Option(help="Zone of --since/--until without one (e.g. Europe/Berlin).")
    ] = "UTC",
    database_url: DatabaseUrl = None,
) -> None:
    """Reported usage: the latest counter per licence; with --since/--until, what was used in
    that period (used = counter - counter_at_start)."""
    in_range(customer, "--customer", 0, INT64_MAX)
    zone = time_zone(timezone)
    start, end = parse_time(since, "--since", zone), parse_time(until, "--until", zone)
    if start is not None and end is not None and end <= start:
        fail(f"--until ({end.isoformat()}) must be after --since ({start.isoformat()})")
    with admin_session(database_url)() as session:
        echo_json(crud.usage_summary(session, customer, since=start, until=end))


@app.command()
def audit(
    limit: Annotated[int, typer.Option(help="Newest entries to show.")] = 50,
    database_url: DatabaseUrl = None,
) -> None:
    """The audit log, newest first."""
    in_range(limit, "--limit", 1, INT64_MAX)
    with admin_session(database_url)() as session:
        echo_json(
            [
                {
                    "id": e.id,
                    "at": e.at.isoformat(),
                    "actor": e.actor,
                    "action": e.action,
                    "target": e.target,
                    "detail": e.detail,
                }
                for e in crud.list_audit(session, limit)
            ]
        )
