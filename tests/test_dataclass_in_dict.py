"""A dict of dataclasses is traced to TorchScript as a dict of the tuples of their fields, as
:func:`~skprotect_pytorch.lock.keyed_model.plain_outputs` returns it: it was refused before any
work ("a structure at output that TORCHSCRIPT_CPU (torch.jit.trace) cannot return"), while
the same model was protected to ONNX."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tests.assertions import assert_equivalent
from tests.test_dataclass_outputs import EF, X
from torch import nn

from skprotect_pytorch.output_checks import untraceable
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import SkRuntime


@dataclasses.dataclass
class Head:
    logits: torch.Tensor
    scores: torch.Tensor


class TwoHeads(nn.Module):
    """Returns ``{"a": Head(...), "b": Head(...)}``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(16, 4)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> dict[str, Head]:
        a, b = self.a(x), self.b(x)
        return {"a": Head(a, a.softmax(-1)), "b": Head(b, b.softmax(-1))}


def test_a_dict_of_dataclasses_is_traced(workdir: Path) -> None:
    SkProtectorPyTorch(application_name="app").protect_new_model(
        TwoHeads().eval(), "m", [X], model_export_formats=EF.TORCHSCRIPT_CPU, test_key=True
    )
    with SkRuntime("outputs/app").load("m", "torchscript_cpu") as model:
        outputs = [np.asarray(y) for y in model.run([X.numpy()])]
    with torch.no_grad():
        heads = TwoHeads().eval()(X)
    expected = [t for head in heads.values() for t in dataclasses.astuple(head)]
    assert_equivalent(outputs, expected)


def test_a_dict_of_dataclasses_of_unlike_fields_is_refused() -> None:
    """A field that is not a tensor still makes the dict untraceable, as a tuple holding it."""
    y = torch.ones(1)
    assert untraceable({"a": Head(y, (y, y))}) == "output"
    assert untraceable({"a": Head(y, y), "b": Head(y, y)}) is None
