"""A crash of ``skprotect run`` while it holds the key writes no core file.

Until 2026-12-07 the runner left core dumps on: a crash after the model was loaded (measured with
``ulimit -c unlimited`` and ``core_pattern`` ``core``: an ``abort()`` right after the run) wrote
a 61 MB core file holding the key-encryption key given with ``--kek`` (which decrypts every model
key of the application) and the session key. The runner now marks its process not dumpable and
sets its core limit to 0 for the run (:func:`skruntime.system.core_dumps_disabled`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.models import LIFECYCLE_INPUT, deploy_lifecycle
from typer.testing import CliRunner

from skprotect_pytorch.cli import app
from skprotect_pytorch.protect import SkProtectorPyTorch

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prctl(PR_SET_DUMPABLE) is Linux's"
)


def dumpable() -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE


def test_core_dumps_disabled_for_the_block_then_restored() -> None:
    from skruntime.system import core_dumps_disabled

    before = dumpable(), resource.getrlimit(resource.RLIMIT_CORE)
    with core_dumps_disabled() as marked:
        assert marked is True
        assert dumpable() == 0
        assert resource.getrlimit(resource.RLIMIT_CORE)[0] == 0
    assert (dumpable(), resource.getrlimit(resource.RLIMIT_CORE)) == before


def dump_state_after(lines: str) -> list[str]:
    """Run ``lines`` in a Python process of its own; return what they print, then that
    process's dumpable flag and core size limit."""
    code = (
        "import ctypes, ctypes.util, resource\n"
        f"{lines}"
        "libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')\n"
        "print(libc.prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.split()


def test_disable_core_dumps_is_for_the_rest_of_the_process() -> None:
    """In a process of its own: the change is process-wide and not undone."""
    lines = (
        "from skruntime.system import disable_core_dumps\nprint(disable_core_dumps(), end=' ')\n"
    )
    assert dump_state_after(lines) == ["True", "0", "0"]


def test_skprotect_run_holds_the_key_in_a_process_that_cannot_dump_core(
    module_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skruntime.cli as cli

    outputs = deploy_lifecycle(SkProtectorPyTorch.ExportFormat.ONNX)
    x = module_workdir / "x.npy"
    np.save(x, LIFECYCLE_INPUT.numpy())
    seen: dict[str, Any] = {}
    real = cli._run_loaded

    def run_loaded(*args: Any, **kwargs: Any) -> Any:
        summary = real(*args, **kwargs)  # the key was read, the model loaded and run
        seen["dumpable"] = dumpable()
        seen["core limit"] = resource.getrlimit(resource.RLIMIT_CORE)[0]
        return summary

    monkeypatch.setattr(cli, "_run_loaded", run_loaded)
    before = dumpable()
    result = CliRunner().invoke(app, ["run", str(outputs), "m", "-i", str(x)])
    assert result.exit_code == 0, result.output
    assert seen == {"dumpable": 0, "core limit": 0}
    assert dumpable() == before  # put back for the rest of the (test) process


def test_overlapping_blocks_of_two_threads_keep_core_dumps_off_until_the_last_ends() -> None:
    """Each block put back what it had found: thread A's block ended while thread B's still
    ran, and made the process dumpable under B's key; B's end then left it undumpable."""
    import threading

    from skruntime.system import core_dumps_disabled

    before = dumpable(), resource.getrlimit(resource.RLIMIT_CORE)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def a() -> None:
        with core_dumps_disabled():
            a_in.set()
            b_in.wait(30)
        a_out.set()

    def b() -> None:
        a_in.wait(30)
        with core_dumps_disabled() as marked:
            b_in.set()
            a_out.wait(30)
            seen["in B after A"] = marked, dumpable(), resource.getrlimit(resource.RLIMIT_CORE)[0]

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == {"in B after A": (True, 0, 0)}
    assert (dumpable(), resource.getrlimit(resource.RLIMIT_CORE)) == before


def test_disable_core_dumps_within_a_block_is_not_undone_by_its_end() -> None:
    lines = (
        "from skruntime.system import core_dumps_disabled, disable_core_dumps\n"
        "with core_dumps_disabled():\n"
        "    disable_core_dumps()\n"
    )
    assert dump_state_after(lines) == ["0", "0"]


def test_the_skprotect_run_process_cannot_dump_core_until_it_exits(module_workdir: Path) -> None:
    """The key's copies stay in the process's memory after the run (two of the canonical key,
    measured at exit): ``skprotect run`` made the process dumpable again once the run was
    over, so a crash while it ended (a framework's teardown, an atexit handler) dumped them."""
    outputs = deploy_lifecycle(SkProtectorPyTorch.ExportFormat.ONNX, application="at_exit")
    x = module_workdir / "x_at_exit.npy"
    np.save(x, LIFECYCLE_INPUT.numpy())
    code = (
        "import atexit, ctypes, ctypes.util, resource, sys\n"
        "from skprotect_pytorch.cli import app\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')\n"
        "atexit.register(lambda: print('at exit', libc.prctl(3, 0, 0, 0, 0),\n"
        "    resource.getrlimit(resource.RLIMIT_CORE)[0], file=sys.stderr))\n"
        "app(sys.argv[1:], prog_name='skprotect')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "run", str(outputs), "m", "-i", str(x)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "at exit 0 0" in done.stderr
