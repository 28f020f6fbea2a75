"""The AOTInductor build folders of exports whose process was killed are swept by a later one.

A protection killed with SIGKILL (the OOM killer, a container stopped hard) runs no finalizer:
its ``skprotect-build-*`` folder in torch's compile cache (the compiled library, the weights in
it) stayed there for ever; nothing swept them. Each folder is now named with its system's tag
and its process's pid and locked (``flock``) while the export runs; an export removes this
host's folders whose lock no process holds, and nothing else."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tests.export.toy_models import Toy

from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.export import inductor as exporter
from skprotect_pytorch.formats import ExportFormat
from skruntime.system import system_tag

PREFIX = "skprotect-build-"
"""The start of a build folder's name (docs/artifacts.md)."""

#: Makes a build folder named as ``sys.argv[1]`` in ``sys.argv[2]``, holds its lock as an export
#: does, says so, and waits for a line on stdin before it exits.
HOLDER = """
import fcntl, os, sys
folder = os.path.join(sys.argv[2], sys.argv[1])
os.mkdir(folder)
fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A compile cache of this test's own (torch reads the variable each time, making it)."""
    folder = tmp_path / "inductor-cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    assert exporter._cache_dir() == str(folder)
    return folder


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def new_folders(cache: Path, *known: Path) -> list[Path]:
    """The build folders in ``cache`` other than ``known``."""
    return [p for p in cache.iterdir() if p.name.startswith(PREFIX) and p not in known]


def left_folder(cache: Path, tag: str, pid: int) -> Path:
    """A build folder with a file in it, as an export of process ``pid`` on the system ``tag``
    leaves it when it is killed (no process holds its lock)."""
    folder = cache / f"{PREFIX}{tag}-{pid}-x1y2z3_a"
    folder.mkdir()
    (folder / "model.so").write_bytes(b"weights")
    return folder


def test_dead_exports_folders_are_swept_and_live_or_other_systems_kept(cache):
    """Only this host's folders whose lock no process holds go; the sweep runs as each
    export's build folder is made."""
    dead = left_folder(cache, system_tag(), dead_pid())
    another_host = left_folder(cache, "f" * 16 if system_tag()[0] != "f" else "0" * 16, 1)
    earlier = cache / f"{PREFIX}x1y2z3ab"  # named before systems were: unknown
    earlier.mkdir()
    not_a_folder = cache / f"{PREFIX}{system_tag()}-1-file"
    not_a_folder.write_bytes(b"")
    live_name = f"{PREFIX}{system_tag()}-{os.getpid() + 1}-live"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, live_name, str(cache)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        kept = [another_host, earlier, not_a_folder, cache / live_name]
        with exporter.own_build_folder():
            [build] = new_folders(cache, dead, *kept)
            assert build.name.startswith(f"{PREFIX}{system_tag()}-{os.getpid()}-")
            assert not dead.exists()
            with exporter.own_build_folder():  # a second export's sweep keeps this live one
                assert build.is_dir()
    finally:
        holder.communicate("\n", timeout=60)
    assert sorted(cache.iterdir()) == sorted(kept)
    # its process gone, the live folder is swept by the next export
    with exporter.own_build_folder():
        assert not (cache / live_name).exists()


def test_a_build_folder_is_locked_while_its_export_runs(cache):
    """The lock is what tells a sweep of another process that the folder is used."""
    with exporter.own_build_folder():
        [build] = new_folders(cache)
        fd = os.open(build, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


@pytest.mark.slow
def test_an_export_sweeps_and_its_package_keeps_no_build_folder_name(cache, tmp_path):
    """The build folder's name holds the host's tag and the pid: blanked out of the package
    with the cache folder (it kept the folder's name before, then a random one)."""
    dead = left_folder(cache, system_tag(), dead_pid())
    x, key = torch.randn(2, 8), torch.ones(8)
    opts = build_export_options([x], {"input_names": ["x"]})
    cpu = get_exporter(ExportFormat.INDUCTOR_CPU)
    report = cpu.export(Toy().eval(), (x, key), tmp_path / "m.pt2", opts, with_key=True)
    assert not dead.exists()
    assert new_folders(cache) == []
    with zipfile.ZipFile(report.path) as package:
        for name in package.namelist():
            content = package.read(name)
            assert system_tag().encode() not in content, name
            assert PREFIX.encode() not in content, name
    run = cpu.load(report.path, opts)
    assert run([x.numpy(), key.numpy()])[0].shape == (2, 3)
