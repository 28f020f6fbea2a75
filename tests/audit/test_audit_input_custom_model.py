"""A model of your own that the audit cannot score or lock is refused by ``model_spec``, with
what to fix, before any training: not by a traceback from scipy or torch's optimiser after the
victim and its twin were trained, nor by a report that measured nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

from skprotect_pytorch.audit import AuditConfig, model_spec, run_audit, task_from_arrays
from skprotect_pytorch.audit.models import accuracy, train_model
from skprotect_pytorch.errors import InvalidArgumentError


def arrays() -> tuple[np.ndarray, ...]:
    """A 4-class, 12-feature tabular task: 200 training and 100 test rows."""
    x, y = make_classification(
        n_samples=300, n_features=12, n_informative=8, n_classes=4, random_state=0
    )
    return x[:200].astype(np.float32), y[:200], x[200:].astype(np.float32), y[200:]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class NanLogits(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


class IntegerLogits(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).round().long()


class BareMatrix(nn.Module):
    """Its one weight is a bare parameter: no layer the lock supports."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(12, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


class NoParameters(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :4]


def diverged() -> nn.Module:
    net = Net()
    with torch.no_grad():
        net.a.weight[0, 0] = float("nan")
    return net


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (NanLogits, {}, "NaN or infinite logits on two test samples"),
        (IntegerLogits, {}, "must return floating-point logits, but returned torch.int64"),
        (Net, {"victim": diverged()}, r"victim holds NaN or infinite weights \(a\.weight\)"),
        (BareMatrix, {}, "no layer the lock supports .*Linear.*nothing to lock or attack"),
        (NoParameters, {}, "no layer the lock supports"),  # was Adam's "empty parameter list"
        (Net, {"description": 3}, "description must be a non-empty string"),
    ],
    ids=[
        "nan-logits",
        "integer-logits",
        "nan-victim",
        "no-lockable-layer",
        "no-parameters",
        "description",
    ],
)
def test_a_model_the_audit_cannot_score_or_lock_is_refused_up_front(
    factory, kwargs: dict, message: str
) -> None:
    task = task_from_arrays(*arrays())
    with pytest.raises(InvalidArgumentError, match=message):
        model_spec("mine", factory, task, epochs=1, **kwargs)


def test_a_training_split_of_one_class_is_refused() -> None:
    """Every learner would predict the one class: the report measured nothing and said so not."""
    x, y, xs, ys = arrays()
    task = task_from_arrays(x, np.full_like(y, 2), xs, ys)
    with pytest.raises(InvalidArgumentError, match="training split holds only class 2"):
        model_spec("mine", Net, task, epochs=1)


def test_the_spec_audits_the_victim_as_given_not_as_changed_later(one_thread) -> None:
    """The spec held your model object: training it on (or zeroing it) after ``model_spec``
    changed what was audited, while the cells stayed named by the weights given."""
    task = task_from_arrays(*arrays())
    torch.manual_seed(0)
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    given = accuracy(net, task.x_test, task.y_test)
    spec = model_spec("mine", Net, task, victim=net, epochs=1)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    report = run_audit(AuditConfig(model=spec, attacks=("A0",)), log=lambda line: None)
    assert report.full_accuracy == given > 0.5
