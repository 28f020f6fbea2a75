"""The quickstart's report fits the console it is printed to: it was printed 120 columns wide
whatever the terminal, so an 80-column terminal, or ``skprotect quickstart | cat`` read in one,
broke every line of the table in two; a path longer than the console was cut by a line end."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from skprotect_pytorch import quickstart

FORMATS = ("onnx", "torchscript_cpu", "inductor_cpu")


@pytest.fixture
def report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``main`` with the training, protection and licensed run replaced by their results: a
    configuration and a model file whose paths are longer than 80 columns."""
    deep = tmp_path / ("a_long_folder_name_" * 4) / "outputs" / "quickstart"
    config, model = deep / "skconfig.json", deep / "digits_cnn" / "onnx" / "digits_cnn.onnx"
    result = SimpleNamespace(config_path=config, files=[model], skipped_formats={})
    rows = [quickstart.FormatRow(f, 0.992, 0.108, 0.1, 2169, 0) for f in FORMATS]
    now = int(time.time())
    run = quickstart.LicensedRun(
        0.992, "d7816c67", now, now + 86400, 100, 1, "http://127.0.0.1:4", 3.0, [config]
    )
    monkeypatch.setattr(
        quickstart, "run_quickstart", lambda licensed=True: (0.992, rows, result, run)
    )
    monkeypatch.setattr(quickstart, "missing_licence_modules", list)
    return config, model


@pytest.mark.parametrize("columns", [80, 100])
def test_every_line_fits_the_console_and_paths_stay_whole(
    report: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    columns: int,
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))  # a pipe's width, as a terminal's
    quickstart.main()
    out = capsys.readouterr().out
    lines = out.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert len(table) >= 8, out
    assert max(len(line) for line in table) <= columns, out
    assert "\x1b" not in out  # no escape codes through a pipe
    for name in (*FORMATS, "onnx, LINUX, licensed"):  # the format column is never wrapped
        assert any(f"│ {name} " in line for line in lines), out
    assert "accuracy 0.992 of the original" in out
    for path in report:  # on one line, to copy
        assert f"  {path}" in lines, out
