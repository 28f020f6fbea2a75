"""The full gate at a glance: one row per model and budget from the committed audit reports.

    python bench/gate_summary.py docs/audit/full_gate/audit_gate.json docs/audit/gate_*.json

Reads the JSON that ``bench/audit_gate.py`` writes (one report, or a batch file whose ``runs``
hold reports, bare or under ``report``), keeps the runs with the full sweep (``--quick`` runs
are left out unless ``--with-quick``), and merges the runs of one model and budget, which a
split run stores apart (each attack once: a second copy of one is an error, not a silent
choice; runs with other settings, such as the lock, the seeds or the sweep, are an error
too).  Each row gives B(x), the gated attack (A1–A4) with the highest accuracy (mean of
its seeds) and how far under B(x) it stayed (the gate itself compares A4 with the larger of
B(x) and A4's no-files control; this column does not, so it never reads kinder), the highest
wrong-key accuracy (A0) against chance, the most permutation entries any attack recovered
against chance, the largest aligned-cosine excess, gate 4, and the verdict.  Attacks missing
from A0–A4 make the verdict "incomplete", and which ones are named; a model a run stopped on
(an error in place of its report) gets a row of its own that says "ERROR" and why.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

GATED = ("A0", "A1", "A2", "A3", "A4")
"""The attacks the gate judges; A5 (the public base) is report-only."""
CONTEXT = ("seeds", "sweep", "victim_epochs", "data_seed", "lock_seed", "lock_settings", "target")
"""The settings a run's numbers depend on (what names its cells): runs merged into one row must
agree on them, or the row would mix two victims, locks or sweeps."""
DATE_FORMAT = "%Y-%m-%d %H:%M UTC"
"""How ``bench/audit_gate.py`` writes a report's ``date``: when the run started."""
GATE_BUDGETS = (1.0, 5.0, 10.0, 25.0)
"""The budgets of a ``bench/audit_gate.py`` run whose command has no ``--budgets`` (its
``GATE_BUDGETS``, which importing would import torch)."""
NOT_RUN_BUDGET = re.compile(r"@(\S+) \(|rows at (\S+) % ")
"""The budget in a report's ``not_run`` item (``A3@25 (not computed yet)``, ``the rows at 25 %
stored but not judged: ...``); an item without one (``A0 ...``) holds at every budget."""


@dataclass
class Entry:
    """What the runs of one model at one budget measured."""

    rows: dict[tuple[str, str], dict] = field(default_factory=dict)
    """(attack, variant) → the report's row."""
    sources: dict[tuple[str, str], str] = field(default_factory=dict)
    chance: float = 0.0
    baseline: float | None = None
    """B(x) of the last run read; the table shows the B(x) the best attack was judged against
    (split runs each train their own)."""
    stored_weights_passed: bool | None = None
    not_run: list[str] = field(default_factory=list)
    context: dict | None = None
    """The :data:`CONTEXT` settings of the first run merged, and its ``source``."""


def _reports(path: Path) -> list[dict]:
    """The audit reports in one file of ``bench/audit_gate.py``'s, whatever its shape."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(
            f"{path}: not a readable JSON report of bench/audit_gate.py ({err})"
        ) from None
    runs = data.get("runs", [data]) if isinstance(data, dict) else None
    reports = [run.get("report", run) if isinstance(run, dict) else None for run in runs or []]
    if not reports or not all(isinstance(r, dict) and _has_models(r) for r in reports):
        raise SystemExit(
            f"{path}: not a report of bench/audit_gate.py (a 'models' entry each with "
            f"{', '.join(MODEL_KEYS)}, bare or in a batch file's 'runs', and settings naming "
            "the model and budgets); pass its JSON"
        )
    return reports


MODEL_KEYS = {"settings": dict, "chance": (int, float), "baselines": dict, "rows": list}
"""What each model of a report holds, read by :func:`collect` (a file without them stopped
the table in a KeyError or AttributeError naming no file)."""


def _has_models(report: dict) -> bool:
    """Whether ``report`` has models (a dict or list) each with the :data:`MODEL_KEYS`."""
    models = report.get("models")
    if not isinstance(models, dict | list):
        return False
    return all(
        isinstance(model, dict)
        and all(isinstance(model.get(key), kind) for key, kind in MODEL_KEYS.items())
        and isinstance(model["settings"].get("model"), str)
        and isinstance(model["settings"].get("budgets"), list)
        for model in _models(report)
    )


def run_errors(paths: list[Path], with_quick: bool = False) -> list[tuple[str, str]]:
    """(model, error and where) for each model a run in ``paths`` stopped on: such a model has
    no rows in that run (``bench/audit_gate.py`` keeps the error under ``errors``), and a
    summary without it read as a gate of the other models alone.  A ``--quick`` run's (its
    command says so: the model has no settings) counts only ``with_quick``, as its rows do.  An
    error older than runs holding rows of its model at every budget of the failed run is left
    out: those reruns replaced it."""
    newest = _newest_rows(paths, with_quick)
    return [
        (model, f"{error} ({path}, {report.get('date', '?')})")
        for path in paths
        for report in _reports(path)
        if with_quick or "--quick" not in str(report.get("command", "")).split()
        for model, error in (report.get("errors") or {}).items()
        if not _replaced(report, model, newest)
    ]


def _when(report: dict) -> datetime | None:
    """When a run started (its ``date``), or None for a report without one in
    :data:`DATE_FORMAT`."""
    try:
        return datetime.strptime(str(report.get("date")), DATE_FORMAT)
    except ValueError:
        return None


def _newest_rows(paths: list[Path], with_quick: bool) -> dict[tuple[str, float], datetime]:
    """(model, budget) -> when the newest run in ``paths`` holding rows of it started (the runs
    :func:`collect` counts, with a readable date)."""
    newest: dict[tuple[str, float], datetime] = {}
    for path in paths:
        for report in _reports(path):
            when = _when(report)
            for model in _models(report):
                settings = model["settings"]
                if when and (with_quick or not settings.get("quick")):
                    for key in ((settings["model"], float(b)) for b in settings["budgets"]):
                        newest[key] = max(when, newest.get(key, when))
    return newest


def _asked_budgets(report: dict) -> set[float] | None:
    """The budgets a run was asked for: its command's ``--budgets``, else
    :data:`GATE_BUDGETS`; None for a report without a readable command."""
    try:
        words = shlex.split(report["command"])
    except (KeyError, TypeError, ValueError):
        return None
    value = ",".join(f"{b:g}" for b in GATE_BUDGETS)
    for word, after in zip(words, [*words[1:], ""], strict=True):
        if word == "--budgets":
            value = after
        elif word.startswith("--budgets="):
            value = word.removeprefix("--budgets=")
    try:
        return {float(b) for b in value.split(",") if b.strip()} or None
    except ValueError:
        return None


def _replaced(report: dict, model: str, newest: dict[tuple[str, float], datetime]) -> bool:
    """Whether the run ``report``, which stopped on ``model``, was run again later at each of
    its budgets (``newest``: :func:`_newest_rows`): a rerun at some of them leaves the others
    failed. Undated, without a command, or rerun in the same minute, it is not known to be and
    stays shown."""
    failed_at, budgets = _when(report), _asked_budgets(report)
    if failed_at is None or budgets is None:
        return False
    return all(newest.get((model, b), failed_at) > failed_at for b in budgets)


def _models(report: dict) -> list[dict]:
    models = report["models"]
    return list(models.values()) if isinstance(models, dict) else models


def collect(paths: list[Path], with_quick: bool = False) -> dict[tuple[str, float], Entry]:
    """(model, budget) → the merged rows of every full-sweep run in ``paths``."""
    entries: dict[tuple[str, float], Entry] = {}
    for path in paths:
        for report in _reports(path):
            for model in _models(report):
                settings = model["settings"]
                if settings.get("quick") and not with_quick:
                    continue
                for budget in settings["budgets"]:
                    entry = entries.setdefault((settings["model"], float(budget)), Entry())
                    _merge(entry, model, float(budget), f"{path} ({report.get('date', '?')})")
    return entries


def _same_context(entry: Entry, model: dict, budget: float, source: str) -> None:
    """Refuse to merge a run whose settings differ from those merged before."""
    context = {key: model["settings"].get(key) for key in CONTEXT}
    if entry.context is None:
        entry.context = {"settings": context, "source": source}
        return
    first = entry.context["settings"]
    differ = [key for key in CONTEXT if first[key] != context[key]]
    if differ:
        raise SystemExit(
            f"the {model['settings']['model']} at {budget:g} % ran with other settings in "
            f"{entry.context['source']} and in {source} ({', '.join(differ)}: "
            f"{', '.join(f'{first[k]} against {context[k]}' for k in differ)}): their rows "
            "cannot make one row; pass the runs of one setting"
        )


def _not_run_at(items: list[str], budget: float) -> list[str]:
    """The ``not_run`` items that concern ``budget`` (those naming no budget concern all)."""
    kept = []
    for item in items:
        found = NOT_RUN_BUDGET.search(item)
        if found is None or float(found.group(1) or found.group(2)) == budget:
            kept.append(item)
    return kept


def _merge(entry: Entry, model: dict, budget: float, source: str) -> None:
    _same_context(entry, model, budget, source)
    entry.chance = model["chance"]
    for row in model["rows"]:
        if row["budget"] is not None and float(row["budget"]) != budget:
            continue
        key = (row["attack"], row["variant"])
        if key in entry.rows:
            raise SystemExit(
                f"{row['attack']} ({row['variant']}) of the {model['settings']['model']} at "
                f"{budget:g} % is in {entry.sources[key]} and in {source}: pass one of them"
            )
        entry.rows[key], entry.sources[key] = row, source
    for key, baseline in model["baselines"].items():
        if float(key) == budget:
            entry.baseline = baseline
    if model.get("stored_weights"):
        passed = all(w["passed"] for w in model["stored_weights"])
        passed = passed and not model.get("plaintext_weights")  # unlocked tensors fail gate 4
        entry.stored_weights_passed = passed and entry.stored_weights_passed is not False
    entry.not_run += _not_run_at(model.get("not_run", []), budget)


_SHORT = {
    "null key": "null key",
    "random key": "random key",
    "joint weights": "joint weights",
    "Gumbel-Sinkhorn": "frozen weights",
    "weight matching": "weight matching",
    "activation matching": "activation matching",
}


def label(row: dict) -> str:
    """``A4, activation matching``: the attack and the part of its variant that tells it apart."""
    for words, short in _SHORT.items():
        if words in row["variant"] and row["attack"] != "A3":
            return f"{row['attack']}, {short}"
    return row["attack"]


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def summary_row(model: str, budget: float, entry: Entry) -> str:
    """One markdown row of :func:`table`."""
    rows = list(entry.rows.values())
    missing = [a for a in GATED if not any(r["attack"] == a for r in rows)]
    attacks = [r for r in rows if r["attack"] in GATED[1:]]
    best = max(attacks, key=lambda r: r["accuracy"], default=None)
    wrong_keys = [r["accuracy"] for r in rows if r["attack"] == "A0"]
    gated = [r for r in rows if r["attack"] in GATED]
    ratios = [
        r["perm_recovered"] / r["perm_chance"]
        for r in gated
        if r["perm_recovered"] is not None and r["perm_chance"]
    ]
    excess = [r["cos_excess"] for r in gated if r["cos_excess"] is not None]
    failed = any(not r["passed"] for r in gated) or entry.stored_weights_passed is False
    if failed:
        verdict = "FAIL"
    elif missing or entry.not_run or entry.stored_weights_passed is None:
        no_gate_4 = ["gate 4"] if entry.stored_weights_passed is None else []
        absent = missing + entry.not_run + no_gate_4
        verdict = "incomplete: " + ", ".join(absent)
    else:
        verdict = "pass"
    cells = [
        model,
        f"{budget:g}",
        _pct(best["reference"] if best else entry.baseline) if best or entry.baseline else "–",
        label(best) if best else "–",
        _pct(best["accuracy"]) if best else "–",
        f"{100 * (best['reference'] - best['accuracy']):.1f}" if best else "–",
        f"{_pct(max(wrong_keys))} ({_pct(entry.chance)})" if wrong_keys else "–",
        f"{max(ratios):.2f} ×" if ratios else "–",
        f"{max(excess):.3f}" if excess else "–",
        {True: "pass", False: "FAIL", None: "–"}[entry.stored_weights_passed],
        verdict,
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| model | x % | B(x) % | best attack | its accuracy % | under B(x), points | "
    "A0 highest % (chance) | perm. recovered, most | cos excess, most | gate 4 | gate |\n"
    "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"
)


def table(
    entries: dict[tuple[str, float], Entry], errors: list[tuple[str, str]] | None = None
) -> str:
    """The markdown table, by model and then budget, then a row per model a run stopped on
    (:func:`run_errors`)."""
    lines = [HEADER] + [summary_row(m, b, entries[m, b]) for m, b in sorted(entries)]
    empty = " | ".join(["–"] * (HEADER.splitlines()[0].count("|") - 3))
    lines += [f"| {model} | {empty} | ERROR: {error} |" for model, error in errors or []]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("reports", type=Path, nargs="+", help="JSON reports of bench/audit_gate.py")
    p.add_argument("--with-quick", action="store_true", help="also count --quick runs")
    args = p.parse_args(argv)
    entries = collect(args.reports, args.with_quick)
    errors = run_errors(args.reports, args.with_quick)
    if not entries and not errors:
        raise SystemExit("no full-sweep run in these reports (add --with-quick for quick runs)")
    print(table(entries, errors))


if __name__ == "__main__":
    main()
