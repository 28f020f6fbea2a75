"""``task_from_arrays`` on arrays torch cannot take: class names as strings (``"cat"``), an
object array from pandas, dates, raised torch's own ``TypeError`` ("can't convert np.ndarray of
type numpy.str_"), and a big-endian array (saved by another tool) its ``ValueError``, where the
docs promise an ``InvalidArgumentError`` saying what is wrong. Big-endian and long-double
arrays hold numbers: they are now taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skprotect_pytorch.audit import task_from_arrays
from skprotect_pytorch.errors import InvalidArgumentError

X = np.random.default_rng(0).normal(size=(20, 3))
Y = np.arange(20) % 2
NUMBERS = (
    "convert it to numbers, e.g. x.astype(np.float32) (a pandas frame: "
    "df.to_numpy(dtype=np.float32))."
)
CLASSES = "number the classes 0 … K-1, e.g. classes, y = np.unique(y, return_inverse=True)."


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (X, np.array(["cat", "dog"] * 10), f"y_train has numpy dtype <U3, not numbers: {CLASSES}"),
        (X, Y.astype(object), f"y_train has numpy dtype object, not numbers: {CLASSES}"),
        (X.astype(object), Y, f"x_train has numpy dtype object, not numbers: {NUMBERS}"),
        (X.astype(str), Y, f"x_train has numpy dtype <U32, not numbers: {NUMBERS}"),
        (
            np.zeros((20, 3), dtype="datetime64[s]"),
            Y,
            f"x_train has numpy dtype datetime64[s], not numbers: {NUMBERS}",
        ),
    ],
)
def test_arrays_of_other_things_than_numbers_are_refused(
    x: np.ndarray, y: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        task_from_arrays(x, y, X, Y)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (X.astype(">f8"), Y.astype(">i4")),  # big-endian
        (X.astype(np.longdouble), Y),
    ],
)
def test_numbers_in_another_byte_order_or_width_are_taken(x: np.ndarray, y: np.ndarray) -> None:
    task = task_from_arrays(x, y, x, y)
    assert torch.equal(task.x_train, torch.from_numpy(X).float())
    assert torch.equal(task.y_train, torch.from_numpy(Y).long())


def test_a_list_is_told_how_to_make_an_array() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        task_from_arrays(X, list(Y), X, Y)
    assert str(info.value) == (
        "y_train must be a numpy array or a torch tensor, but got list; np.asarray(...) makes "
        "one of a list, .to_numpy() of a pandas frame or column."
    )
