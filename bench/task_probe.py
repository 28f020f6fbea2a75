"""Where a sequence task's class lives: linear classifiers on summaries of the raw inputs.

A wrong key that keeps a network's features informative lets a random readout land above
chance (docs/security.md, "Which layers' wrong keys make the Transformer's spread").  This
script says which statistics of the input carry the class, by fitting a linear classifier
(standardised features, L-BFGS) on the suite task's training split and scoring it on its test
split:

- **token means**: the time-mean of the inputs, ``mean_t x_t`` (what a linear map of the
  inputs, mean-pooled, can see);
- **transitions**: the time-mean of adjacent-pair products, ``mean_t x_t ⊗ x_{t+1}`` (what a
  layer that compares neighbouring tokens can see).

Usage::

    python bench/task_probe.py --model transformer
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from skprotect_pytorch.audit import AuditConfig
from skprotect_pytorch.audit.data import Task

SEQUENCE_MODELS = ("gru", "lstm", "transformer")
"""The suite models whose task is a sequence ``(length, features)`` per sample."""

SUMMARIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "token means": lambda x: x.mean(1),
    "transitions": lambda x: (
        torch.einsum("nti,ntj->nij", x[:, :-1], x[:, 1:]).flatten(1) / (x.shape[1] - 1)
    ),
}


def probe(task: Task, summary: Callable[[torch.Tensor], torch.Tensor], iterations: int) -> float:
    """Test accuracy (%) of a linear classifier fitted on ``summary`` of the training inputs."""
    train, test = summary(task.x_train), summary(task.x_test)
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(train.shape[1], task.n_classes)
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=iterations)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(linear(train), task.y_train)
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return 100 * (linear(test).argmax(1) == task.y_test).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=SEQUENCE_MODELS)
    parser.add_argument("--iterations", type=int, default=500, help="L-BFGS iterations")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    torch.set_num_threads(1)
    config = AuditConfig(model=args.model)
    spec, *_ = config.resolved()
    task = spec.task(config.data_seed)
    print(f"{args.model}: chance {100 * task.chance:.2f} %")
    for name, summary in SUMMARIES.items():
        print(f"linear classifier on {name}: {probe(task, summary, args.iterations):.2f} %")


if __name__ == "__main__":
    main()
