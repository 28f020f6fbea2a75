"""``LockedModel.shared_weights`` lists locked layers that store copies of one weight, for the
protector's warning that a ``balanced`` + ``quantize_compatibility`` lock links their keys.
Zero- or constant-initialised layers of one shape were listed too ("copies of one weight"),
though their rows are all alike, so no match links anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.lock import lock_model


def _model(fill: float | None) -> nn.Sequential:
    """Four linears; the two middle ones filled with ``fill`` (None: one weight cloned)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16)
    )
    model.append(nn.ReLU()).append(nn.Linear(16, 4))
    with torch.no_grad():
        if fill is None:
            model[4].weight.copy_(model[2].weight)
        else:
            model[2].weight.fill_(fill)
            model[4].weight.fill_(fill)
    return model


def _shared(model: nn.Module) -> list[tuple[str, ...]]:
    rng = np.random.default_rng(0)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=rng, find_shared=True)
    return locked.shared_weights


@pytest.mark.parametrize("fill", [0.0, 0.25])
def test_constant_layers_of_one_shape_are_not_copies_of_one_weight(fill: float) -> None:
    assert _shared(_model(fill)) == []


def test_a_cloned_weight_is_still_listed() -> None:
    assert _shared(_model(None)) == [("2", "4")]
