"""Public audit arguments of a type or value the audit would misread are refused with
``InvalidArgumentError`` saying what to pass, not an ``AttributeError`` or ``TypeError`` from
inside, nor read as something else (an empty cells path as the current folder); a spec of your
own does not keep your data in memory after it is gone."""

from __future__ import annotations

import gc
import weakref
from fractions import Fraction
from pathlib import Path

import pytest
from tests.audit.helpers import Net, arrays

from skprotect_pytorch.audit import AuditConfig, load_spec, model_spec, run_audit, task_from_arrays
from skprotect_pytorch.errors import InvalidArgumentError


@pytest.mark.parametrize("text", [Path("my_audit.py"), 3, None])
def test_load_spec_refuses_what_is_not_text(text: object) -> None:
    with pytest.raises(InvalidArgumentError, match="load_spec takes text"):
        load_spec(text)  # type: ignore[arg-type]


def test_fraction_budgets_are_taken_as_numbers() -> None:
    """A ``Fraction`` is a real number: ``f"{b:g}"`` raised a TypeError on Python 3.11."""
    assert AuditConfig(budgets=(Fraction(1, 2), 5)).budgets == (0.5, 5.0)
    with pytest.raises(InvalidArgumentError, match="twice"):
        AuditConfig(budgets=(Fraction(1, 2), 0.5))


def test_an_empty_cells_path_is_refused() -> None:
    """``Path("")`` is ``.``: the cells went into the current folder (the CLI refuses it)."""
    with pytest.raises(InvalidArgumentError, match="empty path ''"):
        AuditConfig(cells="")


def test_the_data_of_a_spec_is_not_kept_after_it(one_thread) -> None:
    task = task_from_arrays(*arrays())
    data = weakref.ref(task.x_train)
    spec = model_spec("mine", Net, task, epochs=1)
    run_audit(AuditConfig(model=spec, attacks=("A0",)), log=lambda line: None)
    del spec, task
    gc.collect()
    assert data() is None


def test_a_data_seed_refused_leaves_no_cell_folder(tmp_path: Path) -> None:
    spec = model_spec("mine", Net, task_from_arrays(*arrays()), epochs=1)
    config = AuditConfig(model=spec, attacks=("A0",), data_seed=1, cells=tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"leave AuditConfig\.data_seed at 0"):
        run_audit(config, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []
