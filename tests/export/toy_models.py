"""Small modules shared by the exporter tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Toy(nn.Module):
    """Stand-in for a KeyedModel: the key is the last input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x, key):
        return self.lin(x) * key[:4].sum()


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class DoublesInPlace(nn.Module):
    """A forward that changes its input in place (``x.mul_(2)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.fc(x)


def eager(module, *inputs) -> list[np.ndarray]:
    with torch.no_grad():
        return [module(*inputs).numpy()]
