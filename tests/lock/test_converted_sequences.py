"""The lists and tuples of trained numbers that ``forward`` turns into tensors
(``torch.tensor(W_LIST)``) are listed as plaintext weights by the first checked run, named where
``forward`` finds them; not those it builds from its inputs, integer lists (shapes, indices),
short lists or one number repeated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.outside_models import Reads
from tests.outside_models import plaintext_after_checked_run as _checked
from torch import nn

_RNG = np.random.default_rng(3)
W_LIST = _RNG.standard_normal((8, 8)).tolist()
B_TUPLE = tuple(_RNG.standard_normal(8).tolist())
TABLES = {"w": _RNG.standard_normal((8, 8)).astype(np.float32).tolist()}  # NumPy floats
GLOBAL_MATRIX = torch.randn(8, 8)
INDICES = list(range(8))
RGB_MEAN = [0.485, 0.456, 0.406]
HALVES = [0.5] * 8


def _closing_over_a_list():
    weights = _RNG.standard_normal(8).tolist()
    return lambda x: x * torch.tensor(weights)


@pytest.mark.parametrize(
    ("read", "name", "shape"),
    [
        (lambda x: x @ torch.tensor(W_LIST), f"{__name__}.W_LIST", (8, 8)),
        (lambda x: x @ torch.as_tensor(W_LIST), f"{__name__}.W_LIST", (8, 8)),
        (lambda x: x @ torch.tensor(W_LIST, dtype=torch.float32), f"{__name__}.W_LIST", (8, 8)),
        (lambda x: x @ torch.asarray(obj=W_LIST).float(), f"{__name__}.W_LIST", (8, 8)),
        (lambda x: x + x.new_tensor(W_LIST[3]), f"{__name__}.W_LIST[3]", (8,)),
        (lambda x: x + torch.tensor(B_TUPLE), f"{__name__}.B_TUPLE", (8,)),
        (lambda x: x @ torch.tensor(TABLES["w"]), f"{__name__}.TABLES['w']", (8, 8)),
        (
            _closing_over_a_list(),
            "_closing_over_a_list.<locals>.<lambda>: weights",
            (8,),
        ),
    ],
    ids=[
        "tensor",
        "as_tensor",
        "tensor-dtype",
        "asarray",
        "new_tensor-row",
        "tuple",
        "dict",
        "closure",
    ],
)
def test_a_list_of_trained_numbers_turned_into_a_tensor_is_listed(read, name, shape) -> None:
    """None was listed: a list is no tensor that a torch function receives, and the tensor
    ``torch.tensor`` returns is one that forward creates, yet every export stored its numbers
    as a constant, readable without the key."""
    assert _checked(Reads(read), torch.randn(2, 8)) == [(name, shape)]


class HoldsAList(nn.Module):
    """Keeps trained numbers in a plain attribute and a config object, as lists."""

    class Config:
        def __init__(self) -> None:
            self.bias = _RNG.standard_normal(8).tolist()

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.mix = _RNG.standard_normal((8, 8)).tolist()
        self.cfg = self.Config()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x @ torch.tensor(self.mix) + torch.tensor(self.cfg.bias))


def test_lists_the_model_holds_are_named_by_their_path() -> None:
    assert sorted(_checked(HoldsAList(), torch.randn(2, 8))) == [
        ("cfg.bias", (8,)),
        ("mix", (8, 8)),
    ]


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x + torch.tensor(x.tolist()),  # built from the inputs
        lambda x: x + torch.tensor([row[::-1] for row in x.tolist()]),
        lambda x: x[:, torch.tensor(INDICES)],  # integers: an index
        lambda x: x * torch.tensor(INDICES, dtype=torch.float32),  # integers made floats
        lambda x: x + torch.zeros(list(x.shape)),  # a shape
        lambda x: x + torch.tensor(RGB_MEAN).sum(),  # three numbers
        lambda x: x * torch.tensor(HALVES),  # one number, eight times
    ],
    ids=["tolist", "tolist-rebuilt", "indices", "int-as-float", "shape", "rgb-mean", "halves"],
)
def test_lists_built_in_forward_or_holding_no_weight_are_not_listed(read) -> None:
    assert _checked(Reads(read), torch.randn(2, 8)) == []


def test_a_global_that_only_a_comprehension_names_is_named() -> None:
    """``_candidates`` read only the names of forward's own code: a global that a generator
    expression in it names was not found, so a tensor was listed unnamed
    (``<tensor outside the model #0>``) and a list not at all."""
    tensor = Reads(lambda x: sum(x @ GLOBAL_MATRIX for _ in range(1)))
    assert _checked(tensor, torch.randn(2, 8)) == [(f"{__name__}.GLOBAL_MATRIX", (8, 8))]
    listed = Reads(lambda x: sum(x + torch.tensor(B_TUPLE) for _ in range(1)))
    assert _checked(listed, torch.randn(2, 8)) == [(f"{__name__}.B_TUPLE", (8,))]
