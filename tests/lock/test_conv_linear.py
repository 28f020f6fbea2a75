"""Linear, Conv1d/2d and ConvTranspose1d/2d lockers: a table of layer variants, each checked for
exact reproduction with the static key, garbage without it, robustness to malformed keys,
BatchNorm folding decisions, and reproducibility."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.assertions import assert_equivalent, assert_garbage, garbage_ratio, rel_err
from tests.models import randomize_batchnorms
from torch import nn

from skprotect_pytorch.lock import LockSettings, lock_model

Inputs = list[torch.Tensor]


def lock_all(model: nn.Module, seed: int = 0, **kwargs):
    return lock_model(
        model,
        layer_filter=lambda name, m: True,
        secret_rng=np.random.default_rng(seed),
        **kwargs,
    )


def static_key(locked) -> torch.Tensor:
    return torch.from_numpy(locked.layout.static_key())


def run(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


# ---------------------------------------------------------------------------------------------
# Modules used by the table
# ---------------------------------------------------------------------------------------------


class Pair(nn.Module):
    """``layer`` sandwiched between two 1×1 channel maps, so that its key ops are not the
    model's first/last op (garbage must also come from inner layers)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layer(x))


class CallWithOutputSize(nn.Module):
    def __init__(self, layer: nn.Module, output_size: list[int]) -> None:
        super().__init__()
        self.layer = layer
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, output_size=self.output_size)


class ConvBNCustom(nn.Module):
    """conv → BN → ReLU written in a custom forward (fx-traceable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


class ConvTwoBN(nn.Module):
    """One conv output feeds two BatchNorms: folding into the conv would be wrong for one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.bn_b = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn_a(y) + torch.relu(self.bn_b(y))


class SharedConvTwoBN(nn.Module):
    """The same conv is called on two paths, each followed by its own BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_b(self.conv(torch.relu(self.bn_a(self.conv(x)))))


class SequentialAsContainer(nn.Module):
    """Untraceable forward (data-dependent branch) indexing a Sequential used as a container:
    conv and BN are adjacent in the Sequential but not in the computation."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.parts[0](x)
        y = y + 1.0 if bool(x.sum() > -1e9) else y  # fx cannot trace this branch
        return self.head(self.parts[1](torch.relu(y)))


class SharedTwice(nn.Module):
    """A module reused twice in one forward."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.relu(self.layer(x)))


class ListModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 6)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerCase:
    id: str
    build: Callable[[], nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]
    folded: int | None = None
    """Expected number of folded (conv, BN) pairs; ``None``: not checked."""
    train_bn: bool = False
    """Put every BatchNorm in training mode after ``eval()`` (the user's choice)."""
    xfail: str | None = None


def _conv(dim: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv1d, nn.Conv2d)[dim - 1](*args, **kwargs)


def _convt(dim: int, *args, **kwargs) -> nn.Module:
    return (nn.ConvTranspose1d, nn.ConvTranspose2d)[dim - 1](*args, **kwargs)


def _bn(dim: int, n: int) -> nn.Module:
    return (nn.BatchNorm1d, nn.BatchNorm2d)[dim - 1](n)


def _spatial(dim: int, size: int) -> tuple[int, ...]:
    return (size,) * dim


def _linear_cases() -> list[LayerCase]:
    return [
        LayerCase("linear-bias", lambda: nn.Linear(12, 10), ((4, 12),)),
        LayerCase("linear-nobias", lambda: nn.Linear(12, 10, bias=False), ((4, 12),)),
        LayerCase("linear-3d-input", lambda: nn.Linear(12, 10), ((2, 5, 12),)),
        LayerCase("linear-unbatched", lambda: nn.Linear(12, 10), ((12,),)),
        LayerCase("linear-wide-out", lambda: nn.Linear(6, 40), ((3, 6),)),
        LayerCase(
            "linear-head-out1",
            lambda: nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 1)),
            ((8, 12),),
        ),
        LayerCase(
            "linear-in1",
            lambda: nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 4)),
            ((8, 1),),
        ),
    ]


_CONV_VARIANTS: dict[str, tuple[tuple, dict]] = {
    # id suffix: ((in, out, kernel), kwargs)
    "bias": ((4, 8, 3), {}),
    "nobias": ((4, 8, 3), {"bias": False}),
    "stride2": ((4, 8, 3), {"stride": 2}),
    "pad1": ((4, 8, 3), {"padding": 1}),
    "pad-same": ((4, 8, 3), {"padding": "same"}),
    "pad-valid": ((4, 8, 3), {"padding": "valid"}),
    "reflect": ((4, 8, 3), {"padding": 1, "padding_mode": "reflect"}),
    "replicate": ((4, 8, 3), {"padding": 1, "padding_mode": "replicate"}),
    "circular": ((4, 8, 3), {"padding": 1, "padding_mode": "circular"}),
    "dilation2": ((4, 8, 3), {"dilation": 2, "padding": 2}),
    "groups2": ((8, 8, 3), {"groups": 2, "padding": 1}),
    "groups4": ((8, 12, 3), {"groups": 4, "padding": 1}),
    "depthwise": ((8, 8, 3), {"groups": 8, "padding": 1}),
    "depthwise-mult2": ((8, 16, 3), {"groups": 8, "padding": 1}),
    "wide-in": ((24, 6, 1), {}),
    # thin stems: taps unfolded into channels (LockSettings.unfold_taps_max)
    "stem-grey": ((1, 8, 3), {"padding": 1}),
    "stem-rgb-stride2-reflect": ((3, 8, 3), {"stride": 2, "padding": 1, "padding_mode": "reflect"}),
    "stem-one-channel-out": ((1, 1, 3), {}),
}


def _conv_cases() -> list[LayerCase]:
    cases = []
    for dim in (1, 2):
        for suffix, (args, kwargs) in _CONV_VARIANTS.items():
            cases.append(
                LayerCase(
                    f"conv{dim}d-{suffix}",
                    lambda dim=dim, args=args, kwargs=kwargs: _conv(dim, *args, **kwargs),
                    ((2, args[0], *_spatial(dim, 7)),),
                )
            )
        cases.append(
            LayerCase(
                f"conv{dim}d-unbatched",
                lambda dim=dim: _conv(dim, 4, 8, 3, padding=1),
                ((4, *_spatial(dim, 6)),),
            )
        )
    return cases


_CONVT_VARIANTS: dict[str, tuple[tuple, dict]] = {
    "bias": ((4, 8, 3), {}),
    "nobias": ((4, 8, 3), {"bias": False}),
    "stride2": ((4, 8, 3), {"stride": 2, "padding": 1}),
    "stride2-outpad1": ((4, 8, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
    "stride3-outpad2": ((6, 4, 4), {"stride": 3, "output_padding": 2}),
    "dilation2": ((4, 8, 3), {"dilation": 2}),
    "groups2": ((8, 8, 3), {"groups": 2}),
    "groups4-outpad": ((8, 12, 3), {"groups": 4, "stride": 2, "output_padding": 1}),
    "depthwise": ((8, 8, 3), {"groups": 8}),
    "wide-in": ((24, 6, 2), {"stride": 2}),
}


def _convt_cases() -> list[LayerCase]:
    cases = []
    for dim in (1, 2):
        for suffix, (args, kwargs) in _CONVT_VARIANTS.items():
            cases.append(
                LayerCase(
                    f"convt{dim}d-{suffix}",
                    lambda dim=dim, args=args, kwargs=kwargs: _convt(dim, *args, **kwargs),
                    ((2, args[0], *_spatial(dim, 5)),),
                )
            )
        # 5 → (5-1)*2 - 2 + 3 = 9, output_size may ask for 10.
        cases.append(
            LayerCase(
                f"convt{dim}d-output-size-arg",
                lambda dim=dim: CallWithOutputSize(
                    _convt(dim, 4, 8, 3, stride=2, padding=1), list(_spatial(dim, 10))
                ),
                ((2, 4, *_spatial(dim, 5)),),
            )
        )
        cases.append(
            LayerCase(
                f"convt{dim}d-unbatched",
                lambda dim=dim: _convt(dim, 4, 8, 3, stride=2),
                ((4, *_spatial(dim, 5)),),
            )
        )
    return cases


def _bn_cases() -> list[LayerCase]:
    cases = []
    for dim in (1, 2):
        cases += [
            LayerCase(
                f"fold-seq-conv{dim}d-bn",
                lambda dim=dim: nn.Sequential(
                    _conv(dim, 4, 8, 3, padding=1),
                    _bn(dim, 8),
                    nn.ReLU(),
                    _conv(dim, 8, 6, 3, bias=False),
                    _bn(dim, 6),
                ),
                ((2, 4, *_spatial(dim, 7)),),
                folded=2,
            ),
            LayerCase(
                f"fold-seq-convt{dim}d-bn",
                lambda dim=dim: nn.Sequential(
                    _convt(dim, 4, 8, 3, stride=2, groups=2), _bn(dim, 8), nn.ReLU()
                ),
                ((2, 4, *_spatial(dim, 5)),),
                folded=1,
            ),
            LayerCase(
                f"fold-seq-depthwise{dim}d-bn",
                lambda dim=dim: nn.Sequential(
                    _conv(dim, 8, 8, 3, groups=8, bias=False), _bn(dim, 8), nn.ReLU()
                ),
                ((2, 8, *_spatial(dim, 6)),),
                folded=1,
            ),
        ]
    cases += [
        LayerCase("fold-custom-forward", ConvBNCustom, ((2, 4, 6, 6),), folded=1),
        LayerCase(
            "nofold-bn-training",
            lambda: nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)),
            ((4, 4, 6, 6),),
            folded=0,
            train_bn=True,
        ),
        LayerCase("nofold-conv-feeds-two-bn", ConvTwoBN, ((2, 4, 6, 6),), folded=0),
        LayerCase("nofold-shared-conv-two-bn", SharedConvTwoBN, ((2, 4, 6, 6),), folded=0),
        LayerCase(
            "nofold-untraceable-sequential-container",
            SequentialAsContainer,
            ((2, 4, 6, 6),),
            folded=0,
        ),
        LayerCase(
            "resnet-style-block",
            lambda: __import__("tests.models", fromlist=["BasicBlock"]).BasicBlock(4, 8, 2),
            ((2, 4, 8, 8),),
            folded=3,
        ),
    ]
    return cases


def _structure_cases() -> list[LayerCase]:
    return [
        LayerCase("shared-linear-twice", lambda: SharedTwice(nn.Linear(10, 10)), ((3, 10),)),
        LayerCase(
            "shared-conv-twice",
            lambda: SharedTwice(nn.Conv2d(4, 4, 3, padding=1)),
            ((2, 4, 6, 6),),
        ),
        LayerCase(
            "shared-in-two-parents",
            lambda: (lambda lin: nn.Sequential(nn.Sequential(lin, nn.ReLU()), lin))(
                nn.Linear(8, 8)
            ),
            ((3, 8),),
        ),
        LayerCase("module-list", ListModel, ((3, 12),)),
        LayerCase(
            "conv-relu-linear",
            lambda: nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 5)),
            ((2, 3, 8),),
        ),
    ]


LAYER_CASES: list[LayerCase] = (
    _linear_cases() + _conv_cases() + _convt_cases() + _bn_cases() + _structure_cases()
)
assert len({c.id for c in LAYER_CASES}) == len(LAYER_CASES), "duplicate case ids"


def _params(cases: list[LayerCase], xfail: bool = True):
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(reason=c.xfail, strict=True)] if (c.xfail and xfail) else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def build(case: LayerCase, seed: int = 0) -> tuple[nn.Module, Inputs]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    model = case.build()
    randomize_batchnorms(model, gen)
    model.eval()
    if case.train_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    inputs = [torch.randn(*s, generator=gen) for s in case.input_shapes]
    return model, inputs


def reference(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """The original's output, on a copy (a training-mode BN would update its running stats)."""
    return run(copy.deepcopy(model), inputs)


def fresh_inputs(case: LayerCase, seed: int) -> Inputs:
    gen = torch.Generator().manual_seed(seed)
    return [3.0 * torch.randn(*s, generator=gen) for s in case.input_shapes]


# ---------------------------------------------------------------------------------------------
# Tests over the table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _params(LAYER_CASES))
def test_static_key_reproduces_original(case: LayerCase) -> None:
    model, inputs = build(case)
    locked = lock_all(model)
    assert locked.locked_layers, "no layer locked"
    assert not locked.skipped_layers, locked.skipped_layers
    if case.folded is not None:
        assert len(locked.folded_batchnorms) == case.folded, locked.folded_batchnorms
    key = static_key(locked)
    assert key.numel() == locked.keyed.key_length
    assert_equivalent(run(locked.keyed, [*inputs, key]), reference(model, inputs))
    for seed in (1, 2):
        fresh = fresh_inputs(case, seed)
        assert_equivalent(run(locked.keyed, [*fresh, key]), reference(model, fresh))


@pytest.mark.parametrize("mode", [False, True])
@pytest.mark.parametrize(
    "build_model",
    [lambda: nn.GRU(4, 16), lambda: nn.Linear(8, 16), lambda: nn.Sequential(nn.Linear(8, 16))],
    ids=["gru-root", "linear-root", "sequential"],
)
def test_locked_modules_keep_the_mode_of_what_they_replace(build_model, mode: bool) -> None:
    """A locked layer is a new module (those start in training mode): it takes the mode of the
    layer it replaces, so a model locked in eval mode exports in eval mode, even when the
    locked layer is the root."""
    locked = lock_all(build_model().train(mode))
    assert {m.training for m in locked.keyed.modules()} == {mode}


@pytest.mark.parametrize("case", _params(LAYER_CASES, xfail=False))
def test_user_model_is_not_modified(case: LayerCase) -> None:
    model, _ = build(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    children = [id(m) for m in model.modules()]
    lock_all(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed by lock_model"
    assert modes == [m.training for m in model.modules()]
    assert children == [id(m) for m in model.modules()]


@pytest.mark.parametrize("case", _params(LAYER_CASES, xfail=False))
def test_wrong_keys_give_garbage(case: LayerCase) -> None:
    model, inputs = build(case)
    locked = lock_all(model, seed=0)
    other = lock_all(model, seed=1)
    ref = reference(model, inputs)
    n = locked.keyed.key_length
    assert other.keyed.key_length == n
    gen = torch.Generator().manual_seed(7)
    wrong = {
        "zero": torch.zeros(n),
        "random": torch.randn(n, generator=gen) * 4.0,
        "other-copy": static_key(other),
    }
    outcomes = _outcomes(locked, inputs, ref, wrong)
    close = {k: r for k, r in outcomes.items() if not r > 0.5}
    assert not close, f"wrong keys gave near-correct outputs (‖out−ref‖/‖ref‖): {close}"


def _malformed_keys(key: torch.Tensor) -> dict[str, torch.Tensor]:
    n = key.numel()
    return {
        "shorter-half": key[: n // 2],
        "shorter-1": key[:-1],
        "empty": key[:0],
        "longer+1": torch.cat([key, key[:1]]),
        "longer-x2": torch.cat([key, key]),
        "float64": key.double(),
        "int64": key.round().long(),
        "2d": key.reshape(1, -1),
        "2d-transposed-len": torch.cat([key, key]).reshape(2, -1),
        "nan": torch.full_like(key, float("nan")),
        "inf": torch.full_like(key, float("inf")),
        "huge": torch.full_like(key, 3e38),
        "negative": -key.abs() - 1.0,
    }


def _outcomes(locked, inputs: Inputs, ref, keys: dict[str, torch.Tensor]) -> dict[str, float]:
    """Run every key; map its name to ‖out − ref‖/‖ref‖, or ``nan`` for a clean exception."""
    outcomes = {}
    for name, key in keys.items():
        try:
            out = run(locked.keyed, [*inputs, key])
        except Exception as err:  # a clean Python exception is acceptable, a crash is not
            assert str(err), f"{name}: exception without a message"
            outcomes[name] = float("nan")
            continue
        outcomes[name] = garbage_ratio(out, ref)
    return outcomes


@pytest.mark.parametrize("case", _params(LAYER_CASES, xfail=False))
def test_malformed_random_keys_give_error_or_garbage(case: LayerCase) -> None:
    """A malformed key without the secret: a clean exception or garbage, never a crash."""
    model, inputs = build(case)
    locked = lock_all(model)
    gen = torch.Generator().manual_seed(3)
    random_key = torch.rand(locked.keyed.key_length, generator=gen) * 8.0
    outcomes = _outcomes(locked, inputs, reference(model, inputs), _malformed_keys(random_key))
    close = {k: r for k, r in outcomes.items() if not (np.isnan(r) or r > 0.5)}
    assert not close, f"malformed keys gave near-correct outputs: {close}"


# Encodings of the right key that the decoder deliberately accepts (flatten, cast to float32,
# ignore the tail): they reproduce the original exactly.
_FAITHFUL = {"longer+1", "longer-x2", "float64", "2d", "2d-transposed-len"}
# Keys that keep the secret permutations but lose scale information (one factor, or the
# fractional part): outputs are degraded, neither exact nor necessarily garbage.
_DEGRADED = {"shorter-1", "int64"}


@pytest.mark.parametrize("case", _params(LAYER_CASES))
def test_malformed_static_keys_never_crash(case: LayerCase) -> None:
    """The right key in a wrong container: exact (faithful encodings), an error, or garbage."""
    model, inputs = build(case)
    locked = lock_all(model)
    outcomes = _outcomes(
        locked, inputs, reference(model, inputs), _malformed_keys(static_key(locked))
    )
    wrong = {
        k: r
        for k, r in outcomes.items()
        if not np.isnan(r) and k not in _DEGRADED and not (r < 1e-4 if k in _FAITHFUL else r > 0.5)
    }
    assert not wrong, f"unexpected outcomes (‖out−ref‖/‖ref‖): {wrong}"


@pytest.mark.parametrize("case", _params(LAYER_CASES, xfail=False))
def test_same_seed_is_reproducible(case: LayerCase) -> None:
    model, _ = build(case)
    a, b, c = lock_all(model, seed=5), lock_all(model, seed=5), lock_all(model, seed=6)
    np.testing.assert_array_equal(a.layout.static_key(), b.layout.static_key())
    sa, sb, sc = a.keyed.state_dict(), b.keyed.state_dict(), c.keyed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert not np.array_equal(a.layout.static_key(), c.layout.static_key())
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if k.endswith("weight"))


# ---------------------------------------------------------------------------------------------
# layer_filter
# ---------------------------------------------------------------------------------------------


class FilterModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2)
        )
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.shared = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(torch.relu(self.features(x)))  # (N, 4, 8, 8)
        x = x.mean(dim=(2, 3)).repeat(1, 4)
        return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))


_SUPPORTED = ["features.0", "features.2", "up", "shared", "head"]


@pytest.mark.parametrize(
    "selected",
    [
        pytest.param({"features.0", "head"}, id="conv-and-head"),
        pytest.param({"up", "shared"}, id="convt-and-shared"),
        pytest.param({"features.2"}, id="grouped-only"),
        pytest.param(set(_SUPPORTED), id="all"),
    ],
)
def test_layer_filter_selects_subset(selected: set[str]) -> None:
    torch.manual_seed(0)
    model = FilterModel().eval()
    x = torch.randn(2, 3, 6, 6)
    calls: list[tuple[str, type]] = []

    def layer_filter(name: str, module: nn.Module) -> bool:
        calls.append((name, type(module)))
        return name in selected

    locked = lock_model(model, layer_filter=layer_filter, secret_rng=np.random.default_rng(0))
    assert sorted(n for n, _ in calls) == sorted(_SUPPORTED), calls
    original = dict(model.named_modules())
    for name, kind in calls:
        assert kind is type(original[name])
    assert {d.name for d in locked.locked_layers} == selected
    assert {d.name for d in locked.skipped_layers} == set(_SUPPORTED) - selected
    locked_modules = dict(locked.keyed.model.named_modules())
    for name in set(_SUPPORTED) - selected:
        kept = locked_modules[name]
        assert type(kept) is type(original[name])
        assert torch.equal(kept.weight, original[name].weight)
        assert torch.equal(kept.bias, original[name].bias)
    for name in selected:
        assert type(locked_modules[name]) is not type(original[name])
    key = static_key(locked)
    assert_equivalent(run(locked.keyed, [x, key]), run(model, [x]))
    if selected == set(_SUPPORTED):  # with a subset locked, biases may dominate the output
        assert_garbage(run(locked.keyed, [x, torch.zeros_like(key)]), run(model, [x]))


def test_layer_filter_must_return_bool() -> None:
    with pytest.raises(ValueError, match="layer_filter must return a bool"):
        lock_model(
            nn.Linear(4, 4), layer_filter=lambda n, m: 1, secret_rng=np.random.default_rng(0)
        )


def test_single_channel_layer_is_reported_not_silently_skipped() -> None:
    from skprotect_pytorch.errors import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError, match="single input and output channel"):
        lock_all(nn.Linear(1, 1))
    locked = lock_all(nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 8)))
    assert [d.name for d in locked.skipped_layers] == ["0"]
    assert "single input and output channel" in locked.skipped_layers[0].reason


def _stored_kernels(locked, name: str) -> torch.Tensor:
    mod = locked.keyed.model.get_submodule(name)
    return mod.conv.weight.detach().double().reshape(mod.conv.out_channels, -1)


def test_thin_stem_taps_are_unfolded_so_the_lock_reaches_them() -> None:
    """A one-group conv with few input channels has its taps unfolded into channels: channel
    mixing alone keeps every stored kernel in the span of the true kernels (here a rank-2 set of
    spatial profiles, so the stored kernels reveal them exactly); unfolded, the taps are mixed
    and keyed, and the stored kernels leave that span."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 3, padding=1)
    profiles = torch.randn(2, 9)
    with torch.no_grad():
        conv.weight.copy_((torch.randn(8, 2) @ profiles).reshape(8, 1, 3, 3))
    model = nn.Sequential(conv, nn.ReLU()).eval()
    basis = torch.linalg.qr(profiles.double().T).Q  # (9, 2): the true kernels' span

    def outside_span(locked) -> float:
        k = _stored_kernels(locked, "0")
        rest = k.reshape(-1, 9) - (k.reshape(-1, 9) @ basis) @ basis.T
        return float(rest.norm() / k.norm())

    plain = lock_all(model, settings=LockSettings(unfold_taps_max=0))
    assert plain.keyed.model[0].unfold is None
    assert outside_span(plain) < 1e-6
    locked = lock_all(model)
    unfold = locked.keyed.model[0].unfold
    assert unfold.out_channels == 9 and unfold.groups == 1 and not unfold.weight.requires_grad
    assert locked.keyed.model[0].conv.kernel_size == (1, 1)
    assert outside_span(locked) > 0.3
    x = torch.randn(2, 1, 6, 6)
    assert_equivalent(run(locked.keyed, [x, static_key(locked)]), run(model, [x]))


@pytest.mark.parametrize(
    ("conv", "unfolded", "unfolded_wide"),
    [
        (nn.Conv2d(3, 16, 3), True, True),  # 27 unfolded channels
        (nn.Conv2d(3, 64, 7, stride=2), False, True),  # 147 > unfold_taps_max: too costly
        (nn.Conv2d(8, 16, 3), False, True),  # 72 > unfold_taps_max
        (nn.Conv2d(16, 16, 3), False, False),  # enough channels to mix
        (nn.Conv2d(2, 8, 1), False, False),  # no taps
        (nn.Conv2d(4, 8, 3, groups=2), False, False),  # grouped: regrouped instead
        (nn.ConvTranspose2d(2, 8, 3), False, False),
    ],
)
def test_which_convs_have_their_taps_unfolded(
    conv: nn.Module, unfolded: bool, unfolded_wide: bool
) -> None:
    locked = lock_all(nn.Sequential(conv))
    assert (locked.keyed.model[0].unfold is not None) is unfolded
    wide = lock_all(nn.Sequential(conv), settings=LockSettings(unfold_taps_max=200))
    assert (wide.keyed.model[0].unfold is not None) is unfolded_wide


@pytest.mark.parametrize(
    ("channels", "min_group_channels", "groups"),
    [(64, None, 4), (64, 8, 8), (24, 16, 1), (96, 32, 3)],
)
def test_depthwise_convs_are_regrouped_to_min_group_channels(
    channels: int, min_group_channels: int | None, groups: int
) -> None:
    """A depthwise conv is locked as a grouped conv with at least ``min_group_channels`` input
    channels per group (16 by default: onnxruntime's NCHWc channel block), exactly."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    kwargs = {} if min_group_channels is None else {"min_group_channels": min_group_channels}
    locked = lock_all(model, settings=LockSettings(**kwargs))
    stored = locked.keyed.model[0].conv
    assert stored.groups == groups
    assert stored.weight.shape == (channels, channels // groups, 3, 3)
    x = torch.randn(2, channels, 7, 7)
    out = run(locked.keyed, [x, static_key(locked)])
    assert_equivalent(out, run(model, [x]))
    assert_garbage(run(locked.keyed, [x, torch.zeros_like(static_key(locked))]), run(model, [x]))


def test_unfold_setting_is_validated() -> None:
    with pytest.raises(ValueError, match="unfold_taps_max must be >= 0"):
        LockSettings(unfold_taps_max=-1)


# ---------------------------------------------------------------------------------------------
# Property test
# ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["linear", "conv2d"]),
    cin=st.integers(1, 20),
    cout=st.integers(1, 20),
    kernel=st.integers(1, 3),
    bias=st.booleans(),
    groups_pick=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes_lock_and_match(kind, cin, cout, kernel, bias, groups_pick, seed):
    if cin == 1 and cout == 1:
        cout = 2
    torch.manual_seed(seed)
    if kind == "linear":
        model: nn.Module = nn.Linear(cin, cout, bias=bias)
        x = torch.randn(3, cin)
    else:
        divisors = [g for g in range(1, min(cin, cout) + 1) if cin % g == 0 and cout % g == 0]
        groups = divisors[groups_pick % len(divisors)]
        if cin // groups == 1 and cout // groups == 1 and groups == 1:
            cout = 2
        model = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=bias)
        x = torch.randn(2, cin, 5, 5)
    model.eval()
    locked = lock_all(model, seed=seed)
    out = run(locked.keyed, [x, static_key(locked)])
    assert_equivalent(out, run(model, [x]))
    assert rel_err(run(locked.keyed, [x, torch.zeros(locked.keyed.key_length)]), out) > 0.5
    assert garbage_ratio(out, run(model, [x])) < 1e-4


# ---------------------------------------------------------------------------------------------
# Export interaction of the lock's activation ops
# ---------------------------------------------------------------------------------------------


def test_legacy_onnx_export_of_locked_conv_runs_in_onnxruntime(tmp_path) -> None:
    import warnings

    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Conv2d(3, 8, 3).eval()
    x = torch.randn(2, 3, 6, 6)
    locked = lock_all(model)
    key = static_key(locked)
    path = tmp_path / "conv.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(locked.keyed, (x, key), str(path), dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (out,) = session.run(None, dict(zip(names, [x.numpy(), key.numpy()], strict=True)))
    assert_equivalent(out, run(model, [x]))


@pytest.mark.parametrize("quantizable", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 3, 4)])
def test_both_linear_layouts_reproduce_the_original(quantizable, bias, lead) -> None:
    """The channel-first GEMM (``W' @ xᵀ``, default) and the quantizable one (``x W'ᵀ``, with
    ``quantize_compatibility``) give the original's output for every input rank nn.Linear
    takes, with and without bias."""
    torch.manual_seed(0)
    model = nn.Linear(20, 33, bias=bias)
    locked = lock_all(model, settings=LockSettings(quantize_compatibility=quantizable))
    layer = locked.keyed.model
    assert layer.quantizable is quantizable
    x = torch.randn(*lead, 20)
    out = run(locked.keyed, [x, static_key(locked)])
    assert out.shape == (*lead, 33)
    assert_equivalent(out, run(model, [x]))


@pytest.mark.parametrize("quantizable", [False, True])
def test_linear_weight_is_the_gemm_operand_onnxruntime_quantizes(tmp_path, quantizable) -> None:
    """onnxruntime's quantizers take a Gemm's weight only as its second input: the default
    layout puts the locked weight first (no transposed operand), ``quantize_compatibility``
    second."""
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    locked = lock_all(model, settings=LockSettings(quantize_compatibility=quantizable))
    path = tmp_path / "mlp.onnx"
    x = torch.randn(3, 12)
    torch.onnx.export(locked.keyed, (x, static_key(locked)), str(path), dynamo=True, optimize=True)
    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer if t.name.endswith("weight")}
    gemms = [n for n in graph.node if n.op_type in ("Gemm", "MatMul") and set(n.input) & weights]
    assert len(gemms) == 2
    slot = 1 if quantizable else 0
    assert all(n.input[slot] in weights for n in gemms), [list(n.input) for n in gemms]


def test_linear_key_ops_read_the_decoded_slots_without_a_reshape(tmp_path) -> None:
    """Every per-call node costs 1–4 µs in onnxruntime at batch 1: a locked linear's Gathers
    take the decoder's index slots and its Muls the scale columns as they are, so the only
    Reshapes left are the decoder's one and the un-mix's two per mixed side."""
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    locked = lock_all(model)
    path = tmp_path / "mlp.onnx"
    x = torch.randn(3, 32)
    torch.onnx.export(locked.keyed, (x, static_key(locked)), str(path), dynamo=True, optimize=True)
    nodes = onnx.load(str(path)).graph.node
    producer = {out: n for n in nodes for out in n.output}
    gathers = [n for n in nodes if n.op_type == "Gather"]
    muls = [n for n in nodes if n.op_type == "Mul" and producer.get(n.input[0]) in gathers]
    assert len(gathers) == len(muls) == 4  # in and out side of both layers
    assert {producer[n.input[1]].op_type for n in gathers} == {"Split"}
    assert {producer[n.input[1]].op_type for n in muls} == {"Split"}
    mixed_sides = 4
    assert sum(n.op_type == "Reshape" for n in nodes) <= 1 + 2 * mixed_sides + 1
    assert_equivalent(run(locked.keyed, [x, static_key(locked)]), run(model, [x]))
