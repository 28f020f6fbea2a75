"""Names and lifecycle arguments refused before any work (review of the public lifecycle API)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch


@pytest.mark.parametrize("name", ["app\n", "app\r\n"])
def test_an_application_name_with_a_line_break_is_refused_by_the_constructor(
    workdir: Path, name: str
) -> None:
    """``$`` matched before a trailing newline: the name passed, and the private state refused
    it only at the first protection."""
    with pytest.raises(InvalidArgumentError, match="application_name"):
        SkProtectorPyTorch(application_name=name)


def test_a_model_name_with_a_line_break_is_refused_before_the_export(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"m\\n"`` passed the protector's check, was locked and exported, and failed only when
    the runtime's key-file writer refused it (a bare ValueError)."""
    import skprotect_pytorch.protect as protect

    def no_export(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the protection started before the name was refused")

    monkeypatch.setattr(protect, "run_protection", no_export)
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match="model_name"):
        protector.protect_new_model(
            nn.Linear(4, 3),
            "m\n",
            [torch.randn(2, 4)],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        )
    assert not (workdir / "outputs").exists()


def test_a_layer_type_passed_as_layer_filter_says_how_to_filter_by_type(workdir: Path) -> None:
    """``layer_filter=nn.Linear`` (the type, as the removed layer_types_to_protect took) binds
    two positional arguments, so it passed the check, and failed inside torch: "empty():
    argument 'size' (position 1) must be tuple of ints, but found element of type Linear"."""
    with pytest.raises(InvalidArgumentError, match=r"isinstance\(module, Linear\)"):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            nn.Sequential(nn.Linear(4, 3)),
            "m",
            [torch.randn(2, 4)],
            layer_filter=nn.Linear,
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
        )
    assert not (workdir / "outputs").exists()
