"""Helpers shared by the audit tests."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_classification
from torch import nn

from skprotect_pytorch.audit.attacks import RelaxedKey
from skprotect_pytorch.lock import LockedModel


def set_true_key(key: RelaxedKey, locked: LockedModel) -> None:
    """Pin ``key`` at ``locked``'s true key (logits one-hot at the true permutations, i.e. a hard
    Sinkhorn output, scales the true ones) and put it in eval mode, to test exactness there."""
    with torch.no_grad():
        for slot, p in enumerate(locked.layout.perms):
            one_hot = torch.full((len(p), len(p)), -1e4)
            one_hot[torch.from_numpy(p), torch.arange(len(p))] = 0.0
            key.logits[slot].copy_(one_hot)
        for slot, s in enumerate(locked.layout.scales):
            key.scales[slot].copy_(torch.from_numpy(s))
    key.eval()


def arrays(scale: float = 1.0) -> tuple[np.ndarray, ...]:
    """A 4-class, 12-feature tabular task (200 training, 100 test rows), inputs times ``scale``."""
    x, y = make_classification(
        n_samples=300, n_features=12, n_informative=8, n_classes=4, random_state=0
    )
    x = x.astype(np.float32) * np.float32(scale)
    return x[:200], y[:200], x[200:], y[200:]


class Net(nn.Module):
    """A 12-16-16-4 MLP for :func:`arrays`: three keyed Linear layers, seconds to attack."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))
