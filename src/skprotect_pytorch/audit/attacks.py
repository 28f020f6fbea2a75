"""Attacks on a locked model by a thief who has the locked files and x % of the labelled data.

The thief's view (:class:`StolenModel`) is the locked eager module and the public key spec
(slot sizes, readable from any exported graph), never the key.  The locked module holds exactly
the numbers the ONNX/TorchScript files hold (``audit.constants.artifact_constants`` extracts
them), so attacking the eager module is attacking the files.

Every attack returns :class:`AttackOutcome` values; scoring against the true key and weights
(permutation recovery, cosine) is done by the caller, who has them.

- A0 :func:`attack_no_key`: run the model with guessed keys (null, zero, random, another key).
- A1 :func:`attack_finetune`: train all weights with a fixed guessed key on the budget.
- A2 :func:`attack_key_learning`: learn the key (weights frozen, or trained jointly): scales
  directly, permutations relaxed with Gumbel-Sinkhorn (annealed temperature) then hardened with
  the Hungarian algorithm.
- A3 ``audit.statistics``, A4 ``audit.alignment``, A5 ``audit.public_base``: matching attacks
  built on ``audit.matching``; they fine-tune with :func:`finetune_from_key`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..errors import UnsupportedLayerError
from ..lock import LockedModel
from ..lock.channel_lock import ChannelOps
from ..lock.keyed_model import KeyedModel
from .cells import part
from .data import Task
from .matching import (
    KeyEstimate,
    effective_weight,
    hungarian,
    keyed_layers,
    reference_weights,
)
from .models import Score, SweepConfig, accuracy, batches, best_score, score, train_sweep_point
from .relaxed_recurrent import replace_keyed_matrices

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# What the thief has
# ---------------------------------------------------------------------------------------------
@dataclass
class StolenModel:
    """The locked module with its public key spec; the key itself is not included."""

    keyed: KeyedModel
    perm_sizes: list[int]
    scale_sizes: list[int]

    @classmethod
    def from_locked(cls, locked: LockedModel) -> StolenModel:
        keyed = copy.deepcopy(locked.keyed).eval()
        return cls(keyed, list(locked.layout.perm_sizes), list(locked.layout.scale_sizes))

    def key(self, perms: Sequence[np.ndarray], scales: Sequence[np.ndarray]) -> torch.Tensor:
        """Assemble a key vector (indices, then scales as ``u``, ones as ``v``)."""
        parts = [np.asarray(p, np.float32) for p in perms] + [
            np.asarray(s, np.float32) for s in scales
        ]
        parts += [np.ones(n, np.float32) for n in self.scale_sizes]
        return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0)

    def null_key(self) -> torch.Tensor:
        return self.key(
            [np.arange(n) for n in self.perm_sizes], [np.ones(n) for n in self.scale_sizes]
        )

    def random_key(self, rng: np.random.Generator) -> torch.Tensor:
        """Random permutations and scales drawn like the lock's (sign times 2**U(-3, 3))."""
        perms = [rng.permutation(n) for n in self.perm_sizes]
        scales = [
            rng.choice([-1.0, 1.0], size=n) * np.exp2(rng.uniform(-3, 3, size=n))
            for n in self.scale_sizes
        ]
        return self.key(perms, scales)

    def forward_with(self, key: torch.Tensor, module: KeyedModel | None = None):
        module = self.keyed if module is None else module
        return lambda x: module(x, key)


@dataclass
class AttackOutcome:
    """One attack variant at one budget: test accuracy per seed and what it recovered."""

    attack: str
    variant: str
    budget: float | None
    accuracies: list[float]
    recovered_keys: list[torch.Tensor] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What the attack did not model (those key slots stay at the null key), for the report."""
    unmeasured: list[str] = field(default_factory=list)
    """The seeds (``"seed 0"``) at which every attempt diverged: their accuracy measured
    nothing, and the report fails the row (:attr:`.report.AuditRow.unmeasured`)."""

    @classmethod
    def from_scores(
        cls,
        attack: str,
        variant: str,
        budget: float,
        seeds: Sequence[int],
        scores: Sequence[Score],
    ) -> AttackOutcome:
        """The outcome of one :class:`~.models.Score` per seed: its accuracies, and the seeds
        at which nothing was measured named in ``unmeasured`` (every attack records them so)."""
        pairs = list(zip(seeds, scores, strict=True))
        accuracies = [got["accuracy"] for got in scores]
        unmeasured = [f"seed {seed}" for seed, got in pairs if not got["measured"]]
        return cls(attack, variant, budget, accuracies, unmeasured=unmeasured)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.accuracies))


def _sweep_best(
    make: Callable[[], tuple[Callable, list[nn.Parameter], Callable[[], Score]]],
    x: torch.Tensor,
    y: torch.Tensor,
    sweep: SweepConfig,
    seed: int,
    init_seed: int | None = None,
) -> Score:
    """Best test score over the sweep (:func:`~.models.best_score`); ``make()`` builds a fresh
    learner for each lr, under ``torch.manual_seed(init_seed)`` (``seed`` unless given), whose
    ``evaluate`` gives a :class:`~.models.Score`."""
    points = []
    for lr in sweep.lrs:
        torch.manual_seed(seed if init_seed is None else init_seed)
        forward, params, evaluate = make()
        scores = train_sweep_point(
            forward,
            params,
            x,
            y,
            lr=lr,
            epochs=sweep.epochs,
            batch_size=sweep.batch_size,
            seed=seed,
            evaluate=evaluate,
            weight_decay=sweep.weight_decay,
        )
        points += scores.values()
    return best_score(points)


def _sweep_per_seed(
    build: Callable[[], nn.Module],
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
) -> list[Score]:
    """Per seed, the best test :class:`~.models.Score` of ``build()``'s model trained on that
    seed's budget with the sweep: the one training loop of the references (the from-scratch
    baseline, A4's no-files control, A5's base-only fine-tune), which name the seeds they did
    not measure as the attacks do, since a diverged reference is too low to judge against."""

    def one(seed: int) -> Score:
        x, y = task.budget(budget, seed)

        def make():
            model = build()
            return model, list(model.parameters()), lambda: score(model, task.x_test, task.y_test)

        return _sweep_best(make, x, y, sweep, seed)

    return [part(f"seed{seed}", partial(one, seed)) for seed in seeds]


def fresh_model(make_model: Callable[[], nn.Module], gain: float | None = None) -> nn.Module:
    """A new ``make_model()`` with every layer re-initialised, in train mode: what the baseline
    and the thief's reference (A4) train from scratch. With ``gain``, every weight matrix is then
    redrawn Gaussian with RMS ``gain/sqrt(fan_in)`` (biases keep their reset values)."""
    model = make_model()
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if gain is not None:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, gain / p[0].numel() ** 0.5)
    return model.train()


def best_over_gains(
    run: Callable[[float | None], list[T]],
    gains: Sequence[float | None],
    best: Callable[[Iterable[T]], T],
) -> list[T]:
    """Per seed, the ``best`` of ``run(gain)`` over ``gains`` (a sweep's init gains), e.g.
    :func:`~.models.best_score` of :class:`~.models.Score` values."""
    per_gain = [
        part(f"gain-{'default' if gain is None else f'{gain:g}'}", partial(run, gain))
        for gain in gains
    ]
    return [best(per_seed) for per_seed in zip(*per_gain, strict=True)]


# ---------------------------------------------------------------------------------------------
# Baseline and A0, A1
# ---------------------------------------------------------------------------------------------
def baseline_from_scratch(
    make_model: Callable[[], nn.Module],
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
) -> AttackOutcome:
    """B(x): the same architecture trained from scratch on the same budget with the same sweep
    (learning rates, epochs and init gains)."""

    def run(gain: float | None) -> list[Score]:
        return _sweep_per_seed(lambda: fresh_model(make_model, gain), task, budget, sweep, seeds)

    scores = best_over_gains(run, sweep.init_gains, best_score)
    return AttackOutcome.from_scores("B", "from scratch", budget, seeds, scores)


def a0_random_key(stolen: StolenModel, seed: int) -> torch.Tensor:
    """A0's random key for ``seed``: the draw the audit reports (``seed`` is the lock seed)."""
    return stolen.random_key(np.random.default_rng([seed, 0xA0]))


def attack_no_key(
    stolen: StolenModel,
    task: Task,
    *,
    other_key: torch.Tensor | None = None,
    seed: int = 0,
) -> list[AttackOutcome]:
    """A0: accuracy with the null, zero, a random and (if given) another model's key."""
    keys = {
        "null key": stolen.null_key(),
        "zero key": torch.zeros(sum(stolen.perm_sizes) + 2 * sum(stolen.scale_sizes)),
        "random key": a0_random_key(stolen, seed),
    }
    if other_key is not None:
        keys["another model's key"] = other_key
    return [
        AttackOutcome(
            "A0", name, None, [accuracy(stolen.forward_with(k), task.x_test, task.y_test)], [k]
        )
        for name, k in keys.items()
    ]


WRONG_KEY_DRAWS = 50
"""How many random keys, and how many untrained networks, the wrong-key spread scores."""


def wrong_key_spread(
    stolen: StolenModel,
    make_model: Callable[[], nn.Module],
    task: Task,
    draws: int = WRONG_KEY_DRAWS,
) -> dict[str, list[float]]:
    """Test accuracy of ``draws`` random keys (A0's draws at seeds 0, 1, …) and of as many
    untrained networks of the architecture (torch seeds 0, 1, …: what a thief without the files
    has). A0 judges one draw; this says how often a draw lands above its bound by luck, on this
    model and test split (on a two-class task often: docs/security.md)."""
    keys = [
        accuracy(stolen.forward_with(a0_random_key(stolen, s)), task.x_test, task.y_test)
        for s in range(draws)
    ]
    untrained = []
    for s in range(draws):
        with torch.random.fork_rng(devices=[]):  # the caller's torch seed stays as it was
            torch.manual_seed(s)
            net = fresh_model(make_model).eval()
        untrained.append(accuracy(net, task.x_test, task.y_test))
    return {"random keys": keys, "untrained networks": untrained}


def finetune_from_key(
    stolen: StolenModel,
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
    key_for_seed: Callable[[int], torch.Tensor],
) -> list[Score]:
    """Per seed, train every weight of the locked model with a fixed key on the budget (the
    baseline's sweep); the score of the key before training counts too (the thief keeps the
    better), and the seed is measured unless every one of these attempts diverged."""

    def one(seed: int) -> Score:
        x, y = task.budget(budget, seed)
        key = key_for_seed(seed)

        def make():
            module = copy.deepcopy(stolen.keyed).train()
            for p in module.parameters():
                p.requires_grad_(True)
            forward = stolen.forward_with(key, module)
            return (
                forward,
                list(module.parameters()),
                lambda: score(forward, task.x_test, task.y_test),
            )

        start = score(stolen.forward_with(key), task.x_test, task.y_test)
        return best_score([start, _sweep_best(make, x, y, sweep, seed)])

    return [part(f"seed{seed}", partial(one, seed)) for seed in seeds]


def attack_finetune(
    stolen: StolenModel,
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
    *,
    key_kind: str = "null",
) -> AttackOutcome:
    """A1: train every weight of the locked model with a fixed guessed key (``null``/``random``)."""

    def key_for_seed(seed: int) -> torch.Tensor:
        if key_kind == "null":
            return stolen.null_key()
        return stolen.random_key(np.random.default_rng([seed, 17]))

    scores = finetune_from_key(stolen, task, budget, sweep, seeds, key_for_seed)
    return AttackOutcome.from_scores("A1", f"fine-tune, {key_kind} key", budget, seeds, scores)


# ---------------------------------------------------------------------------------------------
# A2: key learning with Gumbel-Sinkhorn
# ---------------------------------------------------------------------------------------------
LOG_FLOOR = -60.0
"""Where Sinkhorn's exponentials stop: ``exp(-60)`` ≈ 9e-27 is nothing next to a row's sum of 1
in float32, and below about -87 ``exp`` underflows, which MKL computes on a slow path (30 times
slower on an Intel Xeon, and the denormal results slow the arithmetic after them)."""


class _FlooredLogSumExp(torch.autograd.Function):
    """``logsumexp`` over ``dim`` whose terms under ``exp(LOG_FLOOR)`` of the largest count as
    that: the sum moves by at most ``n · 9e-27`` relative (``n`` terms), and those terms'
    gradient (under 9e-27) is zero."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int) -> torch.Tensor:
        top = x.amax(dim, keepdim=True)
        terms = (x - top).clamp_min_(LOG_FLOOR).exp_()
        total = terms.sum(dim, keepdim=True)
        ctx.save_for_backward(terms.div_(total))
        return total.log_().add_(top)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (softmax,) = ctx.saved_tensors
        return grad * softmax, None


def log_sinkhorn(log_alpha: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Normalise ``exp(log_alpha)`` towards a doubly stochastic matrix (log domain).

    Entries under ``exp(LOG_FLOOR)`` come out as that, not as 0: as the temperature anneals the
    logits spread over thousands, and the underflowing ``exp`` made key learning on an Intel Xeon
    several times slower than on an AMD EPYC.
    """
    for _ in range(iters):
        log_alpha = log_alpha - _FlooredLogSumExp.apply(log_alpha, -1)
        log_alpha = log_alpha - _FlooredLogSumExp.apply(log_alpha, -2)
    return log_alpha.clamp_min(LOG_FLOOR).exp()


def harden(logits: torch.Tensor) -> np.ndarray:
    """Hungarian hardening: the index vector ``idx`` maximising ``sum_j logits[idx[j], j]``."""
    return hungarian(logits.detach().cpu().double().numpy().T)


class RelaxedKey(nn.Module):
    """Trainable key: a Gumbel-Sinkhorn soft permutation per perm slot and free scales.

    ``soft_perm(i)`` is an ``(n, n)`` doubly stochastic ``S`` with ``S[r, j]`` ≈ the probability
    that index ``j`` of the slot gathers element ``r`` (``x.index_select(idx)`` = ``x @ S``).
    """

    def __init__(self, perm_sizes: Sequence[int], scale_sizes: Sequence[int]) -> None:
        super().__init__()
        self.logits = nn.ParameterList([nn.Parameter(0.01 * torch.randn(n, n)) for n in perm_sizes])
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(n)) for n in scale_sizes])
        self.tau = 1.0
        self.noise = 1.0
        self.sinkhorn_iters = 20
        self._by_size: dict[int, list[int]] = {}
        for slot, n in enumerate(perm_sizes):
            self._by_size.setdefault(n, []).append(slot)
        self._drawn: dict[int, torch.Tensor] | None = None

    def anneal(self, progress: float, tau0: float = 1.0, tau1: float = 0.05) -> None:
        """Geometric temperature schedule; the Gumbel noise fades with it."""
        self.tau = tau0 * (tau1 / tau0) ** progress
        self.noise = 1.0 - progress

    def _relax(self, logits: torch.Tensor) -> torch.Tensor:
        """Gumbel noise (while training), temperature, Sinkhorn: over the last two axes."""
        if self.training and self.noise > 0:
            u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
            logits = logits + self.noise * -torch.log(-torch.log(u))
        return log_sinkhorn(logits / self.tau, self.sinkhorn_iters)

    def draw(self) -> None:
        """Draw one training step's soft permutations, every slot of one size in one batched
        Sinkhorn: a Transformer has 24 slots of 64, and one small Sinkhorn per slot made most
        of the step's time.  :meth:`soft_perm` returns them until :meth:`forget`."""
        self._drawn = {}
        for slots in self._by_size.values():
            relaxed = self._relax(torch.stack([self.logits[s] for s in slots]))
            self._drawn.update(zip(slots, relaxed.unbind(), strict=True))

    def forget(self) -> None:
        """Back to computing each soft permutation when it is read (evaluation)."""
        self._drawn = None

    def soft_perm(self, slot: int) -> torch.Tensor:
        if self._drawn is not None:
            return self._drawn[slot]
        return self._relax(self.logits[slot])

    @torch.no_grad()
    def start_at_null_key(self, margin: float = 10.0) -> None:
        """Logits ``margin · I``: every slot starts as a (nearly hard) identity permutation."""
        for logits in self.logits:
            logits.copy_(margin * torch.eye(len(logits)))

    def hard_perms(self) -> list[np.ndarray]:
        return [harden(p) for p in self.logits]

    def hard_scales(self) -> list[np.ndarray]:
        return [s.detach().numpy().copy() for s in self.scales]


class RelaxedChannelOps(nn.Module):
    """Drop-in for :class:`ChannelOps` that reads soft permutations from a :class:`RelaxedKey`."""

    def __init__(self, ops: ChannelOps, key: RelaxedKey) -> None:
        super().__init__()
        self.mix_in, self.mix_out = ops.mix_in, ops.mix_out
        self.slots = (ops.in_perm_slot, ops.in_scale_slot, ops.out_perm_slot, ops.out_scale_slot)
        self.key = [key]  # a list: not registered as a submodule of every layer

    def monomial(self, side: str) -> torch.Tensor | None:
        """The relaxed key op of one side as a dense matrix ``M`` (row vectors: ``x ↦ x M``):
        soft permutation times scales; ``None`` where that side has no key op."""
        perm_slot, scale_slot = self.slots[:2] if side == "in" else self.slots[2:]
        key = self.key[0]
        m = None if perm_slot is None else key.soft_perm(perm_slot)
        if scale_slot is not None:
            scale = key.scales[scale_slot]
            m = torch.diag(scale) if m is None else m * scale
        return m

    @staticmethod
    def _apply(x: torch.Tensor, axis: int, m: torch.Tensor | None) -> torch.Tensor:
        """``x ↦ x M`` along ``axis``; no op for ``M = None``."""
        if m is None:
            return x
        return (x.movedim(axis, -1) @ m).movedim(-1, axis)

    def enter(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """The relaxed :meth:`ChannelOps.enter`: public un-mix, then the soft key op."""
        if self.mix_in is not None:
            x = self.mix_in.apply_transpose(x, axis)
        return self._apply(x, axis, self.monomial("in"))

    def leave(self, z: torch.Tensor, axis: int) -> torch.Tensor:
        """The relaxed :meth:`ChannelOps.leave`: the soft key op, then the public un-mix."""
        z = self._apply(z, axis, self.monomial("out"))
        if self.mix_out is not None:
            z = self.mix_out.apply_transpose(z, axis)
        return z


def _replace_ops(root: nn.Module, key: RelaxedKey) -> set[int]:
    """Swap every recurrent keyed matrix and every :class:`ChannelOps` for a relaxed one;
    returns the perm slots the relaxed ops read."""
    replace_keyed_matrices(root, lambda ops: RelaxedChannelOps(ops, key))
    covered: set[int] = set()
    for module in root.modules():
        for name, child in list(module._modules.items()):
            if isinstance(child, ChannelOps):
                setattr(module, name, RelaxedChannelOps(child, key))
                covered |= {s for s in (child.in_perm_slot, child.out_perm_slot) if s is not None}
            elif isinstance(child, RelaxedChannelOps):
                covered |= {s for s in child.slots[::2] if s is not None}
    return covered


def relaxed_model(
    stolen: StolenModel, *, train_weights: bool = False
) -> tuple[nn.Module, RelaxedKey]:
    """A copy of the locked network whose key ops read a trainable key; its weights are frozen
    unless ``train_weights`` (A2 joint variant).

    Covers every keyed op of the lock: layers built on :class:`ChannelOps` (Linear, Conv,
    ConvTranspose, the four projections of attention, the input projections of LSTM/GRU) and
    the recurrent matrices of LSTM/GRU (:mod:`.relaxed_recurrent`).  A model with a key slot that
    none of these reads (a future layer family) is an error, not a silent partial attack.
    """
    net = copy.deepcopy(stolen.keyed.model)
    for p in net.parameters():
        p.requires_grad_(train_weights)
    key = RelaxedKey(stolen.perm_sizes, stolen.scale_sizes)
    missing = sorted(set(range(len(stolen.perm_sizes))) - _replace_ops(net, key))
    if missing:
        raise UnsupportedLayerError(
            f"A2 cannot relax permutation slots {missing}: no Linear, Conv, attention or "
            "recurrent layer of the lock reads them."
        )
    return net, key


def learn_key(
    forward: Callable[[torch.Tensor], torch.Tensor],
    key: RelaxedKey,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    loss: str = "ce",
    weights: Sequence[nn.Parameter] = (),
    weight_lr: float | None = None,
    weight_decay: float = 0.0,
) -> None:
    """Fit a relaxed key by gradient descent with annealed Gumbel-Sinkhorn temperature; any
    ``weights`` are trained jointly at ``weight_lr`` with ``weight_decay`` (the key is not
    decayed)."""
    key.train()
    groups = [{"params": list(key.parameters()), "lr": lr}]
    if weights:
        groups.append(
            {"params": list(weights), "lr": weight_lr or lr, "weight_decay": weight_decay}
        )
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    slices = batches(n, batch_size)
    steps = epochs * len(slices)
    step = 0
    loss_fn: Callable = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for batch in slices:
            key.anneal(step / steps)
            idx = order[batch]
            opt.zero_grad()
            key.draw()
            loss_fn(forward(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    key.forget()
    key.eval()


def _with_weights(stolen: StolenModel, net: nn.Module) -> KeyedModel:
    """The locked module carrying the (jointly trained) weights of a relaxed copy."""
    module = copy.deepcopy(stolen.keyed)
    module.model.load_state_dict(net.state_dict())
    return module.eval()


def attack_key_learning(
    stolen: StolenModel,
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
    *,
    key_lr_scale: float = 10.0,
    joint: bool = False,
) -> AttackOutcome:
    """A2: learn scales and Gumbel-Sinkhorn permutations on the budget, harden with the
    Hungarian algorithm, and evaluate the locked model with the recovered hard key.

    Weights frozen, or with ``joint`` trained together with the key at the sweep's learning rate
    (the key's is the sweep's times ``key_lr_scale``: logits need larger steps than weights).
    The joint variant starts at the null key (:meth:`RelaxedKey.start_at_null_key`): from the
    near-uniform start the soft permutations average the features away and the trainable
    weights collapse to one class (measured on the MLP at 1 %: 10.6-13.9 %).
    The epochs are the sweep's largest.  The best over the sweep counts; in the joint variant
    the thief keeps the better of the trained weights under the hard key and the relaxed network
    itself (a deployable model too).  Recovered keys are the hard keys.
    """

    def one(seed: int, lr: float) -> dict:
        """One sweep point: its :class:`~.models.Score` and its hard key; a point whose
        training diverged (NaN or infinite key logits, scales or weights) recovered nothing:
        accuracy 0, not measured, no key, and a note (it stopped the audit in scipy's
        Hungarian)."""
        x, y = task.budget(budget, seed)
        torch.manual_seed(seed)
        net, key = relaxed_model(stolen, train_weights=joint)
        if joint:
            key.start_at_null_key()
        learn_key(
            net,
            key,
            x,
            y,
            lr=lr * key_lr_scale,
            epochs=max(sweep.epochs),
            batch_size=sweep.batch_size,
            seed=seed,
            weights=list(net.parameters()) if joint else (),
            weight_lr=lr,
            weight_decay=sweep.weight_decay,
        )
        net.eval()
        learnt = [*key.parameters(), *(net.parameters() if joint else ())]
        if not all(p.isfinite().all() for p in learnt):
            note = f"seed {seed}, lr {lr:g}: training diverged (NaN or infinite key or weights)"
            return {
                "accuracy": 0.0,
                "measured": False,
                "key": None,
                "note": note + ", counted as recovering nothing",
            }
        hard = stolen.key(key.hard_perms(), key.hard_scales())
        module = _with_weights(stolen, net) if joint else stolen.keyed
        got = score(stolen.forward_with(hard, module), task.x_test, task.y_test)
        if joint:
            got = best_score([got, score(net, task.x_test, task.y_test)])
        return {**got, "key": hard}

    scores, keys, notes = [], [], []
    for seed in seeds:
        points = [part(f"seed{seed}-lr{lr:g}", partial(one, seed, lr)) for lr in sweep.lrs]
        notes += [point["note"] for point in points if point.get("note")]
        scores.append(best_score(points))
        best = max(points, key=lambda point: (point["accuracy"], point["key"] is not None))
        if best["key"] is not None:
            keys.append(best["key"])
    variant = (
        "key learning, joint weights" if joint else "key learning (Gumbel-Sinkhorn + Hungarian)"
    )
    outcome = AttackOutcome.from_scores("A2", variant, budget, seeds, scores)
    outcome.recovered_keys, outcome.notes = keys, notes
    return outcome


# ---------------------------------------------------------------------------------------------
# Scoring a recovered key (needs the truth: done by the auditor, not the attacker)
# ---------------------------------------------------------------------------------------------
def permutation_recovery(
    stolen: StolenModel, key: torch.Tensor, true_perms: Sequence[np.ndarray]
) -> tuple[float, float]:
    """Fraction of permutation entries equal to the true ones, and its chance level.

    Counts every permutation slot of the key, whatever layer reads it (Linear, conv, attention
    projections, LSTM/GRU input projections and recurrent matrices).  A random permutation of
    ``n`` matches one entry on average, so chance is ``n_slots / n_entries``.
    """
    total = sum(stolen.perm_sizes)
    got = key[:total].round().long().numpy()
    truth = np.concatenate([np.asarray(p) for p in true_perms])
    return float((got == truth).mean()), len(stolen.perm_sizes) / total


@torch.no_grad()
def effective_weights(stolen: StolenModel, key: torch.Tensor) -> Iterator[tuple[str, np.ndarray]]:
    """Every keyed matrix's weight in the true basis as the given key decodes it, ``(O, I,
    taps)``: Linear and conv layers (grouped ones as dense block-diagonal matrices), attention
    projections, LSTM/GRU input projections and recurrent matrices (``audit.matching``'s model of
    the key ops, checked against the locked modules by the tests); with the true key these are
    the original weights (convs with their BatchNorm folded in)."""
    est = KeyEstimate.decode(stolen.keyed.decoder, key)
    for layer in keyed_layers(stolen.keyed.model):
        yield layer.name, effective_weight(layer, est)


def aligned_row_cosines(recovered: np.ndarray, true: np.ndarray) -> np.ndarray:
    """|cos| of each true row with its recovered row after the best row permutation and signs
    (Hungarian on the |cos| matrix); hidden units of a network can be reordered freely."""

    def unit(a: np.ndarray) -> np.ndarray:
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)

    c = np.abs(unit(recovered) @ unit(true).T)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return c[rows, cols]


def weight_cosines(
    stolen: StolenModel,
    key: torch.Tensor,
    original: nn.Module,
    seed: int = 0,
    twin: nn.Module | None = None,
) -> dict[str, float]:
    """Aligned |cos| between recovered and true weight rows (taps flattened into the row), per
    keyed matrix, against a noise floor: the same statistic for a guess that knows nothing of
    the victim. The guess is a random Gaussian of the same shape, or, with ``twin`` (the same
    architecture trained independently), the twin's weights: trained conv kernels share smooth,
    low-frequency shapes, so any trained kernel matches a victim's far above Gaussian noise.

    Every keyed matrix with a counterpart in ``original`` is scored
    (:func:`~.matching.reference_weights`): Linear, conv, the q/k/v/out projections of
    ``nn.MultiheadAttention``, and per LSTM/GRU layer the input projection (all gates and
    directions) and each direction's ``W_hh`` and ``W_hr``.
    Returns the largest row |cos| and its floor (over all matrices), ``cos_excess``: the
    largest, over matrices, of mean aligned |cos| minus the floor's mean, and ``scored``: how
    many matrices were scored.  Row cosines of short rows are large by chance (a 40-wide row
    matched by Hungarian among 128 reaches ~0.4 for noise), so the gate compares against the
    floor.
    """
    layers = keyed_layers(stolen.keyed.model)
    targets = reference_weights(original, layers)
    guesses = reference_weights(twin, layers) if twin is not None else {}
    rng = np.random.default_rng(seed)
    best, floor_best, excess = [], [], []
    for name, w in effective_weights(stolen, key):
        if name not in targets:
            continue
        true = targets[name][0].reshape(len(w), -1)
        cos = aligned_row_cosines(w.reshape(len(w), -1), true)
        guess = guesses[name][0].reshape(true.shape) if name in guesses else None
        noise = aligned_row_cosines(
            rng.standard_normal(true.shape) if guess is None else guess, true
        )
        best.append(cos.max())
        floor_best.append(noise.max())
        excess.append(cos.mean() - noise.mean())
    if not best:
        raise ValueError("weight_cosines: no keyed matrix of the locked model is in `original`.")
    return {
        "max_cos": float(max(best)),
        "max_cos_floor": float(max(floor_best)),
        "cos_excess": float(max(excess)),
        "scored": float(len(best)),
    }
