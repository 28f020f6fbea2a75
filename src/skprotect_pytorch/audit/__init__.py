"""Audit: measure what an attacker gains from the locked files (DESIGN.md §1.4, §2).

>>> report = run_audit(AuditConfig(quick=True, budgets=(1,)))
>>> print(report.to_markdown())
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidArgumentError, StateError
from ..lock import LockedModel, LockSettings, lock_model
from ..lock.outside import run_keyed_checked
from .alignment import attack_alignment
from .arguments import (
    NUMBER,
    optional_positive_int,
    optional_seed_count,
    optional_threads,
    require_positive,
    require_unique,
    seed,
    sequence_of,
)
from .attacks import (
    WRONG_KEY_DRAWS,
    AttackOutcome,
    StolenModel,
    attack_finetune,
    attack_key_learning,
    attack_no_key,
    baseline_from_scratch,
    permutation_recovery,
    weight_cosines,
    wrong_key_spread,
)
from .cells import MISSING, PENDING, CellStore
from .custom import load_spec, model_spec, task_from_arrays
from .data import Task, require_budget_room
from .models import QUICK_SWEEP, SweepConfig, accuracy
from .public_base import LockedPublicBaseVictim, attack_public_base, make_public_base_victim
from .report import A0_MARGIN, SPREAD_KINDS, AuditReport, AuditRow
from .statistics import attack_statistics
from .stored_weights import aligned_weight_correlations
from .suite import SUITE, ReferenceSpec, reference

__all__ = [
    "SUITE",
    "AuditConfig",
    "AuditReport",
    "AuditRow",
    "ReferenceSpec",
    "Task",
    "load_spec",
    "model_spec",
    "run_audit",
    "task_from_arrays",
]

ATTACKS = ("A0", "A1", "A2", "A3", "A4", "A5")


@dataclass
class AuditConfig:
    """What to run.  ``quick`` uses the one-point sweep and one seed unless given explicitly;
    ``model`` names the reference model (a key of ``SUITE``: mlp, cnn, transformer, lstm, gru)
    or is a :class:`ReferenceSpec` of your own."""

    model: str | ReferenceSpec = "mlp"
    """A reference model of the suite by name, or a spec of your own model
    (:func:`~skprotect_pytorch.audit.custom.model_spec`)."""
    budgets: Sequence[float] = (1, 5, 10, 25)
    attacks: Sequence[str] = ATTACKS
    quick: bool = False
    seeds: int | None = None
    """Seeds per budget, 1 to ``MAX_SEEDS`` (100); ``None``: 3, or 1 with ``quick``."""
    sweep: SweepConfig | None = None
    victim_epochs: int | None = None
    data_seed: int = 0
    lock_seed: int = 1
    threads: int | None = 1
    """Torch threads while auditing, 1 to 1024 as in the runtime (tiny models: one thread
    avoids oversubscription); ``None`` leaves torch's setting."""
    cells: Path | None = None
    """Folder for finished cells (:mod:`.cells`): a run that stops keeps them, a later run or a
    second process on the same folder reuses them; ``None`` keeps them in memory."""
    stored_only: bool = False
    """Compute nothing: report the cells stored in ``cells`` and list the missing ones as not
    run (what a gate built up in pieces holds so far)."""
    lock_settings: LockSettings = field(default_factory=LockSettings)

    def __post_init__(self) -> None:
        """Refuse what would be misread (``seeds=0`` as the default, a budget of 150 %, a
        repeated budget computed twice) before any training starts."""
        if isinstance(self.model, str):
            reference(self.model)
        elif not isinstance(self.model, ReferenceSpec):
            raise InvalidArgumentError(
                f"AuditConfig.model must be the name of a reference model or a ReferenceSpec "
                f"(skprotect_pytorch.audit.custom.model_spec), but got {type(self.model).__name__}."
            )
        budgets = sequence_of(self.budgets, "AuditConfig.budgets", "percentages")
        for b in budgets:
            require_positive(b, "every AuditConfig.budgets entry", NUMBER, "number")
            if b > 100:
                raise InvalidArgumentError(
                    f"every AuditConfig.budgets entry is a percentage of the training data in "
                    f"(0, 100], but one is {b!r}."
                )
        # float(b): a Fraction (a Real) has no "g" format before Python 3.12
        require_unique(budgets, "AuditConfig.budgets", key=lambda b: f"{float(b):g}")
        attacks = sequence_of(self.attacks, "AuditConfig.attacks", f"names from {ATTACKS}")
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise InvalidArgumentError(
                f"AuditConfig.attacks has unknown attacks {unknown}; choose from "
                f"{', '.join(ATTACKS)}."
            )
        require_unique(attacks, "AuditConfig.attacks")
        self.budgets, self.attacks = tuple(float(b) for b in budgets), attacks
        self.seeds = optional_seed_count(self.seeds, "AuditConfig.seeds")
        self.victim_epochs = optional_positive_int(self.victim_epochs, "AuditConfig.victim_epochs")
        self.threads = optional_threads(self.threads, "AuditConfig.threads")
        self.data_seed = seed(self.data_seed, "AuditConfig.data_seed", 2**32 - 1)  # sklearn's
        self.lock_seed = seed(self.lock_seed, "AuditConfig.lock_seed")
        for flag in ("quick", "stored_only"):  # a string "False" would read as True
            value = getattr(self, flag)
            if not isinstance(value, bool | np.bool_):
                raise InvalidArgumentError(
                    f"AuditConfig.{flag} must be True or False, but is {value!r}."
                )
            setattr(self, flag, bool(value))
        for name, value, kind, optional in (
            ("sweep", self.sweep, SweepConfig, True),
            ("lock_settings", self.lock_settings, LockSettings, False),
        ):
            if not isinstance(value, kind) and not (optional and value is None):
                raise InvalidArgumentError(
                    f"AuditConfig.{name} must be a {kind.__name__}, but is {type(value).__name__}."
                )
        if self.cells is not None:
            if not isinstance(self.cells, str | Path):
                raise InvalidArgumentError(
                    f"AuditConfig.cells must be a folder path, but is {type(self.cells).__name__}."
                )
            if isinstance(self.cells, str) and not self.cells:  # Path("") is "."
                raise InvalidArgumentError(
                    f"AuditConfig.cells is an empty path {self.cells!r}, which would put the "
                    "cells in the current folder: give a folder, or None to keep them in memory."
                )
            self.cells = Path(self.cells)
        if self.stored_only and self.cells is None:
            raise InvalidArgumentError(
                "stored_only reports the cells of a cell folder: give AuditConfig.cells as well."
            )

    def resolved(self) -> tuple[ReferenceSpec, SweepConfig, int, int]:
        """The reference spec, sweep, seed count and victim epochs this run uses."""
        spec = self.model if isinstance(self.model, ReferenceSpec) else reference(self.model)
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


def _rows(
    outcomes: Sequence[AttackOutcome],
    stolen: StolenModel,
    true_perms,
    original: torch.nn.Module,
    twin: torch.nn.Module | None = None,
    reference: float | AttackOutcome | None = None,
) -> list[dict]:
    """The report rows of ``outcomes`` as stored in a cell: scored against the truth, not yet
    judged; ``reference`` is chance (A0), the outcome of A5's reference with the seeds it did
    not measure, or None for B(x), filled in when the report is assembled."""
    reference_unmeasured: list[str] = []
    if isinstance(reference, AttackOutcome):
        reference, reference_unmeasured = reference.accuracy, reference.unmeasured
    rows = []
    for outcome in outcomes:
        row = AuditRow(
            outcome.attack,
            outcome.variant,
            outcome.budget,
            outcome.accuracy,
            outcome.accuracies,
            reference,  # type: ignore[arg-type]  # B(x) is set by _judged
        )
        row.reference_unmeasured = list(reference_unmeasured)
        control: AttackOutcome | None = outcome.extra.get("control")
        if control is not None:
            row.control, row.control_unmeasured = control.accuracy, list(control.unmeasured)
        if outcome.recovered_keys:
            recov = [permutation_recovery(stolen, k, true_perms) for k in outcome.recovered_keys]
            cos = [weight_cosines(stolen, k, original, twin=twin) for k in outcome.recovered_keys]
            row.perm_recovered = max(r for r, _ in recov)
            row.perm_chance = recov[0][1]
            row.max_cos = max(c["max_cos"] for c in cos)
            row.max_cos_floor = max(c["max_cos_floor"] for c in cos)
            row.cos_excess = max(c["cos_excess"] for c in cos)
        row.notes = list(outcome.notes)
        row.unmeasured = list(outcome.unmeasured)
        rows.append(asdict(row))
    return rows


def _baseline(value: list | dict) -> dict[str, list]:
    """A stored B(x) cell as ``{"accuracies", "unmeasured"}``: a cell stored before B(x)
    recorded its unmeasured seeds (the committed full gate's, a bare list of accuracies) names
    none, as nothing of it tells a diverged seed apart."""
    return {"accuracies": value, "unmeasured": []} if isinstance(value, list) else value


def _baseline_cell(outcome: AttackOutcome) -> dict[str, list]:
    """What a B(x) cell stores: its accuracies and the seeds it did not measure."""
    return {"accuracies": outcome.accuracies, "unmeasured": outcome.unmeasured}


def _judged(stored: dict, baselines: dict[str, dict[str, list]]) -> AuditRow:
    """A stored row as a judged :class:`AuditRow`, with B(x) (:func:`_baseline`, by budget)
    and the seeds it did not measure filled in where it is the reference.
    A gated fine-tune row stored before it recorded its unmeasured seeds gets the rule of its
    time: a seed at accuracy exactly 0 was not measured, since a model with finite logits gets
    some test sample right.  Such are the rows without ``unmeasured`` (the committed full
    gate's cells) and A1's, A3's and A4's without ``reference_unmeasured``: they were stored
    with an empty ``unmeasured`` list, which only A2 filled."""
    attack = stored["attack"]
    if ("unmeasured" not in stored and attack in {"A1", "A2", "A3", "A4"}) or (
        "reference_unmeasured" not in stored and attack in {"A1", "A3", "A4"}
    ):
        zero = [f"seed {i} (accuracy 0)" for i, a in enumerate(stored["accuracies"]) if a == 0]
        stored = {**stored, "unmeasured": [*stored.get("unmeasured", ()), *zero]}
    row = AuditRow(**stored)
    if row.reference is None:
        baseline = baselines[f"{row.budget:g}"]
        row.reference = float(np.mean(baseline["accuracies"]))
        row.reference_unmeasured = list(baseline["unmeasured"])
    return row.judge()


def _is_accuracy(value: Any) -> bool:
    """Whether ``value`` is a number in [0, 1] (a bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _accuracies(value: Any, n: int) -> bool:
    """Whether ``value`` is a list of ``n`` accuracies in [0, 1]."""
    return isinstance(value, list) and len(value) == n and all(map(_is_accuracy, value))


def _seed_names(value: Any) -> bool:
    """Whether ``value`` is a list of strings (seed names, notes or reasons of a stored row)."""
    return isinstance(value, list) and all(isinstance(seed, str) for seed in value)


def _number_or_none(value: Any) -> bool:
    """Whether ``value`` is a number or None (a stored row's optional scores)."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _budget(value: Any) -> str | None:
    """A stored row's budget as its cell names it (``f"{x:g}"``), None if it is no number."""
    return None if value is None or not _number_or_none(value) else f"{value:g}"


_ROW_FIELDS = {f.name: f for f in fields(AuditRow)}
_ROW_REQUIRED = [
    name for name, f in _ROW_FIELDS.items() if f.default is f.default_factory is dataclasses.MISSING
]


SPREAD_CELL = "A0-spread"
"""The cell of the wrong-key spread (:func:`.attacks.wrong_key_spread`), report only."""
ROWS_PER_CELL = {"A0": 4, "A4": 2}
"""The rows an attack's cell holds, one per variant (1 unless listed): A0's four keys (null,
zero, random, another model's), A4's two matchings; a cell with fewer was judged without the
others, and a truncated A0 cell passed the gate."""


def _row_problem(row: Any, attack: str, budget: str | None, per_row: int) -> str | None:
    """What is wrong with one stored row of an ``attack`` cell at ``budget`` (``f"{x:g}"``,
    None for A0), or None: every field :class:`AuditRow` has, of the type it is read as."""
    if not isinstance(row, dict):
        return f"a row {row!r} that is not an object"
    if unknown := sorted(set(row) - _ROW_FIELDS.keys()):
        return f"a row with fields {unknown} that a row does not have"
    if missing := [name for name in _ROW_REQUIRED if name not in row]:
        return f"a row without {', '.join(missing)}"
    judged_by_b = attack in {"A1", "A2", "A3", "A4"}
    valid: dict[str, Callable[[Any], bool]] = {
        "attack": lambda v: v == attack,
        "variant": lambda v: isinstance(v, str),
        "budget": lambda v: (v is None) if budget is None else _budget(v) == budget,
        "accuracy": _is_accuracy,
        "accuracies": lambda v: _accuracies(v, per_row),
        "reference": lambda v: _is_accuracy(v) or (v is None and judged_by_b),
        "control": lambda v: v is None or _is_accuracy(v),
        "passed": lambda v: isinstance(v, bool),
        "warning": lambda v: v is None or isinstance(v, str),
        **dict.fromkeys(
            ("perm_recovered", "perm_chance", "max_cos", "max_cos_floor", "cos_excess"),
            _number_or_none,
        ),
        **dict.fromkeys(
            ("reasons", "notes", "unmeasured", "reference_unmeasured", "control_unmeasured"),
            _seed_names,
        ),
    }
    assert valid.keys() == _ROW_FIELDS.keys()  # a new AuditRow field must be checked here
    bad = [
        f"{name} {row[name]!r}" for name, ok in valid.items() if name in row and not ok(row[name])
    ]
    if not bad and not math.isclose(row["accuracy"], np.mean(row["accuracies"]), abs_tol=1e-9):
        bad = [f"accuracy {row['accuracy']!r}, not the mean of its accuracies"]
    return f"a row with {', '.join(bad)}" if bad else None


def _rows_problem(value: Any, attack: str, budget: str | None, per_row: int) -> str | None:
    """What is wrong with an attack cell's ``value`` (:func:`_row_problem` for each row, the
    count of its variants, A5's victim accuracy), or None."""
    rows = value.get("rows") if isinstance(value, dict) else None
    if not isinstance(rows, list) or not rows:
        return "no rows"
    if attack == "A5" and not _is_accuracy(value.get("victim_accuracy")):  # type: ignore[union-attr]
        return "no victim_accuracy in [0, 1]"
    for row in rows:
        if problem := _row_problem(row, attack, budget, per_row):
            return problem
    count, variants = ROWS_PER_CELL.get(attack, 1), len({row["variant"] for row in rows})
    if len(rows) != count or variants != count:
        return f"{len(rows)} rows of {variants} variants where the attack has {count}, a row each"
    return None


def _check_cell(name: str, value: Any, n_seeds: int, folder: Path | None) -> None:
    """A stored cell must hold what computing it gives: a baseline one accuracy in [0, 1] per
    seed (bare, as stored before it named its unmeasured seeds, or with them), an attack's cell
    one row per variant of that attack at its budget, every field as computing it gives (one
    accuracy per seed, A0: per key), and A5's the victim's accuracy.  An empty or damaged one
    made B(x) NaN, which every row passed, dropped an attack's rows, and the gate passed
    without them, or stopped the report in a KeyError or TypeError naming no file."""
    attack, _, budget = name.partition("@")
    attack = attack.split("-")[0]
    problem = None
    if name == SPREAD_CELL:
        want = f"{WRONG_KEY_DRAWS} accuracies in [0, 1] for each of {', '.join(SPREAD_KINDS)}"
        ok = (
            isinstance(value, dict)
            and value.keys() == set(SPREAD_KINDS)
            and all(_accuracies(v, WRONG_KEY_DRAWS) for v in value.values())
        )
    elif attack == "B":
        want = f"{n_seeds} accuracies in [0, 1] (one per seed, bare or as {{'accuracies': [...], "
        want += "'unmeasured': [seed names]}})"
        ok = _accuracies(value, n_seeds) or (
            isinstance(value, dict)
            and value.keys() == {"accuracies", "unmeasured"}
            and _accuracies(value["accuracies"], n_seeds)
            and _seed_names(value["unmeasured"])
        )
    else:
        per_row = 1 if attack == "A0" else n_seeds
        want = (
            f"rows of {attack} with {per_row} accuracies in [0, 1] each and, if any, a list "
            "of unmeasured seeds"
        )
        problem = _rows_problem(value, attack, budget or None, per_row)
        ok = problem is None
    if not ok:
        where = name if folder is None else folder / f"{name}.json"
        raise StateError(
            f"Audit cell {where} holds {value!r}, not {want}"
            + (f" ({problem})" if problem else "")
            + "; delete it and run again to recompute it (the other cells are kept)."
        )


def flushes_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero now (torch sets it, has no getter)."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


def run_audit(config: AuditConfig | None = None, log=print) -> AuditReport:
    """Train the chosen reference model, lock it with the default lock, attack it, and judge
    the gate.

    Denormal floats are flushed to zero while it runs (as TensorFlow does by default): a locked
    network under a wrong or relaxed key makes tiny products, and a matrix product whose terms
    are denormal ran 150 times slower on an Intel Xeon (5.1 ms against 35 µs, 256×64 by 64×64).
    The flag is per thread: it covers the audit's one thread (``AuditConfig.threads``), not
    the workers of a multi-threaded run.

    ``config`` is checked again as a copy: a field assigned after construction
    (``config.seeds = 0``) ran 3 seeds, and ``config.budgets = (500,)`` failed in numpy after
    the victim's training.
    """
    config = AuditConfig() if config is None else config
    if not isinstance(config, AuditConfig):
        raise InvalidArgumentError(
            "run_audit takes an AuditConfig, e.g. AuditConfig(model='mlp', quick=True), but got "
            f"{type(config).__name__}."
        )
    config = replace(config)  # __post_init__ again: fields may have been assigned since
    if not callable(log):  # it is first called after the victim's training
        raise InvalidArgumentError(
            f"log must be a callable taking one line (print, or lambda line: None for silence), "
            f"but is {log!r}."
        )
    start = time.perf_counter()
    previous_threads, previous_flush = torch.get_num_threads(), flushes_denormals()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)
    try:
        return _run(config, start, log)
    finally:
        torch.set_num_threads(previous_threads)
        torch.set_flush_denormal(previous_flush)


def _run(config: AuditConfig, start: float, log) -> AuditReport:
    spec, sweep, n_seeds, victim_epochs = config.resolved()
    seeds = list(range(n_seeds))
    context = {  # what every cell depends on (names the cell folder)
        "model": spec.name,
        "seeds": n_seeds,
        "sweep": asdict(sweep),
        "victim_epochs": victim_epochs,
        "data_seed": config.data_seed,
        "lock_seed": config.lock_seed,
        "lock_settings": asdict(config.lock_settings),
    }
    if spec.fingerprint is not None:  # a model of your own: its data and weights name the cells
        context["target"] = spec.fingerprint
    # before the store: a task refused (data_seed=1 on your own data) left an empty cell folder
    task = spec.task(config.data_seed)
    require_budget_room(task, f"model '{spec.name}': ")  # a ReferenceSpec built by hand too
    store = CellStore(config.cells, context, compute=not config.stored_only, log=log)

    # The cosine check's noise floor: the same architecture trained with another seed (what
    # any trained network shares with the victim, e.g. smooth conv kernels).
    nets = store.modules(
        "victims",
        spec.factory,
        lambda: {
            "victim": spec.shipped_model(task, victim_epochs),
            "twin": spec.train_victim(task, victim_epochs, seed=1),
        },
    )
    model, twin = nets["victim"], nets["twin"]

    locked = config.lock(model, config.lock_seed)
    true_key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():  # the protector's first run: adds the tensors read outside the model
        run_keyed_checked(spec.name, locked.keyed, [task.x_test[:8].clone(), true_key])
    stored = [
        {**asdict(score), "passed": score.passes}
        for score in aligned_weight_correlations(locked, model)
    ]
    true_perms = locked.layout.perms
    stolen = StolenModel.from_locked(locked)
    full = accuracy(stolen.forward_with(true_key), task.x_test, task.y_test)
    log(f"victim {spec.name}: {100 * full:.2f} % with the key; chance {100 * task.chance:.2f} %")
    other_key = config.other_key(model)

    a5: list = []

    def a5_victim():
        """A5's locked fine-tuned victim, built once (its networks stored as cells)."""
        if not a5:
            pair = store.modules(
                "a5_public_base",
                spec.factory,
                lambda: vars(make_public_base_victim(spec.factory, task, epochs=victim_epochs)),
            )
            lock = config.lock(pair["victim"], config.lock_seed + 2000)
            a5.append(LockedPublicBaseVictim.from_lock(pair["base"], pair["victim"], lock, task))
        return a5[0]

    def scored(outcomes: Sequence[AttackOutcome]) -> dict:
        return {"rows": _rows(outcomes, stolen, true_perms, model, twin)}

    def a5_cell(budget: float) -> dict:
        v = a5_victim()
        matched, direct = attack_public_base(v.stolen, v.base, task, budget, sweep, seeds)
        rows = _rows([matched], v.stolen, v.true_perms, v.victim, reference=direct)
        return {"rows": rows, "victim_accuracy": v.full_accuracy}

    def attack_cells(attack: str, budget: float) -> list[tuple[str, Callable[[], dict]]]:
        """The cells of one attack at one budget: one per independently trained variant."""
        args = (task, budget, sweep, seeds)
        cells = {
            "A1": [
                (f"A1-{kind}", lambda k=kind: [attack_finetune(stolen, *args, key_kind=k)])
                for kind in ("null", "random")
            ],
            "A2": [
                (f"A2-{name}", lambda j=joint: [attack_key_learning(stolen, *args, joint=j)])
                for name, joint in (("frozen", False), ("joint", True))
            ],
            "A3": [("A3", lambda: [attack_statistics(stolen, *args)])],
            "A4": [("A4", lambda: attack_alignment(stolen, spec.factory, *args))],
        }
        if attack == "A5":
            return [(f"A5@{budget:g}", lambda: a5_cell(budget))]
        return [(f"{name}@{budget:g}", lambda f=f: scored(f())) for name, f in cells[attack]]

    plan: list[tuple[str, Callable[[], Any]]] = []
    if "A0" in config.attacks:
        plan.append(
            (
                "A0",
                lambda: {
                    "rows": _rows(
                        attack_no_key(stolen, task, other_key=other_key, seed=config.lock_seed),
                        stolen,
                        true_perms,
                        model,
                        twin,
                        reference=task.chance,
                    )
                },
            )
        )
    judged_by_b = set(config.attacks) & {"A1", "A2", "A3", "A4"}  # A5: its own reference
    for budget in config.budgets:
        if judged_by_b:  # an A5-only run computed B(x), as costly as A1, for no row
            plan.append(
                (
                    f"B@{budget:g}",
                    lambda b=budget: _baseline_cell(
                        baseline_from_scratch(spec.factory, task, b, sweep, seeds)
                    ),
                )
            )
        for attack in ATTACKS[1:]:
            if attack in config.attacks:
                plan += attack_cells(attack, budget)

    spread: dict[str, list[float]] = {}
    if "A0" in config.attacks:  # report only: a cell folder from before it is not incomplete
        value = store.get(SPREAD_CELL, lambda: wrong_key_spread(stolen, spec.factory, task))
        if value is not MISSING:
            _check_cell(SPREAD_CELL, value, n_seeds, store.folder)
            spread = {kind: value[kind] for kind in SPREAD_KINDS}
            for kind, accs in spread.items():
                above = sum(a > task.chance + A0_MARGIN for a in accs)
                log(
                    f"A0 wrong-key spread, {kind}: mean {100 * np.mean(accs):.2f} %, max "
                    f"{100 * max(accs):.2f} %, {above} of {len(accs)} above chance + 2 points"
                )

    values: dict[str, Any] = {}

    def report_cell(name: str, value: Any) -> None:
        _check_cell(name, value, n_seeds, store.folder)
        values[name] = value
        if name.startswith("B@"):
            b = _baseline(value)
            missed = f"; not measured at {', '.join(b['unmeasured'])}" if b["unmeasured"] else ""
            mean = 100 * float(np.mean(b["accuracies"]))
            log(f"B({name[2:]} %): {mean:.2f} % {b['accuracies']}{missed}")
            return
        for r in value["rows"]:
            at = "" if r["budget"] is None else f" at {r['budget']:g} %"
            line = f"{r['attack']} {r['variant']}{at}: {100 * r['accuracy']:.2f} %"
            if r["attack"] == "A5":
                line += (
                    f" (fine-tuned base {100 * r['reference']:.2f} %, "
                    f"victim {100 * value['victim_accuracy']:.2f} %)"
                )
            log(line)

    pending, not_run = [], []
    for name, compute in plan:
        value = store.try_get(name, compute)
        if value is MISSING:
            not_run.append(f"{name} (not computed yet)")
        elif value is PENDING:
            log(f"{name}: being computed by another process; coming back to it")
            pending.append((name, compute))
        else:
            report_cell(name, value)
    for name, compute in pending:
        report_cell(name, store.get(name, compute))

    stored_b = {name[2:]: _baseline(v) for name, v in values.items() if name[:2] == "B@"}
    baselines = {x: float(np.mean(b["accuracies"])) for x, b in stored_b.items()}
    rows, unjudged = [], set()
    for name, _ in plan:
        if name.startswith("B@") or name not in values:
            continue
        for r in values[name]["rows"]:
            if r["reference"] is None and f"{r['budget']:g}" not in stored_b:
                unjudged.add(f"{r['budget']:g}")
            else:
                rows.append(_judged(r, stored_b))
    for x in sorted(unjudged):
        not_run.append(f"the rows at {x} % stored but not judged: B({x} %) missing")

    settings = {
        **context,
        "budgets": list(config.budgets),
        "attacks": list(config.attacks),
        "quick": config.quick,
        "torch": torch.__version__,
    }
    return AuditReport(
        settings=settings,
        model=spec.description,
        full_accuracy=full,
        chance=task.chance,
        baselines=baselines,
        baseline_seeds={x: b["accuracies"] for x, b in stored_b.items()},
        baseline_unmeasured={x: b["unmeasured"] for x, b in stored_b.items()},
        rows=rows,
        not_run=not_run,
        seconds=time.perf_counter() - start,
        stored_weights=stored,
        plaintext_weights=[asdict(w) for w in locked.plaintext],
        test_samples=len(task.y_test),
        cells=store.summary(),
        budget_samples=(
            {f"{b:g}": task.budget_size(b) for b in config.budgets}
            if set(config.attacks) - {"A0"}
            else {}
        ),
        train_samples=len(task.y_train),
        wrong_key_spread=spread,
    )
