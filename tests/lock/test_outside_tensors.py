"""Which tensors read outside the model the first checked run lists as plaintext weights: a
quantized matrix, a trained vector, a NumPy array turned into a tensor in ``forward`` (also by
``torch.from_numpy``), each named where ``forward`` finds it, a result an ``lru_cache`` holds
too; and not the short or one-number constants that tell nothing (an RGB mean)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from tests.outside_models import Reads
from tests.outside_models import plaintext_after_checked_run as _checked
from torch import nn

torch.manual_seed(0)
with warnings.catch_warnings():  # torch deprecates quantized tensors, which models still hold
    warnings.simplefilter("ignore")
    QUANTIZED = torch.quantize_per_tensor(torch.randn(8, 8), 0.05, 0, torch.qint8)
BIAS = torch.randn(8)
RGB_MEAN = torch.tensor([0.485, 0.456, 0.406])
RGB_STD = RGB_MEAN.view(1, 3, 1, 1)  # one dimension or four: the same three numbers
ONES = torch.ones(8, 8)
TEMPERATURE = torch.tensor(0.7)
MIX_NP = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
TABLE_NP = np.random.default_rng(1).standard_normal((8, 8))
INDEX_NP = np.arange(8)


def test_a_quantized_matrix_read_outside_the_model_is_listed() -> None:
    """Only floating-point and complex dtypes were listed: its int8 values shipped unreported."""
    listed = _checked(Reads(lambda x: x @ QUANTIZED.dequantize()), torch.randn(2, 8))
    assert listed == [(f"{__name__}.QUANTIZED", (8, 8))]


def test_a_sparse_matrix_read_outside_the_model_is_still_listed() -> None:
    sparse = torch.randn(8, 8).to_sparse()
    listed = _checked(Reads(lambda x: torch.sparse.mm(sparse, x.T).T), torch.randn(2, 8))
    assert listed == [
        (
            "test_a_sparse_matrix_read_outside_the_model_is_still_listed.<locals>.<lambda>: sparse",
            (8, 8),
        )
    ]


def test_a_trained_vector_read_outside_the_model_is_listed() -> None:
    """Only matrices were listed: a global bias vector shipped unreported."""
    assert _checked(Reads(lambda x: x + BIAS), torch.randn(2, 8)) == [(f"{__name__}.BIAS", (8,))]


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x + RGB_MEAN.sum(),
        lambda x: x * RGB_STD.sum(),  # was listed: four dimensions, three numbers
        lambda x: x @ ONES,  # was listed: one number, 64 times
        lambda x: x / TEMPERATURE,
    ],
    ids=["rgb-mean", "rgb-std-4d", "ones", "scalar"],
)
def test_short_or_one_number_constants_read_outside_are_not_listed(read) -> None:
    assert _checked(Reads(read), torch.randn(2, 8)) == []


class HoldsAnArray(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.table = TABLE_NP.astype(np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x @ torch.from_numpy(self.table))


@pytest.mark.parametrize(
    ("model", "name"),
    [
        (Reads(lambda x: x @ torch.from_numpy(MIX_NP)), f"{__name__}.MIX_NP"),
        (Reads(lambda x: x @ torch.from_numpy(MIX_NP[2:]).T @ torch.ones(6, 8)), "MIX_NP"),
        (Reads(lambda x: x @ torch.tensor(TABLE_NP, dtype=torch.float32)), "TABLE_NP"),
        (Reads(lambda x: x @ torch.as_tensor(MIX_NP)), "MIX_NP"),
        (HoldsAnArray(), "table"),
    ],
    ids=["from_numpy", "from_numpy-slice", "tensor", "as_tensor", "held-array"],
)
def test_a_numpy_array_turned_into_a_tensor_in_forward_is_listed(model, name) -> None:
    """None was seen: ``torch.from_numpy`` is no torch function call, and the tensor that
    ``torch.tensor(array)`` returns is one that forward creates; every export stored it."""
    [(listed, shape)] = _checked(model, torch.randn(2, 8))
    assert listed.endswith(name) and shape == (8, 8)


def test_arrays_forward_makes_or_that_hold_no_weight_are_not_listed() -> None:
    """An array computed from the input, and an integer index array, are not weights."""

    def read(x: torch.Tensor) -> torch.Tensor:
        doubled = torch.from_numpy(x.numpy() * 2)
        return doubled[:, torch.from_numpy(INDEX_NP)]

    assert _checked(Reads(read), torch.randn(2, 8)) == []


def _adds_bias(row: torch.Tensor) -> torch.Tensor:
    return row + BIAS


def test_a_model_that_calls_torch_vmap_is_checked() -> None:
    """The first checked run raised "Cannot access data pointer of Tensor that doesn't have
    storage": vmap's batched tensors reach torch functions as plain tensors without memory."""
    assert _checked(Reads(lambda x: torch.vmap(lambda r: r * r.sum())(x)), torch.randn(2, 8)) == []
    listed = _checked(Reads(lambda x: torch.vmap(_adds_bias)(x)), torch.randn(2, 8))
    assert listed == [(f"{__name__}.BIAS", (8,))]


@functools.lru_cache
def _mixer(n: int) -> torch.Tensor:
    return torch.randn(n, n)


@functools.lru_cache(maxsize=4)
def _mixers(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, n), torch.randn(n, n)


class ReadsCaches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = _mixers(8)
        return self.a(x @ _mixer(8) @ first @ second)


def test_tensors_a_functools_cache_holds_are_named_after_it() -> None:
    """They were listed as ``<tensor outside the model #N>``, which says nowhere to look."""
    assert sorted(_checked(ReadsCaches(), torch.randn(2, 8))) == [
        (f"{__name__}._mixer()", (8, 8)),
        (f"{__name__}._mixers()[0]", (8, 8)),
        (f"{__name__}._mixers()[1]", (8, 8)),
    ]
