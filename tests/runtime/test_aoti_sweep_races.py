"""The AOTInductor load folders' sweep (:func:`inductor._sweep_leftovers`), where it raced or
trusted a lock that cannot tell.

A sweep of another process may remove a load's new folder before the load has opened it: the
load failed with "none could be created in /tmp: No such file or directory" (4 processes
loading at once: 2,830 of 60,000 loads failed). A package whose start failed after its
finalizer was registered closed its lock's descriptor twice: the second close may close a file
another thread has opened since. A lock is seen only on its own system: on a ``TMPDIR`` that
hosts share over NFS with local locks, a sweep removed the folders of the other hosts' live
loads. And without ``fcntl`` (Windows) importing the protector failed."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tests.runtime.conftest import left_in

from skruntime.backends import inductor


def test_a_folder_swept_before_it_is_opened_is_made_again(
    temp_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def swept_at_once(*args: object, **kwargs: object) -> str:
        made.append(mkdtemp(*args, **kwargs))
        if len(made) == 1:  # another process's sweep, between mkdtemp and the lock
            shutil.rmtree(made[0])
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", swept_at_once)
    folder, lock = inductor._private_folder(temp_folder / "m.pt2", 1)
    assert folder == made[1] and left_in(temp_folder) == [Path(folder).name]
    inductor._remove_folder(folder, os.getpid(), lock)


class _NoMetadata:
    """A loaded package whose metadata cannot be read."""

    def get_metadata(self) -> dict[str, str]:
        raise RuntimeError("no metadata")


def test_a_package_that_fails_to_start_closes_its_lock_once(
    temp_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[str, int]] = []
    private_folder = inductor._private_folder
    monkeypatch.setattr(
        inductor, "_private_folder", lambda *a: made.append(private_folder(*a)) or made[-1]
    )
    closed: list[int] = []
    close = os.close
    monkeypatch.setattr(os, "close", lambda fd: closed.append(fd) or close(fd))
    with pytest.raises(RuntimeError, match="no metadata"):
        inductor._in_private_folder(lambda _: _NoMetadata(), temp_folder / "m.pt2", 1, {})
    gc.collect()
    ((_, lock),) = made
    assert closed.count(lock) == 1
    assert left_in(temp_folder) == []


def test_another_systems_folder_is_kept(
    temp_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its lock is not seen here (NFS with local locks): its load may still run."""
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(inductor, "system_tag", lambda: "0123456789abcdef")
        folder, lock = inductor._private_folder(temp_folder / "m.pt2", 1)
    os.close(lock)  # as unseen as a lock taken on another host
    inductor._sweep_leftovers(str(temp_folder))
    assert left_in(temp_folder) == [Path(folder).name]


def test_without_fcntl_the_runtime_loads_and_sweeps_nothing(
    temp_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on Windows: the module imports, a load gets its folder, no folder is removed."""
    code = "import sys; sys.modules['fcntl'] = None; import skprotect_pytorch.protect"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    monkeypatch.setattr(inductor, "fcntl", None)
    abandoned = temp_folder / f"skruntime-aoti-{inductor.system_tag()}-1-abcd1234"
    abandoned.mkdir()
    folder, lock = inductor._private_folder(temp_folder / "m.pt2", 1)
    assert left_in(temp_folder) == sorted([abandoned.name, Path(folder).name])
    inductor._remove_folder(folder, os.getpid(), lock)
