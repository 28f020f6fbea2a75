"""A model whose forward returns a ``@dataclass`` is protected to every format: the files and
the runtime return its fields in their declared order, as for a ``NamedTuple`` (a plain tuple)
or a dict (its values). Was refused: "The model returned Out; only tensors and (nested)
tuples, lists or dicts of tensors can be exported" (ONNX, AOTInductor), and "a structure at
output that TORCHSCRIPT_CPU (torch.jit.trace) cannot return" (TorchScript)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock.keyed_model import plain_outputs
from skprotect_pytorch.pipeline import _for_export, _PlainOutputs
from skprotect_pytorch.protect import SkProtectorPyTorch
from skprotect_pytorch.result import ProtectionResult
from skruntime import SkRuntime

EF = SkProtectorPyTorch.ExportFormat
X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))


@dataclasses.dataclass
class Inner:
    hidden: torch.Tensor | None


@dataclasses.dataclass(frozen=True)
class Out:
    logits: torch.Tensor
    inner: Inner


class Classifier(nn.Module):
    """Returns ``Out(logits, Inner(hidden))``; ``hidden`` is None when ``with_hidden`` is
    False."""

    def __init__(self, with_hidden: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)
        self.with_hidden = with_hidden

    def forward(self, x: torch.Tensor) -> Out:
        hidden = torch.relu(self.body(x))
        return Out(self.head(hidden), Inner(hidden if self.with_hidden else None))


def _protect(fmt: EF) -> ProtectionResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SkProtectorPyTorch(application_name="app").protect_new_model(
            Classifier().eval(),
            "m",
            [X],
            model_export_formats=fmt,
            test_key=True,
            save_original=True,
        )


def _check_end_to_end(fmt: EF) -> None:
    """The protected file, run by the runtime with the key, returns the original's fields in
    order; the original file (``save_original``) is written too, checked by the protector."""
    result = _protect(fmt)
    assert result.formats[fmt.slug].max_rel_error < 1e-4
    assert [p.name for p in result.original_files] == [
        f"m_{fmt.slug}{result.formats[fmt.slug].path.suffix}"
    ]
    with SkRuntime("outputs/app").load("m", fmt.slug) as model:
        outputs = [np.asarray(y) for y in model.run([X.numpy()])]
    with torch.no_grad():
        expected = Classifier().eval()(X)
    assert len(outputs) == 2
    assert_equivalent(outputs, [expected.logits, expected.inner.hidden])


@pytest.mark.parametrize("fmt", [EF.ONNX, EF.TORCHSCRIPT_CPU], ids=["onnx", "torchscript_cpu"])
def test_a_dataclass_output_is_protected_and_run(workdir: Path, fmt: EF) -> None:
    _check_end_to_end(fmt)


@pytest.mark.slow
def test_a_dataclass_output_is_compiled_locked_and_original(workdir: Path) -> None:
    """Two AOTInductor compiles (~30 s): ``torch.export`` refuses a dataclass it has no pytree
    registration for ("Found <class 'Out'> in output, which is not a known type")."""
    _check_end_to_end(EF.INDUCTOR_CPU)


def test_a_none_field_is_refused_by_its_name(workdir: Path) -> None:
    """Where the None is says which field, as ``output['key']`` does for a dict."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match=r"hold None at output\.inner\.hidden\. "):
        protector.protect_new_model(
            Classifier(with_hidden=False), "m", [X], model_export_formats=EF.TORCHSCRIPT_CPU
        )


def test_the_locked_model_returns_a_dataclass_as_the_tuple_of_its_fields() -> None:
    """A dict that is a dataclass too (Hugging Face's ``ModelOutput``) stays a dict."""
    y = torch.ones(1)
    assert plain_outputs([Out(y, Inner(y * 2))]) == [(y, (y * 2,))]

    @dataclasses.dataclass
    class DictOutput(dict):
        logits: torch.Tensor

        def __post_init__(self) -> None:
            self["logits"] = self.logits

    plain = plain_outputs(DictOutput(y))
    assert type(plain) is dict and plain == {"logits": y}
    assert plain_outputs(Out) is Out  # a class is no output to take apart

    class DictModel(nn.Linear):
        def forward(self, x: torch.Tensor) -> DictOutput:
            return DictOutput(super().forward(x))

    # exported as it is (no wrapper renaming its weights ``model.*``), as every dict output
    model = DictModel(16, 4)
    assert _for_export(model, EF.INDUCTOR_CPU, (X,)) is model
    assert isinstance(_for_export(Classifier(), EF.ONNX, (X,)), _PlainOutputs)
