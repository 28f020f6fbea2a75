"""Generated reference tasks for the audit: tabular, image and sequence classification.

Each task is seeded and generated locally (no downloads), with 20,000 training samples so that
1 % (200 samples) is a meaningful attacker budget, and hard enough that 1 % of the data trains
a clearly worse model than all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import make_classification

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Task:
    """Train/test tensors of one classification task; inputs may have any per-sample shape."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (``(features,)``, ``(C, H, W)``, ``(length, features)``)."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_features(self) -> int:
        """Size of the last input axis (the feature axis of tabular and sequence tasks)."""
        return int(self.x_train.shape[-1])

    @property
    def chance(self) -> float:
        """Accuracy of always predicting the most frequent test class."""
        counts = torch.bincount(self.y_test, minlength=self.n_classes)
        return float(counts.max()) / len(self.y_test)

    def budget_size(self, percent: float) -> int:
        """How many training samples the ``percent`` % budget draws: never fewer than the
        classes, so that a small training split's budget is larger than its percentage says."""
        return max(self.n_classes, round(len(self.y_train) * percent / 100.0))

    def budget(self, percent: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The attacker's labelled budget: a seeded random ``percent`` % of the training set."""
        n = len(self.y_train)
        rng = np.random.default_rng([seed, *budget_seed(percent)])
        idx = torch.from_numpy(rng.choice(n, size=self.budget_size(percent), replace=False))
        return self.x_train[idx], self.y_train[idx]


def require_budget_room(task: Task, where: str = "") -> None:
    """Refuse a task with fewer training samples than classes before any training:
    :meth:`Task.budget` draws at least one sample per class, and numpy refused that draw only
    after the victim had trained. ``where``: what the message starts with (the spec's name)."""
    n = len(task.y_train)
    if n < task.n_classes:
        raise InvalidArgumentError(
            f"{where}the training split has {n} samples, fewer than its {task.n_classes} "
            "classes, and the thief's budget is never smaller than the number of classes; give "
            f"a training split of at least {task.n_classes} samples."
        )


def budget_seed(percent: float) -> list[int]:
    """The words that seed a budget's draw, after its cell name (``f"{percent:g}"``): budgets
    the cells tell apart draw apart (``round(percent * 1000)`` alone gave 1.0001 % and 1.0004 %
    the same sample). A name of at most three decimals keeps that one word, as drawn before."""
    named = float(f"{percent:g}")
    millis = round(named * 1000)
    if named == millis / 1000:
        return [millis]
    bits = int(np.float64(named).view(np.uint64))  # nonzero: a budget is positive
    return [millis, bits >> 32, bits & 0xFFFFFFFF]  # longer: never a one-word seed's pool


TabularTask = Task
"""The name the attacks were written against; every task now has this type."""


def _split(x: np.ndarray, y: np.ndarray, n_train: int, n_classes: int) -> Task:
    """A task from float inputs and integer labels; the first ``n_train`` rows train."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    return Task(xt[:n_train], yt[:n_train], xt[n_train:], yt[n_train:], n_classes)


def make_tabular_task(
    *,
    n_train: int = 20_000,
    n_test: int = 5_000,
    n_features: int = 40,
    n_classes: int = 10,
    seed: int = 0,
) -> Task:
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
    return _split((x - mean) / std, y, n_train, n_classes)


# ---------------------------------------------------------------------------------------------
# Image task: procedurally drawn shapes
# ---------------------------------------------------------------------------------------------
ShapeMask = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``(u, v, width) -> inside`` in the shape's own frame (radius about 1)."""


def _bar(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (np.abs(v) < 1.5 * w) & (np.abs(u) < 1.0)


def _plus(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    return _bar(u, v, w / 1.5) | _bar(v, u, w / 1.5)


SHAPES: dict[str, ShapeMask] = {
    "disc": lambda u, v, w: np.hypot(u, v) < 0.9,
    "ring": lambda u, v, w: np.abs(np.hypot(u, v) - 0.75) < w,
    "square": lambda u, v, w: np.maximum(np.abs(u), np.abs(v)) < 0.75,
    "frame": lambda u, v, w: np.abs(np.maximum(np.abs(u), np.abs(v)) - 0.75) < w,
    "triangle": lambda u, v, w: (v > -0.6) & (v < 0.9 - 1.7 * np.abs(u)),
    "plus": _plus,
    "cross": lambda u, v, w: _plus((u - v) / np.sqrt(2), (u + v) / np.sqrt(2), w),
    "horizontal bar": _bar,
    "vertical bar": lambda u, v, w: _bar(v, u, w),
    "two dots": lambda u, v, w: np.hypot(np.abs(u) - 0.55, v) < 0.35,
}
"""The ten image classes, in label order."""


def make_image_task(
    *,
    n_train: int = 20_000,
    n_test: int = 5_000,
    size: int = 16,
    noise: float = 0.4,
    seed: int = 0,
) -> Task:
    """1×size×size images of ten shape classes with random position, scale, rotation, stroke,
    polarity, background gradient, a distractor blob and pixel noise (``SHAPES``).

    The nuisances make the class invariant to many transformations, which a small budget cannot
    teach: that is what separates 1 % from 100 % of the data.
    """
    rng = np.random.default_rng([seed, 0x1A6E])
    n = n_train + n_test
    y = rng.integers(0, len(SHAPES), size=n)
    grid = np.arange(size, dtype=np.float64) - (size - 1) / 2
    gy, gx = np.meshgrid(grid, grid, indexing="ij")  # (size, size)

    def per_sample(a: np.ndarray) -> np.ndarray:
        return a[:, None, None]

    centre = rng.uniform(-size / 6, size / 6, size=(n, 2))
    radius = rng.uniform(size * 0.22, size * 0.38, size=n)
    angle = rng.uniform(-0.35, 0.35, size=n)  # ±20°: bars stay horizontal/vertical
    dx, dy = gx[None] - per_sample(centre[:, 0]), gy[None] - per_sample(centre[:, 1])
    cos, sin = per_sample(np.cos(angle)), per_sample(np.sin(angle))
    u = (cos * dx + sin * dy) / per_sample(radius)
    v = (-sin * dx + cos * dy) / per_sample(radius)
    width = per_sample(rng.uniform(0.12, 0.25, size=n))
    mask = np.zeros((n, size, size), dtype=bool)
    for label, shape in enumerate(SHAPES.values()):
        sel = y == label
        mask[sel] = shape(u[sel], v[sel], width[sel])

    contrast = rng.uniform(0.6, 1.4, size=n) * rng.choice([-1.0, 1.0], size=n)
    slope = rng.normal(0, 0.04, size=(n, 2))
    background = per_sample(slope[:, 0]) * gx[None] + per_sample(slope[:, 1]) * gy[None]
    blob_at = rng.uniform(-size / 2, size / 2, size=(n, 2))
    blob = per_sample(rng.uniform(-1.0, 1.0, size=n)) * np.exp(
        -((gx[None] - per_sample(blob_at[:, 0])) ** 2 + (gy[None] - per_sample(blob_at[:, 1])) ** 2)
        / (2 * per_sample(rng.uniform(1.0, 2.5, size=n)) ** 2)
    )
    x = per_sample(contrast) * mask + background + blob + rng.normal(0, noise, size=mask.shape)
    return _split(x[:, None], y, n_train, len(SHAPES))


# ---------------------------------------------------------------------------------------------
# Sequence task: which Markov chain generated the tokens
# ---------------------------------------------------------------------------------------------
def make_sequence_task(
    *,
    n_train: int = 20_000,
    n_test: int = 5_000,
    length: int = 16,
    vocab: int = 8,
    n_classes: int = 10,
    mixing: float = 0.3,
    seed: int = 0,
) -> Task:
    """One-hot token sequences ``(length, vocab)``; the label is which of ``n_classes`` Markov
    chains generated the sequence.

    Every chain's transition matrix is doubly stochastic (a random mixture of permutations,
    blended with the uniform matrix by ``mixing``), so every chain has the uniform stationary
    distribution: token counts carry almost nothing, and a classifier must remember which
    token preceded which (order and memory).
    """
    rng = np.random.default_rng([seed, 0x5E9])
    chains = np.empty((n_classes, vocab, vocab))
    for c in range(n_classes):
        weights = rng.dirichlet(np.ones(3))
        perms = sum(w * np.eye(vocab)[rng.permutation(vocab)] for w in weights)
        chains[c] = (1 - mixing) * perms + mixing / vocab
    cumulative = chains.cumsum(-1)
    n = n_train + n_test
    y = rng.integers(0, n_classes, size=n)
    tokens = np.empty((n, length), dtype=np.int64)
    tokens[:, 0] = rng.integers(0, vocab, size=n)
    draws = rng.random((n, length))
    for t in range(1, length):
        row = cumulative[y, tokens[:, t - 1]]  # (n, vocab)
        tokens[:, t] = np.minimum((draws[:, t, None] > row).sum(-1), vocab - 1)
    return _split(np.eye(vocab)[tokens], y, n_train, n_classes)
