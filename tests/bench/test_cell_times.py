"""Keeps ``bench/cell_times.py`` right: its table adds up the stored cells' seconds, marks the
missing ones, its todo list shows the parts of cells a stopped run stored, and
``docs/security.md`` shows the table the committed cells give."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import cell_times  # noqa: E402


def _store(
    cells: Path, model: str, seconds: dict[str, float], digest: str = "0123456789ab"
) -> None:
    folder = cells / f"{model}-{digest}"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"model": model}))
    (folder / "A0.json").write_text(json.dumps({"value": {}, "seconds": 3.0}))
    for name, s in seconds.items():
        (folder / f"{name}.json").write_text(json.dumps({"value": [], "seconds": s}))


@pytest.fixture
def cells(tmp_path: Path) -> Path:
    _store(tmp_path, "gru", {"B@5": 60.4, "A1-null@5": 120.0, "A3@5": 300.0, "B@25": 600.0})
    _store(tmp_path, "cnn", {"B@5": 90.0, "A1-null@5": 30.0, "A3@5": 60.0})
    return tmp_path


def test_table_sums_each_row_and_marks_missing_cells(cells: Path) -> None:
    lines = cell_times.table(cell_times.read_times(cells)).splitlines()
    assert lines[0] == "| model | x % | B | A1-null | A3 | all cells |"
    assert lines[2:] == [
        "| cnn | 5 | 90 | 30 | 60 | 3 min |",
        "| gru | 5 | 60 | 120 | 300 | 8 min |",
        "| gru | 25 | 600 | – | – | 10 min so far |",
    ]


def test_todo_lists_missing_cells_longest_first(cells: Path) -> None:
    lines = cell_times.todo(cell_times.read_times(cells), 25).splitlines()
    assert [line.split()[:3] for line in lines[1:]] == [
        ["gru", "A3@25", "300"],
        ["gru", "A1-null@25", "120"],
        ["cnn", "B@25", "90"],
        ["cnn", "A3@25", "60"],
        ["cnn", "A1-null@25", "30"],
    ]
    assert cell_times.todo(cell_times.read_times(cells), 5) == "Every cell is stored at x = 5 %."


def test_todo_shows_the_parts_a_stopped_run_stored(cells: Path) -> None:
    parts = next(cells.glob("gru-*")) / "A3@25.parts"
    (parts / "gain-1").mkdir(parents=True)
    torch.save({"value": [0.9], "seconds": 200.0, "code": "abc"}, parts / "seed0.pt")
    torch.save({"value": 0.8, "seconds": 50.5, "code": "abc"}, parts / "gain-1" / "seed1.pt")
    progress = cell_times.read_parts(cells)
    assert progress == {"gru A3@25": (2, 250.5)}
    lines = cell_times.todo(cell_times.read_times(cells), 25, progress).splitlines()
    assert " ".join(lines[1].split()) == "gru A3@25 300 s 2 parts stored, 250 s of compute"
    assert lines[2].split()[:3] == ["gru", "A1-null@25", "120"] and "parts" not in lines[2]
    (parts / "seed0.pt").write_bytes(b"torn")
    with pytest.raises(SystemExit, match=r"seed0\.pt is unreadable.*delete it"):
        cell_times.read_parts(cells)


def test_missing_folder_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--cells folder"):
        cell_times.read_times(tmp_path / "nowhere")


def test_a_folder_without_cells_is_refused_not_reported_complete(tmp_path: Path) -> None:
    """An empty folder (or its parent passed by mistake) read as "every cell is stored"."""
    (tmp_path / "notes").mkdir()
    with pytest.raises(SystemExit, match="holds no cell folder"):
        cell_times.read_times(tmp_path)
    with pytest.raises(SystemExit):
        cell_times.main([str(tmp_path), "--todo", "25"])


def test_a_models_folders_of_other_settings_get_their_own_rows(cells: Path) -> None:
    """Two gru folders (e.g. quick and full) were merged into one row, one's seconds hiding
    the other's."""
    _store(cells, "gru", {"B@5": 5.0, "A1-null@5": 7.0, "A3@5": 9.0}, digest="fedcba987654")
    lines = cell_times.table(cell_times.read_times(cells)).splitlines()
    assert lines[2:] == [
        "| cnn | 5 | 90 | 30 | 60 | 3 min |",
        "| gru-0123456789ab | 5 | 60 | 120 | 300 | 8 min |",
        "| gru-0123456789ab | 25 | 600 | – | – | 10 min so far |",
        "| gru-fedcba987654 | 5 | 5 | 7 | 9 | 0 min |",
    ]
    parts = cells / "gru-fedcba987654" / "A3@25.parts"
    parts.mkdir()
    torch.save({"value": [0.9], "seconds": 4.0, "code": "abc"}, parts / "seed0.pt")
    progress = cell_times.read_parts(cells)
    assert progress == {"gru-fedcba987654 A3@25": (1, 4.0)}
    todo = cell_times.todo(cell_times.read_times(cells), 25, progress)
    assert "gru-fedcba987654 A3@25" in todo and "1 parts stored" in todo


def test_a_todo_budget_out_of_range_is_refused(cells: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        cell_times.main([str(cells), "--todo", "0"])
    assert stop.value.code == 2


def test_security_doc_shows_the_committed_cells_times() -> None:
    expected = cell_times.table(cell_times.read_times(ROOT / "docs" / "audit" / "cells"))
    assert expected in (ROOT / "docs" / "security.md").read_text(), (
        "regenerate the Cell times table: python bench/cell_times.py docs/audit/cells"
    )


@pytest.mark.parametrize("text", ['{"value": []}', "{torn", '{"value": [], "seconds": null}'])
def test_a_damaged_cell_is_named_with_what_to_do(cells: Path, text: str) -> None:
    """A cell without its seconds, or torn, stopped the table in a raw KeyError or
    JSONDecodeError naming no file."""
    path = cells / "gru-0123456789ab" / "A3@5.json"
    path.write_text(text)
    with pytest.raises(SystemExit, match=rf"Audit cell {path} is unreadable .*delete it"):
        cell_times.read_times(cells)


@pytest.mark.parametrize("text", ["{torn", "{}", '{"model": 3}'])
def test_a_damaged_settings_file_is_named(cells: Path, text: str) -> None:
    """It stopped the table in a raw JSONDecodeError or KeyError naming no file."""
    settings = cells / "cnn-0123456789ab" / "settings.json"
    settings.write_text(text)
    with pytest.raises(SystemExit, match=rf"{settings} is damaged .*delete it"):
        cell_times.read_times(cells)
