"""Helpers shared by the audit tests."""

from __future__ import annotations

import torch

from skprotect_pytorch.audit.attacks import RelaxedKey
from skprotect_pytorch.lock import LockedModel


def set_true_key(key: RelaxedKey, locked: LockedModel) -> None:
    """Pin ``key`` at ``locked``'s true key (logits one-hot at the true permutations, i.e. a hard
    Sinkhorn output, scales the true ones) and put it in eval mode, to test exactness there."""
    with torch.no_grad():
        for slot, p in enumerate(locked.layout.perms):
            one_hot = torch.full((len(p), len(p)), -1e4)
            one_hot[torch.from_numpy(p), torch.arange(len(p))] = 0.0
            key.logits[slot].copy_(one_hot)
        for slot, s in enumerate(locked.layout.scales):
            key.scales[slot].copy_(torch.from_numpy(s))
    key.eval()
