"""A0 judges one random key, and on a two-class task one draw says little: an own-model audit of
a tiny binary MLP saw one random key at 73.75 %, and of 200 random keys 28-49 landed above
chance + 2 (untrained networks of the same shapes: 22-42). The report now scores 50 random keys
and 50 untrained networks beside A0 (report only) and says when either lands above A0's bound."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.audit import AuditConfig, run_audit, task_from_arrays
from skprotect_pytorch.audit.attacks import WRONG_KEY_DRAWS, StolenModel, wrong_key_spread
from skprotect_pytorch.audit.custom import model_spec
from skprotect_pytorch.audit.report import AuditReport, AuditRow
from skprotect_pytorch.errors import StateError

KEYS, NETS = "random keys", "untrained networks"


def _report(keys: list[float], nets: list[float]) -> AuditReport:
    row = AuditRow("A0", "random key", None, 0.5, [0.5], 0.5).judge()
    spread = {KEYS: keys, NETS: nets}
    return AuditReport(
        {}, "m", 0.95, 0.5, {}, {}, [row], [], test_samples=2500, wrong_key_spread=spread
    )


def test_a_spread_below_the_bound_has_its_lines_and_no_caveat() -> None:
    report = _report([0.50, 0.51, 0.52], [0.49, 0.50, 0.51])
    assert report.caveats == []
    text = report.to_markdown()
    assert (
        "- wrong-key spread, random keys: mean 51.00 %, sd 0.82, max 52.00 %; 0 of 3 above "
        "A0's bound (52.00 %)\n" in text
    )
    assert "- wrong-key spread, untrained networks: mean 50.00 %, sd 0.82, max 51.00 %" in text
    assert json.loads(report.to_json())["wrong_key_spread"] == {
        KEYS: [0.50, 0.51, 0.52],
        NETS: [0.49, 0.50, 0.51],
    }


def test_untrained_networks_above_the_bound_make_one_draw_a_noisy_test() -> None:
    report = _report([0.50, 0.50, 0.50, 0.50], [0.40, 0.50, 0.55, 0.55])
    assert report.caveats == [
        "2 of 4 untrained networks of this architecture (what a thief without the files has) "
        "score above A0's bound (52.00 %): one draw is a noisy test of it here (their sd 6.12 "
        "points; the test split's sampling alone: 1.00); judge A0 by the wrong-key spread: "
        "random keys above the bound no more often than untrained networks"
    ]


def test_random_keys_above_the_bound_more_often_than_untrained_networks_are_named() -> None:
    report = _report([0.50, 0.60, 0.80, 0.50], [0.50, 0.50, 0.50, 0.53])
    keys_caveat = (
        "2 of 4 random keys score above A0's bound (52.00 %), the best 80.00 %, against 1 of 4 "
        "untrained networks (sd 12.25 against 1.30 points): wrong keys keep more of the trained "
        "model's dependence on its input than a thief without the files has; measured for the "
        "suite's Transformer, with what it tells a thief, in docs/security.md (wrong keys on "
        "the Transformer)"
    )
    assert report.caveats[1:] == [keys_caveat]
    assert report.passed  # report only: the gate judges A0's rows
    # as often as untrained networks: only the noise caveat
    assert len(_report([0.50, 0.60], [0.50, 0.60]).caveats) == 1


def test_a_report_without_a_spread_has_neither() -> None:
    report = _report([], [])
    report.wrong_key_spread = {}
    assert report.caveats == []
    assert "wrong-key spread" not in report.to_markdown()


def _binary_spec():
    """A 4-feature linear two-class task and a small MLP: where wrong keys spread widely."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4,))
    x, xt = rng.normal(size=(4000, 4)), rng.normal(size=(2000, 4))
    task = task_from_arrays(x, (x @ w > 0).astype(int), xt, (xt @ w > 0).astype(int))

    def net() -> nn.Module:
        return nn.Sequential(
            nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
        )

    return model_spec("binary", net, task, epochs=5)


@pytest.mark.usefixtures("one_thread")
def test_an_audit_of_a_binary_model_reports_the_spread_and_its_caveats() -> None:
    report = run_audit(
        AuditConfig(model=_binary_spec(), attacks=("A0",), quick=True), log=lambda _l: None
    )
    keys, nets = report.wrong_key_spread[KEYS], report.wrong_key_spread[NETS]
    assert len(keys) == len(nets) == WRONG_KEY_DRAWS
    bound = report.chance + 0.02
    above_keys, above_nets = sum(a > bound for a in keys), sum(a > bound for a in nets)
    assert above_nets > 0, nets  # untrained networks: the same on every machine
    assert max(keys) > 0.6, keys  # a random key that does much of what the model does
    expected = ["untrained networks o"] + (
        ["random keys score ab"] if above_keys > above_nets else []
    )
    assert [c.split(" ", 3)[3][:20] for c in report.caveats[: len(expected)]] == expected
    assert all(r.passed for r in report.rows)  # A0's own draw is within the bound


@pytest.mark.usefixtures("one_thread")
def test_the_spread_keeps_the_callers_torch_seed_and_scores_a0s_key() -> None:
    spec = _binary_spec()
    config = AuditConfig(model=spec, attacks=("A0",), quick=True)
    task = spec.task(0)
    stolen = StolenModel.from_locked(config.lock(spec.factory(), 1))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    spread = wrong_key_spread(stolen, spec.factory, task, draws=3)
    assert torch.equal(torch.rand(3), expected)
    assert wrong_key_spread(stolen, spec.factory, task, draws=3) == spread  # seeded draws
    from skprotect_pytorch.audit.attacks import attack_no_key

    rows = attack_no_key(stolen, task, seed=1)
    a0_random = next(r for r in rows if r.variant == "random key").accuracy
    assert spread[KEYS][1] == a0_random  # A0's draw is the spread's seed-1 key


@pytest.mark.usefixtures("one_thread")
def test_cells_stored_before_the_spread_keep_their_verdict_and_a_damaged_one_is_named(
    tmp_path,
) -> None:
    config = AuditConfig(model=_binary_spec(), attacks=("A0",), quick=True, cells=tmp_path)
    first = run_audit(config, log=lambda _l: None)
    (folder,) = tmp_path.iterdir()
    cell = folder / "A0-spread.json"
    assert cell.exists() and first.wrong_key_spread
    cell.unlink()  # a folder from before the spread existed
    stored = AuditConfig(
        model=_binary_spec(), attacks=("A0",), quick=True, cells=tmp_path, stored_only=True
    )
    old = run_audit(stored, log=lambda _l: None)
    assert old.not_run == [] and old.wrong_key_spread == {}
    assert [r.accuracy for r in old.rows] == [r.accuracy for r in first.rows]
    again = run_audit(config, log=lambda _l: None)  # a plain run computes it
    assert again.wrong_key_spread == first.wrong_key_spread
    record = json.loads(cell.read_text())
    record["value"][NETS] = record["value"][NETS][:3]
    cell.write_text(json.dumps(record))
    with pytest.raises(StateError, match=r"A0-spread\.json holds .* not 50 accuracies in"):
        run_audit(stored, log=lambda _l: None)
