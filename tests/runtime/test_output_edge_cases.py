"""Outputs of the torch backends are independent of each other,
a sparse output still comes back, and ``--output`` writes into a device or pipe.

A model returning one tensor twice, or a tensor and a view of it (``return y, y[:, :1]``),
came back as numpy views of the same memory: writing to one output changed the other, where
onnxruntime returns separate arrays.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from skruntime.backends.base import BackendOptions
from skruntime.backends.torchscript import TorchScriptBackend
from skruntime.cli import write_outputs


class ReturnsOneTensorThrice(nn.Module):
    """A result, the same result again, and a view of it."""

    def forward(self, x: torch.Tensor, key: torch.Tensor):
        y = x * 2.0
        return y, y, y[:, :1]


@pytest.fixture()
def backend(tmp_path: Path) -> TorchScriptBackend:
    path = tmp_path / "thrice.pt"
    torch.jit.save(torch.jit.script(ReturnsOneTensorThrice()), str(path))
    return TorchScriptBackend(path, BackendOptions())


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_outputs_sharing_memory_are_separate(backend: TorchScriptBackend, kind: str) -> None:
    x = np.ones((2, 3), np.float32)
    key = np.zeros(1, np.float32)
    inputs = [x, key] if kind == "numpy" else [torch.from_numpy(x), torch.from_numpy(key)]
    first, again, view = (np.asarray(o) for o in backend.run(inputs))
    first[:] = 7.0
    assert not np.shares_memory(first, again) and not np.shares_memory(first, view)
    np.testing.assert_array_equal(again, np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(view, np.full((2, 1), 2.0, np.float32))
    np.testing.assert_array_equal(x, np.ones((2, 3), np.float32))  # the input untouched


class ReturnsSparse(nn.Module):
    """A sparse result, which has no storage to compare."""

    def forward(self, x: torch.Tensor, key: torch.Tensor):
        return (x * 2.0).to_sparse()


def test_a_sparse_output_is_returned(tmp_path: Path) -> None:
    """It came back before the aliasing check; that check then raised torch's
    NotImplementedError ('Cannot access storage of SparseTensorImpl') as a raw traceback."""
    path = tmp_path / "sparse.pt"
    torch.jit.save(torch.jit.script(ReturnsSparse()), str(path))
    (out,) = TorchScriptBackend(path, BackendOptions()).run([torch.ones(2, 2), torch.zeros(1)])
    assert out.layout == torch.sparse_coo
    torch.testing.assert_close(out.to_dense(), torch.full((2, 2), 2.0))


def test_output_through_a_link_to_a_named_pipe_is_written_into_it(tmp_path: Path) -> None:
    """``--output`` through a symbolic link to a device or named pipe writes into it, as
    ``numpy.save`` would; it was replaced by a regular file (a link to ``/dev/null`` run as
    root replaced the system's ``/dev/null``), and a reader of the pipe got nothing."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    link = tmp_path / "out.npy"
    link.symlink_to(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # the writer's open does not block
    try:
        write_outputs(link, [np.arange(3.0)], ["y"])
        received = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    np.testing.assert_array_equal(np.load(io.BytesIO(received)), np.arange(3.0))
