"""``input_tensors`` as users from the wild write them: a ``None`` for an optional argument,
or a number, is named by its position with what to do, not as the whole list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.protect import SkProtectorPyTorch

X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))


class _OptionalMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(x) if mask is None else self.fc(x) * mask


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ([X, None], r"input_tensors\[1\] is NoneType\. .*leave it out of input_tensors"),
        ([X, 2.0], r"input_tensors\[1\] is float\. Pass one example tensor per argument"),
    ],
)
def test_a_non_tensor_input_is_named_by_position(inputs: list, match: str, workdir: Path) -> None:
    """Was: "input_tensors must be a non-empty list of torch.Tensor ..., but got list"."""
    protector = SkProtectorPyTorch(application_name="app")
    with pytest.raises(InvalidArgumentError, match=match):
        protector.protect_new_model(_OptionalMask(), "m", inputs)
