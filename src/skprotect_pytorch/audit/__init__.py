"""Audit: measure what an attacker gains from the locked files (DESIGN.md §1.4, §2).

>>> report = run_audit(AuditConfig(quick=True, budgets=(1,)))
>>> print(report.to_markdown())
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..lock import LockedModel, LockSettings, lock_model
from .alignment import attack_alignment
from .attacks import (
    AttackOutcome,
    StolenModel,
    attack_finetune,
    attack_key_learning,
    attack_no_key,
    baseline_from_scratch,
    permutation_recovery,
    weight_cosines,
)
from .models import QUICK_SWEEP, SweepConfig, accuracy
from .public_base import attack_public_base, lock_public_base_victim
from .report import AuditReport, AuditRow
from .statistics import attack_statistics
from .stored_weights import aligned_weight_correlations
from .suite import SUITE, ReferenceSpec, reference

__all__ = ["SUITE", "AuditConfig", "AuditReport", "AuditRow", "run_audit"]

ATTACKS = ("A0", "A1", "A2", "A3", "A4", "A5")
NOT_IMPLEMENTED: list[str] = []


@dataclass
class AuditConfig:
    """What to run.  ``quick`` uses the one-point sweep and one seed unless given explicitly;
    ``model`` names the reference model (a key of ``SUITE``: mlp, cnn, transformer, lstm, gru)."""

    model: str = "mlp"
    budgets: Sequence[float] = (1, 5, 10, 25)
    attacks: Sequence[str] = ATTACKS
    quick: bool = False
    seeds: int | None = None
    sweep: SweepConfig | None = None
    victim_epochs: int | None = None
    data_seed: int = 0
    lock_seed: int = 1
    threads: int | None = 1
    """Torch threads while auditing (tiny models: one thread avoids oversubscription)."""
    lock_settings: LockSettings = field(default_factory=LockSettings)

    def resolved(self) -> tuple[ReferenceSpec, SweepConfig, int, int]:
        """The reference spec, sweep, seed count and victim epochs this run uses."""
        spec = reference(self.model)
        sweep = self.sweep or (QUICK_SWEEP if self.quick else SweepConfig())
        seeds = self.seeds or (1 if self.quick else 3)
        epochs = self.victim_epochs or (spec.quick_epochs if self.quick else spec.victim_epochs)
        return spec, sweep, seeds, epochs

    def lock(self, model: torch.nn.Module, seed: int) -> LockedModel:
        """Lock ``model`` as the audit does: every supported layer, secrets drawn from ``seed``."""
        return lock_model(
            model,
            layer_filter=lambda name, m: True,
            secret_rng=np.random.default_rng(seed),
            settings=self.lock_settings,
        )

    def other_key(self, model: torch.nn.Module, index: int = 0) -> torch.Tensor:
        """The key of another lock of ``model`` (a second product of the same vendor); index
        0 is the one A0 tries."""
        return torch.from_numpy(self.lock(model, self.lock_seed + 1000 + index).layout.static_key())


def _row(
    outcome: AttackOutcome,
    reference: float,
    stolen: StolenModel,
    true_perms,
    original: torch.nn.Module,
    twin: torch.nn.Module | None = None,
) -> AuditRow:
    row = AuditRow(
        outcome.attack,
        outcome.variant,
        outcome.budget,
        outcome.accuracy,
        outcome.accuracies,
        reference,
    )
    control = outcome.extra.get("control")
    row.control = float(np.mean(control)) if control else None
    if outcome.recovered_keys:
        recov = [permutation_recovery(stolen, k, true_perms) for k in outcome.recovered_keys]
        cos = [weight_cosines(stolen, k, original, twin=twin) for k in outcome.recovered_keys]
        row.perm_recovered = max(r for r, _ in recov)
        row.perm_chance = recov[0][1]
        row.max_cos = max(c["max_cos"] for c in cos)
        row.max_cos_floor = max(c["max_cos_floor"] for c in cos)
        row.cos_excess = max(c["cos_excess"] for c in cos)
    row.notes = list(outcome.notes)
    return row.judge()


def run_audit(config: AuditConfig | None = None, log=print) -> AuditReport:
    """Train the chosen reference model, lock it with the default lock, attack it, and judge
    the gate."""
    config = config or AuditConfig()
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, start, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: AuditConfig, start: float, log) -> AuditReport:
    spec, sweep, n_seeds, victim_epochs = config.resolved()
    seeds = list(range(n_seeds))
    unknown = set(config.attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"Unknown attacks {sorted(unknown)}; implemented: {', '.join(ATTACKS)}")

    task = spec.task(config.data_seed)
    model = spec.train_victim(task, victim_epochs)
    # The cosine check's noise floor: the same architecture trained with another seed (what
    # any trained network shares with the victim, e.g. smooth conv kernels).
    twin = spec.train_victim(task, victim_epochs, seed=1)

    locked = config.lock(model, config.lock_seed)
    stored = [
        {**asdict(score), "passed": score.passes}
        for score in aligned_weight_correlations(locked, model)
    ]
    true_perms = locked.layout.perms
    stolen = StolenModel.from_locked(locked)
    true_key = torch.from_numpy(locked.layout.static_key())
    full = accuracy(stolen.forward_with(true_key), task.x_test, task.y_test)
    log(f"victim {spec.name}: {100 * full:.2f} % with the key; chance {100 * task.chance:.2f} %")
    other_key = config.other_key(model)

    rows: list[AuditRow] = []
    if "A0" in config.attacks:
        for o in attack_no_key(stolen, task, other_key=other_key, seed=config.lock_seed):
            rows.append(_row(o, task.chance, stolen, true_perms, model, twin))
            log(f"A0 {o.variant}: {100 * o.accuracy:.2f} %")

    baselines: dict[str, float] = {}
    baseline_seeds: dict[str, list[float]] = {}
    a5 = None

    def lock_fn(victim: torch.nn.Module) -> LockedModel:
        return config.lock(victim, config.lock_seed + 2000)

    if set(config.attacks) - {"A0"}:
        for budget in config.budgets:
            b = baseline_from_scratch(spec.factory, task, budget, sweep, seeds)
            baselines[f"{budget:g}"] = b.accuracy
            baseline_seeds[f"{budget:g}"] = b.accuracies
            log(f"B({budget:g} %): {100 * b.accuracy:.2f} % {b.accuracies}")
            outcomes: list[AttackOutcome] = []
            if "A1" in config.attacks:
                for kind in ("null", "random"):
                    outcomes.append(
                        attack_finetune(stolen, task, budget, sweep, seeds, key_kind=kind)
                    )
            if "A2" in config.attacks:
                for joint in (False, True):
                    outcomes.append(
                        attack_key_learning(stolen, task, budget, sweep, seeds, joint=joint)
                    )
            if "A3" in config.attacks:
                outcomes.append(attack_statistics(stolen, task, budget, sweep, seeds))
            if "A4" in config.attacks:
                outcomes += attack_alignment(stolen, spec.factory, task, budget, sweep, seeds)
            for o in outcomes:
                rows.append(_row(o, b.accuracy, stolen, true_perms, model, twin))
                log(f"{o.attack} {o.variant} at {budget:g} %: {100 * o.accuracy:.2f} %")
            if "A5" in config.attacks:
                a5 = a5 or lock_public_base_victim(
                    spec.factory, task, lock_fn, epochs=victim_epochs
                )
                matched, direct = attack_public_base(a5.stolen, a5.base, task, budget, sweep, seeds)
                rows.append(_row(matched, direct.accuracy, a5.stolen, a5.true_perms, a5.victim))
                log(
                    f"A5 at {budget:g} %: matched {100 * matched.accuracy:.2f} %, fine-tuned base "
                    f"{100 * direct.accuracy:.2f} % (victim {100 * a5.full_accuracy:.2f} %)"
                )

    settings = {
        "model": spec.name,
        "budgets": list(config.budgets),
        "attacks": list(config.attacks),
        "quick": config.quick,
        "seeds": n_seeds,
        "sweep": asdict(sweep),
        "victim_epochs": victim_epochs,
        "data_seed": config.data_seed,
        "lock_seed": config.lock_seed,
        "lock_settings": asdict(config.lock_settings),
        "torch": torch.__version__,
    }
    return AuditReport(
        settings=settings,
        model=spec.description,
        full_accuracy=full,
        chance=task.chance,
        baselines=baselines,
        baseline_seeds=baseline_seeds,
        rows=rows,
        not_run=list(NOT_IMPLEMENTED),
        seconds=time.perf_counter() - start,
        stored_weights=stored,
    )
