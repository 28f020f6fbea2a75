"""The references a row is judged against (B(x), A4's no-files control, A5's fine-tune of the
public base) name the seeds they did not measure, as the attacks do: a reference whose every
attempt diverged at a seed scored 0 there, so a row 25 points above B(x) = 0 failed as
"accuracy 0.2500 > B(x) 0.0000 + 0.01", saying nothing of why B(x) was 0."""

from __future__ import annotations

import json

import pytest
import torch
from tests.audit.helpers import Net, arrays

import skprotect_pytorch.audit.alignment as alignment
import skprotect_pytorch.audit.attacks as attacks
import skprotect_pytorch.audit.public_base as public_base
from skprotect_pytorch.audit import AuditConfig, model_spec, run_audit, task_from_arrays
from skprotect_pytorch.audit.models import SweepConfig, train_model
from skprotect_pytorch.audit.report import DIVERGED, AuditRow

SWEEP = SweepConfig(lrs=(3e-3,), epochs=(2,), init_gains=(None,))


@pytest.fixture(scope="module")
def spec():
    """A tiny custom model and its victim."""
    torch.set_num_threads(1)
    task = task_from_arrays(*arrays())
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    return model_spec("net", Net, task, victim=net, epochs=1)


def diverged(build):
    """``build`` whose model's every logit is NaN, trained or not (Adam keeps a NaN bias)."""

    def nan_model(*args, **kwargs) -> torch.nn.Module:
        model = build(*args, **kwargs)
        with torch.no_grad():
            model.c.bias.fill_(float("nan"))
        return model

    return nan_model


def audit(spec, attacks: tuple[str, ...], **kwargs):
    config = AuditConfig(model=spec, attacks=attacks, budgets=(50,), seeds=2, sweep=SWEEP, **kwargs)
    return run_audit(config, log=lambda line: None)


def test_a_row_over_an_unmeasured_reference_fails_as_not_measured_and_under_it_passes():
    too_low = (
        "; the reference is too low to judge against: not measured at B(x) seed 1: " + DIVERGED
    )
    over = AuditRow("A1", "null", 50, 0.3, [0.3, 0.3], 0.2, reference_unmeasured=["seed 1"])
    assert not over.judge().passed
    assert over.reasons == ["accuracy 0.3000 > B(x) 0.2000 + 0.01" + too_low]
    under = AuditRow("A1", "null", 50, 0.1, [0.1, 0.1], 0.2, reference_unmeasured=["seed 1"])
    assert under.judge().passed  # a measured B(x) could only be higher
    # A4 over its control: a control that measured nothing may be the higher limit
    a4 = AuditRow("A4", "w", 50, 0.3, [0.3], 0.2, control=0.25, control_unmeasured=["seed 0"])
    assert a4.judge().reasons == [
        "accuracy 0.3000 > its no-files control 0.2500 + 0.01; the reference is too low to "
        "judge against: not measured at the no-files control seed 0: " + DIVERGED
    ]


def test_b_x_that_diverged_is_named_and_its_rows_fail_as_not_measured(spec, monkeypatch):
    monkeypatch.setattr(attacks, "fresh_model", diverged(attacks.fresh_model))
    report = audit(spec, ("A1",))
    assert report.baseline_seeds == {"50": [0.0, 0.0]}
    assert report.baseline_unmeasured == {"50": ["seed 0", "seed 1"]}
    assert report.unmeasured_references == ["B(50 %) seed 0, seed 1"]
    for row in report.rows:
        assert row.reference_unmeasured == ["seed 0", "seed 1"] and row.unmeasured == []
        assert not row.passed
        assert "not measured at B(x) seed 0, B(x) seed 1" in row.reasons[0]
    assert f"**References not measured** at: B(50 %) seed 0, seed 1: {DIVERGED}" in (
        report.to_markdown()
    )
    assert json.loads(report.to_json())["unmeasured_references"] == report.unmeasured_references


def test_a4s_control_that_diverged_is_named(spec, monkeypatch):
    """The control (the thief's reference fine-tuned again) diverges; B(x) does not."""
    monkeypatch.setattr(alignment, "fresh_model", diverged(alignment.fresh_model))
    report = audit(spec, ("A4",))
    assert report.baseline_unmeasured == {"50": []}
    assert [row.control_unmeasured for row in report.rows] == [["seed 0", "seed 1"]] * 2
    assert report.unmeasured_references == ["A4 at 50 %, no-files control seed 0, seed 1"]


def test_a5s_reference_that_diverged_is_named_in_its_warning(spec, monkeypatch):
    sweep_per_seed = public_base._sweep_per_seed
    monkeypatch.setattr(
        public_base,
        "_sweep_per_seed",
        lambda build, *args: sweep_per_seed(diverged(build), *args),
    )
    (row,) = audit(spec, ("A5",)).rows
    assert row.reference == 0.0 and row.reference_unmeasured == ["seed 0", "seed 1"]
    assert row.passed and row.warning.endswith(
        "the reference is too low to judge against: not measured at the base's fine-tune "
        f"seed 0, the base's fine-tune seed 1: {DIVERGED}"
    )


def test_a_stored_b_x_keeps_its_unmeasured_seeds_and_a_bare_list_still_reads(
    spec, monkeypatch, tmp_path
):
    """B(x) cells store ``{"accuracies", "unmeasured"}``; those of the committed full gate,
    stored as a bare list of accuracies, are read as measured at every seed."""
    monkeypatch.setattr(attacks, "fresh_model", diverged(attacks.fresh_model))
    audit(spec, ("A3",), cells=tmp_path)
    (cell,) = tmp_path.glob("*/B@50.json")
    stored = json.loads(cell.read_text())
    assert stored["value"] == {"accuracies": [0.0, 0.0], "unmeasured": ["seed 0", "seed 1"]}
    again = audit(spec, ("A3",), cells=tmp_path, stored_only=True)
    assert again.baseline_unmeasured == {"50": ["seed 0", "seed 1"]}
    cell.write_text(json.dumps({**stored, "value": [0.0, 0.0]}))
    bare = audit(spec, ("A3",), cells=tmp_path, stored_only=True)
    assert bare.baseline_seeds == {"50": [0.0, 0.0]} and bare.baseline_unmeasured == {"50": []}
    assert bare.unmeasured_references == []
