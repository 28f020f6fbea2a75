"""A derived ``Dim`` (``2 * b``) in ``dynamic_shapes``: the check at other sizes resizes it with
its root.

The check changed each named axis by one on its own: ``b`` to 3 and ``2*b`` from 4 to 5, and a
model made for ``y`` twice as long as ``x`` was refused: "dynamic_shapes declares axes the model
cannot vary: with b=3, 2*b=5 ..." (docs/runtime.md records such ranges as supported).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from skprotect_pytorch.dynamic_axes import dynamic_axes, other_sizes
from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.export import build_export_options
from skprotect_pytorch.export.options import derived_root_size
from skprotect_pytorch.protect import SkProtectorPyTorch

Dim = torch.export.Dim


class Doubled(nn.Module):
    """``fc(cat([x, x])) + fc(y)``: ``y`` is twice as long as ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([x, x])) + self.fc(y)


def _inputs() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(2, 4), torch.randn(4, 4)]


def test_other_sizes_resize_a_derived_axis_with_its_root():
    b = Dim("b", max=10)
    tensors = _inputs()
    options = build_export_options(tensors, {"input_names": ["x", "y"]}, ({0: b}, {0: 2 * b}))
    axes = dynamic_axes(Doubled().eval(), options, tensors)
    resized, sizes = other_sizes(tensors, axes)
    assert [tuple(t.shape) for t in resized] == [(3, 4), (6, 4)]
    assert sizes == "b=3, 2*b=6"
    # only the derived axis declared: its root's example size is found from it
    options = build_export_options(tensors[1:], {"input_names": ["y"]}, ({0: 2 * b},))
    resized, sizes = other_sizes(tensors[1:], dynamic_axes(nn.Identity(), options, tensors[1:]))
    assert [tuple(t.shape) for t in resized] == [(6, 4)]
    assert torch.equal(resized[0][4:], tensors[1][:2])  # the first slices again


def test_model_with_a_derived_axis_is_protected(workdir):
    b = Dim("b")
    model, tensors = Doubled().eval(), _inputs()
    result = SkProtectorPyTorch(application_name="derived").protect_new_model(
        model,
        "doubled",
        tensors,
        model_export_formats=SkProtectorPyTorch.ExportFormat.TORCHSCRIPT_CPU,
        dynamic_shapes=({0: b}, {0: 2 * b}),
        onnx_params={"input_names": ["x", "y"]},
        test_key=True,
    )
    assert "torchscript_cpu" in result.formats


def test_derived_axes_without_their_root_are_checked_against_each_other():
    """The root on no axis: a derived axis's example size must follow it, and two derived axes
    must need one root size (``2*b`` at 5 was taken, then never checked at another size)."""
    b = Dim("b", max=10)
    with pytest.raises(InvalidArgumentError, match="for no size of 'b'"):
        build_export_options([torch.randn(5, 4)], {"input_names": ["x"]}, ({0: 2 * b},))
    with pytest.raises(InvalidArgumentError, match="need 'b' of 2 and 3"):
        build_export_options(
            [torch.randn(5, 4), torch.randn(4, 4)],
            {"input_names": ["x", "y"]},
            ({0: 2 * b + 1}, {0: b + 1}),
        )
    # consistent: accepted
    build_export_options(
        [torch.randn(7, 4), torch.randn(4, 4)],
        {"input_names": ["x", "y"]},
        ({0: 2 * b + 1}, {0: b + 1}),
    )


@pytest.mark.parametrize(
    ("make", "size", "root"), [(lambda b: b - 5, 2, 7), (lambda b: 3 * b + 2, 23, 7)]
)
def test_a_root_size_far_from_the_derived_one_is_found(make, size: int, root: int) -> None:
    """The root's size was searched below twice the derived size only: ``b - 5`` at 2 (b = 7)
    was refused as "for no size of 'b'" and never checked at another size."""
    b = Dim("b", min=6, max=20)
    dim = make(b)
    assert derived_root_size(dim.fn, size) == root
    tensors = [torch.randn(size, 4)]
    options = build_export_options(tensors, {"input_names": ["x"]}, ({0: dim},))
    resized, sizes = other_sizes(tensors, dynamic_axes(nn.Identity(), options, tensors))
    assert sizes == f"b={root + 1}, {dim.__name__}={dim.fn(root + 1)}"
    assert resized[0].shape[0] == dim.fn(root + 1)
