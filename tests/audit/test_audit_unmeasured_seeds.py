"""Every attack names the seeds at which every attempt diverged (NaN or infinite logits), as A2
did alone: A1, A3 and A4 named none, and the report failed their rows on an accuracy of
exactly 0 instead, which named no seed and also failed a seed that was measured at 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.audit.helpers import Net, arrays

import skprotect_pytorch.audit.statistics as statistics
from skprotect_pytorch.audit import AuditConfig, model_spec, run_audit, task_from_arrays
from skprotect_pytorch.audit.attacks import StolenModel, attack_finetune
from skprotect_pytorch.audit.models import SweepConfig, score, train_model
from skprotect_pytorch.audit.report import AuditRow
from skprotect_pytorch.audit.statistics import attack_statistics
from skprotect_pytorch.lock import lock_model

SWEEP = SweepConfig(lrs=(3e-3,), epochs=(2,), init_gains=(None,))


@pytest.fixture(scope="module")
def stolen():
    """The task and the locked victim as the thief holds it."""
    torch.set_num_threads(1)
    task = task_from_arrays(*arrays())
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    locked = lock_model(net, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(1))
    return task, StolenModel.from_locked(locked)


def infinite_scale(stolen: StolenModel, key: torch.Tensor) -> torch.Tensor:
    """``key`` with its first scale infinite: every logit under it, trained or not, is NaN."""
    key = key.clone()
    key[sum(stolen.perm_sizes)] = float("inf")
    return key


def test_a_score_says_whether_every_logit_was_finite():
    y = torch.tensor([0, 1, 2])
    wrong = torch.nn.functional.one_hot((y + 1) % 3, 3).float()  # finite, never right
    assert score(lambda x: wrong[x], torch.arange(3), y) == {"accuracy": 0.0, "measured": True}
    wrong[2, 0] = float("nan")
    assert score(lambda x: wrong[x], torch.arange(3), y) == {"accuracy": 0.0, "measured": False}


def test_fine_tuning_names_the_seeds_whose_every_attempt_diverged(stolen, monkeypatch):
    """A1 with a key under which the start and every sweep point diverge names both seeds; A1
    with a finite key names none."""
    task, thief = stolen
    null = thief.null_key()
    monkeypatch.setattr(thief, "null_key", lambda: infinite_scale(thief, null))
    diverged = attack_finetune(thief, task, 50, SWEEP, [0, 1], key_kind="null")
    assert diverged.unmeasured == ["seed 0", "seed 1"]
    assert diverged.accuracies == [0.0, 0.0]
    measured = attack_finetune(thief, task, 50, SWEEP, [0, 1], key_kind="random")
    assert measured.unmeasured == [] and min(measured.accuracies) > 0


def test_statistics_names_a_seed_only_when_every_init_gain_diverged(stolen, monkeypatch):
    """A3 takes the best over init gains per seed: a gain that diverged hides nothing, and the
    seed is unmeasured only when every gain's every attempt diverged."""
    task, thief = stolen
    data_free_key = statistics.data_free_key

    def diverging(stolen: StolenModel, gain: float = 1.0):
        est = data_free_key(stolen, gain)
        if gain in diverge:
            est.scales[0][0] = float("inf")
        return est

    monkeypatch.setattr(statistics, "data_free_key", diverging)
    sweep = SweepConfig(lrs=(3e-3,), epochs=(2,), init_gains=(1.0, 2.0))
    diverge = {1.0}
    one_gain = attack_statistics(thief, task, 50, sweep, [0, 1])
    assert one_gain.unmeasured == [] and min(one_gain.accuracies) > 0
    diverge = {1.0, 2.0}
    every_gain = attack_statistics(thief, task, 50, sweep, [0, 1])
    assert every_gain.unmeasured == ["seed 0", "seed 1"]


def test_the_report_names_the_seeds_of_a_fine_tune_row_that_measured_nothing(
    monkeypatch, one_thread
):
    """Through ``run_audit``: A1's null-key row fails naming both seeds; its random-key row,
    measured at both, is judged on its accuracy alone."""
    monkeypatch.setattr(
        StolenModel,
        "null_key",
        lambda self: infinite_scale(self, self.random_key(np.random.default_rng(0))),
    )
    task = task_from_arrays(*arrays())
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    spec = model_spec("net", Net, task, victim=net, epochs=1)
    config = AuditConfig(model=spec, attacks=("A1",), budgets=(50,), seeds=2, sweep=SWEEP)
    null, random = run_audit(config, log=lambda line: None).rows
    assert null.unmeasured == ["seed 0", "seed 1"]
    assert null.reasons[-1] == (
        "not measured at seed 0, seed 1: every attempt diverged (NaN or infinite logits; lower "
        "the sweep's learning rates, or scale the inputs, and run again)"
    )
    assert random.unmeasured == []
    assert not any("not measured" in reason for reason in random.reasons)


def test_a_measured_seed_at_accuracy_zero_is_not_called_unmeasured(one_thread):
    """Every test sample is of a class no training sample has (2 or 3): the victim, the
    baseline and A1 with the null key score 0 with finite logits. That row failed as
    "accuracy 0, every attempt diverged"; measured at 0, as B(x) is, it passes."""
    x, y, xs, ys = arrays()
    keep = y < 2
    task = task_from_arrays(x[keep], y[keep], xs, 2 + ys % 2, n_classes=4)
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    spec = model_spec("net", Net, task, victim=net, epochs=1)
    config = AuditConfig(model=spec, attacks=("A1",), budgets=(50,), seeds=1, sweep=SWEEP)
    report = run_audit(config, log=lambda line: None)
    assert report.baselines == {"50": 0.0}
    null = report.rows[0]  # the random key's start guesses classes 2 and 3 sometimes
    assert null.variant == "fine-tune, null key" and null.accuracies == [0.0]
    assert null.unmeasured == [] and null.passed, null.reasons
    assert AuditRow("A3", "statistics", 50, 0.0, [0.0], 0.0).judge().passed


def test_a_report_only_row_warns_of_its_unmeasured_seeds():
    """A5 never fails the gate, but a seed it did not measure lowers its mean below the base's
    fine-tune (0.3 against 0.5 here, where the measured seed reached 0.6): it warned of
    nothing."""
    row = AuditRow("A5", "matching", 1, 0.3, [0.6, 0.0], 0.5, unmeasured=["seed 1"]).judge()
    assert row.passed and row.reasons == []
    assert row.warning == (
        "matching not measured at seed 1: every attempt diverged (NaN or infinite logits; lower "
        "the sweep's learning rates, or scale the inputs, and run again)"
    )
    assert AuditRow("A5", "matching", 1, 0.3, [0.6, 0.0], 0.5).judge().warning is None
