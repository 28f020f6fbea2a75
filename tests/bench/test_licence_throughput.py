"""Keeps ``bench/licence_throughput.py`` working: real server processes on SQLite and PostgreSQL
answer signed licence requests, and the bench checks the quota count against the database.

No rate is asserted (it depends on the machine); only that licences are answered, none are
refused, and the database counts exactly one granted inference per licence answered.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import licence_throughput

ROW = re.compile(
    r"^\| (sqlite|postgres) \| (\d) \| ([\d,]+) \| ([\d,]+) \| [\d.]+ \| [\d.]+ \| (.+?) \| "
    r"(.+?) \| [\d.]+ \|$"
)


def test_both_backends_answer_and_count_exactly(capsys) -> None:
    licence_throughput.main(
        ["--processes", "1", "--seconds", "1", "--clients", "3", "--customers", "2"]
    )
    out = capsys.readouterr().out
    rows = [m.groups() for line in out.splitlines() if (m := ROW.match(line))]
    assert [r[:2] for r in rows] == [("sqlite", "1"), ("postgres", "1")]
    for _, _, answered, _, refused, quota in rows:
        assert int(answered.replace(",", "")) > 0
        assert refused == "0" and quota == "exact"  # every signed configuration was accepted
    assert "customers bound (signed configuration)" in out


def test_without_binding_customers_are_taken_on_trust(capsys) -> None:
    argv = ["--backends", "sqlite", "--processes", "1", "--seconds", "0.5", "--no-binding"]
    licence_throughput.main(argv)
    out = capsys.readouterr().out
    assert "customers taken on trust" in out
    (row,) = [m.groups() for line in out.splitlines() if (m := ROW.match(line))]
    assert row[4] == "0" and row[5] == "exact"


def test_a_wrong_count_stops_the_bench(monkeypatch, capsys) -> None:
    monkeypatch.setattr(licence_throughput, "granted", lambda url: 0)  # as if nothing was counted
    with pytest.raises(SystemExit, match="the quota count is wrong in 1 cell"):
        licence_throughput.main(["--backends", "sqlite", "--processes", "1", "--seconds", "0.5"])
    assert "MISMATCH (0 granted)" in capsys.readouterr().out


def test_bad_options_are_refused() -> None:
    for argv in (["--backends", "mysql"], ["--processes", "0"], ["--seconds", "0"]):
        with pytest.raises(SystemExit):
            licence_throughput.main(argv)
