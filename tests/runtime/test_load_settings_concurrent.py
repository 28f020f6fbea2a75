"""A failed torch load put the process-wide settings back as it had read them, also when
another thread's load had set its own meanwhile: that load succeeded, yet its model ran with
the thread count read before either (2 instead of its ``intra_op_threads=3``). Loads now take
turns on these settings. torch's count is read through a stand-in here: OpenMP keeps one per
thread that has set it, and the test asks for the process's."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import skruntime.backends.inductor as inductor
import skruntime.backends.torchscript as torchscript
from skruntime.backends.base import BackendOptions
from skruntime.errors import BackendError


def test_a_failed_load_does_not_undo_a_load_that_succeeded_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(good))
    bad.write_bytes(b"not a model")
    failing_set, other_done = threading.Event(), threading.Event()
    real_load = torch.jit.load

    def load(f: Any, *args: Any, **kw: Any) -> Any:
        if threading.current_thread().name == "failing":
            failing_set.set()  # its thread count is set: the other load starts now
            other_done.wait(2)  # (it waits for this one's turn once loads take turns)
        return real_load(f, *args, **kw)

    def failing() -> None:
        with pytest.raises(BackendError):
            torchscript.TorchScriptBackend(bad, BackendOptions(intra_op_threads=5))

    def succeeding() -> None:
        failing_set.wait(10)
        torchscript.TorchScriptBackend(good, BackendOptions(intra_op_threads=3))
        other_done.set()

    count = [2]  # the process's intra-op thread count
    monkeypatch.setattr(torchscript.torch.jit, "load", load)
    monkeypatch.setattr(inductor.torch, "get_num_threads", lambda: count[0])
    monkeypatch.setattr(inductor.torch, "set_num_threads", lambda n: count.__setitem__(0, n))
    threads = [
        threading.Thread(target=failing, name="failing"),
        threading.Thread(target=succeeding),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert count == [3]  # the successful load's count
