"""A stored cell whose rows lack a field, hold one a row does not have, or hold one of the
wrong type is refused by ``_check_cell`` with the file to delete; it stopped the report in a
raw ``KeyError`` ('victim_accuracy', 'reference') or ``TypeError`` (``AuditRow.__init__() got
an unexpected keyword argument``, ``None`` in arithmetic) naming no file, or was judged at the
wrong budget."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tests.audit.helpers import Net, arrays

from skprotect_pytorch.audit import AuditConfig, model_spec, run_audit, task_from_arrays
from skprotect_pytorch.audit.models import SweepConfig, train_model
from skprotect_pytorch.errors import StateError

SWEEP = SweepConfig(lrs=(3e-3,), epochs=(2,), init_gains=(None,))


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[dict, Path]:
    """A cell folder holding A1's and A5's cells, and the config that reads them back."""
    torch.set_num_threads(1)
    task = task_from_arrays(*arrays())
    net = train_model(Net(), task.x_train, task.y_train, lr=3e-3, epochs=20, seed=0)
    spec = model_spec("net", Net, task, victim=net, epochs=1)
    root = tmp_path_factory.mktemp("cells")
    config = dict(model=spec, attacks=("A0", "A1", "A5"), budgets=(50,), seeds=1, sweep=SWEEP)
    run_audit(AuditConfig(**config, cells=root), log=lambda line: None)
    return {**config, "cells": root, "stored_only": True}, next(root.iterdir())


def _pop(key: str) -> Callable[[dict], object]:
    return lambda d: d.pop(key)


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda d: d.update({key: value})


def _row(change: Callable[[dict], object]) -> Callable[[dict], object]:
    return lambda value: change(value["rows"][0])


@pytest.mark.parametrize(
    ("cell", "damage", "says"),
    [
        ("A5@50", _pop("victim_accuracy"), "no victim_accuracy in \\[0, 1\\]"),
        ("A5@50", _set("victim_accuracy", None), "no victim_accuracy in \\[0, 1\\]"),
        ("A5@50", _row(_set("reference", None)), "a row with reference None"),
        ("A1-null@50", _row(_set("extra", 1)), "a row with fields \\['extra'\\] that a row"),
        ("A1-null@50", _row(_pop("reference")), "a row without reference"),
        ("A1-null@50", _row(_set("accuracy", None)), "a row with accuracy None"),
        ("A1-null@50", _row(_set("budget", None)), "a row with budget None"),
        ("A1-null@50", _row(_set("budget", 25.0)), "a row with budget 25.0"),
        ("A1-null@50", _row(_set("variant", None)), "a row with variant None"),
        ("A1-null@50", _row(_set("cos_excess", "0.1")), "a row with cos_excess '0.1'"),
        ("A1-null@50", _row(_set("control", 2.0)), "a row with control 2.0"),
        ("A1-null@50", _row(_set("passed", "yes")), "a row with passed 'yes'"),
        ("A1-null@50", _row(_set("reference_unmeasured", "seed 0")), "reference_unmeasured"),
        ("A0", _row(_set("budget", 50.0)), "a row with budget 50.0"),
        ("A0", _row(_set("reference", None)), "a row with reference None"),
        ("A1-null@50", _set("rows", [1]), "a row 1 that is not an object"),
        ("B@50", _set("unmeasured", None), "not 1 accuracies"),
        ("B@50", _set("extra", []), "not 1 accuracies"),
    ],
)
def test_a_damaged_row_is_refused_naming_the_file(stored, cell, damage, says):
    config, folder = stored
    path = folder / f"{cell}.json"
    good = path.read_text()
    record = json.loads(good)
    damage(record["value"])
    path.write_text(json.dumps(record))
    try:
        with pytest.raises(StateError, match=rf"{cell}\.json holds .*{says}.*delete it"):
            run_audit(AuditConfig(**config), log=lambda line: None)
    finally:
        path.write_text(good)


def test_the_undamaged_cells_are_read(stored):
    config, _ = stored
    report = run_audit(AuditConfig(**config), log=lambda line: None)
    assert [r.attack for r in report.rows] == ["A0"] * 4 + ["A1", "A1", "A5"]


def _accuracy_zero(value: dict) -> None:
    for row in value["rows"]:
        row["accuracy"] = 0.0


@pytest.mark.parametrize(
    ("cell", "damage", "says"),
    [
        ("A0", lambda v: v["rows"].__delitem__(slice(1, None)), "1 rows of 1 variants"),
        ("A1-null@50", lambda v: v["rows"].append(v["rows"][0]), "2 rows of 1 variants"),
        ("A1-null@50", _accuracy_zero, "a row with accuracy 0.0, not the mean of its"),
    ],
)
def test_a_truncated_cell_or_a_row_not_its_seeds_mean_is_refused(stored, cell, damage, says):
    """A0 stored with its null key's row alone passed the gate where its random key failed
    (on these 100 test samples); a row's accuracy is what the gate compares, so one that is not
    the mean of its seeds was judged on a number no seed measured."""
    test_a_damaged_row_is_refused_naming_the_file(stored, cell, damage, says)
