"""Reference models of the audit (MLP, ResNet-style CNN, Transformer, LSTM, GRU) and the seeded
trainer shared by the victim, the baseline and every attack, so they all get the same sweep.

Every weight layer of the reference models is one the lock supports (Linear, Conv2d,
MultiheadAttention, LSTM, GRU; eval-mode BatchNorm is folded into its conv), so the audit
attacks the whole network, not a lightly locked part of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Real
from typing import TypedDict, TypeVar

import torch
from torch import nn

from ..errors import InvalidArgumentError
from .arguments import INTEGER, NUMBER, require_positive, sequence_of

Forward = Callable[[torch.Tensor], torch.Tensor]
T = TypeVar("T")


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


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1×1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNetCNN(nn.Module):
    """Small ResNet: conv-BN-ReLU stem, residual stages (the later ones stride 2), global
    average pool, linear head."""

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, widths: tuple[int, ...] = (8, 16, 32)
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks = [
            ResidualBlock(c_in, c_out, 1 if i == 0 else 2)
            for i, (c_in, c_out) in enumerate(zip((widths[0], *widths), widths, strict=False))
        ]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((-2, -1)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm encoder block: ``x + MHA(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.norm2(x))


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Fixed sine/cosine position codes ``(length, dim)``: nothing to learn from a small budget."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    codes = torch.zeros(length, dim)
    codes[:, 0::2], codes[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return codes


class TransformerClassifier(nn.Module):
    """Sequence classifier: linear token embedding plus sinusoidal positions, encoder blocks with
    ``nn.MultiheadAttention``, final LayerNorm, mean pool over time, linear head."""

    def __init__(
        self,
        n_features: int = 8,
        n_classes: int = 10,
        length: int = 16,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(n_features, dim)
        self.register_buffer("position", sinusoidal_positions(length, dim))
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, 2 * dim) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def reset_parameters(self) -> None:
        """Re-draw the attention projections: ``nn.MultiheadAttention`` only has a private
        ``_reset_parameters``, which the trainers' seeded ``reset_parameters`` sweep misses."""
        for m in self.modules():
            if isinstance(m, nn.MultiheadAttention):
                m._reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(x) + self.position[: x.shape[-2]])
        return self.head(self.norm(h).mean(-2))


class RecurrentClassifier(nn.Module):
    """Sequence classifier: an LSTM or GRU (batch first) read at the last step, linear head."""

    def __init__(
        self, cell: str = "lstm", n_features: int = 8, n_classes: int = 10, hidden: int = 64
    ) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(n_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


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
    init_gains: tuple[float | None, ...] = (None, 1.0, 2.0)
    """Initial weight scales every learner tries, like its learning rates. A model trained from
    scratch (B(x), A4's reference) starts from the layers' own ``reset_parameters`` (``None``) or
    from Gaussian weights of RMS ``gain/sqrt(fan_in)``; A3 gives its rebalanced stolen weights
    the same RMS levels. The init scale is knowledge a thief has without the stolen files: at
    1 % the default init of nn.GRU reaches 23.4 %, a Gaussian at gain 2 50.8 %
    (``bench/init_controls.py``)."""

    def __post_init__(self) -> None:
        lrs = sequence_of(self.lrs, "SweepConfig.lrs", "learning rates")
        epochs = sequence_of(self.epochs, "SweepConfig.epochs", "epoch counts")
        gains = sequence_of(self.init_gains, "SweepConfig.init_gains", "gains or None")
        for lr in lrs:
            require_positive(lr, "every SweepConfig.lrs entry", NUMBER, "number")
        for n in epochs:
            require_positive(n, "every SweepConfig.epochs entry", INTEGER, "integer")
        for gain in gains:
            if gain is not None:
                require_positive(gain, "every SweepConfig.init_gains entry", NUMBER, "number")
        require_positive(self.batch_size, "SweepConfig.batch_size", INTEGER, "integer")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, Real) or not 0 <= wd < math.inf:
            raise InvalidArgumentError(
                f"SweepConfig.weight_decay must be a finite number ≥ 0, but is {wd!r}."
            )
        normal = {  # Python numbers in tuples: hashable, as typed, and JSON for the cell names
            "lrs": tuple(float(lr) for lr in lrs),
            "epochs": tuple(int(n) for n in epochs),
            "init_gains": tuple(None if g is None else float(g) for g in gains),
            "batch_size": int(self.batch_size),
            "weight_decay": float(wd),
        }
        for attr, value in normal.items():
            object.__setattr__(self, attr, value)


QUICK_SWEEP = SweepConfig(lrs=(3e-3,), epochs=(20, 50), batch_size=64)


@torch.no_grad()
def predictions(forward: Forward, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """The predicted class of every row of ``x``, evaluated ``batch`` rows at a time (the
    wrong-key bench, ``bench/random_keys.py``, scores what they say of the class)."""
    return torch.cat([forward(x[i : i + batch]).argmax(-1) for i in range(0, len(x), batch)])


class Score(TypedDict):
    """One test accuracy and whether it measured the model: ``measured`` is False when some
    test logit was NaN or infinite (a diverged model, whose accuracy says nothing of what the
    learner can reach).  A plain dict, so that cell parts store it (:func:`.cells.part`)."""

    accuracy: float
    measured: bool


@torch.no_grad()
def score(forward: Forward, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> Score:
    """The fraction of rows of ``x`` whose largest logit is their label, and whether every
    logit was finite.  A row with a NaN or infinite logit counts as wrong: a model whose
    training diverged predicts nothing, where argmax takes NaN for the largest logit (an
    all-NaN model scored the share of class 0)."""
    right, finite = 0, True
    for i in range(0, len(x), batch):
        logits = forward(x[i : i + batch])
        rows_finite = logits.isfinite().all(-1)
        right += int(((logits.argmax(-1) == y[i : i + batch]) & rows_finite).sum())
        finite = finite and bool(rows_finite.all())
    return {"accuracy": right / len(y), "measured": finite}


def accuracy(forward: Forward, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    """:func:`score`'s accuracy alone (no-key attacks, references and controls)."""
    return score(forward, x, y, batch)["accuracy"]


def best_score(scores: Iterable[Score]) -> Score:
    """The best of several attempts at one seed (sweep points, init gains, the start): the
    largest accuracy, measured when any attempt was; an attempt that diverged never hides what
    another one found, and a seed is unmeasured only when every attempt diverged."""
    scores = list(scores)
    return {
        "accuracy": max(s["accuracy"] for s in scores),
        "measured": any(s["measured"] for s in scores),
    }


def batches(n: int, batch_size: int) -> list[slice]:
    """The training batches over ``n`` shuffled samples: a last batch of one sample joins the one
    before it, since BatchNorm cannot train on one sample (a 1 % budget of 6,500 samples is 65:
    batches of 64 and 1)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


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
    evaluate: Callable[[], T],
    weight_decay: float = 0.0,
) -> dict[int, T]:
    """Adam on cross-entropy; returns ``{epoch: evaluate()}`` at each listed epoch."""
    checkpoints = sorted(set(epochs))
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    slices = batches(n, batch_size)
    scores: dict[int, T] = {}
    for epoch in range(1, checkpoints[-1] + 1):
        order = torch.randperm(n, generator=gen)
        for batch in slices:
            idx = order[batch]
            opt.zero_grad()
            loss_fn(forward(x[idx]), y[idx]).backward()
            opt.step()
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
