"""A task with fewer training samples than classes is refused before any training, however
its spec was built: a ``ReferenceSpec`` made by hand (``load_spec`` takes one) trained the
victim, then failed in numpy ("Cannot take a larger sample than population") at the first
budget, which draws at least one sample per class."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from skprotect_pytorch.audit import AuditConfig, run_audit, task_from_arrays
from skprotect_pytorch.audit.custom import model_spec
from skprotect_pytorch.audit.suite import ReferenceSpec
from skprotect_pytorch.errors import InvalidArgumentError

ROOM = (
    "the training split has 8 samples, fewer than its 10 classes, and the thief's budget is "
    "never smaller than the number of classes; give a training split of at least 10 samples."
)


def _small_task():
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(8, 6)), rng.normal(size=(20, 6))
    return task_from_arrays(x, np.arange(8), xt, np.arange(20) % 10, n_classes=10)


def test_a_hand_built_spec_is_refused_before_the_victim_trains() -> None:
    built: list[nn.Module] = []

    def factory() -> nn.Module:
        built.append(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 10)))
        return built[-1]

    task = _small_task()
    spec = ReferenceSpec("mine", "mine", lambda seed=0: task, factory, 1, 1)
    config = AuditConfig(model=spec, quick=True, budgets=(1,), attacks=("A1",), seeds=1)
    with pytest.raises(InvalidArgumentError) as info:
        run_audit(config, log=lambda _line: None)
    assert str(info.value) == f"model 'mine': {ROOM}"
    assert built == []  # no victim, no twin trained


def test_model_spec_says_the_same() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        model_spec("mine", lambda: nn.Linear(6, 10), _small_task())
    assert str(info.value) == ROOM
