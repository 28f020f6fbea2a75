"""Attacks on a locked model by a thief who has the locked files and x % of the labelled data.

The thief's view (:class:`StolenModel`) is the locked eager module and the public key spec
(slot sizes, readable from any exported graph), never the key.  The locked module holds exactly
the numbers the ONNX/TorchScript files hold (``audit.constants.artifact_constants`` extracts
them), so attacking the eager module is attacking the files.

Every attack returns :class:`AttackOutcome` values; scoring against the true key and weights
(permutation recovery, cosine) is done by the caller, who has them.

- A0 :func:`attack_no_key`: run the model with guessed keys (null, zero, random, another key).
- A1 :func:`attack_finetune`: train all weights with a fixed guessed key on the budget.
- A2 :func:`attack_key_learning`: freeze the weights and learn the key: scales directly,
  permutations relaxed with Gumbel-Sinkhorn (annealed temperature) then hardened with the
  Hungarian algorithm.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..lock import LockedModel
from ..lock.channel_lock import ChannelOps
from ..lock.keyed_model import KeyedModel
from .data import TabularTask
from .models import SweepConfig, accuracy, train_sweep_point


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

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.accuracies))


def _sweep_best(
    make: Callable[[], tuple[Callable, list[nn.Parameter], Callable[[], float]]],
    x: torch.Tensor,
    y: torch.Tensor,
    sweep: SweepConfig,
    seed: int,
    on_step_factory: Callable[[], Callable[[float], None] | None] = lambda: None,
    after: Callable[[float, dict[int, float]], None] | None = None,
) -> float:
    """Best test accuracy over the sweep; ``make()`` builds a fresh learner for each lr."""
    best = 0.0
    for lr in sweep.lrs:
        torch.manual_seed(seed)
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
            on_step=on_step_factory(),
        )
        if after is not None:
            after(lr, scores)
        best = max(best, *scores.values())
    return best


# ---------------------------------------------------------------------------------------------
# Baseline and A0, A1
# ---------------------------------------------------------------------------------------------
def baseline_from_scratch(
    make_model: Callable[[], nn.Module],
    task: TabularTask,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
) -> AttackOutcome:
    """B(x): the same architecture trained from scratch on the same budget with the same sweep."""
    accs = []
    for seed in seeds:
        x, y = task.budget(budget, seed)

        def make():
            model = make_model()
            for m in model.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            model.train()
            return (
                model,
                list(model.parameters()),
                lambda: accuracy(model, task.x_test, task.y_test),
            )

        accs.append(_sweep_best(make, x, y, sweep, seed))
    return AttackOutcome("B", "from scratch", budget, accs)


def attack_no_key(
    stolen: StolenModel,
    task: TabularTask,
    *,
    other_key: torch.Tensor | None = None,
    seed: int = 0,
) -> list[AttackOutcome]:
    """A0: accuracy with the null, zero, a random and (if given) another model's key."""
    keys = {
        "null key": stolen.null_key(),
        "zero key": torch.zeros(sum(stolen.perm_sizes) + 2 * sum(stolen.scale_sizes)),
        "random key": stolen.random_key(np.random.default_rng([seed, 0xA0])),
    }
    if other_key is not None:
        keys["another model's key"] = other_key
    return [
        AttackOutcome(
            "A0", name, None, [accuracy(stolen.forward_with(k), task.x_test, task.y_test)], [k]
        )
        for name, k in keys.items()
    ]


def attack_finetune(
    stolen: StolenModel,
    task: TabularTask,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
    *,
    key_kind: str = "null",
) -> AttackOutcome:
    """A1: train every weight of the locked model with a fixed guessed key (``null``/``random``)."""
    accs = []
    for seed in seeds:
        x, y = task.budget(budget, seed)
        if key_kind == "null":
            key = stolen.null_key()
        else:
            key = stolen.random_key(np.random.default_rng([seed, 17]))

        def make(key: torch.Tensor = key):
            module = copy.deepcopy(stolen.keyed).train()
            for p in module.parameters():
                p.requires_grad_(True)
            forward = stolen.forward_with(key, module)
            return (
                forward,
                list(module.parameters()),
                lambda: accuracy(forward, task.x_test, task.y_test),
            )

        accs.append(_sweep_best(make, x, y, sweep, seed))
    return AttackOutcome("A1", f"fine-tune, {key_kind} key", budget, accs)


# ---------------------------------------------------------------------------------------------
# A2: key learning with Gumbel-Sinkhorn
# ---------------------------------------------------------------------------------------------
def log_sinkhorn(log_alpha: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Normalise ``exp(log_alpha)`` towards a doubly stochastic matrix (log domain)."""
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()


def harden(logits: torch.Tensor) -> np.ndarray:
    """Hungarian hardening: the index vector ``idx`` maximising ``sum_j logits[idx[j], j]``."""
    rows, cols = linear_sum_assignment(logits.detach().cpu().numpy(), maximize=True)
    idx = np.empty(logits.shape[1], dtype=np.int64)
    idx[cols] = rows
    return idx


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

    def anneal(self, progress: float, tau0: float = 1.0, tau1: float = 0.05) -> None:
        """Geometric temperature schedule; the Gumbel noise fades with it."""
        self.tau = tau0 * (tau1 / tau0) ** progress
        self.noise = 1.0 - progress

    def soft_perm(self, slot: int) -> torch.Tensor:
        logits = self.logits[slot]
        if self.training and self.noise > 0:
            u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
            logits = logits + self.noise * -torch.log(-torch.log(u))
        return log_sinkhorn(logits / self.tau, self.sinkhorn_iters)

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

    def _apply(self, x: torch.Tensor, axis: int, perm_slot: int, scale_slot: int):
        key = self.key[0]
        axis = axis % x.dim()
        x = x.movedim(axis, -1) @ key.soft_perm(perm_slot)
        return (x * key.scales[scale_slot]).movedim(-1, axis)

    def enter(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        if self.mix_in is not None:
            x = self.mix_in.apply_transpose(x, axis)
        return self._apply(x, axis, self.slots[0], self.slots[1])

    def leave(self, z: torch.Tensor, axis: int) -> torch.Tensor:
        z = self._apply(z, axis, self.slots[2], self.slots[3])
        if self.mix_out is not None:
            z = self.mix_out.apply_transpose(z, axis)
        return z


def _replace_ops(root: nn.Module, key: RelaxedKey) -> int:
    count = 0
    for module in root.modules():
        for name, child in list(module._modules.items()):
            if isinstance(child, ChannelOps):
                setattr(module, name, RelaxedChannelOps(child, key))
                count += 1
    return count


def relaxed_model(stolen: StolenModel) -> tuple[nn.Module, RelaxedKey]:
    """A copy of the locked network (weights frozen) whose key ops read a trainable key.

    Handles every layer built on :class:`ChannelOps` (Linear, Conv, ConvTranspose); raises if the
    model has key slots that no such layer uses (recurrent/attention layers are not covered yet).
    """
    net = copy.deepcopy(stolen.keyed.model)
    for p in net.parameters():
        p.requires_grad_(False)
    key = RelaxedKey(stolen.perm_sizes, stolen.scale_sizes)
    n_ops = _replace_ops(net, key)
    if 2 * n_ops != len(stolen.perm_sizes):
        raise NotImplementedError(
            f"A2 covers layers built on ChannelOps only; the model has {len(stolen.perm_sizes)} "
            f"permutation slots but {n_ops} ChannelOps."
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
) -> None:
    """Fit a relaxed key by gradient descent with annealed Gumbel-Sinkhorn temperature."""
    key.train()
    opt = torch.optim.Adam(key.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    steps = epochs * max(1, -(-n // batch_size))
    step = 0
    loss_fn: Callable = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            key.anneal(step / steps)
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss_fn(forward(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    key.eval()


def attack_key_learning(
    stolen: StolenModel,
    task: TabularTask,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
    *,
    key_lr_scale: float = 10.0,
) -> AttackOutcome:
    """A2: weights frozen; learn scales and Gumbel-Sinkhorn permutations on the budget, harden
    with the Hungarian algorithm, and evaluate the locked model with the recovered hard key.

    Learning rates are the sweep's times ``key_lr_scale`` (logits need larger steps than
    weights); the epochs are the sweep's largest.  The best hard key over the sweep counts.
    """
    accs, keys = [], []
    for seed in seeds:
        x, y = task.budget(budget, seed)
        best, best_key = -1.0, None
        for lr in sweep.lrs:
            torch.manual_seed(seed)
            net, key = relaxed_model(stolen)
            learn_key(
                net,
                key,
                x,
                y,
                lr=lr * key_lr_scale,
                epochs=max(sweep.epochs),
                batch_size=sweep.batch_size,
                seed=seed,
            )
            hard = stolen.key(key.hard_perms(), key.hard_scales())
            acc = accuracy(stolen.forward_with(hard), task.x_test, task.y_test)
            if acc > best:
                best, best_key = acc, hard
        accs.append(best)
        keys.append(best_key)
    return AttackOutcome("A2", "key learning (Gumbel-Sinkhorn + Hungarian)", budget, accs, keys)


# ---------------------------------------------------------------------------------------------
# Scoring a recovered key (needs the truth: done by the auditor, not the attacker)
# ---------------------------------------------------------------------------------------------
def permutation_recovery(
    stolen: StolenModel, key: torch.Tensor, true_perms: Sequence[np.ndarray]
) -> tuple[float, float]:
    """Fraction of permutation entries equal to the true ones, and its chance level.

    A random permutation of ``n`` matches one entry on average, so chance is
    ``n_slots / n_entries``.
    """
    total = sum(stolen.perm_sizes)
    got = key[:total].round().long().numpy()
    truth = np.concatenate([np.asarray(p) for p in true_perms])
    return float((got == truth).mean()), len(stolen.perm_sizes) / total


@torch.no_grad()
def effective_weights(stolen: StolenModel, key: torch.Tensor) -> Iterator[tuple[str, np.ndarray]]:
    """Each locked Linear's weight in the true basis as the given key decodes it
    (``layer(I) - layer(0)``); with the true key this is the original weight."""
    keyed = stolen.keyed
    perms, scales = keyed.decoder(key)
    keyed._slots.perms, keyed._slots.scales = perms, scales
    try:
        for name, module in keyed.model.named_modules():
            if isinstance(getattr(module, "ops", None), ChannelOps) and hasattr(
                module, "in_features"
            ):
                eye = torch.eye(module.in_features)
                w = (module(eye) - module(torch.zeros(1, module.in_features))).T
                yield name, w.numpy().astype(np.float64)
    finally:
        keyed._slots.perms = keyed._slots.scales = None


def aligned_row_cosines(recovered: np.ndarray, true: np.ndarray) -> np.ndarray:
    """|cos| of each true row with its recovered row after the best row permutation and signs
    (Hungarian on the |cos| matrix); hidden units of a network can be reordered freely."""

    def unit(a: np.ndarray) -> np.ndarray:
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)

    c = np.abs(unit(recovered) @ unit(true).T)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return c[rows, cols]


def weight_cosines(
    stolen: StolenModel, key: torch.Tensor, original: nn.Module, seed: int = 0
) -> dict[str, float]:
    """Aligned |cos| between recovered and true weight rows, per locked Linear, against a noise
    floor (the same statistic for a random Gaussian guess of the same shape).

    Returns the largest row |cos| and its floor (over all layers), and ``cos_excess``: the
    largest, over layers, of mean aligned |cos| minus the floor's mean.  Row cosines of short
    rows are large by chance (a 40-wide row matched by Hungarian among 128 reaches ~0.4 for
    noise), so the gate compares against the floor.
    """
    named = dict(original.named_modules())
    rng = np.random.default_rng(seed)
    best, floor_best, excess = [], [], []
    for name, w in effective_weights(stolen, key):
        true = named[name].weight.detach().double().numpy()
        cos = aligned_row_cosines(w, true)
        noise = aligned_row_cosines(rng.standard_normal(true.shape), true)
        best.append(cos.max())
        floor_best.append(noise.max())
        excess.append(cos.mean() - noise.mean())
    return {
        "max_cos": float(max(best)),
        "max_cos_floor": float(max(floor_best)),
        "cos_excess": float(max(excess)),
    }
