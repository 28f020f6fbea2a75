"""A failed AOTInductor load leaves nothing in ``TMPDIR``; a loaded package's folder goes with it.

torch extracts a package into a new ``$TMPDIR/aotinductor_*`` folder and leaves it behind when
the load fails, twice per load (it tries two loaders): a package without its library left two
folders of 69 kB, one without its kernel metadata two of 1.6 MB, on every retry. The runtime
now points ``TMPDIR`` at a private folder while torch loads, and removes that folder: at once
when the load fails, with the package when it is released (a GPU package when its last model
is closed, a CPU one when the process exits)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.models import LIFECYCLE_INPUT
from tests.runtime.conftest import left_in
from tests.runtime.test_inductor_package_fuzz import MODEL, SO, redeploy, with_metadata, without

from skruntime import SkRuntime
from skruntime.backends import inductor
from skruntime.backends.inputs import INPUTS_METADATA
from skruntime.errors import BackendError

FMT = "inductor_cpu"


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "library removed": lambda data: without(data, SO),
    "kernel metadata removed": lambda data: without(data, "kernel_metadata.json"),
    "device key removed": lambda data: with_metadata(
        data, json.dumps({INPUTS_METADATA: "[]"}).encode()
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_failed_load_leaves_nothing_in_tmpdir(
    aoti_deployed: Path, tmp_path: Path, temp_folder: Path, damage: str
) -> None:
    folder = Path(shutil.copytree(aoti_deployed, tmp_path / "app"))
    redeploy(folder, DAMAGES[damage]((folder / MODEL).read_bytes()))
    for _ in range(2):  # a service retrying the load
        with pytest.raises(BackendError, match="torch could not load the AOTInductor package"):
            SkRuntime(folder).load("m", FMT)
    assert left_in(temp_folder) == []
    assert os.environ["TMPDIR"] == str(temp_folder)  # restored after the load


def test_a_loaded_package_keeps_its_folder_until_it_is_released(
    aoti_deployed: Path, temp_folder: Path
) -> None:
    """While loaded, torch's folder stays (a GPU package loads its kernels from there on their
    first call), inside the runtime's private one; released, both go."""
    model = SkRuntime(aoti_deployed).load("m", FMT)
    model(LIFECYCLE_INPUT.numpy())
    (private,) = left_in(temp_folder)
    assert private.startswith("skruntime-aoti-")
    assert [p.name.startswith("aotinductor_") for p in (temp_folder / private).iterdir()] == [True]
    model.close()
    assert left_in(temp_folder) == [private]  # a CPU package stays loaded for the process
    sha256 = SkRuntime(aoti_deployed).config.models["m"].formats[FMT].sha256
    package = inductor._PACKAGES[(sha256, -1, ())]
    inductor._KEPT.remove(package)  # released, as a GPU package is when its models close
    del package, model
    gc.collect()
    assert left_in(temp_folder) == []


COPY_FAILS = """
import resource, signal, sys
from skruntime import SkRuntime
from skruntime.errors import BackendError
runtime = SkRuntime(sys.argv[1])
import torch  # imported before the limit, as in a running service
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
try:
    runtime.load("m", "inductor_cpu")
except BackendError as e:
    print(e)
"""


def test_a_copy_that_cannot_be_written_says_where_room_is_needed(
    aoti_deployed: Path, temp_folder: Path
) -> None:
    """Writing the private copy for torch failed (a full disk) with "torch could not load the
    AOTInductor package ... (OSError: ...). Re-deploy the file written by skprotect", which
    would fail again the same way."""
    child = subprocess.run(
        [sys.executable, "-c", COPY_FAILS, str(aoti_deployed)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    size = (aoti_deployed / MODEL).stat().st_size
    assert child.stdout.strip() == (
        f"The AOTInductor package {aoti_deployed / MODEL} ({size:,} bytes) could not be copied "
        f"to the temporary folder {temp_folder} for torch to load it: File too large. Make room "
        "there for "
        "about twice its size (the copy, and what torch extracts from it), or point TMPDIR to a "
        "folder that has it."
    )
    assert left_in(temp_folder) == []


FORKS = """
import os, sys
from pathlib import Path
from skruntime import SkRuntime
SkRuntime(sys.argv[1]).load("m", "inductor_cpu")
before = sorted(p.name for p in Path(sys.argv[2]).iterdir())
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a server's worker that ends: its exit handlers run, as its parent's will
os.waitpid(pid, 0)
print(before == sorted(p.name for p in Path(sys.argv[2]).iterdir()))
"""


def test_a_forked_child_leaves_its_parents_folder(aoti_deployed: Path, temp_folder: Path) -> None:
    """The folder is removed by the process that loaded the package only: a child forked from
    it runs the same exit handlers, and removed the folder that its parent still used."""
    child = subprocess.run(
        [sys.executable, "-c", FORKS, str(aoti_deployed), str(temp_folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "True"
    assert left_in(temp_folder) == []  # and its parent removed it when it ended
