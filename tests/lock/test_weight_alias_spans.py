"""Which buffers hold a locked weight's values (:func:`weight_aliases`): those whose bytes
overlap the weight's, not every tensor cut from the same storage, and a weight tied under two
names counts as locked when either name's layer is; a tensor with no memory of its own (a
wrapper subclass) is no alias and does not stop the lock."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map

from skprotect_pytorch.lock import lock_model


def _locked_all(model: nn.Module):
    return lock_model(model, layer_filter=lambda name, m: True, secret_rng=np.random.default_rng(0))


class _SplitArena(nn.Module):
    """A weight and a mask cut apart from one tensor: the mask holds none of the weight."""

    def __init__(self) -> None:
        super().__init__()
        arena = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
        self.fc = nn.Linear(16, 16)
        self.fc.weight = nn.Parameter(arena[:16])
        self.register_buffer("mask", arena[16:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.mask


def test_a_buffer_beside_a_weight_in_one_storage_is_no_weight() -> None:
    """Was: 'mask' listed as holding "the original values of 'fc.weight'" (the same storage)."""
    locked = _locked_all(_SplitArena())
    assert [w.name for w in locked.plaintext] == []
    assert [b.name for b in locked.plaintext_buffers] == ["mask"]


class _TiedWithCopy(nn.Module):
    """An embedding (not lockable) tied to a locked output layer, and a buffer over the tie."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("emb_t", self.emb.weight.data.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x)) + self.emb_t.sum()


def test_a_buffer_over_a_tied_locked_weight_is_a_weight_whichever_name_comes_first() -> None:
    """Was: listed as a harmless buffer, since the tie was known by its first name only
    ('emb.weight', an Embedding the lock leaves), not as the locked 'head.weight'."""
    locked = _locked_all(_TiedWithCopy())
    weights = {w.name: w.reason for w in locked.plaintext}
    assert "locked layer 'head'" in weights["emb_t"]
    assert "emb_t" not in [b.name for b in locked.plaintext_buffers]


class _Wrapped(torch.Tensor):
    """A tensor subclass over another tensor (as torchao's), with no memory of its own."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> _Wrapped:
        return torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, dtype=inner.dtype, device=inner.device
        )

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    def __deepcopy__(self, memo: dict) -> _Wrapped:
        return _Wrapped(self.inner.clone())

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def inner(t: object) -> object:
            return t.inner if isinstance(t, _Wrapped) else t

        return func(*tree_map(inner, args), **tree_map(inner, kwargs or {}))


class _WrappedTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.register_buffer("table", _Wrapped(torch.randn(8, 8)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.table


def test_a_buffer_without_memory_of_its_own_is_locked_beside() -> None:
    """Was: "RuntimeError: Attempted to access the data pointer on an invalid python storage"
    from the alias search (eb1301f locked this model)."""
    locked = _locked_all(_WrappedTable())
    assert [d.name for d in locked.locked_layers] == ["fc"]
    assert [b.name for b in locked.plaintext_buffers] == ["table"]
