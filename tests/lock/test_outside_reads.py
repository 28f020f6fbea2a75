"""Plain tensors that ``forward`` reads outside the model are listed as
plaintext (trainable ones refused); tracing leaves no constant on the lock's copy; a class's
method applied to a layer with ``functools.partial`` is refused naming the attribute; a lambda
that reads only a number through ``self`` is allowed; the locked copy shares plain data instead
of copying it again."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from torch import nn

from skprotect_pytorch.errors import InvalidArgumentError, UnsupportedLayerError
from skprotect_pytorch.lock import _swap, lock_model
from skprotect_pytorch.lock.outside import _candidates, run_keyed_checked

torch.manual_seed(0)
GLOBAL_WEIGHT = torch.randn(8, 8)
GLOBAL_VECTOR = torch.full((8,), 0.5)  # one number: not a weight
TRAINABLE = torch.randn(8, 8, requires_grad=True)


def _lock(model: nn.Module):
    return lock_model(
        model.eval(), layer_filter=lambda name, module: True, secret_rng=np.random.default_rng(0)
    )


def _checked(locked, x: torch.Tensor, zero_key: bool = False) -> torch.Tensor:
    """The locked model run once through :func:`run_keyed_checked` with its key (or zeros)."""
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        return run_keyed_checked("net", locked.keyed, [x.clone(), key * (not zero_key)])


def _reads_outside() -> nn.Module:
    """Reads a global matrix, a closure's matrix and a class attribute's; and constants that
    are not weights: a global vector of one number, a mask made in forward, a registered
    buffer, the input."""
    closed = torch.randn(8, 8)

    class ReadsOutside(nn.Module):
        TABLE = torch.randn(8, 8)

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.register_buffer("mask", torch.tril(torch.ones(8, 8)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            causal = torch.triu(torch.ones(8, 8))
            h = self.a(x @ GLOBAL_WEIGHT) @ closed + x @ self.TABLE + GLOBAL_VECTOR
            return h @ causal + h @ self.mask + torch.arange(8).float() * x

    return ReadsOutside()


def test_plain_tensors_read_outside_the_model_are_listed_as_plaintext_weights() -> None:
    """They shipped as constants of every export, listed nowhere (their parameters, the
    same layer's, were refused)."""
    torch.manual_seed(0)
    model, x = _reads_outside(), torch.randn(2, 8)
    locked = _lock(model)
    with torch.no_grad():
        expected = model(x)
    assert_equivalent(_checked(locked, x), expected)
    assert [(w.name, w.shape) for w in locked.plaintext] == [
        (f"{__name__}.GLOBAL_WEIGHT", (8, 8)),
        ("_reads_outside.<locals>.ReadsOutside.forward: closed", (8, 8)),
        ("_reads_outside.<locals>.ReadsOutside.TABLE", (8, 8)),
    ]
    assert all("register it as a buffer" in w.reason for w in locked.plaintext)
    assert locked.keyed.plaintext is locked.plaintext  # the protector's result reads this list
    _checked(locked, x)
    assert len(locked.plaintext) == 3  # a second run lists nothing twice


class ReadsATrainableTensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) @ TRAINABLE


def test_a_trainable_tensor_read_outside_the_model_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=rf"{__name__}\.TRAINABLE \(8, 8\)"):
        _checked(_lock(ReadsATrainableTensor()), torch.randn(2, 8))


def test_the_refusal_of_a_trainable_tensor_says_what_to_do_with_it() -> None:
    """It said only how to assign a layer to the model, which a tensor is not."""
    with pytest.raises(InvalidArgumentError, match=r"requires_grad_\(False\)"):
        _checked(_lock(ReadsATrainableTensor()), torch.randn(2, 8))


def test_tracing_leaves_no_constant_on_the_locked_copy() -> None:
    """torch.fx stored each outside tensor on the copy as ``_tensor_constantN``: listed as the
    model's own plain tensors under that name, and hiding them from the checked run."""
    locked = _lock(_reads_outside())
    assert not [a for a in vars(locked.keyed.model) if a.startswith("_tensor_constant")]
    assert [b.name for b in locked.plaintext_buffers] == ["mask"]


class PartialCalls(nn.Module):
    """Calls layer ``a`` through ``self.fwd``, a ``functools.partial`` that each case sets."""

    def __init__(self, make) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 4)
        self.fwd = make(self.a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.fwd(x)))


def _apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x)


def test_a_partial_of_a_layer_class_method_is_refused_naming_it() -> None:
    """It gave the generic output mismatch (8.1 relative), naming no attribute."""
    make = lambda a: functools.partial(nn.Linear.forward, a)  # noqa: E731
    with pytest.raises(InvalidArgumentError) as err:
        _lock(PartialCalls(make))
    assert "'fwd' (functools.partial(Linear.forward, <layer 'a'>))" in str(err.value)
    assert "self.layer.forward" in str(err.value)


@pytest.mark.parametrize(
    "make",
    [
        functools.partial,
        lambda a: functools.partial(nn.Module.__call__, a),
        lambda a: functools.partial(_apply, a),
    ],
    ids=["the layer", "Module.__call__", "a function calling it"],
)
def test_a_partial_that_calls_the_layer_is_locked(make) -> None:
    torch.manual_seed(0)
    model, x = PartialCalls(make).eval(), torch.randn(2, 8)
    with torch.no_grad():
        expected = model(x)
    locked = _lock(model)
    assert_equivalent(_checked(locked, x), expected)
    assert_garbage(_checked(locked, x, zero_key=True), expected)


class Scales(nn.Module):
    """Applies ``self.act``, a lambda that each case sets, after layer ``a``."""

    def __init__(self, make) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.scale = 0.5
        self.sizes = (2, 4)
        self.act = make(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.a(x))


def test_a_lambda_reading_numbers_through_self_is_locked() -> None:
    """It was refused: ``self`` holds the layers, though the lambda reads only numbers."""
    torch.manual_seed(0)
    model = Scales(lambda m: lambda x: x * m.scale * m.sizes[0])
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = model.eval()(x)
    locked = _lock(model)
    assert_equivalent(_checked(locked, x), expected)
    assert_garbage(_checked(locked, x, zero_key=True), expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: lambda x: m.a(x) * m.scale,  # calls the layer
        lambda m: lambda x: x * m.a.weight.sum(),  # reads a layer's weight
        lambda m: lambda x: _apply(m.a, x) * m.scale,  # passes a layer on
        lambda m: lambda x: x * sum(m.scale for _ in range(1)),  # a nested function uses it
    ],
    ids=["call", "weight", "passed on", "nested"],
)
def test_a_lambda_that_may_reach_a_layer_through_self_is_still_refused(make) -> None:
    with pytest.raises(InvalidArgumentError, match="'act' are functions"):
        _lock(Scales(make))


def test_the_locked_copy_shares_plain_data_and_replaces_every_layer_reference() -> None:
    """The lock's own copy was copied again whole: 0.8 s of a 2 s lock for a dict of a million
    entries.  Plain data is shared now; whatever may hold a layer is still copied with the
    locked layer in its place."""
    model = nn.Module()
    model.a = nn.Linear(2, 2)
    locked_a = nn.Linear(2, 2)
    model.vocab = {f"tok{i}": i for i in range(1000)}
    model.table = np.zeros((4, 4))
    model.constant = torch.ones(4, 4)
    model.mixed = {"order": [model.a], "ids": [1, 2, 3], "extra": (None, 1.5)}
    model.first, model.second = [], []
    model.first += [model.second, model.a]  # a cycle through a layer
    model.second.append(model.first)
    copy = _swap(model, {id(model.a): locked_a})
    assert copy.a is locked_a and copy.mixed["order"][0] is locked_a
    assert copy.vocab is model.vocab and copy.table is model.table
    assert copy.constant is model.constant
    assert copy.mixed["ids"] is model.mixed["ids"] and copy.mixed is not model.mixed
    assert copy.first[1] is locked_a and copy.first[0][0][1] is locked_a


def test_a_structured_array_holding_a_layer_is_copied_with_the_locked_layer() -> None:
    """Only an ``object`` dtype was taken for one that may hold a layer: a structured array
    with an object field was shared, its layer left unlocked (zero key gave the original's
    outputs) and the checked run refused the model's own layer as one it does not hold."""
    model = nn.Module()
    model.a = nn.Linear(2, 2)
    model.rows = np.zeros(1, dtype=[("layer", object), ("weight", float)])
    model.rows[0]["layer"] = model.a
    locked_a = nn.Linear(2, 2)
    copy = _swap(model, {id(model.a): locked_a})
    assert copy.rows[0]["layer"] is locked_a and copy.rows is not model.rows


TABLES = {"w": torch.randn(8, 8)}
DEFAULT_WEIGHT = torch.randn(8, 8)


class ReadsADictAndADefault(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, w: torch.Tensor = DEFAULT_WEIGHT) -> torch.Tensor:
        return self.a(x @ TABLES["w"] + x @ w)


def test_tensors_in_a_global_dict_or_a_default_argument_are_named() -> None:
    """Both were listed as ``<tensor outside the model #N>``, which says nowhere to look."""
    locked = _lock(ReadsADictAndADefault())
    _checked(locked, torch.randn(2, 8))
    assert [(w.name, w.shape) for w in locked.plaintext] == [
        (f"{__name__}.TABLES['w']", (8, 8)),
        ("ReadsADictAndADefault.forward: default w", (8, 8)),
    ]


def test_each_class_is_searched_once_for_the_tensors_read_outside() -> None:
    """Each instance's class was searched again: naming 50 global tensors read by a model of
    2,000 blocks took 7.3 s (0.14 s now)."""
    one = list(_candidates(nn.Sequential(ReadsADictAndADefault())))
    many = list(_candidates(nn.Sequential(*(ReadsADictAndADefault() for _ in range(20)))))
    assert len(many) == len(one)


HELPER_WEIGHT = torch.randn(8, 8)


def _helper(x: torch.Tensor) -> torch.Tensor:
    return x @ HELPER_WEIGHT


class _Projector:
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ HELPER_WEIGHT.T


def _hook(weight: torch.Tensor):
    return lambda module, args: (args[0] @ weight,)


class ReadsThroughHelpers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.projector = _Projector()
        self.register_forward_pre_hook(_hook(torch.randn(8, 8)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(_helper(x) + self.projector.apply(x))


def test_tensors_read_by_helper_functions_objects_and_hooks_are_named() -> None:
    """A global that a module-level helper, a helper object's method or a hook reads was
    listed as ``<tensor outside the model #N>``."""
    locked = _lock(ReadsThroughHelpers())
    _checked(locked, torch.randn(2, 8))
    assert {w.name for w in locked.plaintext} == {
        f"{__name__}.HELPER_WEIGHT",
        "_hook.<locals>.<lambda>: weight",
    }


COMPLEX_FILTER = torch.randn(8, 8, dtype=torch.complex64)


class ReadsAComplexMatrix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a((x.to(torch.complex64) @ COMPLEX_FILTER).real)


def test_a_complex_matrix_read_outside_the_model_is_listed() -> None:
    """Only floating-point dtypes were listed: a complex filter shipped unreported."""
    locked = _lock(ReadsAComplexMatrix())
    _checked(locked, torch.randn(2, 8))
    assert [(w.name, w.shape) for w in locked.plaintext] == [(f"{__name__}.COMPLEX_FILTER", (8, 8))]


def test_a_model_with_no_layer_locked_groups_the_layers_by_reason() -> None:
    """Each layer was named with its reason: 81,000 characters for 2,000 excluded layers."""
    model = nn.Sequential(*(nn.Linear(4, 4) for _ in range(50)), nn.ReLU())
    with pytest.raises(UnsupportedLayerError) as caught:
        lock_model(model, layer_filter=lambda name, m: False, secret_rng=np.random.default_rng(0))
    assert "(0, 1, 2 and 47 more: excluded by layer_filter)" in str(caught.value)
    assert len(str(caught.value)) < 300


class _Config:
    def __init__(self) -> None:
        self.proj = torch.randn(8, 8)


class KeepsATensorInAnObject(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.cfg = _Config()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x @ self.cfg.proj)


def test_a_tensor_kept_in_an_object_the_model_holds_is_named_by_its_path() -> None:
    """It was listed as ``<tensor outside the model #0>``, as if read from a global."""
    locked = _lock(KeepsATensorInAnObject())
    _checked(locked, torch.randn(2, 8))
    assert [(w.name, w.shape) for w in locked.plaintext] == [("cfg.proj", (8, 8))]
