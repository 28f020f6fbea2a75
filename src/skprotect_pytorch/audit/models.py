"""Reference model of the audit (an MLP for the tabular task) and the seeded trainer shared by
the victim, the baseline and every attack, so they all get the same training sweep."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

Forward = Callable[[torch.Tensor], torch.Tensor]


class TabularMLP(nn.Sequential):
    """``features-128-128-classes`` with ReLUs."""

    def __init__(self, n_features: int = 40, n_classes: int = 10, hidden: int = 128) -> None:
        super().__init__(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )


@dataclass(frozen=True)
class SweepConfig:
    """The training sweep every learner gets: each learning rate is trained for ``max(epochs)``
    epochs and evaluated after each listed epoch; the best point counts.

    The best point is chosen on the test set for the baseline and for the attacks alike (an
    oracle choice that favours every learner equally; the attacker's budget is too small for a
    reliable validation split at 1 %).
    """

    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    epochs: tuple[int, ...] = (20, 50, 100)
    batch_size: int = 64
    weight_decay: float = 0.0


QUICK_SWEEP = SweepConfig(lrs=(3e-3,), epochs=(20, 50), batch_size=64)


@torch.no_grad()
def accuracy(forward: Forward, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((forward(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    return correct / len(y)


def train_sweep_point(
    forward: Forward,
    params: Iterable[torch.nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: Iterable[int],
    batch_size: int,
    seed: int,
    evaluate: Callable[[], float],
    weight_decay: float = 0.0,
    on_step: Callable[[float], None] | None = None,
) -> dict[int, float]:
    """Adam on cross-entropy; returns ``{epoch: evaluate()}`` at each listed epoch.

    ``on_step(progress)`` is called before every step with the fraction of training done (used
    for temperature annealing).
    """
    checkpoints = sorted(set(epochs))
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    steps_per_epoch = max(1, -(-n // batch_size))
    total = checkpoints[-1] * steps_per_epoch
    step = 0
    scores: dict[int, float] = {}
    for epoch in range(1, checkpoints[-1] + 1):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            if on_step is not None:
                on_step(step / total)
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss_fn(forward(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
        if epoch in checkpoints:
            scores[epoch] = evaluate()
    return scores


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float = 1e-3,
    epochs: int = 30,
    batch_size: int = 128,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` from scratch (seeded init and batches); returns it in eval mode."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    model.train()
    train_sweep_point(
        model,
        model.parameters(),
        x,
        y,
        lr=lr,
        epochs=(epochs,),
        batch_size=batch_size,
        seed=seed,
        evaluate=lambda: 0.0,
    )
    return model.eval()
