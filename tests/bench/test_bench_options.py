"""Keeps the bench scripts' command lines honest: ``--help`` works for each, and a count or
duration of 0 or below is a usage error before any export, not the default in disguise
(``--blocks 0``) nor a crash on an empty median after minutes of work."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import overhead  # noqa: E402

SCRIPTS = sorted(
    path.stem
    for path in BENCH.glob("*.py")
    if "def main(" in path.read_text() and path.stem != "licence_throughput"
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_works(script: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main(["--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


def test_quantization_help_says_what_it_measures(capsys) -> None:
    """Its description stopped mid-sentence ("... quantization of the")."""
    with pytest.raises(SystemExit):
        importlib.import_module("quantization").main(["--help"])
    assert "accuracy on reference tasks" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("overhead", ["--blocks", "0"], "--blocks: must be at least 1, got 0"),
        ("overhead", ["--block-ms", "0"], "--block-ms: must be a number above 0"),
        ("overhead_breakdown", ["--blocks", "-1"], "--blocks: must be at least 1, got -1"),
        ("overhead_breakdown", ["--block-ms", "nan"], "--block-ms: must be a number above 0"),
        ("compare_trees", ["--trees", "a,b", "--rounds", "0"], "--rounds: must be at least 1"),
        ("compare_trees", ["--trees", "a,b", "--blocks", "0"], "--blocks: must be at least 1"),
        ("protect_time", ["--repeats", "0"], "--repeats: must be at least 1, got 0"),
        ("protect_time", ["--repeats", "-1"], "--repeats: must be at least 1, got -1"),
        ("protect_time", ["--models", "vgg"], "unknown model(s) ['vgg']"),
        ("quantized_overhead", ["--block-s", "0"], "--block-s: must be a number above 0"),
        ("random_keys", ["--model", "mlp", "--victim-epochs", "0"], "must be at least 1"),
        ("init_controls", ["--budget", "0"], "--budget must be a percentage in (0, 100]"),
        ("quantization", ["--calib-percent", "0"], "--calib-percent must be in (0, 100]"),
        ("init_controls", ["--gains", "1,,2"], "--gains takes numbers above 0"),
        # an empty list measured nothing and printed an empty table; a repeated name was
        # measured twice (two rows for one model)
        ("overhead", ["--models", ","], "--models names no model; choose from"),
        ("overhead", ["--models", "mlp,gru,mlp"], "--models lists mlp twice"),
        ("overhead", ["--backends", ","], "--backends names no backend"),
        ("overhead", ["--backends", "ORT,ORT"], "--backends lists ORT twice"),
        ("overhead", ["--presets", "strong,strong"], "--presets lists strong twice"),
        ("protect_time", ["--models", ""], "--models names no model"),
        ("overhead_breakdown", ["--models", "mlp,mlp"], "--models lists mlp twice"),
        ("quantized_overhead", ["--models", ","], "--models names no model"),
        ("quantization", ["--tasks", "cnn,cnn"], "--tasks lists cnn twice"),
        ("init_controls", ["--models", " "], "--models names no model"),
        ("compare_trees", ["--trees", "a,b", "--models", "mlp,mlp"], "--models lists mlp twice"),
        ("protect_memory", ["--formats", "onnx,ONNX"], "--formats lists ONNX twice"),
        ("protect_memory", ["--cases", ","], "--cases names no case"),
        ("protect_memory", ["--mlp-million", "-1"], "--mlp-million: must be a number above 0"),
        ("protect_memory", ["--transformer-million", "nan"], "must be a number above 0"),
        ("protect_memory", ["--threads", "-2"], "--threads must be 0 (torch's count) or more"),
        ("protect_repeat", ["--formats", "ONNX,PDF"], "unknown format(s) ['PDF']"),
        ("protect_repeat", ["--runs", "0"], "--runs: must be at least 1, got 0"),
        ("licence_throughput", ["--backends", ","], "--backends names no backend"),
        # these failed with a traceback at the first lock, after training or exporting
        ("quantization", ["--preset", "bogus"], "--preset: Unknown lock preset 'bogus'"),
        ("quantization", ["--seed", "-1"], "--seed must be 0 or more, got -1"),
        ("quantized_overhead", ["--preset", "bogus"], "--preset: Unknown lock preset 'bogus'"),
    ],
)
def test_bad_counts_and_durations_are_usage_errors(script, argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_overhead_aoti_adds_aotinductor_to_the_backends_given(monkeypatch) -> None:
    """``--aoti`` ("also AOTInductor") was dropped without a word when --backends was given."""
    seen = {}

    def fake_run_bench(names, backends, **kwargs):
        seen["backends"] = list(backends)
        return []

    monkeypatch.setattr(overhead, "run_bench", fake_run_bench)
    overhead.main(["--models", "mlp", "--backends", "ORT", "--aoti"])
    assert seen["backends"] == ["ORT", "AOTI"]
    overhead.main(["--models", "mlp", "--aoti"])
    assert seen["backends"] == ["ORT", "TorchScript", "AOTI"]
