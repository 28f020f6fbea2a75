"""``layer_filter`` functions as users write them: one computed with NumPy returns NumPy's
bool, which is an answer; a tensor is not, and the refusal names its type in full."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4))


def test_a_numpy_bool_answer_selects_the_layers() -> None:
    """Was: "layer_filter must return a bool, but returned bool for layer '0'"."""
    locked = lock_model(
        _model(),
        layer_filter=lambda name, module: np.prod(module.weight.shape) > 4096,
        secret_rng=np.random.default_rng(0),
    )
    assert [d.name for d in locked.locked_layers] == ["0"]
    assert [(d.name, d.reason) for d in locked.skipped_layers] == [
        ("2", "excluded by layer_filter")
    ]


def test_a_tensor_answer_is_refused_with_its_full_type() -> None:
    with pytest.raises(InvalidArgumentError, match=r"returned torch\.Tensor \(tensor\(True\)\)"):
        lock_model(
            _model(),
            layer_filter=lambda name, module: module.weight.abs().mean() > 0,
            secret_rng=np.random.default_rng(0),
        )
