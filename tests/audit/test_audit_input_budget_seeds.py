"""Budgets the cells tell apart (``f"{b:g}"``) draw apart: the draw was seeded with
``round(percent * 1000)`` alone, so 1.0001 % and 1.0004 % (cells ``B@1.0001`` and
``B@1.0004``) trained on the very same sample, and every budget under 0.0005 % on one stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skprotect_pytorch.audit.data import Task


def _task(n: int = 20_000) -> Task:
    """A task whose inputs are the sample indices, to compare draws."""
    x = torch.arange(n, dtype=torch.float32)[:, None]
    y = torch.arange(n) % 10
    return Task(x, y, x[:10], y[:10], 10)


@pytest.mark.parametrize("pair", [(1.0001, 1.0004), (0.0001, 0.0004), (33.3333, 33.3334)])
def test_budgets_with_their_own_cell_draw_their_own_sample(pair: tuple[float, float]) -> None:
    task = _task()
    first, second = (task.budget(b, seed=0)[0] for b in pair)
    assert f"{pair[0]:g}" != f"{pair[1]:g}"
    assert len(first) == len(second)  # the same size: only the seed tells them apart
    assert not torch.equal(first, second)


@pytest.mark.parametrize("budget", [0.5, 1, 5, 12.5, 100 / 3])
def test_a_budget_draws_as_its_cell_names_it(budget: float) -> None:
    """A stored cell stands for its name: a budget drawn as ``1`` and one as ``1.0000001``
    (both cell ``@1``) draw the same sample, and budgets of at most three decimals draw as
    before (seed ``[seed, round(percent * 1000)]``), so stored cells stay reproducible."""
    task = _task()
    named = float(f"{budget:g}")
    assert torch.equal(task.budget(budget, 3)[0], task.budget(named, 3)[0])
    if named == round(named * 1000) / 1000:
        size = max(10, round(20_000 * budget / 100))
        rng = np.random.default_rng([3, round(budget * 1000)])
        expected = torch.from_numpy(rng.choice(20_000, size=size, replace=False)).float()
        assert torch.equal(task.budget(budget, 3)[0][:, 0], expected)
