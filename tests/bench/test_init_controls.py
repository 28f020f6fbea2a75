"""Keeps ``bench/init_controls.py`` honest: its victim-derived controls keep exactly what they
claim to keep (singular values, or the Frobenius norm) and nothing of the weights' directions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import init_controls  # noqa: E402


def _victim() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Conv1d(20, 6, 3))


@pytest.mark.parametrize("keep", ["spectrum", "norm"])
def test_victim_controls_keep_only_the_scale(keep):
    victim = _victim()
    control = init_controls.from_victim(victim, keep, np.random.default_rng(0))
    for (name, v), c in zip(victim.named_parameters(), control.parameters(), strict=True):
        v, c = v.detach().double(), c.detach().double()
        if v.dim() < 2:  # biases shuffled: same values, other places
            assert torch.equal(v.sort().values, c.sort().values) and not torch.equal(v, c)
            continue
        vm, cm = v.reshape(len(v), -1), c.reshape(len(c), -1)
        if keep == "spectrum":
            torch.testing.assert_close(torch.linalg.svdvals(cm), torch.linalg.svdvals(vm))
        else:
            torch.testing.assert_close(torch.linalg.norm(cm), torch.linalg.norm(vm))
        cos = (vm * cm).sum(1) / (vm.norm(dim=1) * cm.norm(dim=1))
        assert float(cos.abs().max()) < 0.9, name  # no row survives


def test_unknown_model_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        init_controls.main(["--models", "resnet"])
    assert "unknown model(s) ['resnet']" in capsys.readouterr().err
