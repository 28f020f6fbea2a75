"""``model_spec``'s ``factory`` must build a new network on each call: the audit trains the
twin, B(x) and every attack from it in place, so a factory that hands out one object (or one
layer) again made them overwrite each other and, given the victim (``lambda: net``), retrained
the user's model."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.audit.helpers import Net, arrays
from torch import nn

from skprotect_pytorch.audit import model_spec, task_from_arrays
from skprotect_pytorch.audit.models import train_model
from skprotect_pytorch.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def task():
    return task_from_arrays(*arrays())


def test_a_factory_returning_the_victim_is_refused_and_the_victim_kept(task) -> None:
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=2, seed=0)
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(InvalidArgumentError, match="returns the victim's tensors"):
        model_spec("mine", lambda: net, task, victim=net, epochs=1)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_a_factory_sharing_layers_between_calls_is_refused(task) -> None:
    body = nn.Linear(12, 16)  # built once, outside the factory

    def factory() -> nn.Module:
        return nn.Sequential(body, nn.ReLU(), nn.Linear(16, 4))

    with pytest.raises(InvalidArgumentError, match="the same tensors on every call"):
        model_spec("mine", factory, task, epochs=1)
    shared = Net()
    with pytest.raises(InvalidArgumentError, match="the same tensors on every call"):
        model_spec("mine", lambda: shared, task, epochs=1)


def test_a_model_instance_as_factory_is_told_to_pass_the_class(task) -> None:
    """Calling the instance ran its forward without input: a TypeError naming ``forward``."""
    with pytest.raises(InvalidArgumentError, match=r"the class Net, or lambda: Net\(\.\.\.\)"):
        model_spec("mine", Net(), task, epochs=1)


def test_a_factory_building_new_layers_is_taken(task) -> None:
    assert model_spec("mine", lambda: Net(), task, epochs=1).name == "mine"


def test_a_victim_of_another_dtype_is_told_to_pass_float(task) -> None:
    """It failed on the two test samples with torch's "mat1 and mat2 must have the same dtype"."""
    with pytest.raises(InvalidArgumentError, match=r"a\.weight torch\.float64 \(factory torch\.f"):
        model_spec("mine", Net, task, victim=Net().double(), epochs=1)


@pytest.mark.parametrize("name", ["a\0b", "n" * 201])
def test_a_name_no_folder_can_take_is_refused(task, name: str) -> None:
    """It names the cell folder: NUL raised a ValueError, a long name "not writable"."""
    with pytest.raises(InvalidArgumentError, match="at most 200 bytes without NUL"):
        model_spec(name, Net, task, epochs=1)


SCALE = torch.linspace(0.5, 1.5, 12)  # a fixed input scaling, computed once


class Scaled(nn.Module):
    """Registers one module-level constant as a buffer: every instance shares it by design."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", SCALE)
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x * self.scale)))


def test_a_factory_sharing_a_constant_buffer_is_taken(task) -> None:
    """Training never changes such a buffer; the check refused the factory (and the victim it
    built, as "the victim's tensors"), though the audit ran before the check."""
    assert model_spec("scaled", Scaled, task, epochs=1).name == "scaled"
    assert model_spec("scaled", Scaled, task, victim=Scaled(), epochs=1).name == "scaled"


def test_a_factory_sharing_running_statistics_is_refused(task) -> None:
    norm = nn.BatchNorm1d(12, affine=False)  # no parameters, but trained statistics

    def factory() -> nn.Module:
        return nn.Sequential(norm, nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))

    with pytest.raises(InvalidArgumentError, match="the same tensors on every call"):
        model_spec("mine", factory, task, epochs=1)
