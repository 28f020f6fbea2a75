"""Controls for the audit: how far does a thief get from initialisations that need no stolen file?

For each reference model of the audit suite, at one budget (quick sweep, one seed), this trains
from scratch on the budget with:

* the layers' own ``reset_parameters`` (the audit's B(x) before init gains were added);
* Gaussian weights of RMS ``gain/sqrt(fan_in)`` for each gain (no victim information);
* the victim's per-matrix singular values with random singular vectors, and Gaussian weights
  at the victim's per-matrix Frobenius norms (what the weights' scale and spectrum alone give);

and runs A1 (fine-tune, null key) and A3 (data-free statistics) on the default lock. It is the
experiment behind ``SweepConfig.init_gains`` (docs/security.md, "Init scale").

Usage::

    python bench/init_controls.py                       # all five models at 1 %
    python bench/init_controls.py --models gru --budget 5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import comma_names, machine_line, positive_float
from skprotect_pytorch.audit.attacks import (
    StolenModel,
    _sweep_per_seed,
    attack_finetune,
    fresh_model,
)
from skprotect_pytorch.audit.models import QUICK_SWEEP
from skprotect_pytorch.audit.statistics import attack_statistics
from skprotect_pytorch.audit.suite import SUITE
from skprotect_pytorch.lock import lock_model

SINGLE_INIT = dataclasses.replace(QUICK_SWEEP, init_gains=(None,))
"""The quick sweep with one initialisation: each control row is one init scheme."""


def _random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def from_victim(victim: nn.Module, keep: str, rng: np.random.Generator) -> nn.Module:
    """A copy of ``victim`` that keeps only each weight matrix's singular values
    (``keep="spectrum"``) or Frobenius norm (``keep="norm"``); biases are shuffled."""
    model = copy.deepcopy(victim)
    with torch.no_grad():
        for p in model.parameters():
            w = p.detach().numpy().astype(np.float64)
            if w.ndim < 2:
                p.copy_(torch.from_numpy(rng.permutation(w)))
                continue
            mat = w.reshape(w.shape[0], -1)
            if keep == "spectrum":
                s = np.linalg.svd(mat, compute_uv=False)
                u = _random_orthogonal(mat.shape[0], rng)[:, : len(s)]
                v = _random_orthogonal(mat.shape[1], rng)[: len(s)]
                new = (u * s) @ v
            else:
                g = rng.standard_normal(mat.shape)
                new = g / np.linalg.norm(g) * np.linalg.norm(mat)
            p.copy_(torch.from_numpy(new.reshape(w.shape)))
    return model.train()


def controls(name: str, budget: float, gains: tuple[float, ...]) -> dict[str, float]:
    """Accuracy (%) of each control and attack for one reference model at one budget."""
    spec = SUITE[name]
    task = spec.task(0)
    victim = spec.train_victim(task, spec.quick_epochs)

    def trained(build: Callable[[], nn.Module]) -> float:
        return 100 * _sweep_per_seed(build, task, budget, SINGLE_INIT, [0])[0]["accuracy"]

    rows = {"default init": trained(lambda: fresh_model(spec.factory))}
    for gain in gains:
        rows[f"Gaussian, gain {gain:g}"] = trained(lambda g=gain: fresh_model(spec.factory, g))
    for keep in ("spectrum", "norm"):
        rows[f"victim {keep}"] = trained(
            lambda k=keep: from_victim(victim, k, np.random.default_rng(5))
        )
    locked = lock_model(victim, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(1))
    stolen = StolenModel.from_locked(locked)
    rows["A1 null key"] = 100 * attack_finetune(stolen, task, budget, SINGLE_INIT, [0]).accuracy
    rows["A3 (gain 1)"] = 100 * attack_statistics(stolen, task, budget, SINGLE_INIT, [0]).accuracy
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(SUITE), help="comma-separated suite names")
    parser.add_argument("--budget", type=float, default=1.0, help="x %% of the training set")
    parser.add_argument("--gains", default="1,2", help="comma-separated Gaussian init gains")
    args = parser.parse_args(argv)
    names = comma_names(parser, args.models, "--models", "model", SUITE)
    if not 0 < args.budget <= 100:
        parser.error(f"--budget must be a percentage in (0, 100], got {args.budget:g}")
    try:
        gains = tuple(positive_float(g) for g in args.gains.split(","))
    except argparse.ArgumentTypeError as err:
        parser.error(f"--gains takes numbers above 0 separated by commas: {err}")
    torch.set_num_threads(1)
    start = time.perf_counter()
    table = {}
    for name in names:
        table[name] = controls(name, args.budget, gains)
        print(f"{name}: {table[name]}", file=sys.stderr, flush=True)
    cols = list(next(iter(table.values())))
    print(f"machine: {machine_line()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; x = {args.budget:g} %, "
        f"quick sweep, one seed, victims at the suite's quick epochs; "
        f"{time.perf_counter() - start:.0f} s"
    )
    print()
    print("| model | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
