"""A ``factory`` that builds its network on another device (``MyNet().cuda()`` on a GPU
machine; ``meta`` stands for it here) was taken by ``model_spec``, and the audit then failed
in torch once the victim and its twin had trained ("Tensor on device meta is not on the
expected device cpu!", exit code 70 from ``skprotect audit``). It is refused at once."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from skprotect_pytorch.audit import task_from_arrays
from skprotect_pytorch.audit.custom import model_spec
from skprotect_pytorch.errors import InvalidArgumentError


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("victim", [None, _net()])
def test_a_factory_off_the_cpu_is_refused(victim: nn.Module | None) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    task = task_from_arrays(x, np.arange(30) % 3, x, np.arange(30) % 3)
    with pytest.raises(InvalidArgumentError) as info:
        model_spec("mine", lambda: _net().to("meta"), task, victim=victim)
    assert str(info.value) == (
        "factory() builds tensors on meta: the audit runs on the CPU; build it there (no .cuda() "
        "or .to(device) in factory())."
    )
