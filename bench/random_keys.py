"""How far above chance a wrong key gets: the spread behind A0's single random key.

The audit's A0 tries one seeded random key and one other lock's key per victim. This script
trains the same victim as ``skprotect audit`` (suite model, data seed 0, lock seed 1), then
scores ``--keys`` random keys (drawn like A0's, seeds ``[s, 0xA0]``; ``s = 1`` is the
audit's), as many keys of other locks of the same model (lock seeds 1001, 1002, …) and, as
controls, as many networks that have no key at all:

- untrained networks of the architecture (torch seeds 0, 1, …: what a thief has without the
  files);
- the victim with every weight tensor's entries shuffled (its magnitudes without its structure);
- the victim with every weight tensor turned by random orthogonal matrices on both channel axes
  and scaled like a wrong key (``2**U(-3, 3)`` per channel): its singular structure kept up to
  those scales, as a wrong key keeps it.

It prints each kind's mean, standard deviation, maximum and how many exceed gate 1's bound
(chance + 2 points). With ``--search-budget X`` it also plays the thief who searches the wrong
keys with labelled data: the random key that scores best on the audit's X % labelled split
(seed 0), and that key's accuracy on the test set, to set next to B(X). With ``--wrong-only
PREFIXES`` it also scores the random keys on the layers named there only (the true key
everywhere else), to find which layers' wrong keys leave accuracy above chance; with
``--scale-range R`` the random keys' scale magnitudes span ``2**±R`` instead of the audit's
``2**±3`` (0: signs only). With ``--information`` each kind's line is followed by what its
predictions say about the class whatever class they name: the mutual information between
predicted and true class in bits (plug-in estimate on the test set, the same small upward
bias for every kind) and the accuracy of the best one-to-one relabelling of the predictions,
the most a thief could read from them by renaming classes. With ``--attention`` (models with
attention layers) each kind's line is also followed by how sharp its attention is: the median
over its networks of each attention layer's mean weight entropy, over the log of the number of
keys (1: uniform, 0: one-hot). No result is asserted: it is a measurement.

Usage::

    python bench/random_keys.py --model transformer --victim-epochs 8 --keys 100 \
        --search-budget 1 --search-budget 5 [--mix-condition 1] [--mix-block 64] \
        [--no-controls] [--wrong-only embed --wrong-only blocks.0,blocks.1 --wrong-only head] \
        [--information] [--attention]
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from machine import positive_int
from skprotect_pytorch.audit import SUITE, AuditConfig
from skprotect_pytorch.audit.attacks import StolenModel, a0_random_key
from skprotect_pytorch.audit.models import predictions
from skprotect_pytorch.lock import LockedModel, LockSettings
from skprotect_pytorch.lock.attention import LockedMultiheadAttention
from skprotect_pytorch.lock.channel_lock import ChannelOps


def summary(label: str, accs: np.ndarray, bound: float) -> str:
    """One line: mean, spread, maximum and the count above ``bound`` (all in %)."""
    return (
        f"{label} ({len(accs)}): mean {accs.mean():.2f} %, sd {accs.std():.2f}, "
        f"max {accs.max():.2f} %, above {bound:.2f} %: {(accs > bound).sum()}"
    )


def label_information(pred: np.ndarray, y: np.ndarray, classes: int) -> tuple[float, float]:
    """Mutual information between predicted and true class (bits, plug-in estimate) and the
    accuracy (%) of the best one-to-one relabelling of ``pred``: how much a network's outputs
    say about the class, whichever class they name."""
    joint = np.zeros((classes, classes))
    np.add.at(joint, (pred, y), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    seen = joint > 0
    bits = float((joint[seen] * np.log2(joint[seen] / outer[seen])).sum())
    rows, cols = linear_sum_assignment(joint, maximize=True)
    return bits, 100 * float(joint[rows, cols].sum())


def information_summary(info: np.ndarray) -> str:
    """One line from ``label_information`` rows: mean and maximum of both figures."""
    bits, relabelled = info[:, 0], info[:, 1]
    return (
        f"  information: mean {bits.mean():.4f} bits, max {bits.max():.4f}; best relabelling: "
        f"mean {relabelled.mean():.2f} %, max {relabelled.max():.2f} %"
    )


_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")


def attention_layers(root: nn.Module) -> list[nn.Module]:
    """The attention modules under ``root``, plain or locked, in module order."""
    kinds = (nn.MultiheadAttention, LockedMultiheadAttention)
    return [m for m in root.modules() if isinstance(m, kinds)]


def attention_entropy(root: nn.Module, run: Callable[[], object]) -> list[float]:
    """Each attention layer's mean weight entropy over the log of its key count during ``run()``:
    1 when every query attends uniformly, 0 when each attends to one key.

    A hook re-calls the layer with the same inputs and ``need_weights=True`` to read the weights
    (the model itself may ask for none).
    """
    totals = [[0.0, 0] for _ in attention_layers(root)]

    def recorder(index: int):
        def record(module, args, kwargs, _output) -> None:
            call = {**dict(zip(_MHA_ARGS, args, strict=False)), **kwargs}
            call.update(need_weights=True, average_attn_weights=False)
            weights = module.forward(**call)[1]
            logs = weights.clamp_min(1e-30).log()  # 0 · log 0 counts as 0
            entropy = -(logs * weights).sum(-1) / np.log(weights.shape[-1])
            totals[index][0] += float(entropy.sum())
            totals[index][1] += entropy.numel()

        return record

    hooks = [
        layer.register_forward_hook(recorder(i), with_kwargs=True)
        for i, layer in enumerate(attention_layers(root))
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return [total / count for total, count in totals]


def shuffled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` whose weight tensors (two axes or more) have their entries shuffled."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.dim() >= 2:
                flat = p.reshape(-1)
                p.copy_(flat[torch.randperm(flat.numel(), generator=g)].reshape(p.shape))
    return out.eval()


def _scaled_orthogonal(n: int, g: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal ``n × n`` matrix with its columns scaled by ``2**U(-3, 3)``."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return (q * torch.exp2(torch.rand(n, generator=g, dtype=torch.float64) * 6 - 3)).float()


def rotated(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every weight ``W`` (axes ``(out, in, *taps)``) replaced by
    ``A · W · B`` for scaled random orthogonal ``A``, ``B``; biases permuted to follow."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for module in out.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.dim() < 2:
                    continue
                a, b = _scaled_orthogonal(p.shape[0], g), _scaled_orthogonal(p.shape[1], g)
                p.copy_(torch.einsum("po,oi...,iq->pq...", a, p, b))
                bias = getattr(module, name.replace("weight", "bias"), None)
                if "weight" in name and isinstance(bias, torch.Tensor):
                    bias.copy_(bias[torch.randperm(bias.numel(), generator=g)])
    return out.eval()


def rescaled(key: torch.Tensor, n_perm: int, n_scale: int, scale_range: float) -> torch.Tensor:
    """``key`` with each scale ``±2**e`` (``e ~ U(-3, 3)``) turned into ``±2**(e·R/3)``: the same
    draw with magnitudes over ``2**±R`` instead of ``2**±3``."""
    out = key.clone()
    u = out[n_perm : n_perm + n_scale]
    out[n_perm : n_perm + n_scale] = torch.sign(u) * u.abs() ** (scale_range / 3)
    return out


def key_slots(locked: LockedModel, prefixes: list[str]) -> tuple[set[int], set[int]]:
    """The permutation and scale slots of the locked layers whose names start with a prefix.

    Names are those of the original model (``blocks.0.attn.q_proj``); an unknown prefix is an
    error rather than an ablation that silently changes nothing.
    """
    perms: set[int] = set()
    scales: set[int] = set()
    matched = set()
    for name, module in locked.keyed.model.named_modules():
        if not isinstance(module, ChannelOps):
            continue
        hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
        matched.update(hits)
        if hits:
            perms.update(s for s in (module.in_perm_slot, module.out_perm_slot) if s is not None)
            scales.update(s for s in (module.in_scale_slot, module.out_scale_slot) if s is not None)
    if missing := set(prefixes) - matched:
        layers = ", ".join(d.name for d in locked.locked_layers)
        raise ValueError(f"no locked layer under {', '.join(sorted(missing))}; locked: {layers}")
    return perms, scales


def splice(
    true_key: torch.Tensor,
    wrong_key: torch.Tensor,
    slots: tuple[set[int], set[int]],
    perm_sizes: list[int],
    scale_sizes: list[int],
) -> torch.Tensor:
    """``true_key`` with the given permutation and scale slots taken from ``wrong_key``.

    The layout is every permutation, then every scale's ``u``, then every scale's ``v``
    (``skprotect_pytorch.lock.key_layout``).
    """
    perm_slots, scale_slots = slots
    out = true_key.clone()
    ranges = []
    start = 0
    for i, n in enumerate(perm_sizes):
        if i in perm_slots:
            ranges.append((start, n))
        start += n
    n_scale = sum(scale_sizes)
    for i, n in enumerate(scale_sizes):
        if i in scale_slots:
            ranges += [(start, n), (start + n_scale, n)]
        start += n
    for begin, n in ranges:
        out[begin : begin + n] = wrong_key[begin : begin + n]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(SUITE))
    parser.add_argument("--victim-epochs", type=positive_int, help="default: the suite's")
    parser.add_argument("--keys", type=int, default=100, help="draws of each kind")
    parser.add_argument(
        "--search-budget",
        type=float,
        action="append",
        default=[],
        metavar="X",
        help="pick the best random key on X %% of the labelled training set (repeatable)",
    )
    parser.add_argument(
        "--mix-condition",
        type=float,
        help="condition number of the public mixing blocks (default: the default lock's)",
    )
    parser.add_argument(
        "--mix-block",
        type=int,
        help="size of the public mixing blocks (default: the default lock's)",
    )
    parser.add_argument(
        "--scale-range",
        type=float,
        default=3.0,
        metavar="R",
        help="random keys' scale magnitudes span 2**±R (default 3, the audit's; 0: signs only)",
    )
    parser.add_argument(
        "--no-controls",
        action="store_true",
        help="skip other locks' keys and the key-less controls (random keys and ablations only)",
    )
    parser.add_argument(
        "--wrong-only",
        action="append",
        default=[],
        metavar="PREFIXES",
        help="also score the random keys on the layers under these comma-separated module "
        "names only, the true key elsewhere (repeatable: one ablation each)",
    )
    parser.add_argument(
        "--attention",
        action="store_true",
        help="also print how sharp each kind's attention is (models with attention layers)",
    )
    parser.add_argument(
        "--information",
        action="store_true",
        help="also print each kind's label information (bits) and best-relabelling accuracy",
    )
    args = parser.parse_args(argv)
    if args.keys < 1:
        parser.error("--keys must be at least 1")
    if not 0 <= args.scale_range <= 30:
        parser.error("--scale-range must be in [0, 30]")
    if any(not 0 < x <= 100 for x in args.search_budget):
        parser.error("--search-budget must be a percentage in (0, 100]")
    overrides = {
        name: value
        for name, value in (("mix_condition", args.mix_condition), ("mix_block", args.mix_block))
        if value is not None
    }
    try:
        settings = LockSettings(**overrides)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(1)
    config = AuditConfig(model=args.model, victim_epochs=args.victim_epochs, lock_settings=settings)
    spec, _sweep, _seeds, victim_epochs = config.resolved()
    if args.attention and not attention_layers(spec.factory()):
        parser.error(f"--attention: the {args.model} has no attention layers")
    task = spec.task(config.data_seed)
    victim = spec.train_victim(task, victim_epochs)
    locked = config.lock(victim, config.lock_seed)
    stolen = StolenModel.from_locked(locked)
    try:
        ablations = {group: key_slots(locked, group.split(",")) for group in args.wrong_only}
    except ValueError as err:
        parser.error(f"--wrong-only: {err}")

    def predict(forward: Callable, x: torch.Tensor = task.x_test) -> np.ndarray:
        return predictions(forward, x).numpy()

    def score(
        forward: Callable, x: torch.Tensor = task.x_test, y: torch.Tensor = task.y_test
    ) -> float:
        return 100 * float((predict(forward, x) == y.numpy()).mean())

    y_test = task.y_test.numpy()
    classes = int(y_test.max()) + 1

    def untrained(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return spec.factory().eval()

    def observed(forward: Callable) -> tuple[np.ndarray, list[float]]:
        """The predictions on the test set, and the attention entropies if asked for."""
        if not args.attention:
            return predict(forward), []
        root = forward if isinstance(forward, nn.Module) else stolen.keyed
        out: list[np.ndarray] = []
        entropies = attention_entropy(root, lambda: out.append(predict(forward)))
        return out[0], entropies

    def attention_line(entropies: list[list[float]]) -> str:
        median = np.median(np.array(entropies), axis=0)
        return "  attention entropy per layer (1 uniform, 0 one-hot): " + ", ".join(
            f"{e:.3f}" for e in median
        )

    def spread(label: str, forwards) -> np.ndarray:
        preds, entropies = zip(*(observed(f) for f in forwards), strict=True)
        accs = np.array([100 * (p == y_test).mean() for p in preds])
        print(summary(label, accs, bound), flush=True)
        if args.information:
            info = np.array([label_information(p, y_test, classes) for p in preds])
            print(information_summary(info), flush=True)
        if args.attention:
            print(attention_line(list(entropies)), flush=True)
        return accs

    chance = 100 * task.chance
    bound = chance + 2
    true_key = torch.from_numpy(locked.layout.static_key())
    keyed_pred, keyed_entropy = observed(stolen.forward_with(true_key))
    with_key = 100 * (keyed_pred == y_test).mean()
    print(f"{args.model}: with the key {with_key:.2f} %, chance {chance:.2f} %")
    if args.information:
        bits, _ = label_information(keyed_pred, y_test, classes)
        print(f"  information with the key: {bits:.4f} bits")
    if args.attention:
        print(attention_line([keyed_entropy]))
    draws = [a0_random_key(stolen, s) for s in range(args.keys)]
    audits = args.scale_range == 3
    if not audits:
        n_perm, n_scale = sum(stolen.perm_sizes), sum(stolen.scale_sizes)
        draws = [rescaled(k, n_perm, n_scale, args.scale_range) for k in draws]
    label = "random keys" if audits else f"random keys, scales 2**±{args.scale_range:g}"
    random_accs = spread(label, (stolen.forward_with(k) for k in draws))
    if audits and args.keys > config.lock_seed:
        audit_key = random_accs[config.lock_seed]
        print(f"the audit's random key (seed {config.lock_seed}): {audit_key:.2f} %")
    if not args.no_controls:
        others = (config.other_key(victim, i) for i in range(args.keys))
        spread("other locks' keys", (stolen.forward_with(k) for k in others))
        spread("untrained networks", (untrained(s) for s in range(args.keys)))
        spread("victim, weights shuffled", (shuffled(victim, s) for s in range(args.keys)))
        spread("victim, weights turned and scaled", (rotated(victim, s) for s in range(args.keys)))
    for group, slots in ablations.items():
        spliced = (splice(true_key, k, slots, stolen.perm_sizes, stolen.scale_sizes) for k in draws)
        spread(f"{label} on {group} only", (stolen.forward_with(k) for k in spliced))
    for percent in args.search_budget:
        x, y = task.budget(percent, seed=0)
        on_budget = [score(stolen.forward_with(k), x, y) for k in draws]
        best = int(np.argmax(on_budget))
        print(
            f"key search on {percent:g} % ({len(y)} labelled samples): best of {args.keys} "
            f"random keys (seed {best}) scores {on_budget[best]:.2f} % there, "
            f"{random_accs[best]:.2f} % on the test set"
        )
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
