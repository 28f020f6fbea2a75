"""How far above chance a wrong key gets: the spread behind A0's single random key.

The audit's A0 tries one seeded random key and one other lock's key per victim. This script
trains the same victim as ``skprotect audit`` (suite model, data seed 0, lock seed 1), then
scores ``--keys`` random keys (drawn like A0's, seeds ``[s, 0xA0]``; ``s = 1`` is the
audit's), as many keys of other locks of the same model (lock seeds 1001, 1002, …) and, for
comparison, as many untrained networks of the architecture (torch seeds 0, 1, …: what a thief
has without the files), and prints their mean, standard deviation, maximum and how many
exceed gate 1's bound (chance + 2 points). No result is asserted: it is a measurement.

Usage::

    python bench/random_keys.py --model transformer --victim-epochs 8 --keys 100
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from skprotect_pytorch.audit import SUITE, AuditConfig
from skprotect_pytorch.audit.attacks import StolenModel, a0_random_key, accuracy


def summary(label: str, accs: np.ndarray, bound: float) -> str:
    """One line: mean, spread, maximum and the count above ``bound`` (all in %)."""
    return (
        f"{label} ({len(accs)}): mean {accs.mean():.2f} %, sd {accs.std():.2f}, "
        f"max {accs.max():.2f} %, above {bound:.2f} %: {(accs > bound).sum()}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(SUITE))
    parser.add_argument("--victim-epochs", type=int, help="default: the suite's")
    parser.add_argument("--keys", type=int, default=100, help="draws of each kind")
    args = parser.parse_args(argv)
    if args.keys < 1:
        parser.error("--keys must be at least 1")
    torch.set_num_threads(1)
    config = AuditConfig(model=args.model, victim_epochs=args.victim_epochs)
    spec, _sweep, _seeds, victim_epochs = config.resolved()
    task = spec.task(config.data_seed)
    victim = spec.train_victim(task, victim_epochs)
    locked = config.lock(victim, config.lock_seed)
    stolen = StolenModel.from_locked(locked)

    def score(forward) -> float:
        with torch.no_grad():
            return 100 * accuracy(forward, task.x_test, task.y_test)

    def untrained(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return spec.factory().eval()

    chance = 100 * task.chance
    bound = chance + 2
    with_key = score(stolen.forward_with(torch.from_numpy(locked.layout.static_key())))
    print(f"{args.model}: with the key {with_key:.2f} %, chance {chance:.2f} %")
    draws = [a0_random_key(stolen, s) for s in range(args.keys)]
    random_accs = np.array([score(stolen.forward_with(k)) for k in draws])
    print(summary("random keys", random_accs, bound))
    if args.keys > config.lock_seed:
        audit_key = random_accs[config.lock_seed]
        print(f"the audit's random key (seed {config.lock_seed}): {audit_key:.2f} %")
    others = [config.other_key(victim, i) for i in range(args.keys)]
    print(
        summary(
            "other locks' keys", np.array([score(stolen.forward_with(k)) for k in others]), bound
        )
    )
    fresh = np.array([score(untrained(s)) for s in range(args.keys)])
    print(summary("untrained networks", fresh, bound))
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
