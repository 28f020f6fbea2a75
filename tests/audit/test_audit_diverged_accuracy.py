"""A row with NaN or infinite logits counts as wrong in the audit's accuracy: argmax takes NaN
for the largest logit, so a model whose training diverged (all logits NaN) scored the share of
class 0 of the test set, as if it predicted class 0 everywhere."""

from __future__ import annotations

import torch

from skprotect_pytorch.audit.models import accuracy


def test_nan_or_infinite_logits_predict_nothing():
    y = torch.tensor([0, 0, 0, 1, 2, 1])
    logits = torch.nn.functional.one_hot(y, 3).float()
    logits[1, 2] = float("nan")  # NaN in another class than the label: argmax picked it
    logits[2, 0] = float("inf")  # an overflow
    logits[3] = float("nan")  # all NaN: argmax picked class 0
    assert accuracy(lambda x: logits[x], torch.arange(6), y, batch=4) == 3 / 6
    diverged = torch.full((6, 3), float("nan"))
    assert accuracy(lambda x: diverged[x], torch.arange(6), y) == 0.0
