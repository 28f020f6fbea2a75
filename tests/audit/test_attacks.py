"""The audit's attacks: the Gumbel-Sinkhorn/Hungarian key learner recovers a permutation where
nothing hides it, its relaxed model is exact at the true key, the scoring detects a recovered
key, and the reduced audit (A0-A5 on the MLP at 1 %) meets the gate on the default lock."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from tests.audit.helpers import set_true_key
from typer.testing import CliRunner

from skprotect_pytorch import audit as audit_pkg
from skprotect_pytorch.audit import AuditConfig, flushes_denormals, run_audit
from skprotect_pytorch.audit.attacks import (
    LOG_FLOOR,
    RelaxedKey,
    StolenModel,
    best_over_gains,
    fresh_model,
    harden,
    learn_key,
    log_sinkhorn,
    permutation_recovery,
    relaxed_model,
    weight_cosines,
)
from skprotect_pytorch.audit.constants import artifact_constants
from skprotect_pytorch.audit.data import make_tabular_task
from skprotect_pytorch.audit.models import SweepConfig, TabularMLP, batches
from skprotect_pytorch.audit.report import AuditReport, AuditRow
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import InvalidArgumentError, StateError
from skprotect_pytorch.lock import lock_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _locked_mlp(seed: int = 0):
    torch.manual_seed(seed)
    model = TabularMLP(12, 4, hidden=16).eval()
    locked = lock_model(
        model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(seed + 1)
    )
    return model, locked


def test_harden_returns_the_permutation_of_a_one_hot_score():
    p = np.random.default_rng(0).permutation(9)
    logits = torch.zeros(9, 9)
    logits[torch.from_numpy(p), torch.arange(9)] = 1.0  # S[p[j], j]: index j gathers p[j]
    assert np.array_equal(harden(logits), p)


def _plain_log_sinkhorn(log_alpha: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """The textbook log-domain Sinkhorn, ``exp`` underflowing to 0 where it does."""
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()


@pytest.mark.parametrize("spread", [1.0, 20.0, 2000.0])
def test_log_sinkhorn_matches_the_textbook_one_but_never_underflows(spread):
    """The floor moves no entry by more than exp(LOG_FLOOR) and no gradient by more than
    rounding, at spreads from none to the thousands an annealed temperature gives."""
    base = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)) * spread
    weight = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    results = []
    for sinkhorn in (log_sinkhorn, _plain_log_sinkhorn):
        logits = base.clone().requires_grad_(True)
        out = sinkhorn(logits)
        (out * weight).sum().backward()
        results.append((out.detach(), logits.grad))
    (out, grad), (plain_out, plain_grad) = results
    assert torch.allclose(out, plain_out, rtol=0, atol=2 * math.exp(LOG_FLOOR))
    assert torch.allclose(grad, plain_grad, rtol=1e-4, atol=1e-5)
    assert out.min() >= math.exp(LOG_FLOOR) * 0.99  # no denormal, no zero
    assert torch.allclose(out.sum(-2), torch.ones(3, 32), atol=1e-5)  # it ends on columns
    if spread > 100:
        assert plain_out.min() == 0  # the case the floor is for: plain exp underflows


@pytest.mark.parametrize("scaled", [False, True])
def test_key_learning_recovers_the_permutation_of_an_unmixed_layer(scaled):
    """Without a mixing Q the stored weight is a keyed monomial of the true one, and A2's learner
    finds the permutation exactly: the attack works where the lock is weak."""
    n_in, n_out = 16, 8
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    weight = torch.randn(n_out, n_in, generator=gen)
    perm = rng.permutation(n_in)
    scale = np.ones(n_in)
    if scaled:
        scale = np.exp2(rng.uniform(-1, 1, n_in))
    scale_t = torch.from_numpy(scale).float()
    stored = weight[:, torch.from_numpy(perm)] / scale_t  # the gather+mul key undoes both
    x = torch.randn(1024, n_in, generator=gen)
    y = x @ weight.T

    torch.manual_seed(0)
    key = RelaxedKey([n_in], [n_in])

    def forward(inputs):
        return ((inputs @ key.soft_perm(0)) * key.scales[0]) @ stored.T

    learn_key(forward, key, x, y, lr=0.05, epochs=20, batch_size=64, seed=0, loss="mse")
    assert (key.hard_perms()[0] == perm).mean() == 1.0
    if scaled:
        np.testing.assert_allclose(key.hard_scales()[0], scale, rtol=0.05)


def test_a_drawn_step_batches_equal_slots_and_matches_slot_by_slot():
    """``RelaxedKey.draw`` runs one Sinkhorn per slot size; without noise each slot's matrix
    equals the one computed alone, gradients reach every slot, and ``forget`` ends the step."""
    torch.manual_seed(0)
    key = RelaxedKey([8, 5, 8, 8], [])
    key.anneal(0.5)
    key.eval()  # no Gumbel noise: the batched and the single Sinkhorn must agree
    alone = [key.soft_perm(s) for s in range(4)]
    key.draw()
    assert sorted(len(v) for v in key._by_size.values()) == [1, 3]
    for slot in range(4):
        torch.testing.assert_close(key.soft_perm(slot), alone[slot])
    sum(key.soft_perm(s)[0, 1] for s in range(4)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in key.logits)
    key.train()
    key.draw()
    noisy = key.soft_perm(2)
    assert key.soft_perm(2) is noisy  # one draw per step, however often a slot is read
    torch.testing.assert_close(noisy.sum(0), torch.ones(8), rtol=1e-3, atol=1e-3)
    key.forget()
    assert key.soft_perm(2) is not noisy


def test_relaxed_model_is_exact_at_the_true_key():
    _, locked = _locked_mlp()
    stolen = StolenModel.from_locked(locked)
    net, key = relaxed_model(stolen)
    set_true_key(key, locked)
    key.tau = 1.0
    x = torch.randn(64, 12)
    true_key = torch.from_numpy(locked.layout.static_key())
    torch.testing.assert_close(net(x), stolen.keyed(x, true_key), rtol=1e-4, atol=1e-4)
    hard = stolen.key(key.hard_perms(), key.hard_scales())
    torch.testing.assert_close(hard, true_key)


def test_scoring_detects_a_recovered_key_and_not_a_null_key():
    model, locked = _locked_mlp()
    stolen = StolenModel.from_locked(locked)
    true_key = torch.from_numpy(locked.layout.static_key())
    recovered, chance = permutation_recovery(stolen, true_key, locked.layout.perms)
    assert recovered == 1.0 and chance == pytest.approx(6 / (12 + 16 * 4 + 4))
    assert weight_cosines(stolen, true_key, model)["max_cos"] == pytest.approx(1.0, abs=1e-5)
    assert weight_cosines(stolen, true_key, model)["cos_excess"] > 0.3
    null = weight_cosines(stolen, stolen.null_key(), model)
    assert null["cos_excess"] < 0.1
    # The floor from a twin network: the victim's own weights as the "independent" guess leave
    # no excess even for the true key; an unrelated random network leaves the true key's.
    assert weight_cosines(stolen, true_key, model, twin=model)["cos_excess"] == pytest.approx(
        0.0, abs=1e-5
    )
    other, _ = _locked_mlp(seed=5)
    assert weight_cosines(stolen, true_key, model, twin=other)["cos_excess"] > 0.3


def test_the_stolen_eager_weights_are_the_numbers_in_the_exported_files(tmp_path):
    """Attacking the eager locked module is attacking the files: every locked parameter is a
    constant of the frozen TorchScript and of the ONNX export, bit for bit (a bias may be
    stored as the column the channel-first linear adds, so shapes are compared flattened)."""
    _, locked = _locked_mlp()
    key = torch.from_numpy(locked.layout.static_key())
    x = torch.randn(2, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(locked.keyed.eval(), (x, key)))
        frozen.save(str(tmp_path / "m.pt"))
        torch.onnx.export(locked.keyed.eval(), (x, key), str(tmp_path / "m.onnx"), dynamo=False)
    params = [p.detach().numpy() for p in StolenModel.from_locked(locked).keyed.parameters()]
    assert len(params) == 6
    for name in ("m.pt", "m.onnx"):
        consts = list(artifact_constants(tmp_path / name).values())
        for p in params:
            assert any(c.size == p.size and np.array_equal(c.ravel(), p.ravel()) for c in consts), (
                name
            )


def test_reduced_task_gives_one_percent_a_meaningful_size():
    task = make_tabular_task()
    assert len(task.y_train) >= 20_000
    _x, y = task.budget(1, 0)
    assert len(y) == 200 and len(torch.unique(y)) == task.n_classes
    assert torch.equal(task.budget(1, 0)[1], y)  # seeded


def test_from_scratch_learners_try_every_init_gain():
    torch.manual_seed(0)
    default = fresh_model(TabularMLP)
    torch.manual_seed(0)
    scaled = fresh_model(TabularMLP, 2.0)
    for (name, d), (_, g) in zip(
        default.named_parameters(), scaled.named_parameters(), strict=True
    ):
        if d.dim() >= 2:  # Gaussian weights of RMS gain / sqrt(fan_in)
            rms = float(g.pow(2).mean().sqrt())
            assert rms == pytest.approx(2.0 / d.shape[1] ** 0.5, rel=0.1), name
        else:
            assert torch.equal(g, d), name  # biases keep the layers' own reset values
    sweep = SweepConfig(init_gains=(None, 1.0, 2.0))
    runs = {None: [0.2, 0.5], 1.0: [0.4, 0.1], 2.0: [0.3, 0.3]}
    assert best_over_gains(runs.__getitem__, sweep.init_gains, max) == [0.4, 0.5]  # per seed


def test_report_verdicts_and_outputs():
    rows = [
        AuditRow("A0", "null key", None, 0.11, [0.11], 0.10).judge(),
        AuditRow("A1", "fine-tune", 1, 0.52, [0.52], 0.50).judge(),
        AuditRow("A2", "key", 1, 0.2, [0.2], 0.5, 0.2, 0.01, 0.9, 0.6, 0.5).judge(),
    ]
    assert rows[0].passed and not rows[1].passed and not rows[2].passed
    assert len(rows[2].reasons) == 2
    # A4 is also compared with its own procedure run without the stolen files
    above_control = AuditRow("A4", "weight", 1, 0.55, [0.55], 0.50, control=0.53).judge()
    within_control = AuditRow("A4", "weight", 1, 0.55, [0.55], 0.50, control=0.545).judge()
    assert above_control.reasons == ["accuracy 0.5500 > its no-files control 0.5300 + 0.01"]
    assert within_control.passed
    report = AuditReport({}, "m", 0.9, 0.1, {"1": 0.5}, {"1": [0.5]}, rows, ["A3"])
    assert not report.passed
    data = json.loads(report.to_json())
    assert data["passed"] is False and data["rows"][1]["reasons"]
    assert "FAIL" in report.to_markdown() and "Not run: A3" in report.to_markdown()


@pytest.mark.parametrize(
    "row",
    [
        AuditRow("A1", "fine-tune", 1, 0.2, [0.2], math.nan),  # B(x) of an empty baseline cell
        AuditRow("A0", "null key", None, math.nan, [math.nan], 0.1),
        AuditRow("A2", "key", 1, 0.2, [0.2], 0.5, math.nan, 0.01),
        AuditRow("A3", "stats", 1, 0.2, [0.2], 0.5, cos_excess=math.nan),
    ],
)
def test_a_nan_in_a_row_fails_it_instead_of_passing_every_comparison(row: AuditRow) -> None:
    assert not row.judge().passed and len(row.reasons) == 1


def test_cli_audit_writes_reports_and_exits_with_the_verdict(tmp_path, monkeypatch):
    seen = {}

    def fake_run_audit(config, log=print):
        seen["config"] = config
        row = AuditRow("A0", "null key", None, 0.1, [0.1], 0.1).judge()
        return AuditReport({}, "m", 0.9, 0.1, {}, {}, [row], [])

    monkeypatch.setattr(audit_pkg, "run_audit", fake_run_audit)
    out_json, out_md = tmp_path / "a.json", tmp_path / "a.md"
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--quick",
            "--budgets",
            "1,5",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
            "--cells",
            str(tmp_path / "cells"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["config"].budgets == (1.0, 5.0) and seen["config"].quick
    assert seen["config"].cells == tmp_path / "cells" and not seen["config"].stored_only
    assert json.loads(out_json.read_text())["passed"] is True
    assert "| A0 | null key |" in out_md.read_text()
    bad = CliRunner().invoke(app, ["audit", "--budgets", "0,x"])
    assert bad.exit_code == 2

    def unwritable(config, log=print):
        raise StateError("Cannot use /x for the audit's cells (Read-only file system); ...")

    monkeypatch.setattr(audit_pkg, "run_audit", unwritable)
    refused = CliRunner().invoke(app, ["audit", "--quick", "--cells", "/x", "--stored-only"])
    assert refused.exit_code == 2 and "error: Cannot use /x" in refused.output


def test_cli_audit_stored_only_on_an_empty_folder_says_what_to_do(tmp_path):
    result = CliRunner().invoke(app, ["audit", "--cells", str(tmp_path), "--stored-only"])
    assert result.exit_code == 2
    assert "No cells for these settings" in result.output and "none for this model" in result.output


@pytest.mark.parametrize("before", [False, True])
def test_run_audit_flushes_denormals_while_it_runs_and_restores_the_flag(monkeypatch, before):
    """Flushed for the run (A2's tiny products), and the caller's flag is back afterwards."""
    during = []
    monkeypatch.setattr(audit_pkg, "_run", lambda *args: during.append(flushes_denormals()))
    torch.set_flush_denormal(before)
    try:
        assert flushes_denormals() is before
        run_audit(AuditConfig(), log=lambda line: None)
        assert during == [True]
        assert flushes_denormals() is before
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.slow
def test_reduced_audit_meets_the_gate():
    """CI audit: A0-A5 on the locked MLP at 1 %, quick sweep; A5 is report-only."""
    report = run_audit(AuditConfig(budgets=(1,), quick=True, seeds=1), log=lambda line: None)
    assert report.full_accuracy > 0.85  # the victim is good and the true key restores it
    baseline = report.baselines["1"]
    assert baseline > report.chance + 0.2  # 1 % is a meaningful budget
    by_attack = {}
    for row in report.rows:
        by_attack.setdefault(row.attack, []).append(row)
    counts = {attack: len(rows) for attack, rows in by_attack.items()}
    assert counts == {"A0": 4, "A1": 2, "A2": 2, "A3": 1, "A4": 2, "A5": 1}
    for row in by_attack["A0"]:
        assert row.accuracy <= report.chance + 0.02, row
    gated = by_attack["A1"] + by_attack["A2"] + by_attack["A3"] + by_attack["A4"]
    for row in gated:
        assert row.accuracy <= baseline + 0.01, row
    for row in by_attack["A0"] + gated:
        if row.attack != "A1":  # A1 recovers no key
            assert row.perm_recovered <= 5 * row.perm_chance, row
            assert row.cos_excess <= 0.1, row
    (a5,) = by_attack["A5"]
    assert a5.passed and a5.perm_recovered is not None  # scored, never gated
    assert report.passed, report.to_markdown()


def test_training_batches_never_leave_one_sample_alone() -> None:
    def sizes(n: int, size: int) -> list[int]:
        return [s.stop - s.start for s in batches(n, size)]

    assert sizes(65, 64) == [65]  # BatchNorm cannot train on a batch of one
    assert sizes(129, 64) == [64, 65]
    assert sizes(66, 64) == [64, 2] and sizes(128, 64) == [64, 64] and sizes(1, 64) == [1]
    assert sizes(200, 64) == [64, 64, 64, 8]  # the suite's budgets are cut as before


@pytest.mark.parametrize(
    ("config", "log", "says"),
    [
        ("mlp", print, "run_audit takes an AuditConfig, e.g. AuditConfig(model='mlp'"),
        ({"model": "mlp"}, print, "but got dict"),
        (None, None, "log must be a callable taking one line"),  # called after the victim trains
    ],
)
def test_run_audit_refuses_what_is_not_a_config_or_a_log(config, log, says, monkeypatch) -> None:
    """An AttributeError ('str' object has no attribute 'threads') before; a None log failed
    only once the victim and its twin were trained."""
    monkeypatch.setattr(audit_pkg, "_run", lambda *a: pytest.fail("the audit ran"))
    with pytest.raises(InvalidArgumentError, match=re.escape(says)):
        run_audit(config, log=log)
