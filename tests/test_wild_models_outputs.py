"""Output structures of models from the wild for TorchScript: what ``torch.jit.trace`` cannot
return (a dict mixing a tensor and a tuple, a dict of lists, a list of tuples) is refused before
any lock or export with where it is; what it can return is exported exactly."""

from __future__ import annotations

import collections
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
Pair = collections.namedtuple("Pair", "logits extra")


class _Returns(nn.Module):
    def __init__(self, shape: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.shape = shape

    def forward(self, x: torch.Tensor) -> object:
        return self.shape(self.fc(x))


@pytest.mark.parametrize(
    ("shape", "where"),
    [
        (lambda y: {"logits": y, "hidden": (y,)}, "output"),  # HF-style: a tensor and a tuple
        (lambda y: (y, {"all": [y, y]}), r"output\[1\]"),
        (lambda y: [(y, y), (y, y)], "output"),
        (lambda y: (y, []), r"output\[1\]"),
    ],
)
def test_an_untraceable_output_is_refused_before_any_work(
    shape: Callable, where: str, workdir: Path
) -> None:
    """Was: the ONNX file exported, then "TorchScript tracing failed (RuntimeError: Tracer
    cannot infer type of {'logits': ...). Check that the model runs with input_tensors"."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match=rf"structure at {where} that TORCHSCRIPT_CPU"):
        protector.protect_new_model(
            _Returns(shape), "m", [X], model_export_formats=EF.ONNX | EF.TORCHSCRIPT_CPU
        )
    assert not (protector.outputs_dir / "m").exists()


def test_traceable_structures_are_exported(workdir: Path) -> None:
    """A NamedTuple holding a dict, and a dict of equal-length tuples, trace as they are."""
    shape = lambda y: Pair(y, {"a": (y, y * 2), "b": (y, y)})  # noqa: E731
    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        _Returns(shape), "m", [X], model_export_formats=EF.TORCHSCRIPT_CPU
    )
    assert result.formats["torchscript_cpu"].max_rel_error < 1e-4


def test_a_namedtuple_output_leaves_the_keyed_model_as_a_plain_tuple() -> None:
    """The locked model that AOTInductor packages returns plain tuples: a NamedTuple class of
    the user's cannot be serialised. Was: "AOTInductor compilation failed (NotImplementedError:
    Can't serialize TreeSpec of namedtuple class ...). Check inductor_configs and that a C++
    compiler is installed", after the lock and the other exports; ``torch.export.save`` (the
    same serialisation, without the compile) fails alike."""
    model = _Returns(lambda y: Pair(y, {"a": y * 2})).eval()
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    key = torch.from_numpy(locked.layout.static_key())
    program = torch.export.export(locked.keyed, (X, key))
    torch.export.save(program, io.BytesIO())
    outputs = program.module()(X, key)
    assert type(outputs) is tuple and type(outputs[1]) is dict
    with torch.no_grad():
        expected = model(X)
    assert torch.allclose(outputs[0], expected.logits, atol=1e-5)
    assert torch.allclose(outputs[1]["a"], expected.extra["a"], atol=1e-5)


@pytest.mark.slow
def test_a_namedtuple_model_is_compiled_locked_and_original(workdir: Path) -> None:
    """End to end (two AOTInductor compiles, ~20 s): the locked file and, with
    ``save_original=True``, the original one. Was: "AOTInductor compilation failed
    (NotImplementedError: Can't serialize TreeSpec of namedtuple class ...)"."""
    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        _Returns(lambda y: Pair(y, y * 2)),
        "m",
        [X],
        model_export_formats=EF.INDUCTOR_CPU,
        save_original=True,
    )
    assert result.formats["inductor_cpu"].max_rel_error < 1e-4
    assert [p.name for p in result.original_files] == ["m_inductor_cpu.pt2"]
