"""What each stored audit cell cost, as the markdown table of ``docs/security.md``'s "Cell times".

    python bench/cell_times.py docs/audit/cells
    python bench/cell_times.py docs/audit/cells --todo 25     # the cells left at x = 25 %

Reads the ``seconds`` every cell JSON records (one core's compute) from each ``<model>-<hash>``
folder that ``bench/audit_gate.py --cells`` wrote, one row per model and budget, and with
``--todo X`` lists the cells not yet stored at x = X %, longest first by their time at the
nearest smaller budget, so that a session can schedule them one process per core, with the
parts a stopped run stored of them (a rerun goes on from there).  A0 (seconds, once per
model) is left out.  A model with several folders (other settings) gets a row per folder,
named by the folder.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from skprotect_pytorch.audit.cells import read_cell, read_part
from skprotect_pytorch.errors import StateError

BASELINE = "B"


def _folders(cells: Path) -> Iterator[tuple[str, Path]]:
    """(label, folder) for every cell folder in ``cells``: the model, or the folder's name for a
    model with several (other settings), whose times must not be mixed in one row."""
    if not cells.is_dir():
        raise SystemExit(f"{cells} is not a folder; pass the --cells folder of bench/audit_gate.py")
    folders = sorted(p for p in cells.iterdir() if (p / "settings.json").is_file())
    if not folders:
        raise SystemExit(
            f"{cells} holds no cell folder (<model>-<hash>/settings.json); pass the --cells "
            "folder of bench/audit_gate.py"
        )
    models = {folder: _model(folder / "settings.json") for folder in folders}
    several = {m for m in models.values() if list(models.values()).count(m) > 1}
    for folder, model in models.items():
        yield (folder.name if model in several else model), folder


def _model(settings: Path) -> str:
    """The model a cell folder's ``settings.json`` names; a damaged one stops with its path."""
    try:
        model = json.loads(settings.read_text())["model"]
        if not isinstance(model, str):
            raise TypeError(f"model {model!r} is not a name")
    except (ValueError, KeyError, TypeError) as err:
        raise SystemExit(
            f"{settings} is damaged ({type(err).__name__}: {err}); delete it: the next "
            "bench/audit_gate.py run with that folder's settings writes it again"
        ) from None
    return model


def read_times(cells: Path) -> dict[str, dict[float, dict[str, float]]]:
    """model → budget → cell name (``B``, ``A1-null``, …) → seconds, from every stored cell."""
    times: dict[str, dict[float, dict[str, float]]] = {}
    for model, folder in _folders(cells):
        for path in folder.glob("*@*.json"):
            name, budget = path.stem.split("@")
            try:
                seconds = read_cell(path)["seconds"]
            except StateError as err:
                raise SystemExit(str(err)) from err
            times.setdefault(model, {}).setdefault(float(budget), {})[name] = seconds
    return times


def read_parts(cells: Path) -> dict[str, tuple[int, float]]:
    """``"<model> <cell>@<x>"`` → (parts stored, their seconds) for each cell a stopped run left
    in parts (``<cell>@<x>.parts/``, see ``skprotect_pytorch.audit.cells.part``)."""
    progress = {}
    for model, folder in _folders(cells):
        for parts in folder.glob("*@*.parts"):
            try:
                seconds = [read_part(path)["seconds"] for path in parts.rglob("*.pt")]
            except StateError as err:
                raise SystemExit(str(err)) from err
            progress[f"{model} {parts.stem}"] = (len(seconds), sum(seconds))
    return progress


def _columns(times: dict[str, dict[float, dict[str, float]]]) -> list[str]:
    """The baseline first, then the attack variants in order (their names sort as they run)."""
    names = {name for budgets in times.values() for cells in budgets.values() for name in cells}
    return sorted(names, key=lambda n: (n != BASELINE, n))


def table(times: dict[str, dict[float, dict[str, float]]]) -> str:
    """The markdown table: seconds per cell, "–" where a cell is not stored, and the total."""
    columns = _columns(times)
    lines = [
        "| model | x % | " + " | ".join(columns) + " | all cells |",
        "|---|---:|" + "---:|" * (len(columns) + 1),
    ]
    for model, budgets in times.items():
        for budget, cells in sorted(budgets.items()):
            row = [f"{cells[c]:,.0f}" if c in cells else "–" for c in columns]
            total = f"{sum(cells.values()) / 60:,.0f} min"
            if len(cells) < len(columns):
                total += " so far"
            lines.append(f"| {model} | {budget:g} | " + " | ".join(row) + f" | {total} |")
    return "\n".join(lines)


def todo(
    times: dict[str, dict[float, dict[str, float]]],
    budget: float,
    parts: dict[str, tuple[int, float]] | None = None,
) -> str:
    """The cells missing at ``budget``, longest first by their time at the nearest smaller one,
    each with the ``parts`` stored of it (:func:`read_parts`)."""
    columns = _columns(times)
    left: list[tuple[float, str]] = []
    for model, budgets in times.items():
        smaller = [b for b in budgets if b < budget]
        before = budgets[max(smaller)] if smaller else {}
        for name in columns:
            if name not in budgets.get(budget, {}):
                left.append((before.get(name, 0.0), f"{model} {name}@{budget:g}"))
    if not left:
        return f"Every cell is stored at x = {budget:g} %."
    lines = [f"Left at x = {budget:g} %, with each cell's time at the nearest smaller budget:"]
    for seconds, cell in sorted(left, reverse=True):
        line = f"  {cell:<28} {seconds:>8,.0f} s"
        if parts and cell in parts:
            count, done = parts[cell]
            line += f"   {count} parts stored, {done:,.0f} s of compute"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cells", type=Path, help="the --cells folder of bench/audit_gate.py")
    p.add_argument("--todo", type=float, metavar="X", help="also list the cells left at x = X %%")
    args = p.parse_args(argv)
    if args.todo is not None and not 0 < args.todo <= 100:
        p.error(f"--todo takes a budget in (0, 100], got {args.todo:g}")
    times = read_times(args.cells)
    print(table(times))
    if args.todo is not None:
        print()
        print(todo(times, args.todo, read_parts(args.cells)))


if __name__ == "__main__":
    main()
