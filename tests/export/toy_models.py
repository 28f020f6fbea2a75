"""Small modules shared by the exporter tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn


class Toy(nn.Module):
    """Stand-in for a KeyedModel: the key is the last input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x, key):
        return self.lin(x) * key[:4].sum()


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class DoublesInPlace(nn.Module):
    """A forward that changes its input in place (``x.mul_(2)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.fc(x)


def eager(module, *inputs) -> list[np.ndarray]:
    with torch.no_grad():
        return [module(*inputs).numpy()]


_FULL_DISK_EXPORT = """
import errno, os, sys
from pathlib import Path
import torch
from tests.export.toy_models import Toy
from skprotect_pytorch.export import build_export_options, get_exporter
from skprotect_pytorch.formats import ExportFormat

folder, fmt, link, target = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.symlink("/dev/full", folder / link)  # that file lands on a full disk
x = torch.randn(2, 8)
options = build_export_options([x], {"input_names": ["x"], "output_names": ["y"]})
try:
    get_exporter(ExportFormat[fmt]).export(
        Toy().eval(), (x, torch.rand(10)), folder / target, options, with_key=True
    )
except OSError as err:
    print("OSError", errno.errorcode[err.errno])
"""


def export_onto_full_disk(
    folder: Path, fmt: str, link: str, target: str, timeout: int
) -> subprocess.CompletedProcess[str]:
    """Export :class:`Toy` in format ``fmt`` (an ``ExportFormat`` name) to ``folder/target``
    with ``folder/link`` linked to ``/dev/full``, in a child process: torch's archive writers
    aborted the whole process on a full disk. The child prints ``OSError ENOSPC`` when the
    export raised that."""
    return subprocess.run(
        [sys.executable, "-c", _FULL_DISK_EXPORT, str(folder), fmt, link, target],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parents[2],
    )
