"""The audit's reference suite: which task, architecture and victim training each model name means.

One registry (``SUITE``) so that ``run_audit``, the CLI and ``bench/audit_gate.py`` agree on
what "the CNN" is, and a new reference model is one entry here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .data import Task, make_image_task, make_sequence_task, make_tabular_task
from .models import RecurrentClassifier, ResNetCNN, TabularMLP, TransformerClassifier, train_model


@dataclass(frozen=True)
class ReferenceSpec:
    """One audited model: its task, a factory for a fresh (untrained) network, and how the
    victim is trained (Adam at ``victim_lr``, ``victim_epochs`` or ``quick_epochs``).

    The suite's entries generate their task and train their victim. A spec of your own
    (:func:`~skprotect_pytorch.audit.custom.model_spec`) carries your data, your trained model
    as ``victim`` and a ``fingerprint`` of both, which names its cells.
    """

    name: str
    description: str
    make_task: Callable[..., Task]
    """Generator called as ``make_task(seed=...)``."""
    factory: Callable[[], nn.Module]
    victim_epochs: int
    quick_epochs: int
    victim_lr: float = 1e-3
    victim_batch: int = 128
    victim: nn.Module | None = field(default=None, compare=False, repr=False)
    """A trained model to audit as it is; ``None`` trains one (the twin is trained either way)."""
    fingerprint: str | None = None
    """What the cells depend on beyond the name (your data and model); ``None`` for the suite."""

    def task(self, seed: int = 0) -> Task:
        """The task generated with ``seed`` (cached: the gate reuses it for every attack). A
        spec of your own holds its task: caching it kept your data in memory for good, after the
        spec was gone (one data set per audited spec)."""
        if self.fingerprint is not None:
            return self.make_task(seed=seed)
        return _task(self.make_task, seed)

    def shipped_model(self, task: Task, epochs: int) -> nn.Module:
        """The model the vendor ships: a copy of ``victim`` if given, else trained (seed 0)."""
        if self.victim is not None:
            return copy.deepcopy(self.victim).eval()
        return self.train_victim(task, epochs)

    def train_victim(self, task: Task, epochs: int, seed: int = 0) -> nn.Module:
        """A model trained on the whole training set with ``seed``, in eval mode."""
        torch.manual_seed(seed)  # seeded construction too, not only the seeded re-initialisation
        return train_model(
            self.factory(),
            task.x_train,
            task.y_train,
            lr=self.victim_lr,
            epochs=epochs,
            batch_size=self.victim_batch,
            seed=seed,
        )


SUITE: dict[str, ReferenceSpec] = {
    spec.name: spec
    for spec in (
        ReferenceSpec(
            "mlp",
            "tabular MLP 40-128-128-10 (make_classification, 20,000 train / 5,000 test)",
            make_tabular_task,
            TabularMLP,
            victim_epochs=30,
            quick_epochs=10,
        ),
        ReferenceSpec(
            "cnn",
            "ResNet-style CNN 8-16-32 with BatchNorm (generated 1x16x16 shapes, 10 classes, "
            "20,000 train / 5,000 test)",
            make_image_task,
            ResNetCNN,
            victim_epochs=15,
            quick_epochs=6,
            victim_lr=3e-3,
        ),
        ReferenceSpec(
            "transformer",
            "Transformer classifier d=64, 4 heads, 2 blocks with nn.MultiheadAttention "
            "(generated Markov-chain sequences 16x8, 10 classes, 20,000 train / 5,000 test)",
            make_sequence_task,
            TransformerClassifier,
            victim_epochs=8,
            quick_epochs=5,
            victim_lr=2e-3,
        ),
        ReferenceSpec(
            "lstm",
            "LSTM classifier, hidden 64 (generated Markov-chain sequences 16x8, 10 classes, "
            "20,000 train / 5,000 test)",
            make_sequence_task,
            partial(RecurrentClassifier, "lstm"),
            victim_epochs=15,
            quick_epochs=6,
            victim_lr=3e-3,
        ),
        ReferenceSpec(
            "gru",
            "GRU classifier, hidden 64 (generated Markov-chain sequences 16x8, 10 classes, "
            "20,000 train / 5,000 test)",
            make_sequence_task,
            partial(RecurrentClassifier, "gru"),
            victim_epochs=15,
            quick_epochs=6,
            victim_lr=3e-3,
        ),
    )
}
"""Reference models by name, in the order the gate runs them."""


@cache
def _task(make: Callable[..., Task], seed: int) -> Task:
    return make(seed=seed)


def reference(name: str) -> ReferenceSpec:
    """The spec called ``name``; a clear error naming the choices otherwise."""
    try:
        return SUITE[name]
    except KeyError:
        raise InvalidArgumentError(
            f"Unknown reference model {name!r}; choose from {', '.join(SUITE)}."
        ) from None
