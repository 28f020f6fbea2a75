"""What ``skprotect audit --model FILE.py:NAME`` says when your spec file fails: a file that
raised while it loaded gave one line without a line number ("loading my_audit.py failed:
KeyError: 'x_train'"), where a function ``NAME`` that raised printed its traceback; and labels
counted from 1 were told only that the model returns one logit too few."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from torch import nn
from typer.testing import CliRunner

from skprotect_pytorch.audit import task_from_arrays
from skprotect_pytorch.audit.custom import model_spec
from skprotect_pytorch.cli import app
from skprotect_pytorch.errors import InvalidArgumentError

RAISES_ON_IMPORT = """
import numpy as np

data = {"x": np.zeros(3)}
x_train = data["x_train"]  # line 5
"""


def _audit(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "--quick", "--attacks", "A0", *args])
    return result.exit_code, result.output


def test_a_file_that_raises_while_loading_shows_where(tmp_path: Path) -> None:
    spec_file = tmp_path / "my_audit.py"
    spec_file.write_text(textwrap.dedent(RAISES_ON_IMPORT))
    code, output = _audit("--model", f"{spec_file}:spec")
    assert code == 2, output
    assert f'File "{spec_file}", line 5, in <module>' in output
    assert output.rstrip().endswith(
        f"error: --model: loading {spec_file} failed: KeyError: 'x_train'"
    )


def test_a_module_your_file_imports_shows_where(tmp_path: Path) -> None:
    spec_file = tmp_path / "my_audit.py"
    spec_file.write_text("import no_such_project_xyz\n")
    code, output = _audit("--model", f"{spec_file}:spec")
    assert code == 2, output
    assert f'File "{spec_file}", line 1, in <module>' in output
    assert "ModuleNotFoundError: No module named 'no_such_project_xyz'" in output


@pytest.mark.parametrize("where", ["no_such_module_xyz", "no_such_module_xyz.sub"])
def test_a_module_not_found_itself_is_one_line(where: str) -> None:
    """Its traceback would show only importlib's frames."""
    code, output = _audit("--model", f"{where}:spec")
    assert code == 2, output
    assert output == (
        f"error: --model: loading {where} failed: ModuleNotFoundError: No module named "
        "'no_such_module_xyz'\n"
    )


def test_a_spec_error_of_skprotect_is_one_line(tmp_path: Path) -> None:
    """Its message says all: labels out of range, a model with no lockable layer."""
    spec_file = tmp_path / "my_audit.py"
    spec_file.write_text(
        "import numpy as np\n"
        "from skprotect_pytorch.audit import task_from_arrays\n"
        "task_from_arrays(np.zeros((4, 2)), np.array([0, 1, 0, -1]), np.zeros((2, 2)), "
        "np.array([0, 1]))\n"
    )
    code, output = _audit("--model", f"{spec_file}:spec")
    assert code == 2, output
    assert output == "error: --model: labels must lie in [0, 2), but range from -1 to 1.\n"


def test_labels_counted_from_one_are_named() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 3 + 1  # 1, 2, 3 for a 3-class model
    task = task_from_arrays(rng.normal(size=(40, 5)), labels, rng.normal(size=(40, 5)), labels)
    with pytest.raises(InvalidArgumentError) as info:
        model_spec("mine", lambda: nn.Linear(5, 3), task)
    assert str(info.value) == (
        "the audit scores classifiers: the model must return logits of shape (2, 4) for two "
        "samples, but returned (2, 3). The task has 4 classes (task_from_arrays: the largest "
        "label + 1 unless n_classes is given), but no training sample has label 0: labels "
        "counted from 1 must have 1 subtracted, and both splits must use the same labels."
    )


def test_integer_features_are_told_to_be_floats() -> None:
    """Features saved as int16 become int64 ids, which a Linear layer refuses."""
    rng = np.random.default_rng(0)
    x = (10 * rng.normal(size=(40, 5))).astype(np.int16)
    task = task_from_arrays(x, np.arange(40) % 3, x, np.arange(40) % 3)
    with pytest.raises(InvalidArgumentError) as info:
        model_spec("mine", lambda: nn.Linear(5, 3), task)
    assert str(info.value).startswith(
        "the model fails on two test samples of shape (2, 5) (task_from_arrays keeps integer "
        "inputs as int64 ids, for an embedding; features stored as integers must be passed as "
        "floats: x.astype(np.float32)): "
    )


@pytest.mark.parametrize("squeeze", [False, True])
def test_a_binary_classifier_of_one_logit_is_told_how_to_wrap_it(squeeze: bool) -> None:
    """Trained with BCEWithLogitsLoss: (batch, 1) or (batch,) logits."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    task = task_from_arrays(x, np.arange(40) % 2, x, np.arange(40) % 2)
    with pytest.raises(InvalidArgumentError) as info:  # new layers per call, as factory must
        model_spec("mine", lambda: nn.Sequential(nn.Linear(5, 1), *[nn.Flatten(0)][:squeeze]), task)
    assert str(info.value).endswith(
        f"but returned {(2,) if squeeze else (2, 1)}. A binary classifier of one logit z can be "
        "audited through a wrapper module returning torch.cat([-z, z], dim=1) / 2 for z of shape "
        "(batch, 1) (softmax gives sigmoid(z) back), as factory and victim."
    )
