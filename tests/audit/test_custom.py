"""Auditing a model of your own: your data, your architecture, your trained model.

The audit takes the model you give as the victim (not a retrained one), never modifies it,
keeps its cells apart from other data and models, fails gate 4 on tensors left in plaintext,
and refuses bad input with a message that says what to fix.
"""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.audit import (
    AuditConfig,
    AuditReport,
    load_spec,
    model_spec,
    run_audit,
    task_from_arrays,
)
from skprotect_pytorch.audit.models import SweepConfig, accuracy, train_model
from skprotect_pytorch.audit.suite import SUITE
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import InvalidArgumentError

TINY_SWEEP = SweepConfig(lrs=(3e-3,), epochs=(5,), init_gains=(None,))


def arrays(seed: int = 0) -> tuple[np.ndarray, ...]:
    """A 4-class tabular task: 1,200 training and 300 test rows."""
    x, y = make_classification(
        n_samples=1500, n_features=12, n_informative=8, n_classes=4, random_state=seed
    )
    x = x.astype(np.float32)
    return x[:1200], y[:1200], x[1200:], y[1200:]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ScaledNet(Net):
    """Net with a learned input scale held as a bare parameter: no lockable layer owns it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.scale)


@pytest.fixture(scope="module")
def task():
    return task_from_arrays(*arrays())


@pytest.fixture(scope="module")
def trained(task) -> nn.Module:
    torch.manual_seed(3)
    return train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=15, seed=3)


def test_the_audit_attacks_the_given_model_and_leaves_it_as_it_was(
    task, trained, one_thread
) -> None:
    trained.train()  # a mode the audit must not change
    before = copy.deepcopy(trained.state_dict())
    spec = model_spec("net", Net, task, victim=trained, epochs=5, lr=3e-3)
    config = AuditConfig(model=spec, attacks=("A0", "A1"), budgets=(10,), sweep=TINY_SWEEP, seeds=1)
    report = run_audit(config, log=lambda line: None)

    own = accuracy(copy.deepcopy(trained).eval(), task.x_test, task.y_test)
    assert own > 0.6 > task.chance + 0.2
    # the victim is the model given: with the key, its accuracy to within one test sample
    assert abs(report.full_accuracy - own) <= 1 / len(task.y_test)
    assert trained.training
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())
    a0 = [r for r in report.rows if r.attack == "A0"]
    assert {r.variant for r in a0} >= {"null key", "zero key", "random key"}
    assert all(r.accuracy < own - 0.25 for r in a0)  # garbage without the key
    assert sorted(r.variant for r in report.rows if r.attack == "A1") == [
        "fine-tune, null key",
        "fine-tune, random key",
    ]
    assert report.settings["target"] == spec.fingerprint
    assert report.model == (
        "net (Net, 1,604 parameters; your data: 1,200 train / 300 test, 4 classes)"
    )
    assert not report.plaintext_weights and len(report.stored_weights) == 3
    assert report.test_samples == 300 and "the test split has 300 samples" in report.caveats[0]
    assert f"**caveat**: {report.caveats[0]}" in report.to_markdown()

    constant = copy.deepcopy(trained)  # a victim no training would give: always class 2
    with torch.no_grad():
        constant.head.weight.zero_()
        constant.head.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    spec = model_spec("net", Net, task, victim=constant, epochs=2)
    report = run_audit(AuditConfig(model=spec, attacks=("A0",)), log=lambda line: None)
    assert report.full_accuracy == int((task.y_test == 2).sum()) / len(task.y_test)


def test_cells_are_kept_apart_per_data_and_model(task, trained, tmp_path, one_thread) -> None:
    def a0(spec):
        config = AuditConfig(model=spec, attacks=("A0",), cells=tmp_path, sweep=TINY_SWEEP)
        return run_audit(config, log=lambda line: None).cells

    spec = model_spec("net", Net, task, victim=trained, epochs=3)
    first, again = a0(spec), a0(spec)
    assert first["computed"] > 0 and again["computed"] == 0 and again["reused"] > 0
    x, y, xs, ys = arrays()
    other_data = model_spec("net", Net, task_from_arrays(x, y[::-1].copy(), xs, ys), epochs=3)
    retrained = model_spec("net", Net, task, epochs=3)  # the audit trains the victim
    folders = {first["folder"], a0(other_data)["folder"], a0(retrained)["folder"]}
    assert len(folders) == 3

    # the same tensors, another activation or forward: another model, not the cells of Net's
    # (the fingerprint held the tensor shapes only: the Tanh run reused the ReLU victim)
    def tanh() -> nn.Module:
        return nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 4))

    def relu() -> nn.Module:
        return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))

    class Skip(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x) + self.body[0](x))

    prints = {model_spec("net", f, task, epochs=3).fingerprint for f in (Net, Skip, tanh, relu)}
    assert len(prints) == 4


def test_a_weight_outside_every_lockable_layer_fails_gate_4(task, one_thread) -> None:
    torch.manual_seed(0)
    victim = train_model(ScaledNet(), task.x_train, task.y_train, lr=3e-3, epochs=3)
    spec = model_spec("scaled", ScaledNet, task, victim=victim, epochs=3)
    report = run_audit(AuditConfig(model=spec, attacks=("A0",)), log=lambda line: None)
    assert report.plaintext_weights == [
        {
            "name": "scale",
            "shape": (1, 12),
            "reason": "ScaledNet is not a layer type the lock supports",
        }
    ]
    assert not report.passed
    assert "Gate 4, **FAIL**: 1 weight tensor(s) stored in plaintext" in report.to_markdown()


MIX = torch.randn(12, 12, generator=torch.Generator().manual_seed(0))


class MixesInputs(Net):
    """Net that first mixes its inputs with a global matrix, which no export keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x @ MIX)


def test_a_matrix_read_outside_the_model_fails_gate_4(task, one_thread) -> None:
    """The audit locked the model without running it, so its gate 4 listed nothing: the
    protector's first run lists such a tensor, and every export stores it as it is."""
    torch.manual_seed(0)
    victim = train_model(MixesInputs(), task.x_train, task.y_train, lr=3e-3, epochs=3)
    spec = model_spec("mixes", MixesInputs, task, victim=victim, epochs=3)
    report = run_audit(AuditConfig(model=spec, attacks=("A0",)), log=lambda line: None)
    assert [(w["name"], w["shape"]) for w in report.plaintext_weights] == [
        (f"{__name__}.MIX", (12, 12))
    ]
    assert "Gate 4, **FAIL**: 1 weight tensor(s) stored in plaintext" in report.to_markdown()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_train": np.zeros(1200, dtype=np.float32)}, "must hold integer class indices"),
        ({"y_train": np.zeros(1100, dtype=np.int64)}, r"one class index per sample \(1200"),
        ({"y_test": np.full(300, 7)}, r"labels must lie in \[0, 4\), but range from 0 to 7"),
        ({"x_test": np.zeros((300, 11), np.float32)}, "the same sample shape and kind"),
        ({"x_train": np.full((1200, 12), np.nan, np.float32)}, "NaN or infinite"),
        ({"x_train": [[0.0] * 12] * 1200}, "must be a numpy array or a torch tensor, but got list"),
        ({"n_classes": 1}, "n_classes must be an integer ≥ 2"),
    ],
)
def test_bad_data_is_refused_with_what_to_fix(change: dict, message: str) -> None:
    x, y, xs, ys = arrays()
    given = {"x_train": x, "y_train": y, "x_test": xs, "y_test": ys, "n_classes": 4, **change}
    with pytest.raises(InvalidArgumentError, match=message):
        task_from_arrays(**given)


def test_numpy_class_counts_are_taken_as_python_ones() -> None:
    """``n_classes=y.max() + 1`` (a numpy integer) was refused as not an integer."""
    x, y, xs, ys = arrays()
    task = task_from_arrays(x, y, xs, ys, n_classes=np.int64(y.max()) + 1)
    assert task.n_classes == 4 and type(task.n_classes) is int


def test_a_report_on_a_one_class_test_split_has_its_caveat() -> None:
    """A test split of one class has no spread: the caveat divided by zero."""
    report = AuditReport({}, "m", 0.9, 1.0, {}, {}, [], [], test_samples=300)
    assert "with probability 0.0 %" in report.caveats[0] and report.to_json()


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_bad_specs_are_refused_with_what_to_fix(task, trained) -> None:
    with pytest.raises(InvalidArgumentError, match="factory\\(\\) must build the victim's"):
        model_spec("net", Wide, task, victim=trained)
    with pytest.raises(InvalidArgumentError, match=r"logits of shape \(2, 4\).*\(2, 3\)"):
        model_spec("three", lambda: nn.Linear(12, 3), task)
    with pytest.raises(InvalidArgumentError, match="fails on two test samples"):
        model_spec("bad", lambda: nn.Linear(5, 4), task)
    with pytest.raises(InvalidArgumentError, match="victim holds tensors on meta: the audit"):
        model_spec("net", Net, task, victim=Net().to("meta"))  # as a GPU model would be refused
    with pytest.raises(InvalidArgumentError, match="lr must be a positive number"):
        model_spec("net", Net, task, lr=0)
    with pytest.raises(InvalidArgumentError, match="task must be a Task"):
        model_spec("net", Net, arrays())
    for name in ("../escape", "nets/mine", ".", ".."):  # cells were written outside the folder
        with pytest.raises(InvalidArgumentError, match="must be one folder name"):
            model_spec(name, Net, task)
    x_train, y_train, x_test, y_test = arrays()
    order = np.argsort(y_test, kind="stable")  # sorted by label: the last 10 are one class
    one_class = task_from_arrays(x_train, y_train, x_test[order][-10:], y_test[order][-10:])
    with pytest.raises(InvalidArgumentError, match="test split holds only class 3: chance"):
        model_spec("net", Net, one_class)  # the report's caveat divided by zero at the end
    # 3 training samples, 4 classes: numpy's error
    small = task_from_arrays(x_train[:3], y_train[:3], x_test, y_test, n_classes=4)
    with pytest.raises(InvalidArgumentError, match="training split has 3 samples, fewer than"):
        model_spec("net", Net, small)  # came from run_audit, after training the victim
    spec = model_spec("net", Net, task, victim=trained)
    with pytest.raises(InvalidArgumentError, match=r"leave AuditConfig\.data_seed at 0"):
        run_audit(AuditConfig(model=spec, attacks=("A0",), data_seed=1), log=lambda line: None)
    with pytest.raises(InvalidArgumentError, match="must be the name of a reference model"):
        AuditConfig(model=Net()).resolved()


SPEC_FILE = """
import numpy as np
from sklearn.datasets import make_classification
from torch import nn
from skprotect_pytorch.audit import model_spec, task_from_arrays

x, y = make_classification(n_samples=600, n_features=6, n_classes=3, n_informative=4,
                           random_state=1)
x = x.astype(np.float32)
task = task_from_arrays(x[:500], y[:500], x[500:], y[500:])

def build():
    return model_spec("tiny", lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(),
                      nn.Linear(16, 3)), task, epochs=2)

not_a_spec = 42
"""


def test_load_spec_reads_files_modules_and_suite_names(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "my_audit.py").write_text(textwrap.dedent(SPEC_FILE))
    assert load_spec("gru") is SUITE["gru"]
    assert load_spec(f"{tmp_path / 'my_audit.py'}:build").name == "tiny"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_spec("my_audit:build").description.startswith("tiny (Sequential, 163 param")
    for text, message in [
        ("vgg", "neither a reference model"),
        (f"{tmp_path / 'nope.py'}:build", "does not exist"),
        ("my_audit:missing", "has no attribute 'missing'"),
        ("my_audit:not_a_spec", "must be a ReferenceSpec or a function returning one"),
        ("no_such_module_here:spec", "loading no_such_module_here failed: ModuleNotFoundError"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            load_spec(text)


def test_cli_audits_a_spec_from_a_file(tmp_path: Path, one_thread) -> None:
    path = tmp_path / "my_audit.py"
    path.write_text(textwrap.dedent(SPEC_FILE))
    result = CliRunner().invoke(app, ["audit", "--model", f"{path}:build", "--attacks", "A0"])
    assert result.exit_code in (0, 1), result.output
    assert "## Audit: tiny (Sequential, 163 parameters; your data: 500 train / 100 test" in (
        result.output
    )
    assert ("gate: **PASS**" in result.output) == (result.exit_code == 0)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('the data folder is not mounted')\n")
    result = CliRunner().invoke(app, ["audit", "--model", f"{broken}:spec"])
    assert result.exit_code == 2
    assert "loading" in result.output and "the data folder is not mounted" in result.output


def test_a_small_test_split_is_called_out_with_the_odds() -> None:
    def report(n: int | None) -> AuditReport:
        return AuditReport({}, "m", 0.9, 0.1, {}, {}, [], [], test_samples=n)

    (caveat,) = report(400).caveats  # sd 1.5 points: 2 points is 1.33 sd, 9.1 % above it
    assert "chance ± 1.5 points" in caveat and "probability 9.1 %" in caveat
    assert report(5000).caveats == [] and report(None).caveats == []


def test_a_spec_file_imports_the_packages_beside_it(tmp_path: Path, monkeypatch) -> None:
    # api.md's example: my_audit.py does `from my_project.model import ...`, run from elsewhere
    project = tmp_path / "work"
    (project / "my_project").mkdir(parents=True)
    (project / "my_project" / "__init__.py").write_text("")
    (project / "my_project" / "model.py").write_text(
        "from torch import nn\n\n"
        "def make():\n    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))\n"
    )
    spec_file = textwrap.dedent(SPEC_FILE).replace(
        "lambda: nn.Sequential(nn.Linear(6, 16), nn.ReLU(),\n"
        "                      nn.Linear(16, 3))",
        "make",
    )
    assert "make, task" in spec_file
    (project / "my_audit.py").write_text("from my_project.model import make\n" + spec_file)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the entries added go with the test
    for name in [m for m in sys.modules if m.startswith("my_project")]:
        monkeypatch.delitem(sys.modules, name)
    assert load_spec(f"{project / 'my_audit.py'}:build").name == "tiny"
    assert sys.path[0] == str(project)
    # module form: the current folder, as python -m
    monkeypatch.chdir(project)
    monkeypatch.delitem(sys.modules, "my_audit", raising=False)
    assert load_spec("my_audit:build").name == "tiny"


class BatchNormNet(nn.Module):
    """A BatchNorm between two Linears: in training it needs two samples per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(12, 32), nn.BatchNorm1d(32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.bn(self.a(x))))


def test_a_batchnorm_model_trains_on_a_budget_that_leaves_one_sample_over(task, one_thread) -> None:
    # 65 of the 1,200 training rows, in batches of 64: the learners' last batch held one sample,
    # on which BatchNorm raised (ValueError: Expected more than 1 value per channel)
    budget = 65 / 12
    assert len(task.budget(budget, 0)[1]) == 65
    spec = model_spec("bn", BatchNormNet, task, epochs=1, batch_size=109)  # 1,200 = 11 × 109 + 1
    sweep = SweepConfig(lrs=(3e-3,), epochs=(1,), init_gains=(None,), batch_size=64)
    config = AuditConfig(model=spec, attacks=("A1", "A2"), budgets=(budget,), sweep=sweep, seeds=1)
    report = run_audit(config, log=lambda line: None)
    assert {r.attack for r in report.rows} == {"A1", "A2"} and not report.not_run
    assert list(report.baselines) == [f"{budget:g}"]
