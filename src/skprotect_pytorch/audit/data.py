"""Generated reference task for the audit: a seeded tabular classification problem.

Large enough that 1 % of the training set (200 samples) is a meaningful attacker budget, and
generated locally (no downloads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import make_classification


@dataclass(frozen=True)
class TabularTask:
    """Standardised train/test tensors of one classification task."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def chance(self) -> float:
        """Accuracy of always predicting the most frequent test class."""
        counts = torch.bincount(self.y_test, minlength=self.n_classes)
        return float(counts.max()) / len(self.y_test)

    def budget(self, percent: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The attacker's labelled budget: a seeded random ``percent`` % of the training set."""
        n = len(self.y_train)
        size = max(self.n_classes, round(n * percent / 100.0))
        rng = np.random.default_rng([seed, round(percent * 1000)])
        idx = torch.from_numpy(rng.choice(n, size=size, replace=False))
        return self.x_train[idx], self.y_train[idx]


def make_tabular_task(
    *,
    n_train: int = 20_000,
    n_test: int = 5_000,
    n_features: int = 40,
    n_classes: int = 10,
    seed: int = 0,
) -> TabularTask:
    """10-class, 40-feature ``make_classification`` task, standardised with training statistics."""
    x, y = make_classification(
        n_samples=n_train + n_test,
        n_features=n_features,
        n_informative=24,
        n_redundant=8,
        n_classes=n_classes,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0.0,
        random_state=seed,
    )
    x = x.astype(np.float32)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mean) / std
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return TabularTask(xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:], n_classes)
