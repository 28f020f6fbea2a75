"""The audit's reference suite: generated tasks, reference models, and their wiring into the audit.

Issue 5 asks for tasks that ship or are generated (no downloads) with at least 20,000 training
samples, and for an MLP, a ResNet-style CNN, a Transformer, an LSTM and a GRU that the default
lock locks exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skprotect_pytorch import audit as audit_pkg
from skprotect_pytorch.audit import AuditConfig, AuditReport
from skprotect_pytorch.audit.attacks import StolenModel
from skprotect_pytorch.audit.data import SHAPES
from skprotect_pytorch.audit.models import SweepConfig, accuracy, train_model
from skprotect_pytorch.audit.suite import SUITE, reference
from skprotect_pytorch.cli import AuditPreset, app
from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.context import LOCK_PRESETS

GENERATORS = {spec.make_task: name for name, spec in SUITE.items()}
"""One entry per distinct task generator (the sequence models share one task)."""

TINY_RUNS = {
    "mlp": {"n": 4000, "epochs": 3, "lr": 1e-3, "batch_size": 128},
    "cnn": {"n": 4000, "epochs": 3, "lr": 3e-3, "batch_size": 128},
    "lstm": {"n": 4000, "epochs": 4, "lr": 1e-2, "batch_size": 32},
    "gru": {"n": 4000, "epochs": 3, "lr": 1e-2, "batch_size": 32},
    "transformer": {"n": 20_000, "epochs": 5, "lr": 2e-3, "batch_size": 128},
}
"""Victim training small enough for CI and large enough to be clearly above chance (the
Transformer needs a few epochs on the whole set before it finds the bigrams: a slow test)."""
SLOW = {"transformer"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("make_task", list(GENERATORS), ids=list(GENERATORS.values()))
def test_tasks_are_generated_deterministically_and_large_enough(make_task):
    task, again, other = make_task(seed=0), make_task(seed=0), make_task(seed=1)
    assert len(task.y_train) >= 20_000 and len(task.y_test) >= 5_000
    assert len(task.budget(1, seed=0)[1]) == len(task.y_train) // 100
    assert torch.equal(task.x_train, again.x_train) and torch.equal(task.y_test, again.y_test)
    assert not torch.equal(task.x_train, other.x_train)
    assert task.x_train.dtype == torch.float32 and torch.isfinite(task.x_train).all()
    # Every class is present and none dominates: chance is about 1 / n_classes.
    assert torch.bincount(task.y_train, minlength=task.n_classes).min() > 0
    assert task.chance < 1.5 / task.n_classes


def test_the_image_classes_are_the_listed_shapes():
    task = reference("cnn").task()
    assert task.input_shape == (1, 16, 16) and task.n_classes == len(SHAPES) == 10


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SUITE],
)
def test_reference_model_learns_and_locks_exactly(name):
    spec = reference(name)
    task = spec.task()
    run = dict(TINY_RUNS[name])
    n = run.pop("n")
    model = train_model(spec.factory(), task.x_train[:n], task.y_train[:n], seed=0, **run)
    x, y = task.x_test[:2000], task.y_test[:2000]
    trained = accuracy(model, x, y)
    assert trained > task.chance + 0.15, f"{name} learned only {trained:.3f}"

    locked = lock_model(
        model, layer_filter=lambda _name, _m: True, secret_rng=np.random.default_rng(7)
    )
    assert not locked.skipped_layers, locked.skipped_layers
    stolen = StolenModel.from_locked(locked)
    true_key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        diff = (stolen.forward_with(true_key)(x) - model(x)).abs().max().item()
    assert diff < 1e-4
    zero_key = torch.zeros_like(true_key)
    assert accuracy(stolen.forward_with(zero_key), x, y) < task.chance + 0.05


def test_cnn_batchnorms_are_folded_by_the_lock():
    model = reference("cnn").factory().eval()
    locked = lock_model(
        model, layer_filter=lambda _n, _m: True, secret_rng=np.random.default_rng(0)
    )
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert n_bn > 0 and len(locked.folded_batchnorms) == n_bn


def test_audit_config_selects_the_reference_model():
    spec, _, seeds, epochs = AuditConfig(model="gru", quick=True).resolved()
    assert spec is SUITE["gru"] and seeds == 1 and epochs == spec.quick_epochs
    assert AuditConfig(model="cnn").resolved()[3] == SUITE["cnn"].victim_epochs
    with pytest.raises(ValueError, match="choose from mlp, cnn, transformer, lstm, gru"):
        AuditConfig(model="vgg").resolved()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budgets": (0,)}, r"budgets entry must be a positive number, but is 0"),
        ({"budgets": (150,)}, r"percentage of the training data in \(0, 100\], but one is 150"),
        ({"budgets": (float("nan"),)}, r"positive number, but is nan"),
        ({"budgets": ()}, r"budgets must be a non-empty list"),
        ({"budgets": "5"}, r"budgets must be a non-empty list"),
        ({"budgets": (5, 5.0)}, r"budgets lists 5\.0 twice"),
        ({"attacks": ("A9",)}, r"unknown attacks \['A9'\]; choose from A0, A1"),
        ({"attacks": ("A0", "A0")}, r"attacks lists 'A0' twice"),
        ({"attacks": "A0"}, r"attacks must be a non-empty list"),
        ({"seeds": 0}, r"seeds must be a positive integer"),
        ({"victim_epochs": 0}, r"victim_epochs must be a positive integer"),
        ({"threads": 0}, r"threads must be an int from 1 to 1024, but got 0"),
        ({"seeds": 1.5}, r"seeds must be a positive integer"),
        ({"data_seed": -1}, r"data_seed must be an integer in \[0, 4294967295\]"),
        ({"lock_seed": True}, r"lock_seed must be an integer"),
        ({"sweep": {"lrs": (1e-3,)}}, r"sweep must be a SweepConfig, but is dict"),
        ({"lock_settings": None}, r"lock_settings must be a LockSettings, but is NoneType"),
        ({"quick": "False"}, r"quick must be True or False, but is 'False'"),
        ({"stored_only": 1}, r"stored_only must be True or False, but is 1"),
        ({"cells": 3}, r"cells must be a folder path"),
        ({"stored_only": True}, r"give AuditConfig\.cells"),
    ],
)
def test_audit_config_refuses_values_it_would_misread(kwargs, message):
    """Each of these used to run: seeds=0 as the default 3, a 150 % budget, a budget given twice
    computed and reported twice, an unknown attack only once the victim had been trained."""
    with pytest.raises(InvalidArgumentError, match=message):
        AuditConfig(**kwargs)


def test_audit_config_takes_numpy_numbers_as_python_ones(tmp_path):
    config = AuditConfig(
        budgets=[np.int64(5), np.float32(2.5)],
        seeds=np.int64(2),
        victim_epochs=np.int32(3),
        data_seed=np.uint8(4),
        cells=str(tmp_path),
    )
    assert config.budgets == (5.0, 2.5) and config.seeds == 2 and config.victim_epochs == 3
    assert all(type(v) is int for v in (config.seeds, config.victim_epochs, config.data_seed))
    assert config.cells == tmp_path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lrs": ()}, r"lrs must be a non-empty list"),
        ({"lrs": (1e-3, -1)}, r"lrs entry must be a positive number, but is -1"),
        ({"epochs": (0,)}, r"epochs entry must be a positive integer, but is 0"),
        ({"epochs": (2.5,)}, r"epochs entry must be a positive integer"),
        ({"batch_size": 0}, r"batch_size must be a positive integer"),
        ({"weight_decay": -0.1}, r"weight_decay must be a finite number ≥ 0"),
        ({"init_gains": (None, 0)}, r"init_gains entry must be a positive number, but is 0"),
    ],
)
def test_sweep_config_refuses_a_sweep_that_cannot_train(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        SweepConfig(**kwargs)


def test_sweep_config_keeps_lists_as_tuples():
    sweep = SweepConfig(lrs=[np.float64(3e-3)], epochs=[np.int64(2), 4], init_gains=[None, 2])
    assert sweep == SweepConfig(lrs=(3e-3,), epochs=(2, 4), init_gains=(None, 2.0))
    assert hash(sweep) == hash(SweepConfig(lrs=(3e-3,), epochs=(2, 4), init_gains=(None, 2.0)))


def test_cli_audit_refuses_a_repeated_budget():
    result = CliRunner().invoke(app, ["audit", "--quick", "--budgets", "5,5", "--attacks", "A0"])
    assert result.exit_code == 2
    assert "budgets lists" in result.output and "twice" in result.output
    assert "give each once" in result.output


def test_cli_audit_model_option_selects_the_suite_model(monkeypatch):
    assert [p.value for p in AuditPreset] == list(LOCK_PRESETS)
    seen = {}

    def fake_run_audit(config, log=print):
        seen["config"] = config
        return AuditReport({}, "m", 0.9, 0.1, {}, {}, [], [])

    monkeypatch.setattr(audit_pkg, "run_audit", fake_run_audit)
    result = CliRunner().invoke(app, ["audit", "--model", "cnn", "--quick", "--budgets", "1"])
    assert result.exit_code == 0, result.output
    assert seen["config"].model is SUITE["cnn"] and seen["config"].budgets == (1.0,)
    CliRunner().invoke(app, ["audit", "--quick"])
    assert seen["config"].model is SUITE["mlp"]
    refused = CliRunner().invoke(app, ["audit", "--model", "vgg"])
    assert refused.exit_code == 2
    assert "'vgg' is neither a reference model (mlp, cnn, transformer, lstm, gru)" in refused.output
