"""A model file larger than the process can allocate is a ModelFileError naming it.

``load()`` reads a model file whole; one larger than the process can allocate (a 100 GiB
sparse file put in place of a protected package, under a 16 GB address-space limit) raised
Python's bare ``MemoryError()``: no file, no size, nothing to do. Run in a child process whose
address space is limited, so that the test allocates nothing large whatever the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.models import deploy_lifecycle, replace_by_sparse_file

from skprotect_pytorch.protect import SkProtectorPyTorch

HUGE = 64 * 2**30
"""Far above the child's address space (:data:`LIMIT`); sparse, it takes no disk space."""
LIMIT = 8 * 2**30

CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, resource.RLIM_INFINITY))
from skruntime import SkRuntime
from skruntime.errors import ModelFileError
try:
    SkRuntime(sys.argv[1]).load("m", "torchscript_cpu")
except ModelFileError as e:
    print(e)
"""


@pytest.fixture(scope="module")
def deployed(module_workdir: Path) -> Path:
    return deploy_lifecycle(SkProtectorPyTorch.ExportFormat.TORCHSCRIPT_CPU)


def test_a_model_file_too_large_to_read_is_named(deployed: Path) -> None:
    (model,) = deployed.rglob("*.pt")
    replace_by_sparse_file(model, HUGE)
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(limit=LIMIT), str(deployed)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == (
        f"Model file {model} of model 'm' (torchscript_cpu) cannot be read whole, as load() "
        f"reads it (to check its SHA-256 and load those very bytes): {model} is {HUGE:,} bytes, "
        "more than this process could allocate to read it. If that is the size of the file "
        "skprotect wrote, run with more memory; else deploy the app/ folder written by "
        "skprotect again."
    )
