"""``AuditConfig.threads`` follows the runtime's rule for a thread count (1 to
``MAX_THREADS``, numpy integers taken, bools and floats refused): 100,000 threads were accepted
and crashed torch in the audit's first matrix product."""

from __future__ import annotations

import numpy as np
import pytest

from skprotect_pytorch.audit import AuditConfig
from skprotect_pytorch.errors import InvalidArgumentError
from skruntime.backends.base import MAX_THREADS


@pytest.mark.parametrize(
    ("threads", "message"),
    [
        (100_000, r"AuditConfig\.threads must be an int from 1 to 1024, but got 100000"),
        (MAX_THREADS + 1, r"AuditConfig\.threads must be an int from 1 to 1024, but got 1025"),
        (0, r"AuditConfig\.threads must be an int from 1 to 1024, but got 0"),
        (True, r"AuditConfig\.threads .* but got the bool True"),
        (np.bool_(True), r"AuditConfig\.threads .* but got the bool np\.True_"),
        (2.0, r"AuditConfig\.threads .* but got the float 2\.0"),
        ("4", r"AuditConfig\.threads .* but got the str '4'"),
    ],
)
def test_a_thread_count_the_runtime_refuses_is_refused_naming_the_field(threads, message):
    with pytest.raises(InvalidArgumentError, match=message + r".*None leaves torch's setting"):
        AuditConfig(threads=threads)


@pytest.mark.parametrize("threads", [1, MAX_THREADS, np.int64(2), np.uint16(3), None])
def test_a_thread_count_in_range_is_taken_as_a_python_int(threads):
    got = AuditConfig(threads=threads).threads
    assert got == threads and (got is None or type(got) is int)
