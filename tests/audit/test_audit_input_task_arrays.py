"""Token ids stored as unsigned integers (uint16 is how tokenisers keep them small) are taken
as integer ids: they were refused as "must hold real numbers or integer ids"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skprotect_pytorch.audit import task_from_arrays
from skprotect_pytorch.errors import InvalidArgumentError

IDS = np.array([[3, 60_000, 7], [1, 2, 0], [9, 9, 9], [4, 5, 6]])
LABELS = np.array([0, 1, 0, 1])


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64, np.int8])
def test_unsigned_token_ids_become_int64_ids(dtype: type) -> None:
    ids = IDS % 128 if dtype is np.int8 else IDS
    task = task_from_arrays(ids.astype(dtype), LABELS, ids.astype(dtype), LABELS)
    assert task.x_train.dtype == torch.int64 and task.x_train.tolist() == ids.tolist()


def test_ids_beyond_int64_are_refused() -> None:
    huge = np.array([[2**63 + 5], [1], [2], [3]], dtype=np.uint64)
    with pytest.raises(InvalidArgumentError, match="x_train holds integer ids of 2\\*\\*63 or"):
        task_from_arrays(huge, LABELS, huge, LABELS)


def test_an_empty_split_is_called_empty() -> None:
    """It was told it lacked a sample axis, with shape (0, 3) shown."""
    ids = IDS.astype(np.int64)
    with pytest.raises(InvalidArgumentError, match=r"x_test holds no samples \(shape \(0, 3\)\)"):
        task_from_arrays(ids, LABELS, ids[:0], LABELS[:0])
