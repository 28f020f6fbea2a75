"""A3: data-free statistics.  Estimate the key from the stored weights alone, then fine-tune.

Stage 1 (no data): norm balancing of every stored matrix gives the scale magnitudes (balancing
removes any diagonal scaling, so it cancels the keyed scales up to one factor per layer).
Stage 2 (no data): each hidden interface (the output side of one keyed layer feeding the input
side of the next, same width) is aligned by matching the stored rows of the first to the stored
columns of the second: cosine of permutation-invariant descriptors of the balanced matrices,
Sinkhorn-normalised, hardened with the Hungarian algorithm.  The hidden basis itself is free
(any relabelling of hidden units computes the same function), so the output side keeps the
identity and the next layer's input side gets the matched permutation.
Stage 3: fine-tune all weights with that key on the budget (the baseline's sweep).

Coverage: stage 1 covers every keyed matrix (``audit.matching.keyed_layers``); stage 2 pairs
the interfaces :func:`interfaces` finds (Linear/conv chains, attention assumed self-attention)
and leaves LSTM/GRU matrices and unpaired inputs at the identity permutation, listed in the
estimate's ``notes`` (and from there in the outcome and the report).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .attacks import AttackOutcome, StolenModel, best_over_gains, finetune_from_key
from .data import Task
from .matching import (
    KeyedLayer,
    KeyEstimate,
    balance,
    balanced,
    descriptors,
    hungarian,
    keyed_layers,
    sinkhorn,
)
from .models import Score, SweepConfig, best_score


def balance_scales(layers: Sequence[KeyedLayer], key: KeyEstimate, gain: float = 1.0) -> None:
    """Set every scale slot to the balancing factors of its stored matrix; the output side also
    takes the global factor that brings entries to an init-like RMS of ``gain/sqrt(n_in)``."""
    for layer in layers:
        rows, cols = balance(layer.weight)
        fan_in = layer.n_in * layer.weight.shape[2]
        out, inp = key.side(layer.ops, "out"), key.side(layer.ops, "in")
        if inp is not None:
            key.set_side(layer.ops, "in", inp[0], cols)
        if out is not None:
            key.set_side(layer.ops, "out", out[0], gain * rows[out[0]] / np.sqrt(fan_in))


def interfaces(layers: Sequence[KeyedLayer]) -> list[tuple[KeyedLayer, KeyedLayer]]:
    """Pairs ``(first, second)`` where ``first``'s output feeds ``second``'s input through
    elementwise ops (or a residual stream), by module order, widths chaining.

    Attention: ``q_proj``, ``k_proj`` and ``v_proj`` all read the stream that fed the attention
    (self-attention assumed), ``out_proj`` reads ``v_proj`` (attention only mixes positions),
    and the stream continues from ``out_proj``.  LSTM/GRU matrices are left out: their rows are
    gate blocks tied to the hidden units, which one row-to-column pairing does not model; the
    layer after a recurrent layer has no paired input either.
    """
    pairs = []
    stream: KeyedLayer | None = None  # the last layer whose output flows on
    attention_input: KeyedLayer | None = None
    value: KeyedLayer | None = None
    for layer in layers:
        if layer.family == "recurrent":
            stream = None
            continue
        if layer.role == "q_proj":
            attention_input = stream
        if layer.role in ("q_proj", "k_proj", "v_proj"):
            source = attention_input
        elif layer.role == "out_proj":
            source = value
        else:
            source = stream
        if source is not None and source.n_out == layer.n_in:
            pairs.append((source, layer))
        if layer.role == "v_proj":
            value = layer
        elif layer.role not in ("q_proj", "k_proj"):
            stream = layer
    return pairs


def pair_interface(first: KeyedLayer, second: KeyedLayer) -> np.ndarray:
    """For each stored column ``j`` of ``second``, the stored row of ``first`` it pairs with
    (descriptor cosine, Sinkhorn, Hungarian)."""
    rows = descriptors(balanced(first.weight), 0)
    cols = descriptors(balanced(second.weight), 1)
    return hungarian(sinkhorn(cols @ rows.T))


def data_free_key(stolen: StolenModel, gain: float = 1.0) -> KeyEstimate:
    """Stages 1 and 2: the key guess made from the stored weights only, balanced to the RMS
    level ``gain/sqrt(n_in)``; ``notes`` say which input permutations stage 2 could not pair
    (they stay at the identity)."""
    layers = keyed_layers(stolen.keyed.model)
    key = KeyEstimate.null(stolen.perm_sizes, stolen.scale_sizes)
    balance_scales(layers, key, gain)
    pairs = interfaces(layers)
    for first, second in pairs:
        out, inp = key.side(first.ops, "out"), key.side(second.ops, "in")
        if inp is None:
            continue
        pairing = pair_interface(first, second)
        # hidden unit h = the output key's index; stored row r leaves as h where out_perm[h] = r
        row_to_hidden = np.argsort(out[0]) if out is not None else np.arange(first.n_out)
        key.set_side(second.ops, "in", row_to_hidden[pairing], inp[1])
    paired = {second.name for _, second in pairs}
    recurrent = [layer.name for layer in layers if layer.family == "recurrent"]
    unpaired = [
        layer.name
        for layer in layers[1:]
        if layer.family != "recurrent"
        and layer.name not in paired
        and layer.ops.in_perm_slot is not None
    ]
    if recurrent:
        key.notes.append(
            "A3 stage 2 does not model LSTM/GRU matrices (gate-structured rows): scales only, "
            "permutations left at the null key: " + ", ".join(recurrent)
        )
    if unpaired:
        key.notes.append(
            "A3 stage 2 found no feeding layer of the same width: input permutation left at the "
            "null key: " + ", ".join(unpaired)
        )
    return key


def attack_statistics(
    stolen: StolenModel,
    task: Task,
    budget: float,
    sweep: SweepConfig,
    seeds: Sequence[int],
) -> AttackOutcome:
    """A3: the data-free key, then fine-tuning from it on the budget; the balanced weights are
    tried at each init gain of the sweep (``None`` counts as 1), and the best counts per seed."""
    gains = sorted({1.0 if g is None else g for g in sweep.init_gains})
    estimates = {gain: data_free_key(stolen, gain) for gain in gains}
    keys = {gain: stolen.key(est.perms, est.scales) for gain, est in estimates.items()}

    def run(gain: float) -> list[Score]:
        key = keys[gain]
        return finetune_from_key(stolen, task, budget, sweep, seeds, lambda seed: key)

    scores = best_over_gains(run, gains, best_score)
    variant = "data-free statistics + fine-tune"
    outcome = AttackOutcome.from_scores("A3", variant, budget, seeds, scores)
    outcome.recovered_keys = [keys[gains[0]]]  # the permutations do not depend on the gain
    outcome.notes = list(estimates[gains[0]].notes)
    return outcome
