"""Small models and one helper shared by the tests of what a locked model's forward reads
outside the model (tests/lock: outside tensors, converted lists, lambdas and frame reads)."""

from __future__ import annotations

import numpy as np
import torch
from tests.assertions import assert_equivalent
from torch import nn

from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.outside import run_keyed_checked


def plaintext_after_checked_run(
    model: nn.Module, *inputs: torch.Tensor
) -> list[tuple[str, tuple[int, ...]]]:
    """The original run (as the protector runs it first, filling any cache), its lock run
    once through :func:`run_keyed_checked`; the outputs must match, and the names and shapes
    of the plaintext weights are returned."""
    model.eval()
    with torch.no_grad():
        expected = model(*inputs)
    locked = lock_model(
        model, layer_filter=lambda name, module: True, secret_rng=np.random.default_rng(0)
    )
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        outputs = run_keyed_checked("net", locked.keyed, [*(x.clone() for x in inputs), key])
    assert_equivalent(outputs, expected)
    return [(w.name, w.shape) for w in locked.plaintext]


class Reads(nn.Module):
    """``self.a(read(x))``: each test reads something else outside the model."""

    def __init__(self, read) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.read = read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(self.read(x))


class Scales(nn.Module):
    """Applies ``self.act``, a lambda that each case makes from the model, before layer ``b``."""

    def __init__(self, make) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.scale = 0.5
        self.act = make(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(x))
