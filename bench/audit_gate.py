"""The security gate of issue 5: every reference model × attack × budget × seed, one report.

    python bench/audit_gate.py --out audit-gate            # the full gate (hours)
    python bench/audit_gate.py --out /tmp/g --quick --models mlp --budgets 1
    python bench/audit_gate.py --out g --cells cells --models mlp --budgets 25 &   # two processes
    python bench/audit_gate.py --out g --cells cells --models mlp --budgets 25     # share the cells

Writes ``audit_gate.md`` and ``audit_gate.json`` to ``--out`` (rewritten after every model, so
a long run that stops keeps what it measured), prints progress with elapsed times, and exits 1
unless every model ran and passed.  With ``--cells DIR`` every finished cell (a baseline, or one
attack variant at one budget) is kept in DIR with the networks it attacks, so a stopped run
goes on where it stopped, and two processes on the same DIR share the work
(``skprotect_pytorch.audit.cells``).  The markdown starts with the exact command and the date:
it is the text committed as ``docs/security.md``'s measured section.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from machine import machine_line
from skprotect_pytorch.audit import ATTACKS, SUITE, AuditConfig, AuditReport, run_audit
from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import LockSettings
from skprotect_pytorch.lock.context import DEFAULT_PRESET, LOCK_PRESETS
from skruntime.config import atomic_write_bytes

GATE_BUDGETS = (1.0, 5.0, 10.0, 25.0)
GATE_SEEDS = 3


@dataclass
class GateResult:
    """The reports of one gate run, per model, with what failed to run."""

    command: str
    date: str
    machine: str
    reports: dict[str, AuditReport] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            not self.errors and bool(self.reports) and all(r.passed for r in self.reports.values())
        )

    def to_json(self) -> str:
        data = {
            "command": self.command,
            "date": self.date,
            "machine": self.machine,
            "seconds": self.seconds,
            "passed": self.passed,
            "models": {name: json.loads(r.to_json()) for name, r in self.reports.items()},
            "errors": self.errors,
        }
        return json.dumps(data, indent=2)

    def to_markdown(self) -> str:
        lines = [
            "# Audit gate",
            "",
            f"Command ({self.date}):",
            "",
            "```",
            self.command,
            "```",
            "",
            f"Machine: {self.machine}. Total time: {self.seconds:.0f} s. "
            f"Gate: **{'PASS' if self.passed else 'FAIL'}**.",
            "",
            "| model | accuracy with key % | chance % | rows | failed rows | not run | time s "
            "| gate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in self.reports.items():
            failed = sum(not row.passed for row in r.rows)
            partial = f" ({', '.join(r.gated_not_asked)} not run)" if r.gated_not_asked else ""
            lines.append(
                f"| {name} | {100 * r.full_accuracy:.2f} | {100 * r.chance:.2f} | {len(r.rows)} "
                f"| {failed} | {len(r.not_run)} | {r.seconds:.0f} | "
                f"{'PASS' if r.passed else 'FAIL'}{partial} |"
            )
        lines += [f"| {name} | | | | | | | ERROR: {err} |" for name, err in self.errors.items()]
        for r in self.reports.values():
            lines += ["", "#" + r.to_markdown()]  # each model's report one heading level down
        return "\n".join(lines) + "\n"

    def write(self, out: Path) -> None:
        """Both reports, each written atomically: a full disk keeps the previous one."""
        for name, text in (
            ("audit_gate.md", self.to_markdown()),
            ("audit_gate.json", self.to_json()),
        ):
            try:
                atomic_write_bytes(out / name, text.encode("utf-8"))
            except OSError as err:
                raise SystemExit(
                    f"could not write {out / name} ({err.strerror or err}); the finished cells "
                    "are kept in --cells if you gave it: free space, then rerun the same "
                    "command with --stored-only to write the reports"
                ) from None


def prepare_out(out: Path) -> None:
    """Create the report folder, or stop before any work if it cannot take the reports."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"--out {out}: cannot create it ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise SystemExit(f"--out {out}: not writable; pass a folder you can write to")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The gate's options; defaults are the full gate."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the reports")
    p.add_argument("--quick", action="store_true", help="one-point sweep, one seed")
    p.add_argument("--models", default=",".join(SUITE), help="comma-separated suite names")
    p.add_argument("--budgets", default=",".join(f"{b:g}" for b in GATE_BUDGETS))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--seeds", type=int, default=None, help=f"default {GATE_SEEDS} (1 if quick)")
    p.add_argument("--victim-epochs", type=int, default=None, help="default: the suite's")
    p.add_argument(
        "--cells",
        type=Path,
        help="folder that keeps finished cells and the attacked networks: rerun to resume, or "
        "run two processes on it to share the work",
    )
    p.add_argument(
        "--stored-only",
        action="store_true",
        help="compute nothing: report what --cells holds and list the missing cells as not run",
    )
    p.add_argument("--preset", default=DEFAULT_PRESET, help="lock preset (strong, balanced)")
    p.add_argument(
        "--mix-condition",
        type=float,
        help="condition number of the public mixing blocks (default: the preset's; 1 = orthogonal)",
    )
    args = p.parse_args(argv)
    args.models = _csv(args.models)
    args.attacks = _csv(args.attacks)
    try:
        args.budgets = tuple(float(b) for b in _csv(args.budgets))
    except ValueError:
        p.error(f"--budgets must be numbers separated by commas, got '{args.budgets}'")
    for name in args.models:
        if name not in SUITE:
            p.error(f"unknown model '{name}'; choose from {', '.join(SUITE)}")
    if not args.models:
        p.error(f"--models takes suite names separated by commas: {', '.join(SUITE)}")
    if len(set(args.models)) < len(args.models):
        p.error(f"--models lists a model twice ('{','.join(args.models)}'); give each once")
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        p.error(f"unknown attacks {unknown}; implemented: {', '.join(ATTACKS)}")
    if args.preset not in LOCK_PRESETS:
        p.error(f"unknown preset '{args.preset}'; choose from {', '.join(LOCK_PRESETS)}")
    overrides = {} if args.mix_condition is None else {"mix_condition": args.mix_condition}
    try:
        args.settings = LockSettings.preset(args.preset, **overrides)
    except ValueError as err:
        p.error(str(err))
    if args.stored_only and args.cells is None:
        p.error("--stored-only reports a cell folder: give --cells too")
    if not args.budgets or any(not 0 < b <= 100 for b in args.budgets):
        p.error("every budget must be in (0, 100]")
    try:  # every value checked before hours of work (--seeds 0 is not the default)
        args.configs = {
            name: AuditConfig(
                model=name,
                budgets=args.budgets,
                attacks=args.attacks,
                quick=args.quick,
                seeds=GATE_SEEDS if args.seeds is None and not args.quick else args.seeds,
                victim_epochs=args.victim_epochs,
                lock_settings=args.settings,
                cells=args.cells,
                stored_only=args.stored_only,
            )
            for name in args.models
        }
    except InvalidArgumentError as err:
        p.error(str(err))
    return args


def run_gate(argv: list[str], log=print) -> GateResult:
    """Audit every requested model, writing the reports after each one."""
    args = parse_args(argv)
    prepare_out(args.out)
    start = time.perf_counter()
    result = GateResult(
        command=shlex.join(["python", "bench/audit_gate.py", *argv]),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_line(),
    )
    for name in args.models:
        log(f"== {name}: {SUITE[name].description}")
        config = args.configs[name]

        def progress(line: str, name: str = name) -> None:
            log(f"[{time.perf_counter() - start:7.0f} s] {name}: {line}")

        try:
            result.reports[name] = run_audit(config, log=progress)
        except Exception as err:  # one model's failure must not lose the others' hours
            result.errors[name] = f"{type(err).__name__}: {err}"
            progress(f"ERROR {result.errors[name]}")
        result.seconds = time.perf_counter() - start
        result.write(args.out)
    log(f"total {result.seconds:.0f} s; gate {'PASS' if result.passed else 'FAIL'}; {args.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    return 0 if run_gate(sys.argv[1:] if argv is None else argv).passed else 1


if __name__ == "__main__":
    sys.exit(main())
