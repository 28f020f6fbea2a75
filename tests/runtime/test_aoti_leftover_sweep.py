"""The private folder of an AOTInductor load whose process was killed is swept by a later load.

A process killed with SIGKILL (the OOM killer, a container stopped hard) runs no finalizer: its
``skruntime-aoti-*`` folder, the package extracted in it (1.6 MB for a tiny MLP), stayed in
``TMPDIR`` for ever (4 killed loads: 4 folders, still there after the next load). Each folder is
now named with its process's pid and locked (``flock``) by it for its lifetime; a load removes
the folders of this user whose lock no process holds, and nothing else."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.runtime.conftest import left_in

from skruntime import SkRuntime
from skruntime.backends import inductor

FMT = "inductor_cpu"

#: Loads the model, says so, then waits for a line on stdin: "kill" (SIGKILL to itself) or
#: "run" (a call, then a normal exit).
CHILD = """
import os, signal, sys
from skruntime import SkRuntime
from tests.models import LIFECYCLE_INPUT
model = SkRuntime(sys.argv[1]).load("m", "inductor_cpu")
print("loaded", flush=True)
if sys.stdin.readline().strip() == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
print(model(LIFECYCLE_INPUT.numpy()).shape, flush=True)
"""


def start_child(aoti_deployed: Path) -> subprocess.Popen[str]:
    """A process that has loaded the model, waiting for its order (:data:`CHILD`)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(aoti_deployed)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],  # imports tests.models
    )
    assert child.stdout is not None and child.stdout.readline() == "loaded\n"
    return child


def order(child: subprocess.Popen[str], what: str) -> str:
    out, _ = child.communicate(f"{what}\n", timeout=120)
    return out


def test_killed_loads_are_swept_and_a_live_ones_folder_is_kept(
    aoti_deployed: Path, temp_folder: Path
) -> None:
    killed = []
    for _ in range(2):
        child = start_child(aoti_deployed)
        order(child, "kill")
        assert child.returncode == -9
        killed += left_in(temp_folder)
    assert len(set(killed)) == 2  # the second load swept the first one's folder
    live = start_child(aoti_deployed)
    (live_folder,) = left_in(temp_folder)
    assert live_folder.startswith(f"skruntime-aoti-{inductor.system_tag()}-{live.pid}-")
    model = SkRuntime(aoti_deployed).load("m", FMT)  # a load in this process sweeps too
    own = [name for name in left_in(temp_folder) if name != live_folder]
    this = f"skruntime-aoti-{inductor.system_tag()}-{os.getpid()}-"
    assert [name.startswith(this) for name in own] == [True]
    extracted = [p.name.startswith("aotinductor_") for p in (temp_folder / live_folder).iterdir()]
    assert extracted == [True]  # the live process's folder was kept whole
    assert order(live, "run") == "(2, 3)\n"
    assert live.returncode == 0
    assert left_in(temp_folder) == own  # it removed its own folder when it exited
    model.close()


def folder_like_a_load(temp_folder: Path, pid: int = 1) -> Path:
    """A folder named as a load names its private folder, with a file in it, locked by no one."""
    folder = temp_folder / f"skruntime-aoti-{inductor.system_tag()}-{pid}-abcd1234"
    folder.mkdir(mode=0o700)
    (folder / "kept").write_bytes(b"x")
    return folder


def test_a_sweep_removes_an_unlocked_folder_and_keeps_a_locked_one(temp_folder: Path) -> None:
    gone = folder_like_a_load(temp_folder)
    folder, lock = inductor._private_folder(temp_folder / "m.pt2", 1)  # held by this process
    inductor._sweep_leftovers(str(temp_folder))
    assert left_in(temp_folder) == [Path(folder).name]
    assert not gone.exists()
    os.close(lock)  # as the process's end would
    inductor._sweep_leftovers(str(temp_folder))
    assert left_in(temp_folder) == []


def test_a_sweep_leaves_links_other_users_and_earlier_versions_folders(temp_folder: Path) -> None:
    """Never followed: a symbolic link named like a private folder; never removed: another
    user's folder (tests run as root, who could remove it), and a folder of a version before
    the lock (``skruntime-aoti-`` and 8 random characters), which may belong to a live process."""
    target = temp_folder / "target"
    target.mkdir()
    (target / "kept").write_bytes(b"x")
    (temp_folder / f"skruntime-aoti-{inductor.system_tag()}-2-linkedto").symlink_to(
        target, target_is_directory=True
    )
    other = folder_like_a_load(temp_folder, pid=3)
    os.chown(other, os.geteuid() + 1000, os.getegid())
    earlier = temp_folder / "skruntime-aoti-k2j4_x9q"
    earlier.mkdir()
    before = left_in(temp_folder)
    inductor._sweep_leftovers(str(temp_folder))
    assert left_in(temp_folder) == before
    assert (target / "kept").exists() and (other / "kept").exists()


def test_a_folder_a_sweep_holds_or_removed_is_not_used(
    temp_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between ``mkdtemp`` and its lock a new folder is unlocked: a sweep of another process
    may lock it and remove it then, so the load must take another folder, not use it."""
    folder = temp_folder / "skruntime-aoti-4-abcd1234"
    folder.mkdir()
    sweep = os.open(folder, os.O_RDONLY)
    fcntl.flock(sweep, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert inductor._locked(str(folder)) is None  # the sweep holds it
    os.close(sweep)
    real_flock = fcntl.flock

    def removed_first(fd: int, operation: int) -> None:  # the sweep was quicker
        shutil.rmtree(folder)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", removed_first)
    assert inductor._locked(str(folder)) is None
