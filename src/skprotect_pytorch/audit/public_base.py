"""A5: public base (report only).  A victim fine-tuned from a public checkpoint keeps that
checkpoint's hidden basis, so weight matching against the checkpoint can recover the key even
through the public mixing (DESIGN.md §2: not protected by any small key).  The audit builds
such a victim, attacks it, and warns when matching beats simply fine-tuning the public base.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from ..lock import LockedModel
from .alignment import weight_match_key
from .attacks import AttackOutcome, StolenModel, _sweep_per_seed, finetune_from_key
from .cells import part
from .data import Task
from .models import SweepConfig, accuracy, train_model, train_sweep_point


def related_task(task: Task, *, noise: float = 0.3, seed: int = 5) -> Task:
    """The public base's task: the same inputs with a seeded ``noise`` fraction of the labels
    remapped to random classes (a related public data set whose features transfer)."""
    rng = np.random.default_rng(seed)

    def remap(y: torch.Tensor) -> torch.Tensor:
        flip = torch.from_numpy(rng.random(len(y)) < noise)
        random = torch.from_numpy(rng.integers(0, task.n_classes, len(y)))
        return torch.where(flip, random, y)

    return Task(task.x_train, remap(task.y_train), task.x_test, remap(task.y_test), task.n_classes)


@dataclass
class PublicBaseVictim:
    """A public checkpoint and the victim fine-tuned from it (both in plaintext: the auditor's)."""

    base: nn.Module
    victim: nn.Module


def make_public_base_victim(
    make_model: Callable[[], nn.Module], task: Task, *, epochs: int, seed: int = 0
) -> PublicBaseVictim:
    """Pretrain the base on :func:`related_task` (Adam lr 1e-3, batch 128, ``epochs``), then
    fine-tune a copy on the audit task (full training set, Adam lr 3e-4, batch 128,
    ``max(1, epochs // 2)`` epochs): a gentle fine-tune, as from a public checkpoint."""
    pre = related_task(task)
    base = train_model(make_model(), pre.x_train, pre.y_train, epochs=epochs, seed=seed + 1)
    victim = copy.deepcopy(base).train()
    train_sweep_point(
        victim,
        victim.parameters(),
        task.x_train,
        task.y_train,
        lr=3e-4,
        epochs=(max(1, epochs // 2),),
        batch_size=128,
        seed=seed + 2,
        evaluate=lambda: 0.0,
    )
    return PublicBaseVictim(base.eval(), victim.eval())


def finetune_base(
    base: nn.Module, task: Task, budget: float, sweep: SweepConfig, seeds: Sequence[int]
) -> AttackOutcome:
    """What the public base alone gives: fine-tune it on the budget with the sweep."""

    def trainable_base() -> nn.Module:
        model = copy.deepcopy(base).train()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    scores = part("base", partial(_sweep_per_seed, trainable_base, task, budget, sweep, seeds))
    return AttackOutcome.from_scores(
        "A5", "fine-tune the public base (reference)", budget, seeds, scores
    )


def attack_public_base(
    stolen: StolenModel,
    base: nn.Module,
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
) -> tuple[AttackOutcome, AttackOutcome]:
    """A5: weight-match the locked victim to the public base (A4's matching with the base as
    reference), fine-tune from that key; returned with the base-only fine-tune to compare."""
    est = weight_match_key(stolen, base)
    key = stolen.key(est.perms, est.scales)
    scores = part(
        "matched", lambda: finetune_from_key(stolen, task, budget, sweep, seeds, lambda seed: key)
    )
    variant = "weight matching to the public base + fine-tune"
    matched = AttackOutcome.from_scores("A5", variant, budget, seeds, scores)
    matched.recovered_keys = [key]
    matched.notes = list(est.notes)
    matched.extra["key_accuracy"] = accuracy(stolen.forward_with(key), task.x_test, task.y_test)
    return matched, finetune_base(base, task, budget, sweep, seeds)


@dataclass
class LockedPublicBaseVictim:
    """The A5 setting as the auditor holds it: base, plaintext victim, its lock, the stolen view."""

    base: nn.Module
    victim: nn.Module
    true_perms: list[np.ndarray]
    stolen: StolenModel
    full_accuracy: float

    @classmethod
    def from_lock(
        cls, base: nn.Module, victim: nn.Module, locked: LockedModel, task: Task
    ) -> LockedPublicBaseVictim:
        """The victim of :func:`make_public_base_victim` as locked by ``locked``."""
        stolen = StolenModel.from_locked(locked)
        true_key = torch.from_numpy(locked.layout.static_key())
        full = accuracy(stolen.forward_with(true_key), task.x_test, task.y_test)
        return cls(base, victim, locked.layout.perms, stolen, full)
