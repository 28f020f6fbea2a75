"""A4: reference alignment.  The thief trains its own reference of the same architecture on the
budget, aligns the locked model's key to it, then fine-tunes.

- weight matching (Git Re-Basin style, :func:`~.matching.weight_match`): per keyed layer,
  two-sided Hungarian initialisation then alternating exact least-squares Hungarian steps that
  make the locked layer's effective weight under the candidate key match the reference's;
- activation matching (:func:`activation_match`): starting from the weight-matching key, per
  keyed linear in forward order, correlate the locked layer's stored-basis outputs with the
  reference's outputs on the budget's inputs (Hungarian on ``|corr|``, scales by regression),
  and fit the input side by least squares on the same activations.

Coverage: weight matching covers every keyed matrix with a counterpart in the reference (all of
them for the same architecture: Linear, conv of any groups, attention projections, LSTM/GRU
matrices); activation matching covers the keyed linears whose reference output is observable
(:func:`reference_activation`); convs and recurrent matrices keep the weight-matching estimate.
Each estimate's ``notes`` list what was left out; they go to the outcome and the report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from ..lock.keyed_model import _mha_fastpath_disabled
from ..lock.linear import LockedLinear
from .attacks import (
    AttackOutcome,
    StolenModel,
    _sweep_best,
    _sweep_per_seed,
    finetune_from_key,
    fresh_model,
)
from .cells import part
from .data import Task
from .matching import (
    DIVERGED_NOTE,
    KeyedLayer,
    KeyEstimate,
    Target,
    finite_step,
    hungarian,
    keyed_layers,
    reference_weights,
)
from .matching import weight_match as _weight_match
from .models import Score, SweepConfig, best_score, score


def train_reference(
    make_model: Callable[[], nn.Module],
    task: Task,
    x: torch.Tensor,
    y: torch.Tensor,
    sweep: SweepConfig,
    seed: int,
) -> nn.Module:
    """The thief's reference: trained from scratch on the budget with the baseline's sweep (init
    gains included); the best checkpoint (test accuracy, the same oracle choice as the baseline)
    is kept."""
    best, best_state, model = -1.0, None, None

    def make(gain: float | None):
        nonlocal model
        model = fresh_model(make_model, gain)

        def evaluate(model: nn.Module = model) -> Score:
            nonlocal best, best_state
            got = score(model.eval(), task.x_test, task.y_test)
            model.train()
            if got["accuracy"] > best:
                best, best_state = got["accuracy"], copy.deepcopy(model.state_dict())
            return got

        return model, list(model.parameters()), evaluate

    for gain in sweep.init_gains:  # another initialisation than the baseline's
        _sweep_best(partial(make, gain), x, y, sweep, seed, init_seed=seed + 7919)
    assert model is not None and best_state is not None
    model.load_state_dict(best_state)
    return model.eval()


def _trainable_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).train()


def weight_match_key(stolen: StolenModel, reference: nn.Module) -> KeyEstimate:
    """The key that best maps every keyed layer's stored weight onto the reference's weight
    (every keyed matrix with a counterpart in the reference; ``notes`` list the others)."""
    layers = keyed_layers(stolen.keyed.model)
    targets = reference_weights(reference, layers)
    return _weight_match(layers, KeyEstimate.null(stolen.perm_sizes, stolen.scale_sizes), targets)


Picker = Callable[[tuple, dict, object], torch.Tensor]
"""Picks one tensor from a module call: ``(args, kwargs, output) -> tensor``."""


@torch.no_grad()
def _capture(run: Callable[[], object], module: nn.Module, pick: Picker) -> torch.Tensor | None:
    """``pick`` applied to the first call of ``module`` during ``run()``; ``None`` if the
    module is never called as a module (e.g. the ``out_proj`` of ``nn.MultiheadAttention``,
    whose weight torch uses directly)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, args, kwargs, output: seen.append(pick(args, kwargs, output)),
        with_kwargs=True,
    )
    try:
        run()
    finally:
        handle.remove()
    return seen[0].detach().double() if seen else None


def _argument(index: int, name: str) -> Picker:
    """Picks the call's argument ``index`` (or keyword ``name``)."""
    return lambda args, kwargs, _out: args[index] if len(args) > index else kwargs[name]


def _first_output(_args: tuple, _kwargs: dict, output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def _linear(x: torch.Tensor, target: Target) -> torch.Tensor:
    """``x Wᵀ + b`` for a reference ``(O, I, 1)`` target."""
    w, b = target
    y = x @ torch.from_numpy(w[:, :, 0]).T
    return y if b is None else y + torch.from_numpy(b)


def _batch_first(t: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """An attention argument or output in the ``(N, L, E)`` layout the locked attention uses."""
    return t if batch_first or t.dim() != 3 else t.transpose(0, 1)


def reference_activation(
    reference: nn.Module, layer: KeyedLayer, x: torch.Tensor
) -> torch.Tensor | None:
    """The reference's output of the computation that the locked linear ``layer`` performs, on
    the budget's inputs, in the row layout of the locked layer's own input; ``None`` where the
    reference does not expose it.

    Covered: a Linear of the same name that the reference calls; the q/k/v projections of an
    ``nn.MultiheadAttention`` (its inputs times the chunk of ``in_proj_weight``); its
    ``out_proj`` (the attention's output); the input projection of the first layer of an
    LSTM/GRU (its input times ``weight_ih``).  Not covered: the input projections of later
    LSTM/GRU layers (torch's fused layer hides their inputs).
    """
    modules = dict(reference.named_modules())

    def run() -> object:
        with _mha_fastpath_disabled():  # the fused path would bypass the hooked modules
            return reference(x)

    parent_name, _, leaf = layer.name.rpartition(".")
    parent = modules.get(parent_name)
    if isinstance(parent, nn.MultiheadAttention):
        if leaf == "out_proj":
            out = _capture(run, parent, _first_output)
            return None if out is None else _batch_first(out, parent.batch_first)
        index = ("q_proj", "k_proj", "v_proj").index(leaf)
        arg = _capture(run, parent, _argument(index, ("query", "key", "value")[index]))
        target = reference_weights(reference, [layer]).get(layer.name)
        if arg is None or target is None:
            return None
        return _linear(_batch_first(arg, parent.batch_first), target)
    module = modules.get(layer.name)
    if isinstance(module, nn.Linear):
        return _capture(run, module, _first_output)
    first_projection = "layers.0.input_proj"
    if layer.family != "recurrent" or not layer.name.endswith(first_projection):
        return None
    rnn = modules.get(layer.name.removesuffix(first_projection).rstrip("."))
    target = reference_weights(reference, [layer]).get(layer.name)
    if not isinstance(rnn, nn.LSTM | nn.GRU) or target is None:
        return None
    arg = _capture(run, rnn, _argument(0, "input"))
    if arg is None:
        return None
    # the locked layer runs time-major, (T, N, I): swap the axes of a batch-first input
    return _linear(arg.transpose(0, 1) if rnn.batch_first and arg.dim() == 3 else arg, target)


def _match_outputs(z: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Key index ``k`` takes stored output ``p[k]`` maximising ``|corr|``; scale by regression."""
    zc, tc = z - z.mean(0), target - target.mean(0)
    zn = zc / (np.linalg.norm(zc, axis=0) + 1e-12)
    tn = tc / (np.linalg.norm(tc, axis=0) + 1e-12)
    p = hungarian(np.abs(tn.T @ zn))
    zp = zc[:, p]
    return p, (zp * tc).sum(0) / ((zp**2).sum(0) + 1e-30)


def _match_inputs(w: np.ndarray, u: np.ndarray, zt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input side by least squares, ``zt ≈ Σ_j s_j W'[:, j] ⊗ u[:, p[j]]``: Hungarian on the
    separable gain ``G² / n``, then the scales jointly (normal equations)."""
    g = w.T @ zt.T @ u
    n = np.outer((w**2).sum(0), (u**2).sum(0)) + 1e-30
    p = hungarian(g**2 / n)
    gram = (w.T @ w) * (u[:, p].T @ u[:, p])
    rhs = g[np.arange(len(p)), p]
    return p, np.linalg.lstsq(gram, rhs, rcond=None)[0]


def _align_layer(
    layer: KeyedLayer, key: KeyEstimate, u: np.ndarray, target: np.ndarray, rounds: int
) -> None:
    """Alternate the output and input sides of one Linear on activations."""
    w = layer.weight[:, :, 0]
    b = np.zeros(layer.n_out) if layer.bias is None else layer.bias
    for _ in range(rounds):
        inp, out = key.side(layer.ops, "in"), key.side(layer.ops, "out")
        x_locked = u if inp is None else u[:, inp[0]] * inp[1]
        z = x_locked @ w.T + b
        if out is not None:
            key.set_side(layer.ops, "out", *_match_outputs(z, target))
            perm, scale = key.side(layer.ops, "out")
            zt = np.empty_like(target)
            zt[:, perm] = target / np.where(scale == 0, 1.0, scale)  # a dead output: no scale
        else:
            zt = target
        if inp is not None:
            key.set_side(layer.ops, "in", *_match_inputs(w, u, zt - b))


def activation_match(
    stolen: StolenModel,
    reference: nn.Module,
    x: torch.Tensor,
    key: KeyEstimate,
    *,
    rounds: int = 3,
) -> KeyEstimate:
    """Refine ``key`` layer by layer on the budget's inputs: every keyed linear (Linear layers,
    attention projections, LSTM/GRU input projections) whose reference output
    :func:`reference_activation` can observe.  Each layer's input comes from the locked model
    under the key found so far; its target is the reference's output, brought into the
    pre-un-mix basis.  The other layers (convs, recurrent matrices, unobservable linears) keep
    their estimate; ``notes`` list them, and the layers whose activations were NaN or infinite
    (a diverged reference, or inputs too large for float32), which keep theirs too."""
    key = copy.deepcopy(key)
    kept, diverged = [], []
    for layer in keyed_layers(stolen.keyed.model):
        if layer.weight.shape[2] != 1 or not isinstance(layer.module, LockedLinear):
            kept.append(layer.name)
            continue
        y_ref = reference_activation(reference, layer, x)
        if y_ref is None:
            kept.append(layer.name)
            continue
        current = stolen.key(key.perms, key.scales)
        x_in = _capture(lambda k=current: stolen.keyed(x, k), layer.module, _argument(0, "x"))
        assert x_in is not None  # every keyed layer of the locked model runs
        u = x_in.reshape(-1, layer.n_in).numpy() @ layer.t_in
        target = y_ref.reshape(-1, layer.n_out).numpy() @ layer.f_out.T
        if not finite_step(key, partial(_align_layer, layer, u=u, target=target, rounds=rounds)):
            diverged.append(layer.name)
    if kept:
        key.notes.append(
            "activation matching does not model (weight-matching estimate kept): " + ", ".join(kept)
        )
    if diverged:
        key.notes.append(DIVERGED_NOTE.format(what="activation matching") + ", ".join(diverged))
    return key


def attack_alignment(
    stolen: StolenModel,
    make_model: Callable[[], nn.Module],
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
) -> list[AttackOutcome]:
    """A4: per seed a reference on the budget; weight matching and activation matching keys,
    each followed by fine-tuning from it. The no-files control (``extra["control"]``, an
    :class:`AttackOutcome` naming its unmeasured seeds) fine-tunes the reference itself with the
    same sweep: what the second training round gains alone."""

    def aligned(seed: int) -> dict:
        """One seed's reference, its no-files control and both matchings' keys and notes."""
        x, y = task.budget(budget, seed)
        reference = train_reference(make_model, task, x, y, sweep, seed)
        # like finetune_from_key, the start counts too (the thief keeps the better)
        again = _sweep_per_seed(partial(_trainable_copy, reference), task, budget, sweep, [seed])
        wm = weight_match_key(stolen, reference)
        am = activation_match(stolen, reference, x, wm)
        return {
            "control": best_score([score(reference, task.x_test, task.y_test), again[0]]),
            "weight": {"key": stolen.key(wm.perms, wm.scales), "notes": list(wm.notes)},
            "activation": {"key": stolen.key(am.perms, am.scales), "notes": list(am.notes)},
        }

    per_seed = {seed: part(f"reference-seed{seed}", partial(aligned, seed)) for seed in seeds}
    outcomes = []
    for kind in ("weight", "activation"):
        by_seed = {seed: found[kind]["key"] for seed, found in per_seed.items()}
        scores = part(
            kind,
            lambda by_seed=by_seed: finetune_from_key(
                stolen, task, budget, sweep, seeds, by_seed.__getitem__
            ),
        )
        variant = f"{kind} matching to own reference + fine-tune"
        o = AttackOutcome.from_scores("A4", variant, budget, seeds, scores)
        o.recovered_keys = [by_seed[s] for s in seeds]
        o.notes = sorted({note for found in per_seed.values() for note in found[kind]["notes"]})
        controls = [per_seed[s]["control"] for s in seeds]
        o.extra["control"] = AttackOutcome.from_scores(
            "A4", "no-files control", budget, seeds, controls
        )
        outcomes.append(o)
    return outcomes
