"""The audit report: per attack and budget, accuracy next to B(x), permutation recovery next
to chance, aligned weight cosines, and a verdict against the gate (issue 5)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field

A0_MARGIN = 0.02
"""A0: accuracy ≤ chance + 2 points."""
ATTACK_MARGIN = 0.01
"""A1-A4: accuracy ≤ B(x) + 1 point."""
PERM_FACTOR = 5.0
"""Permutation entries recovered ≤ 5 × chance."""
COS_LIMIT = 0.1
"""Aligned |cos| of recovered vs true weights ≤ 0.1 above the noise floor."""
SMALL_TEST = 2000
"""Test splits smaller than this make A0's 2-point bound a coin toss for some draws."""
GATED = ("A0", "A1", "A2", "A3", "A4")
"""The attacks the gate judges: a run of only some of them judges only those."""
DIVERGED = (
    "every attempt diverged (NaN or infinite logits; lower the sweep's learning rates, or scale "
    "the inputs, and run again)"
)
"""Why a seed was not measured, and what to do (a row's and a reference's alike)."""
SPREAD_KINDS = ("random keys", "untrained networks")
"""The wrong-key spread's two kinds of draw (:func:`.attacks.wrong_key_spread`)."""
REPORT_ONLY = frozenset({"A5"})
"""Attacks that never fail the gate (DESIGN.md §2: a public base is not protected); they warn
when they beat their reference by more than ``ATTACK_MARGIN``."""


@dataclass
class AuditRow:
    """One attack variant at one budget (``budget`` is None for A0)."""

    attack: str
    variant: str
    budget: float | None
    accuracy: float
    accuracies: list[float]
    reference: float
    """Chance for A0, B(x) for the others (fine-tuning the public base for A5)."""
    perm_recovered: float | None = None
    perm_chance: float | None = None
    max_cos: float | None = None
    max_cos_floor: float | None = None
    cos_excess: float | None = None
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    warning: str | None = None
    """Report-only attacks (A5): why the model is recoverable, if it is, and the seeds it did
    not measure."""
    notes: list[str] = field(default_factory=list)
    """What the attack did not model (``AttackOutcome.notes``): which key slots it left at the
    null key, so that the report says what the attack covered."""
    control: float | None = None
    """The same procedure without the stolen files, where the attack has one (A4: the thief's
    own reference fine-tuned again with the sweep). The gate compares with the larger of
    ``reference`` and ``control``: an attack that gains no more than its own procedure gains
    without the files has not shown that the files help."""
    unmeasured: list[str] = field(default_factory=list)
    """The seeds at which every attempt of the attack diverged (``AttackOutcome.unmeasured``,
    recorded by A1-A5 alike): their accuracy measured nothing, and would lower the row's mean,
    so a gated row fails and names them, and a report-only row (A5) warns.  A seed whose logits
    were finite is measured, even at an accuracy of 0."""
    reference_unmeasured: list[str] = field(default_factory=list)
    """The seeds at which ``reference`` (B(x), or A5's fine-tune of the base) measured nothing:
    it is then too low, and a row above it is not shown to beat it (see :meth:`judge`)."""
    control_unmeasured: list[str] = field(default_factory=list)
    """The seeds at which ``control`` measured nothing, as ``reference_unmeasured``."""

    def _unmeasured_references(self) -> list[str]:
        """The reference seeds that measured nothing, named with their reference."""
        name = "the base's fine-tune" if self.attack in REPORT_ONLY else "B(x)"
        return [f"{name} {seed}" for seed in self.reference_unmeasured] + [
            f"the no-files control {seed}" for seed in self.control_unmeasured
        ]

    def judge(self) -> AuditRow:
        """Set ``passed``, ``reasons`` and ``warning`` from the gate's limits.

        A row over a reference that measured nothing at some seed (every attempt diverged,
        which lowers the reference) fails as not measured, naming those seeds, rather than as
        beating it: the measured reference may be higher.  A row under such a reference passes,
        since a measured one could only be higher still."""
        unmeasured = (
            f"not measured at {', '.join(self.unmeasured)}: {DIVERGED}" if self.unmeasured else None
        )
        references = self._unmeasured_references()
        too_low = (
            f"; the reference is too low to judge against: not measured at "
            f"{', '.join(references)}: {DIVERGED}"
            if references
            else ""
        )
        if self.attack in REPORT_ONLY:  # warns of what a gated row fails on
            found = []
            if not self.accuracy <= self.reference + ATTACK_MARGIN:
                found.append(
                    f"the model is recoverable from its public base: {self.variant} reaches "
                    f"{100 * self.accuracy:.2f} % > fine-tuning the base "
                    f"{100 * self.reference:.2f} % + {100 * ATTACK_MARGIN:g} point{too_low}"
                )
            if unmeasured:  # its mean, lowered by those seeds, may hide a recovery
                found.append(f"{self.variant} {unmeasured}")
            self.passed, self.reasons, self.warning = True, [], "; ".join(found) or None
            return self
        margin = A0_MARGIN if self.attack == "A0" else ATTACK_MARGIN
        what, limit = "chance" if self.attack == "A0" else "B(x)", self.reference
        if self.control is not None and self.control > limit:
            what, limit = "its no-files control", self.control
        self.reasons = []  # each test written "not ≤", so that a NaN (a damaged cell) fails it
        if not self.accuracy <= limit + margin:
            self.reasons.append(
                f"accuracy {self.accuracy:.4f} > {what} {limit:.4f} + {margin:.2f}{too_low}"
            )
        recovered, chance = self.perm_recovered, self.perm_chance
        if recovered is not None and chance is not None and not recovered <= PERM_FACTOR * chance:
            self.reasons.append(
                f"permutation recovery {recovered:.4f} > {PERM_FACTOR:g} x chance {chance:.4f}"
            )
        if self.cos_excess is not None and not self.cos_excess <= COS_LIMIT:
            self.reasons.append(f"aligned |cos| {self.cos_excess:.3f} above the noise floor")
        if unmeasured:
            self.reasons.append(unmeasured)
        self.passed = not self.reasons
        return self


@dataclass
class AuditReport:
    """Everything one audit run measured, with the settings that produced it."""

    settings: dict
    model: str
    full_accuracy: float
    chance: float
    baselines: dict[str, float]
    """``str(budget)`` → B(x), mean over seeds."""
    baseline_seeds: dict[str, list[float]]
    rows: list[AuditRow]
    not_run: list[str]
    seconds: float = 0.0
    stored_weights: list[dict] = field(default_factory=list)
    """Gate 4 per keyed matrix: ``layer``, ``shape``, ``correlation``, ``noise_floor``,
    ``passed`` (see :mod:`skprotect_pytorch.audit.stored_weights`)."""
    plaintext_weights: list[dict] = field(default_factory=list)
    """Weight tensors the lock left unlocked (``name``, ``shape``, ``reason``): stored as they
    are, so gate 4 fails on each (:mod:`skprotect_pytorch.lock.coverage`)."""
    test_samples: int | None = None
    """Size of the test split every accuracy is measured on (None in reports before it)."""
    cells: dict = field(default_factory=dict)
    """Where the run kept its cells (``AuditConfig.cells``): ``folder``, how many were
    ``computed`` and ``reused``, ``cell_seconds``, the compute time of all of them,
    ``cell_times``, each cell's, and ``code``, the code versions that computed them."""
    baseline_unmeasured: dict[str, list[str]] = field(default_factory=dict)
    """``str(budget)`` → the seeds at which B(x) measured nothing (every attempt diverged; a
    B(x) cell stored before it was recorded names none)."""
    budget_samples: dict[str, int] = field(default_factory=dict)
    """``str(budget)`` → how many training samples the thief's budget drew: never fewer than
    the classes, so more than the percentage of a small training split (empty when no attack
    drew one, and in reports before it)."""
    train_samples: int | None = None
    """Size of the training split the budgets are drawn from (None in reports before it)."""
    wrong_key_spread: dict[str, list[float]] = field(default_factory=dict)
    """``"random keys"`` and ``"untrained networks"`` → the test accuracy of each draw: how
    often one draw lands above A0's bound by luck (report only; empty when A0 did not run, and
    in reports and cell folders from before it)."""

    @property
    def passed(self) -> bool:
        """Every row and every stored weight passes, no weight is stored in plaintext, and
        nothing asked for was left unrun."""
        return (
            not self.not_run
            and not self.plaintext_weights
            and all(r.passed for r in self.rows)
            and all(s["passed"] for s in self.stored_weights)
        )

    @property
    def warnings(self) -> list[str]:
        """One line per report-only row that warns (never part of the gate)."""
        return [
            f"{r.attack} at {r.budget:g} %: {r.warning}"
            if r.budget is not None
            else f"{r.attack}: {r.warning}"
            for r in self.rows
            if r.warning
        ]

    @property
    def gated_not_asked(self) -> list[str]:
        """The gated attacks (A0–A4) this run was not asked for (``settings["attacks"]``): its
        verdict says nothing of them; empty when the settings do not list the attacks."""
        asked = self.settings.get("attacks")
        return [] if asked is None else [a for a in GATED if a not in asked]

    @property
    def caveats(self) -> list[str]:
        """What limits the reading of this report: a small test split, budgets raised to the
        number of classes, accuracy bounds not below the unlocked model, gated attacks not run."""
        found = []
        n = self.test_samples
        if n and n < SMALL_TEST:
            sd = self._sampling_sd(n)
            z = A0_MARGIN / sd if sd else math.inf  # one class in the test split: no spread
            tail = 0.5 * math.erfc(z / math.sqrt(2))
            found.append(
                f"the test split has {n:,} samples: an output unrelated to the input scores "
                f"chance ± {100 * sd:.1f} points (one standard deviation), so each A0 row exceeds "
                f"its {100 * A0_MARGIN:g}-point bound by luck alone with probability "
                f"{100 * tail:.1f} %; audit with {SMALL_TEST:,} or more test samples"
            )
        found += self._raised_budgets()
        found += self._victim_not_above_references()
        found += self._wrong_keys_above_bound()
        if missing := self.gated_not_asked:
            ran = [a for a in GATED if a not in missing]
            found.append(
                f"{', '.join(missing)} not run: the gate verdict covers "
                f"{', '.join(ran) + ' and ' if ran else ''}gate 4 only; run every attack "
                f"({', '.join(GATED)}) for the whole gate"
            )
        return found

    def _victim_not_above_references(self) -> list[str]:
        """A caveat where an accuracy bound is not below the unlocked model: there the bound
        passes even the true key, and only the key checks judge (an untrained victim, its
        weights never loaded, passed every row without a word)."""
        full, found = self.full_accuracy, []
        fix = "audit the trained model (are its weights loaded?)"
        if any(r.attack == "A0" for r in self.rows) and full <= self.chance + A0_MARGIN:
            found.append(
                f"the unlocked model scores {100 * full:.2f} %, not more than "
                f"{100 * A0_MARGIN:g} points above chance ({100 * self.chance:.2f} %): A0's "
                "accuracy bound passes even the true key, so only the key checks (permutations, "
                f"cosines) judge it; {fix}"
            )
        level = [x for x, b in self.baselines.items() if b + ATTACK_MARGIN >= full]
        if level:
            listed = ", ".join(f"B({x} %) {100 * self.baselines[x]:.2f} %" for x in level)
            found.append(
                f"{listed} {'is' if len(level) == 1 else 'are'} not more than "
                f"{100 * ATTACK_MARGIN:g} point under the unlocked model's {100 * full:.2f} %: "
                "the accuracy bound there passes even the unlocked model itself, so only the key "
                f"checks (permutations, cosines; A1 has none) judge those rows; {fix}, or give "
                "smaller budgets"
            )
        return found

    def _spread_counts(self) -> dict[str, tuple[int, int, float]]:
        """Per kind of the wrong-key spread: draws above A0's bound, draws, and their sd in
        points."""
        bound = self.chance + A0_MARGIN
        return {
            kind: (sum(a > bound for a in accs), len(accs), 100 * statistics.pstdev(accs))
            for kind, accs in self.wrong_key_spread.items()
        }

    def _wrong_keys_above_bound(self) -> list[str]:
        """Caveats where draws of the spread land above A0's bound: untrained networks there
        make one draw a noisy test (a two-class task: 28-49 of 200 random keys above);
        random keys there more often than untrained networks keep some of the trained model's
        dependence on its input (the suite's Transformer: docs/security.md)."""
        counts = self._spread_counts()
        if not counts:
            return []
        (keys, n_keys, sd_keys), (nets, n_nets, sd_nets) = (counts[k] for k in SPREAD_KINDS)
        bound = f"A0's bound ({100 * (self.chance + A0_MARGIN):.2f} %)"
        found = []
        if nets:
            n = self.test_samples
            found.append(
                f"{nets} of {n_nets} untrained networks of this architecture (what a thief "
                f"without the files has) score above {bound}: one draw is a noisy test of it "
                f"here (their sd {sd_nets:.2f} points"
                + (
                    f"; the test split's sampling alone: {100 * self._sampling_sd(n):.2f}"
                    if n
                    else ""
                )
                + "); judge A0 by the wrong-key spread: random keys above the bound no more "
                "often than untrained networks"
            )
        if keys / n_keys > nets / n_nets:
            best = 100 * max(self.wrong_key_spread[SPREAD_KINDS[0]])
            found.append(
                f"{keys} of {n_keys} random keys score above {bound}, the best {best:.2f} %, "
                f"against {nets} of {n_nets} untrained networks (sd {sd_keys:.2f} against "
                f"{sd_nets:.2f} points): wrong keys keep more of the trained model's dependence "
                "on its input than a thief without the files has; measured for the suite's "
                "Transformer, with what it tells a thief, in docs/security.md (wrong keys on the "
                "Transformer)"
            )
        return found

    def _sampling_sd(self, n: int) -> float:
        """The sd of the accuracy of an output unrelated to the input on ``n`` test samples."""
        return (self.chance * (1 - self.chance) / n) ** 0.5

    def _spread_lines(self) -> list[str]:
        """The wrong-key spread, one line per kind: mean, sd, max, and how many above A0's
        bound."""
        return [
            f"- wrong-key spread, {kind}: mean {100 * statistics.fmean(accs):.2f} %, sd "
            f"{sd:.2f}, max {100 * max(accs):.2f} %; {above} of {n} above A0's bound "
            f"({100 * (self.chance + A0_MARGIN):.2f} %)"
            for (kind, (above, n, sd)), accs in zip(
                self._spread_counts().items(), self.wrong_key_spread.values(), strict=True
            )
        ]

    def _raised_budgets(self) -> list[str]:
        """A caveat per budget the audit raised to the number of classes: its rows and B(x)
        measure a thief with more data than the budget's percentage says."""
        n = self.train_samples
        if not n:
            return []
        return [
            f"{x} % of the {n:,} training samples is {n * float(x) / 100:.3g} samples, but the "
            f"thief is never given fewer samples than classes: the rows at {x} % and B({x} %) "
            f"measure {k:,} samples, {100 * k / n:.3g} % of the training split; give a larger "
            "training split or a larger budget"
            for x, k in self.budget_samples.items()
            if k > round(n * float(x) / 100)
        ]

    @property
    def unmeasured_references(self) -> list[str]:
        """Each reference with the seeds it did not measure (B(x) by budget, A4's no-files
        control and A5's fine-tune of the base by row), once: the rows above one fail as not
        measured, those under it pass (:meth:`AuditRow.judge`), and both are listed here."""
        found = [f"B({x} %) {', '.join(s)}" for x, s in self.baseline_unmeasured.items() if s]
        for r in self.rows:
            at = f"{r.attack} at {r.budget:g} %" if r.budget is not None else r.attack
            if r.control_unmeasured:
                found.append(f"{at}, no-files control {', '.join(r.control_unmeasured)}")
            if r.reference_unmeasured and r.attack in REPORT_ONLY:
                found.append(f"{at}, fine-tuning the base {', '.join(r.reference_unmeasured)}")
        return list(dict.fromkeys(found))

    @property
    def notes(self) -> list[str]:
        """Each attack variant's coverage notes once (they repeat across budgets)."""
        seen = dict.fromkeys(
            f"{r.attack} ({r.variant}): {note}" for r in self.rows for note in r.notes
        )
        return list(seen)

    def to_json(self) -> str:
        data = asdict(self)
        data["passed"] = self.passed
        data["warnings"] = self.warnings
        data["notes"] = self.notes
        data["unmeasured_references"] = self.unmeasured_references
        data["caveats"] = self.caveats
        return json.dumps(data, indent=2)

    def _cells_text(self) -> str:
        if not self.cells.get("folder"):
            return ""
        c = self.cells
        return (
            f" ({c['computed']} cells computed, {c['reused']} reused from `{c['folder']}`; "
            f"{c['cell_seconds']:.0f} s of compute in all"
            + (f"; code {', '.join(c['code'])})" if c["code"] else ")")
        )

    def _cell_times_lines(self) -> list[str]:
        """Each cell's compute time: what the next run of a budget will cost, cell by cell."""
        times = self.cells.get("cell_times")
        if not times:
            return []
        listed = ", ".join(f"{name} {seconds:,.0f}" for name, seconds in times.items())
        return [f"- compute time per cell, s: {listed}"]

    def _budget_samples_lines(self) -> list[str]:
        """How many samples each budget gave the thief: what B(x) and the rows were trained on."""
        if not self.budget_samples or not self.train_samples:
            return []
        listed = ", ".join(f"{x} % → {k:,}" for x, k in self.budget_samples.items())
        return [f"- thief's samples per budget (of {self.train_samples:,} training): {listed}"]

    def to_markdown(self) -> str:
        def pct(v: float | None) -> str:
            return "" if v is None else f"{100 * v:.2f}"

        def num(v: float | None) -> str:
            return "" if v is None else f"{v:.3f}"

        lines = [
            f"## Audit: {self.model}",
            "",
            f"- accuracy of the unlocked model (true key): {pct(self.full_accuracy)} %; "
            f"chance: {pct(self.chance)} %",
            *self._budget_samples_lines(),
            f"- settings: `{json.dumps(self.settings)}`",
            f"- time: {self.seconds:.0f} s{self._cells_text()}; "
            f"gate: **{'PASS' if self.passed else 'FAIL'}**"
            + (f" ({', '.join(self.gated_not_asked)} not run)" if self.gated_not_asked else ""),
            *self._cell_times_lines(),
            *self._spread_lines(),
            *(f"- **caveat**: {c}" for c in self.caveats),
            "",
            "| attack | variant | x % | accuracy % | reference % | no-files control % | "
            "perm. recovered | chance | max row cos | floor | cos excess | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            label = {"A0": "chance "}.get(r.attack, "B(x) ")
            ref = ("base fine-tuned " if r.attack in REPORT_ONLY else label) + pct(r.reference)
            verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.reasons)
            if r.attack in REPORT_ONLY:
                verdict = "report only" + (f"; WARNING: {r.warning}" if r.warning else "")
            lines.append(
                f"| {r.attack} | {r.variant} | {'' if r.budget is None else f'{r.budget:g}'} | "
                f"{pct(r.accuracy)} | {ref} | {pct(r.control)} | {pct(r.perm_recovered)} | "
                f"{pct(r.perm_chance)} | "
                f"{num(r.max_cos)} | {num(r.max_cos_floor)} | {num(r.cos_excess)} | {verdict} |"
            )
        lines += ["", "Baselines B(x) per seed: " + json.dumps(self.baseline_seeds)]
        if self.unmeasured_references:
            listed = "; ".join(self.unmeasured_references)
            lines += ["", f"**References not measured** at: {listed}: {DIVERGED}"]
        if self.stored_weights:
            worst = max(self.stored_weights, key=lambda s: s["correlation"] - s["noise_floor"])
            failing = [s["layer"] for s in self.stored_weights if not s["passed"]]
            lines += [
                "",
                f"Gate 4 (stored weights, aligned by the true permutations and signs): "
                f"{len(self.stored_weights)} keyed matrices, largest correlation "
                f"{max(s['correlation'] for s in self.stored_weights):.3f}; closest to its "
                f"noise floor: {worst['layer']} {worst['correlation']:.3f} (floor "
                f"{worst['noise_floor']:.3f}); "
                + (f"**FAIL** on {', '.join(failing)}" if failing else "pass"),
            ]
        if self.plaintext_weights:
            listed = "; ".join(
                f"{w['name']} {tuple(w['shape'])}: {w['reason']}" for w in self.plaintext_weights
            )
            lines += [
                "",
                f"Gate 4, **FAIL**: {len(self.plaintext_weights)} weight tensor(s) stored in "
                f"plaintext, readable without the key ({listed})",
            ]
        for warning in self.warnings:
            lines += ["", f"**Warning** {warning}"]
        if self.notes:
            lines += ["", "Coverage notes (what each attack did not model):"]
            lines += [f"- {note}" for note in self.notes]
        if self.not_run:
            lines += ["", "Not run: " + "; ".join(self.not_run)]
        return "\n".join(lines) + "\n"
