"""How many licence requests the licence server answers per second, on SQLite and PostgreSQL,
with one and more server processes, and whether the quota count stays exact under that load.

For each backend and process count this provisions a fresh database (a temporary SQLite file, or
a temporary PostgreSQL database created on ``--postgres`` and dropped afterwards), creates the
server's signing key, an application with a key-encryption key (so every licence carries a KEK
wrapped to the device, as on the LINUX platform) and one customer, starts ``sklicense serve
--workers N`` as a subprocess, and runs ``--clients`` devices in threads that each send signed
``POST /v1/licences`` requests (one inference each) over a kept-alive connection for
``--seconds``. Each device is a real :class:`skruntime.licensing.identity.DeviceIdentity`.

Printed per cell: requests answered, requests per second, median and 99th-percentile latency,
requests refused or failed, the quota check (the customer's ``inferences_granted`` read from the
database must equal the number of licences answered; a mismatch stops the bench), and the
clients' CPU time per second of wall time (near 1: the clients, not the server, set the pace).

    python bench/licence_throughput.py                          # sqlite and postgres, 1 and 2
    python bench/licence_throughput.py --backends sqlite --processes 1 --seconds 3

The clients run on the same machine as the server and share its cores, so the figures are what
one host serving itself sustains, a lower bound for a server with cores of its own. No result is
asserted: the numbers depend on the machine, which the output names.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from machine import comma_names, machine_line
from overhead import command_line
from sklicense import crud, db
from sklicense.embedded import free_port, init_state
from sklicense.models import Customer
from sklicense.settings import Settings
from skruntime.licensing import protocol
from skruntime.licensing.identity import DeviceIdentity

APPLICATION = "bench-app"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Cell:
    """What the clients saw against one server setup."""

    backend: str
    processes: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    first_refusal: str = ""
    granted: int = 0
    client_cpu: float = 0.0
    """CPU seconds the client threads used: near ``seconds`` means the clients were the limit."""

    def row(self) -> str:
        n = len(self.latencies)
        ms = sorted(1e3 * t for t in self.latencies)
        p99 = ms[min(n - 1, int(0.99 * n))] if n else float("nan")
        refused = ", ".join(f"{k} {v}" for k, v in sorted(self.refused.items())) or "0"
        exact = "exact" if self.granted == n else f"MISMATCH ({self.granted} granted)"
        return (
            f"| {self.backend} | {self.processes} | {n:,} | {n / self.seconds:,.0f} | "
            f"{statistics.median(ms) if n else float('nan'):.1f} | {p99:.1f} | {refused} | "
            f"{exact} | {self.client_cpu / self.seconds:.2f} |"
        )


def provision(url: str, state_dir: Path, customers: int, binding: bool) -> dict[int, dict] | None:
    """Signing key, migrated schema, an application with a KEK and ``customers`` customers;
    with ``binding``, the application's public key too, and per customer the signed
    configuration its devices send (docs/licensing.md, customer binding)."""
    init_state(Settings(database_url=url, state_dir=state_dir))
    vendor = Ed25519PrivateKey.generate()
    public_key = protocol.b64(vendor.public_key().public_bytes_raw()) if binding else None
    sessions = db.session_factory(url)
    with sessions.begin() as session:
        crud.create_application(
            session, APPLICATION, secrets.token_bytes(32), "bench", public_key=public_key
        )
        for customer in range(1, customers + 1):
            crud.create_customer(
                session,
                "bench",
                id=customer,
                name=f"Bench {customer}",
                contract_end=None,
                inference_quota=10**12,
                max_devices=10**6,
                default_licence_seconds=86400,
            )
    if not binding:
        return None
    configurations: dict[int, dict] = {}
    for customer in range(1, customers + 1):
        payload = {
            "platform_version": 2,
            "platform": "LINUX",
            "application": APPLICATION,
            "models": {"bench-model": {"key_epoch": 0}},
            "customer": {"id": customer, "name": f"Bench {customer}"},
        }
        configurations[customer] = {"payload": payload, "signature": protocol.sign(payload, vendor)}
    return configurations


def granted(url: str) -> int:
    """Inferences granted to all customers, as the database counts them."""
    with db.session_factory(url)() as session:
        return sum(c.inferences_granted for c in session.scalars(select(Customer)))


def start_server(
    url: str, state_dir: Path, processes: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """``sklicense serve --workers processes`` on a free port; returns (process, base URL)."""
    port = free_port()
    env = os.environ | {
        "SKLICENSE_DATABASE_URL": url,
        "SKLICENSE_STATE_DIR": str(state_dir),
        "SKLICENSE_LICENCE_REQUESTS_PER_MINUTE": str(10**9),  # measure work, not the limiter
        "SKLICENSE_NEW_DEVICE_REQUESTS_PER_MINUTE": str(10**9),
    }
    command = [sys.executable, "-m", "sklicense", "serve", "--port", str(port)]
    command += ["--workers", str(processes)]
    with log.open("wb") as out:  # the server writes to its own copy of the descriptor
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"sklicense serve exited ({server.returncode}): {log.read_text()}")
        try:
            if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.terminate()
    raise SystemExit(f"sklicense serve did not answer /v1/health within 60 s: {log.read_text()}")


def device_loop(
    base: str,
    state_dir: Path,
    customer: int,
    configuration: dict | None,
    until: float,
    cell: Cell,
    lock: threading.Lock,
) -> None:
    """One device of ``customer``: signed licence requests for one inference each until
    ``until`` (at least one, so a slow start still gives every device an answer to check),
    carrying the customer's signed ``configuration`` when the server binds them."""
    identity = DeviceIdentity.load_or_create(state_dir)
    latencies, refused, first = [], {}, ""
    with httpx.Client(base_url=base, timeout=30) as client:
        while (not latencies and not refused) or time.perf_counter() < until:
            body = {
                "device_id": identity.device_id,
                "customer_id": customer,
                "application": APPLICATION,
                "models": ["bench-model"],
                "config_sha256": "ab" * 32,
                "signing_public_key": identity.signing_public_key_b64,
                "exchange_public_key": identity.exchange_public_key_b64,
                "timestamp": int(time.time()),
                "nonce": protocol.new_nonce(),
                "requested_inferences": 1,
            }
            if configuration is not None:
                body["configuration"] = configuration
            headers = {protocol.SIGNATURE_HEADER: identity.sign(body)}
            start = time.perf_counter()
            try:
                response = client.post("/v1/licences", json=body, headers=headers)
            except httpx.HTTPError as err:
                refused[type(err).__name__] = refused.get(type(err).__name__, 0) + 1
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                reason = f"HTTP {response.status_code}"
                refused[reason] = refused.get(reason, 0) + 1
                first = first or f"{reason}: {response.text[:300]}"
    with lock:
        cell.first_refusal = cell.first_refusal or first
        cell.latencies += latencies
        for k, v in refused.items():
            cell.refused[k] = cell.refused.get(k, 0) + v


def measure(cell: Cell, url: str, work: Path, args: argparse.Namespace) -> Cell:
    state = work / "server"
    configurations = provision(url, state, args.customers, not args.no_binding)
    server, base = start_server(url, state, cell.processes, work / "server.log")
    try:
        lock = threading.Lock()
        cpu = time.process_time()
        start = time.perf_counter()
        until = start + args.seconds
        owner = [i % args.customers + 1 for i in range(args.clients)]  # customer i mod K + 1
        threads = [
            threading.Thread(
                target=device_loop,
                args=(
                    base,
                    work / f"dev{i}",
                    owner[i],
                    configurations[owner[i]] if configurations else None,
                    until,
                    cell,
                    lock,
                ),
            )
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cell.seconds = time.perf_counter() - start
        cell.client_cpu = time.process_time() - cpu
    finally:
        server.terminate()
        server.wait(timeout=30)
    cell.granted = granted(url)
    return cell


class TemporaryPostgres:
    """A fresh database on the ``maintenance`` server, dropped on exit."""

    def __init__(self, maintenance: str) -> None:
        self.maintenance = maintenance
        self.name = f"sklicense_bench_{secrets.token_hex(6)}"
        self.url = db.normalise_url(f"{maintenance.rsplit('/', 1)[0]}/{self.name}")

    def __enter__(self) -> str:
        import psycopg

        try:
            with psycopg.connect(self.maintenance, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'CREATE DATABASE "{self.name}"')
        except psycopg.OperationalError as err:
            raise SystemExit(
                f"PostgreSQL at {self.maintenance} is unreachable ({err}); start it, pass "
                "--postgres URL, or run --backends sqlite."
            ) from None
        return self.url

    def __exit__(self, *exc: object) -> None:
        import psycopg

        db.get_engine(self.url).dispose()
        with psycopg.connect(self.maintenance, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def run_cell(backend: str, processes: int, args: argparse.Namespace) -> Cell:
    cell = Cell(backend, processes)
    with tempfile.TemporaryDirectory(prefix="skprotect-licbench-") as tmp:
        work = Path(tmp)
        if backend == "sqlite":
            return measure(cell, f"sqlite:///{work / 'bench.db'}", work, args)
        with TemporaryPostgres(args.postgres) as url:
            return measure(cell, url, work, args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--processes", default="1,2", help="server processes, comma-separated")
    parser.add_argument("--clients", type=int, default=8, help="devices sending at once")
    parser.add_argument(
        "--customers",
        type=int,
        default=1,
        help="customers the devices are spread over (one customer's requests take turns on "
        "its row lock, which keeps its quota exact)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell")
    parser.add_argument(
        "--no-binding",
        action="store_true",
        help="register no application public key and send no configuration (customers taken "
        "on trust): the cost of the customer binding, by difference",
    )
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="maintenance database URL")
    args = parser.parse_args(argv)
    backends = comma_names(parser, args.backends, "--backends", "backend", ("sqlite", "postgres"))
    try:
        counts = [int(p) for p in args.processes.split(",") if p.strip()]
    except ValueError:
        parser.error(f"--processes takes integers separated by commas, got {args.processes!r}")
    if not counts or min(counts, default=0) < 1 or min(args.clients, args.customers) < 1:
        parser.error("--processes, --clients and --customers must be ≥ 1")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    cells = []
    for backend in backends:
        for processes in counts:
            print(f"{backend}, {processes} process(es): {args.seconds:g} s", file=sys.stderr)
            cells.append(run_cell(backend, processes, args))
            print(cells[-1].row(), file=sys.stderr, flush=True)
    print(f"machine: {machine_line()}")
    print(f"command: {command_line()}")
    print(
        f"{args.clients} devices of {args.customers} customer(s) in threads of this process, "
        "one inference per licence, customers "
        + ("taken on trust" if args.no_binding else "bound (signed configuration)")
    )
    print()
    print(
        "| backend | server processes | licences | per second | median ms | p99 ms | "
        "refused | quota count | client CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|---:|")
    for cell in cells:
        print(cell.row())
    for cell in cells:
        if cell.first_refusal:
            print(f"first refusal, {cell.backend} × {cell.processes}: {cell.first_refusal}")
    if mismatched := [c for c in cells if c.granted != len(c.latencies)]:
        raise SystemExit(f"the quota count is wrong in {len(mismatched)} cell(s): see above")
    if empty := [c for c in cells if not c.latencies]:
        raise SystemExit(f"no licence was answered in {len(empty)} cell(s): see the refusals")


if __name__ == "__main__":
    main()
