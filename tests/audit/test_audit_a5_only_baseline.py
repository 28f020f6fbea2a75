"""A run of A5 alone computes no baseline B(x): A5 is judged against fine-tuning the public
base, and B(x), as costly as A1 (the sweep at every init gain and seed), was trained for no
row."""

from __future__ import annotations

from tests.audit.helpers import Net, arrays

import skprotect_pytorch.audit as audit
from skprotect_pytorch.audit import AuditConfig, model_spec, run_audit, task_from_arrays
from skprotect_pytorch.audit.models import SweepConfig, train_model


def test_an_a5_only_run_trains_no_baseline(monkeypatch, one_thread):
    baseline = audit.baseline_from_scratch
    calls: list[float] = []

    def counted(make_model, task, budget, *args):
        calls.append(budget)
        return baseline(make_model, task, budget, *args)

    monkeypatch.setattr(audit, "baseline_from_scratch", counted)
    task = task_from_arrays(*arrays())
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=2, seed=0)
    spec = model_spec("net", Net, task, victim=net, epochs=1)
    sweep = SweepConfig(lrs=(3e-3,), epochs=(1,), init_gains=(None,))
    config = AuditConfig(model=spec, attacks=("A5",), budgets=(50,), seeds=1, sweep=sweep)
    report = run_audit(config, log=lambda line: None)
    assert calls == [] and report.baselines == {} and not report.not_run
    assert [row.attack for row in report.rows] == ["A5"]
    config = AuditConfig(model=spec, attacks=("A1", "A5"), budgets=(50,), seeds=1, sweep=sweep)
    run_audit(config, log=lambda line: None)
    assert calls == [50.0]  # a row judged against B(x) still gets it
