"""An attack attempt whose training diverged (NaN or infinite key logits, weights or
activations) recovers nothing: the sweep point or matched layer is noted and the others count.
It stopped the whole audit in scipy's Hungarian ("matrix contains invalid numeric entries"),
after all the work before it, on inputs near 1e30 trained at a learning rate of 1e6."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tests.audit.helpers import Net, arrays

import skprotect_pytorch.audit.attacks as attacks
from skprotect_pytorch.audit import AuditConfig, model_spec, run_audit, task_from_arrays
from skprotect_pytorch.audit.alignment import activation_match, weight_match_key
from skprotect_pytorch.audit.attacks import StolenModel, attack_key_learning, harden
from skprotect_pytorch.audit.matching import NonFiniteScores, hungarian, keyed_layers
from skprotect_pytorch.audit.models import SweepConfig, train_model
from skprotect_pytorch.audit.report import AuditRow
from skprotect_pytorch.lock import lock_model


@pytest.fixture(scope="module")
def victim():
    """The task, a victim trained on it, and the victim locked as the audit locks it."""
    torch.set_num_threads(1)
    task = task_from_arrays(*arrays())
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    locked = lock_model(net, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(1))
    return task, net, locked


def test_a_non_finite_score_is_refused_by_name_not_by_scipy():
    score = np.eye(3)
    score[1, 2] = np.nan
    with pytest.raises(NonFiniteScores, match="3x3 matching score holds NaN or infinite"):
        hungarian(score)
    with pytest.raises(NonFiniteScores):
        harden(torch.from_numpy(score).float())


def test_a_key_learning_point_that_diverged_recovers_nothing_and_the_others_count(
    victim, monkeypatch
):
    """One learning rate of A2's sweep diverges (its key logits turn NaN): the seed keeps the
    other point's accuracy and key, as if that point had been the only one, and notes it."""
    task, _, locked = victim
    stolen = StolenModel.from_locked(locked)
    learn_key = attacks.learn_key

    def diverging(forward, key, *args, lr: float, **kwargs):
        learn_key(forward, key, *args, lr=lr, **kwargs)
        if lr == 10 * 1e-2:  # the sweep's lr 1e-2 times key_lr_scale
            with torch.no_grad():
                key.logits[0][0, 0] = float("nan")

    monkeypatch.setattr(attacks, "learn_key", diverging)
    sweep = SweepConfig(lrs=(1e-2, 3e-3), epochs=(2,), batch_size=64)
    both = attack_key_learning(stolen, task, 50, sweep, [0])
    alone = attack_key_learning(stolen, task, 50, SweepConfig(lrs=(3e-3,), epochs=(2,)), [0])
    assert both.accuracies == alone.accuracies
    assert len(both.recovered_keys) == 1
    torch.testing.assert_close(both.recovered_keys[0], alone.recovered_keys[0])
    assert both.notes == [
        "seed 0, lr 0.01: training diverged (NaN or infinite key or weights), counted as "
        "recovering nothing"
    ]
    assert alone.notes == []
    only = attack_key_learning(stolen, task, 50, SweepConfig(lrs=(1e-2,), epochs=(2,)), [0])
    assert only.accuracies == [0.0] and only.recovered_keys == [] and len(only.notes) == 1


def test_matching_against_a_diverged_reference_keeps_that_layers_slots_and_notes_it(victim):
    """A4/A5's weight and activation matching: the reference's middle layer holds a NaN; that
    layer keeps its slots (noted), the layers around it are still matched (here exactly: the
    reference is the victim itself)."""
    task, net, locked = victim
    stolen = StolenModel.from_locked(locked)
    reference = copy.deepcopy(net)
    with torch.no_grad():
        reference.b.weight[0, 0] = float("nan")
    exact = weight_match_key(stolen, net)
    est = weight_match_key(stolen, reference)
    assert est.notes == [
        "weight matching: NaN or infinite scores (the model matched against, or its activations, "
        "diverged), key slots left as they were: b"
    ]
    layers = {layer.name: layer.ops for layer in keyed_layers(stolen.keyed.model)}
    for slot, perm in enumerate(est.perms):
        if slot in (layers["b"].in_perm_slot, layers["b"].out_perm_slot):
            assert np.array_equal(perm, np.arange(len(perm)))  # the null key's
        else:  # layer a's input and c's output: nothing else reads them
            assert np.array_equal(perm, exact.perms[slot])
    assert all(np.isfinite(s).all() for s in est.scales)
    refined = activation_match(stolen, reference, task.x_train[:100], exact)
    assert refined.notes[-1] == (
        "activation matching: NaN or infinite scores (the model matched against, or its "
        "activations, diverged), key slots left as they were: b, c"
    )
    assert all(np.isfinite(s).all() for s in refined.scales)


def _diverging_audit(attacks: tuple[str, ...]):
    """Inputs near 1e30 and a learning rate of 1e6: every training of the audit diverges."""
    x, y, xs, ys = arrays()
    task = task_from_arrays(x, y, xs, ys)
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    with torch.no_grad():  # the same function of inputs 1e30 times larger
        net.a.weight /= 1e30
    big = task_from_arrays(*arrays(1e30))
    spec = model_spec("big", Net, big, victim=net, epochs=1)
    sweep = SweepConfig(lrs=(1e6,), epochs=(1, 2), init_gains=(None,))
    return run_audit(
        AuditConfig(model=spec, attacks=attacks, budgets=(50,), seeds=1, sweep=sweep),
        log=lambda line: None,
    )


def test_an_audit_whose_attacks_diverge_finishes_and_says_so(one_thread):
    """A2's training and A4's activations diverge; the audit reports every row and notes the
    diverged attempts, and every row, whose every attempt diverged, fails naming the seed at
    which it measured nothing."""
    report = _diverging_audit(("A2", "A4"))
    assert len(report.rows) == 4 and not report.not_run
    assert any("training diverged" in note for note in report.notes)
    assert any("activation matching: NaN or infinite scores" in note for note in report.notes)
    assert not report.passed
    for row in report.rows:
        assert row.unmeasured == ["seed 0"]
        assert "not measured at seed 0: every attempt diverged" in "; ".join(row.reasons)


def test_a4_alone_whose_every_attempt_diverged_fails_the_gate(one_thread):
    """A4 matched against references that diverged and fine-tuned at a diverging rate scored
    0 and its rows passed (0 <= B(x) + 1 point): the gate passed on an attack that measured
    nothing, where the audit had stopped in scipy before."""
    report = _diverging_audit(("A4",))
    assert [row.accuracies for row in report.rows] == [[0.0], [0.0]]
    assert not any(row.passed for row in report.rows)
    assert not report.passed


def test_a_row_with_an_unmeasured_seed_fails_the_gate():
    """Its accuracy of 0 would lower the row's mean below B(x) while the other seed found
    something (here 0.8 against 0.5): the row passed."""
    row = AuditRow("A2", "key", 1, 0.4, [0.8, 0.0], 0.5, unmeasured=["seed 1"]).judge()
    assert not row.passed
    assert row.reasons == [
        "not measured at seed 1: every attempt diverged (NaN or infinite logits; lower the "
        "sweep's learning rates, or scale the inputs, and run again)"
    ]
    assert AuditRow("A2", "key", 1, 0.4, [0.7, 0.1], 0.5).judge().passed


def test_key_learning_names_the_seeds_whose_every_point_diverged(victim, monkeypatch):
    task, _, locked = victim
    stolen = StolenModel.from_locked(locked)
    learn_key = attacks.learn_key

    def diverging(forward, key, x, y, *, seed: int, **kwargs):
        learn_key(forward, key, x, y, seed=seed, **kwargs)
        if seed == 1:
            with torch.no_grad():
                key.scales[0][0] = float("inf")

    monkeypatch.setattr(attacks, "learn_key", diverging)
    sweep = SweepConfig(lrs=(1e-2, 3e-3), epochs=(2,))
    outcome = attack_key_learning(stolen, task, 50, sweep, [0, 1])
    assert outcome.unmeasured == ["seed 1"] and outcome.accuracies[1] == 0.0
    assert outcome.accuracies[0] > 0 and len(outcome.recovered_keys) == 1
