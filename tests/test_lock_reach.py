"""What the protector's lock reaches: a parameter that ``forward`` creates for one call is no
layer outside the model; a layer the lock cannot see inside an unregistered module is refused
with a message that says where it may be; a compiled layer kept in a plain list is locked; the
walk of plain attributes skips strings and numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.coverage import plain_leaves
from skprotect_pytorch.lock.outside import run_keyed_checked


def _locked_run(model: nn.Module, x: torch.Tensor, zero_key: bool = False) -> torch.Tensor:
    """``model`` locked, run once through :func:`run_keyed_checked` with its key (or zeros)."""
    locked = lock_model(
        model.eval(), layer_filter=lambda name, module: True, secret_rng=np.random.default_rng(0)
    )
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        return run_keyed_checked("net", locked.keyed, [x.clone(), key * (not zero_key)])


class ScalesByANewParameter(nn.Module):
    """Wraps a constant in an ``nn.Parameter`` inside ``forward``: dropped after each call."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.Parameter(torch.full((8,), 2.0), requires_grad=False)
        return self.a(x) * scale


def test_a_parameter_created_in_forward_is_not_refused() -> None:
    """It was refused as 'a layer reached through a global variable', with no way out."""
    torch.manual_seed(0)
    model, x = ScalesByANewParameter(), torch.randn(2, 8)
    with torch.no_grad():
        expected = model(x)
    assert_equivalent(_locked_run(model, x), expected)


class Blocks(nn.Module):
    """Holds its layer in a plain list: the lock does not look into an unregistered module."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = [nn.Linear(8, 8)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[0](x)


class HoldsBlocksUnregistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.__dict__["inner"] = Blocks()  # a plain attribute, not a registered child
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.inner(x))


def test_a_layer_inside_an_unregistered_module_is_refused_saying_where() -> None:
    """The message named only globals and closures: this layer is in the model's copy."""
    with pytest.raises(InvalidArgumentError, match="plain attribute of an unregistered module"):
        _locked_run(HoldsBlocksUnregistered(), torch.randn(2, 8))


def test_the_walk_of_plain_attributes_skips_strings_and_numbers() -> None:
    """A vocabulary of a million strings took the lock from 2 s to 9.6 s: each was walked and
    its path formatted, though no check looks for a string or a number."""
    layer = nn.Linear(2, 2)
    value = {"vocab": {f"tok{i}": i for i in range(3)}, "names": ["a", 1.5, None], "m": layer}
    assert list(plain_leaves(value, "x")) == [("x['m']", layer)]


class CompiledInAList(nn.Module):
    """A compiled layer, registered and also kept in a plain list that ``forward`` iterates."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.compile(nn.Linear(8, 8))
        self.b = nn.Linear(8, 8)
        self.order = [self.a, self.b]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.order:
            x = torch.relu(layer(x))
        return x


def test_a_compiled_layer_kept_in_a_plain_list_is_locked() -> None:
    """Its wrapper in the list kept calling the unlocked layer: refused as 'a global variable'
    though the model held it, while the registered one was unwrapped and locked; the list's
    wrapper was reported as an unregistered module, its weight in plaintext."""
    torch.manual_seed(0)
    model, x = CompiledInAList(), torch.randn(4, 8)
    with torch.no_grad():
        expected = model(x)
    assert_equivalent(_locked_run(model, x), expected)
    assert_garbage(_locked_run(model, x, zero_key=True), expected)
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    assert locked.plaintext == []
