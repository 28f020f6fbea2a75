"""The attacks on every layer family the lock supports: LSTM (with and without ``proj_size``),
GRU (2 layers, bidirectional), ``nn.TransformerEncoderLayer``, bare ``nn.MultiheadAttention``
and convs with groups / transposed.  A2's relaxed model is exact at the true key and trainable;
the scoring covers every keyed matrix; A2 (frozen and joint), A3 and A4 run and say in their
notes what they did not model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.audit.helpers import set_true_key
from torch import nn

from skprotect_pytorch.audit.alignment import (
    activation_match,
    attack_alignment,
    reference_activation,
    weight_match_key,
)
from skprotect_pytorch.audit.attacks import (
    StolenModel,
    attack_key_learning,
    effective_weights,
    permutation_recovery,
    relaxed_model,
    weight_cosines,
)
from skprotect_pytorch.audit.data import Task
from skprotect_pytorch.audit.matching import keyed_layers, reference_weights
from skprotect_pytorch.audit.models import SweepConfig
from skprotect_pytorch.audit.report import AuditReport, AuditRow
from skprotect_pytorch.audit.statistics import attack_statistics, data_free_key, interfaces
from skprotect_pytorch.lock import LockedModel, lock_model
from skprotect_pytorch.lock.linear import LockedLinear

FEATURES, CLASSES, LENGTH = 6, 3, 5
TINY_SWEEP = SweepConfig(lrs=(3e-3,), epochs=(1,), batch_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


class RecurrentHead(nn.Module):
    """An LSTM/GRU averaged over time (every step of both directions counts), then a Linear."""

    def __init__(self, rnn: nn.LSTM | nn.GRU) -> None:
        super().__init__()
        self.rnn = rnn
        width = rnn.proj_size or rnn.hidden_size if isinstance(rnn, nn.LSTM) else rnn.hidden_size
        self.head = nn.Linear(width * (2 if rnn.bidirectional else 1), CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0].mean(1))


class EncoderHead(nn.Module):
    """Linear embedding, one ``nn.TransformerEncoderLayer``, mean pool, Linear."""

    def __init__(self, dim: int = FEATURES) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class BareAttention(nn.Module):
    """Only an ``nn.MultiheadAttention`` (self-attention, sequence first), its output read."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(FEATURES, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class ConvNet(nn.Module):
    """A thin conv (its taps unfolded into channels by the lock), a depthwise conv (regrouped),
    a transposed conv, then a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(FEATURES, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(16, 16, 3, padding=1, groups=16),
            nn.ReLU(),
            nn.ConvTranspose1d(16, 8, 3),
        )
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.transpose(1, 2)).mean(-1))


MODELS = {
    "lstm": lambda: RecurrentHead(nn.LSTM(FEATURES, 5, batch_first=True)),
    "lstm-proj": lambda: RecurrentHead(nn.LSTM(FEATURES, 6, batch_first=True, proj_size=4)),
    "gru-2-bidir": lambda: RecurrentHead(
        nn.GRU(FEATURES, 5, num_layers=2, bidirectional=True, batch_first=True)
    ),
    "transformer": EncoderHead,
    "mha": BareAttention,
    "conv-groups": ConvNet,
}


def _locked(name: str, seed: int = 0) -> tuple[nn.Module, LockedModel, StolenModel]:
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    locked = lock_model(
        model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(seed + 1)
    )
    return model, locked, StolenModel.from_locked(locked)


def _inputs(n: int = 4) -> torch.Tensor:
    return torch.randn(n, LENGTH, FEATURES, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", list(MODELS))
def test_relaxed_model_is_exact_at_the_true_key_and_trainable(name):
    model, locked, stolen = _locked(name)
    x = _inputs()
    true_key = torch.from_numpy(locked.layout.static_key())
    net, key = relaxed_model(stolen, train_weights=True)
    set_true_key(key, locked)
    net.eval()
    torch.testing.assert_close(net(x), stolen.keyed(x, true_key), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net(x), model(x), rtol=1e-4, atol=1e-5)
    # joint variant, from a soft key: every locked weight and every key slot gets a gradient
    with torch.no_grad():
        for logits in key.logits:
            logits.normal_()
    key.train()
    key.anneal(0.0)
    # small inputs: under a random soft key the conditioned mixing can saturate the attention
    # softmax, and a saturated softmax passes no gradient to the q/k key slots
    net(0.1 * x).square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in key.logits)


@pytest.mark.parametrize("name", list(MODELS))
def test_scoring_covers_every_keyed_matrix(name):
    """At the true key the decoded weight of every keyed matrix is the original's (recurrent
    matrices, attention projections and grouped convs included), and all of them are scored."""
    model, locked, stolen = _locked(name)
    true_key = torch.from_numpy(locked.layout.static_key())
    layers = keyed_layers(stolen.keyed.model)
    targets = reference_weights(model, layers)
    assert set(targets) == {layer.name for layer in layers}
    if name == "conv-groups":  # the unfolded conv is scored as (O, channels·taps, 1)
        assert targets["body.0"][0].shape == (16, FEATURES * 3, 1)
    for layer_name, w in effective_weights(stolen, true_key):
        np.testing.assert_allclose(w, targets[layer_name][0], atol=1e-5)
    cos = weight_cosines(stolen, true_key, model)
    assert cos["scored"] == len(layers) and cos["max_cos"] == pytest.approx(1.0, abs=1e-5)
    assert permutation_recovery(stolen, true_key, locked.layout.perms)[0] == 1.0


@pytest.mark.parametrize("name", list(MODELS))
def test_weight_matching_to_the_exact_weights_recovers_the_key(name):
    """A5's situation on every layer family: the matcher sees every keyed matrix with its
    true counterpart (no notes) and recovers most of the key (it may stop in a local optimum
    on a small square matrix)."""
    model, locked, stolen = _locked(name)
    est = weight_match_key(stolen, model)
    assert est.notes == []
    key = stolen.key(est.perms, est.scales)
    recovered, chance = permutation_recovery(stolen, key, locked.layout.perms)
    assert recovered >= 0.6 > 3 * chance


def test_data_free_statistics_notes_what_they_do_not_pair():
    _, _, lstm = _locked("lstm-proj")
    est = data_free_key(lstm)
    assert any("LSTM/GRU" in note and "rnn.layers.0.hh.0" in note for note in est.notes)
    _, _, transformer = _locked("transformer")
    pairs = {(a.name, b.name) for a, b in interfaces(keyed_layers(transformer.keyed.model))}
    attn = "encoder.self_attn"
    assert {("embed", f"{attn}.{p}_proj") for p in "qkv"} <= pairs
    assert (f"{attn}.v_proj", f"{attn}.out_proj") in pairs
    assert (f"{attn}.q_proj", f"{attn}.k_proj") not in pairs


@pytest.mark.parametrize("name", ["transformer", "mha", "lstm-proj", "gru-2-bidir"])
def test_reference_activations_line_up_with_the_locked_linears(name):
    """With the victim as reference and the true key, the reference activation that A4 aligns
    each keyed linear to is that linear's own output, row for row (attention q/k/v/out, the
    first LSTM/GRU input projection); only later recurrent input projections are unobservable,
    and activation matching notes them with the recurrent matrices."""
    model, locked, stolen = _locked(name)
    true_key = torch.from_numpy(locked.layout.static_key())
    x = _inputs()
    for layer in keyed_layers(stolen.keyed.model):
        if not isinstance(layer.module, LockedLinear):
            continue
        seen: list[torch.Tensor] = []
        handle = layer.module.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
        stolen.keyed(x, true_key)
        handle.remove()
        expected = reference_activation(model, layer, x)
        if expected is None:
            assert layer.name.endswith("layers.1.input_proj")
            continue
        torch.testing.assert_close(expected.float(), seen[0], rtol=1e-4, atol=1e-5)
    notes = activation_match(stolen, model, x, weight_match_key(stolen, model), rounds=1).notes
    recurrent = [la.name for la in keyed_layers(stolen.keyed.model) if la.family == "recurrent"]
    unobserved = [n for n in recurrent if not n.endswith("layers.0.input_proj")]
    assert notes == ([] if not unobserved else [notes[0]])
    assert all(n in notes[0] for n in unobserved)


def _sequence_task(seed: int = 0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(240, LENGTH, FEATURES, generator=gen)
    y = (x[:, -1, :CLASSES] + x[:, 0, :CLASSES]).argmax(1)
    return Task(x[:160], y[:160], x[160:], y[160:], CLASSES)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_attacks_run_and_are_scored_on_sequence_models(name):
    model, locked, stolen = _locked(name)
    task = _sequence_task()
    outcomes = [
        attack_key_learning(stolen, task, 50, TINY_SWEEP, [0], joint=joint)
        for joint in (False, True)
    ]
    outcomes.append(attack_statistics(stolen, task, 50, TINY_SWEEP, [0]))
    outcomes += attack_alignment(stolen, lambda: MODELS[name](), task, 50, TINY_SWEEP, [0])
    rows = []
    for o in outcomes:
        assert 0.0 <= o.accuracy <= 1.0 and len(o.recovered_keys) == 1
        recovered, _ = permutation_recovery(stolen, o.recovered_keys[0], locked.layout.perms)
        cos = weight_cosines(stolen, o.recovered_keys[0], model)
        assert 0.0 <= recovered <= 1.0 and cos["scored"] == len(keyed_layers(stolen.keyed.model))
        rows.append(AuditRow(o.attack, o.variant, 50, o.accuracy, o.accuracies, 0.5, notes=o.notes))
    a3 = outcomes[2]
    assert (name == "lstm") == any("LSTM/GRU" in note for note in a3.notes)
    for a4 in outcomes[3:]:  # the reference fine-tuned again, without the stolen files
        control = a4.extra["control"]
        assert len(control.accuracies) == 1 and 0.0 <= control.accuracy <= 1.0
    report = AuditReport({}, name, 1.0, 0.34, {}, {}, rows, [])
    if report.notes:
        assert "Coverage notes" in report.to_markdown()
    assert json.loads(report.to_json())["notes"] == report.notes
