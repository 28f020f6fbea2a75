"""Fuzz campaign over the constructor options of the supported layers.

A seeded generator builds small models from the supported layer types with varied options:

- convs: Conv1d/2d and ConvTranspose1d/2d; kernel, stride, dilation as ints or tuples; padding
  as ints, tuples, ``'same'`` and ``'valid'``; every ``padding_mode``; groups (one, several,
  depthwise with a channel multiplier); output padding up to ``max(stride, dilation) - 1``;
  bias on or off; channels_last inputs and weights; unbatched inputs; a BatchNorm after
  (``affine``, ``track_running_stats``, ``momentum=None``), folded or not;
- Linear with bias on or off and 1-D to 4-D inputs, behind an Embedding (``padding_idx``,
  ``max_norm``, ``sparse``) or between LayerNorms (``elementwise_affine``, ``bias``, a
  two-dimensional ``normalized_shape``);
- MultiheadAttention with ``kdim``/``vdim``, ``bias``, ``add_bias_kv``, ``add_zero_attn``,
  ``batch_first``, dropout, bool and float ``attn_mask`` (2-D and 3-D), ``key_padding_mask``,
  ``is_causal``, ``need_weights``, ``average_attn_weights``, unbatched inputs;
- LSTM/GRU with ``num_layers``, ``bidirectional``, ``proj_size``, ``bias``, ``batch_first``,
  dropout (in eval), initial states passed in, unbatched inputs.

Each model is locked and run with the static key (it must reproduce the original) and with
wrong keys (its outputs must be garbage).  Composites of several such models (one input and
output group each) are protected to ONNX and TorchScript with the public protector, and the
written files are loaded and run with and without the key; AOTInductor for a few.

What the lock refuses is checked to be refused with a message that names the layer, the option
and what to do (float64/float16/bfloat16 layers, PackedSequence inputs).
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.assertions import garbage_ratio, rel_err
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from skprotect_pytorch.errors import InvalidArgumentError, UnsupportedLayerError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
RTOL = 1e-4  # as the protector's own verification
AMPLIFICATION = 30  # see check_locked
GARBAGE = 0.3  # ‖wrong − ref‖ / ‖ref‖ at least this with a wrong key


@dataclass
class Case:
    desc: str
    model: nn.Module
    inputs: list[torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Generators: each draws one small model (eval mode) and its inputs from a random.Random
# ---------------------------------------------------------------------------------------------


class Convs(nn.Module):
    """``layer`` (input in channels_last if asked), then an optional BatchNorm and ReLU."""

    def __init__(self, layer: nn.Module, post: nn.Module | None, channels_last: bool) -> None:
        super().__init__()
        self.layer = layer
        self.post = post
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.layer(x)
        return y if self.post is None else self.post(y)


def _conv(r: random.Random) -> Case:
    dims = r.choice([1, 2, 2])
    transposed = r.random() < 0.35
    groups = r.choice([1, 1, 2, 3, 4, "depthwise"])
    if groups == "depthwise":
        cin = r.choice([2, 3, 4, 8, 17])
        groups, cout = cin, cin * r.choice([1, 2, 3])
    else:
        cin, cout = groups * r.choice([1, 2, 3, 5, 8]), groups * r.choice([2, 3, 6])

    def ints(choices: list[int]) -> int | tuple[int, ...]:
        return r.choice(choices) if r.random() < 0.5 else tuple(r.choices(choices, k=dims))

    def per_axis(v: int | tuple[int, ...]) -> tuple[int, ...]:
        return v if isinstance(v, tuple) else (v,) * dims

    kernel, stride, dilation = ints([1, 2, 3, 4, 5]), ints([1, 1, 2, 3]), ints([1, 1, 2, 3])
    kw: dict = {"stride": stride, "dilation": dilation, "groups": groups}
    kw["bias"] = r.random() < 0.6
    if transposed:
        kw["padding"] = ints([0, 0, 1, 2])
        kw["output_padding"] = tuple(
            r.randrange(max(s, d))
            for s, d in zip(per_axis(stride), per_axis(dilation), strict=True)
        )
    else:
        pad = r.choice(["int", "tuple", "same", "valid"])
        kw["padding"] = {"same": "same", "valid": "valid", "int": r.choice([0, 1, 2])}.get(pad)
        if pad == "same":
            kw["stride"] = 1
        if pad == "tuple":
            kw["padding"] = tuple(r.choices([0, 1, 2], k=dims))
        kw["padding_mode"] = r.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
    kinds = {
        (1, False): nn.Conv1d,
        (2, False): nn.Conv2d,
        (1, True): nn.ConvTranspose1d,
        (2, True): nn.ConvTranspose2d,
    }
    layer = kinds[dims, transposed](cin, cout, kernel, **kw)
    desc = repr(layer)
    post: nn.Module | None = nn.ReLU() if r.random() < 0.5 else None
    if r.random() < 0.4:
        options = {
            "affine": r.random() < 0.7,
            "track_running_stats": r.random() < 0.8,
            "momentum": r.choice([0.1, None]),
            "eps": r.choice([1e-5, 1e-3]),
        }
        bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(cout, **options)
        if bn.track_running_stats:
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        if bn.affine:
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
        post = nn.Sequential(bn, nn.ReLU())
        desc += f" + BatchNorm{options}"
    channels_last = dims == 2 and r.random() < 0.3
    if dims == 2 and r.random() < 0.2:
        layer.to(memory_format=torch.channels_last)  # channels_last weights
        desc += " channels_last weights"
    unbatched = r.random() < 0.15 and not isinstance(post, nn.Sequential)
    shape = (cin,) + (r.choice([7, 9, 12]),) * dims
    x = torch.randn(*shape if unbatched else (r.choice([1, 2, 3]), *shape))
    desc += f" channels_last input={channels_last} x={tuple(x.shape)}"
    return Case(desc, Convs(layer, post, channels_last), [x])


class Linears(nn.Module):
    def __init__(self, embed, pre_norm, linear, post_norm, head) -> None:
        super().__init__()
        self.embed, self.pre_norm, self.linear = embed, pre_norm, linear
        self.post_norm, self.head = post_norm, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in (self.embed, self.pre_norm, self.linear, self.post_norm):
            x = x if part is None else part(x)
        return x if self.head is None else self.head(torch.tanh(x))


def _linear(r: random.Random) -> Case:
    rank = r.choice([1, 2, 2, 3, 4])
    fin, fout = r.choice([1, 2, 5, 16, 33]), r.choice([4, 8, 20])
    linear = nn.Linear(fin, fout, bias=r.random() < 0.5)
    lead = [r.choice([1, 2, 3]) for _ in range(rank - 1)]
    embed = None
    if r.random() < 0.3 and rank >= 2:
        embed = nn.Embedding(
            12,
            fin,
            padding_idx=r.choice([None, 0, 3, -1]),
            max_norm=r.choice([None, None, 1.0]),
            sparse=r.random() < 0.3,
        )
        x = torch.randint(0, 12, (*lead[:-1], r.choice([1, 4])))
    else:
        x = torch.randn(*lead, fin)

    def layer_norm(n: int, rows: int | None) -> nn.LayerNorm | None:
        if r.random() < 0.5 or n < 2:
            return None
        shape = [rows, n] if rows is not None and r.random() < 0.3 else [n]
        affine = r.random() < 0.6
        bias = not affine or r.random() < 0.6
        return nn.LayerNorm(shape, eps=r.choice([1e-5, 1e-6]), elementwise_affine=affine, bias=bias)

    rows = lead[-1] if embed is None and len(lead) >= 1 else None
    pre, post = layer_norm(fin, rows), layer_norm(fout, rows)
    head = nn.Linear(fout, r.choice([5, 7]), bias=r.random() < 0.5) if r.random() < 0.5 else None
    model = Linears(embed, pre, linear, post, head)
    desc = f"{embed!r} {pre!r} {linear!r} {post!r} {head!r} x={tuple(x.shape)}"
    return Case(desc, model, [x])


class Attention(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention, options: dict) -> None:
        super().__init__()
        self.mha = mha
        self.attn_mask, self.key_padding_mask = options["attn_mask"], options["key_padding_mask"]
        self.need_weights, self.average = options["need_weights"], options["average"]
        self.is_causal = options["is_causal"]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *masks: torch.Tensor):
        kw, rest = {}, list(masks)
        if self.attn_mask:
            kw["attn_mask"] = rest.pop(0)
        if self.key_padding_mask:
            kw["key_padding_mask"] = rest.pop(0)
        out, weights = self.mha(
            q, k, v, need_weights=self.need_weights, average_attn_weights=self.average,
            is_causal=self.is_causal, **kw,
        )  # fmt: skip
        return out if weights is None else (out, weights)


def _attention(r: random.Random) -> Case:
    heads = r.choice([1, 2, 4])
    e = heads * r.choice([2, 4, 8])
    kdim = r.choice([None, 3, 5, e])
    vdim = r.choice([None, 6, e]) if kdim is not None else None
    mha = nn.MultiheadAttention(
        e, heads, dropout=r.choice([0.0, 0.1]), bias=r.random() < 0.7,
        add_bias_kv=r.random() < 0.3, add_zero_attn=r.random() < 0.3, kdim=kdim, vdim=vdim,
        batch_first=r.random() < 0.5,
    )  # fmt: skip
    L, S, N = r.choice([1, 3, 5]), r.choice([1, 4, 6]), r.choice([1, 2])
    unbatched = r.random() < 0.15

    def shape(t: int, d: int) -> tuple[int, ...]:
        if unbatched:
            return (t, d)
        return (N, t, d) if mha.batch_first else (t, N, d)

    q, k = torch.randn(*shape(L, e)), torch.randn(*shape(S, kdim or e))
    v = torch.randn(*shape(S, vdim or e))
    options = {
        "attn_mask": r.random() < 0.4,
        "key_padding_mask": r.random() < 0.4 and not unbatched,
        "need_weights": r.random() < 0.5,
        "average": r.random() < 0.5,
        "is_causal": False,
    }
    masks = []
    if options["attn_mask"]:
        boolean, three = r.random() < 0.5, r.random() < 0.3 and not unbatched
        size = (N * heads, L, S) if three else (L, S)
        if L == S and not three and r.random() < 0.4:
            options["is_causal"] = True
            mask = torch.ones(L, S, dtype=torch.bool).triu(1)
            masks.append(mask if boolean else torch.zeros(L, S).masked_fill(mask, -torch.inf))
        elif boolean:
            mask = torch.rand(size) < 0.3
            mask[..., 0] = False  # every query keeps a key
            masks.append(mask)
        else:
            masks.append(torch.randn(size))
    if options["key_padding_mask"]:
        if r.random() < 0.5:
            mask = torch.rand(N, S) < 0.3
            mask[:, 0] = False
            masks.append(mask)
        else:
            masks.append(torch.randn(N, S))
    desc = (
        f"MultiheadAttention(e={e}, heads={heads}, kdim={kdim}, vdim={vdim}, "
        f"bias={mha.in_proj_bias is not None}, add_bias_kv={mha.bias_k is not None}, "
        f"add_zero_attn={mha.add_zero_attn}, batch_first={mha.batch_first}) L={L} S={S} N={N} "
        f"unbatched={unbatched} {options} masks={[(tuple(m.shape), m.dtype) for m in masks]}"
    )
    return Case(desc, Attention(mha, options), [q, k, v, *masks])


class Recurrent(nn.Module):
    def __init__(self, rnn: nn.LSTM | nn.GRU, states: bool) -> None:
        super().__init__()
        self.rnn = rnn
        self.states = states
        self.lstm = isinstance(rnn, nn.LSTM)  # the locked layer is no nn.LSTM

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        if not self.states:
            out, h = self.rnn(x)
        else:
            out, h = self.rnn(x, (states[0], states[1]) if self.lstm else states[0])
        return (out, *h) if isinstance(h, tuple) else (out, h)


def _recurrent(r: random.Random) -> Case:
    lstm = r.random() < 0.5
    i, h = r.choice([1, 3, 8]), r.choice([2, 5, 16, 17])
    kw: dict = {
        "num_layers": r.choice([1, 1, 2, 3]),
        "bias": r.random() < 0.7,
        "batch_first": r.random() < 0.5,
        "bidirectional": r.random() < 0.5,
    }
    kw["dropout"] = r.choice([0.0, 0.3]) if kw["num_layers"] > 1 else 0.0
    if lstm and h > 2 and r.random() < 0.3:
        kw["proj_size"] = r.choice([1, 2, h - 1])
    rnn = (nn.LSTM if lstm else nn.GRU)(i, h, **kw)
    t, n = r.choice([1, 4, 7]), r.choice([1, 3])
    unbatched, states = r.random() < 0.15, r.random() < 0.4
    if states and t == 1:
        t = 4  # one step from given states is mostly those states, whatever the key
    if unbatched:
        x = torch.randn(t, i)
    else:
        x = torch.randn(n, t, i) if kw["batch_first"] else torch.randn(t, n, i)
    lead = ((2 if kw["bidirectional"] else 1) * kw["num_layers"], *(() if unbatched else (n,)))
    init = []
    if states:
        init.append(torch.randn(*lead, kw.get("proj_size") or h))
        if lstm:
            init.append(torch.randn(*lead, h))
    desc = f"{rnn!r} T={t} N={n} unbatched={unbatched} initial states={states}"
    return Case(desc, Recurrent(rnn, states), [x, *init])


FAMILIES: dict[str, Callable[[random.Random], Case]] = {
    "conv": _conv,
    "linear": _linear,
    "attention": _attention,
    "recurrent": _recurrent,
}


def make_case(family: str, seed: int) -> Case:
    """The ``seed``-th model of ``family``: draws again until torch itself accepts the options
    (e.g. a reflect padding larger than the input)."""
    r = random.Random(f"{family}/{seed}")
    torch.manual_seed(seed)
    for _ in range(100):
        case = FAMILIES[family](r)
        case.model.eval()
        try:
            with torch.no_grad():
                case.model(*case.inputs)
        except (RuntimeError, ValueError, AssertionError):
            continue
        case.desc = f"[{family} {seed}] {case.desc}"
        return case
    raise AssertionError(f"no valid {family} model for seed {seed}")


def _run(model: nn.Module, inputs: list[torch.Tensor]):
    with torch.no_grad():
        return model(*inputs)


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, tuple | list):
        return [t for item in out for t in _flat(item)]
    return [out]


def _double(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.is_floating_point() else t


def garbage(outputs: list, ref: list) -> float:
    """The largest ``‖wrong − ref‖ / ‖ref‖`` over a case's outputs: some outputs do not depend
    on any weight (attention weights over a single key are all 1, whatever the key)."""
    return max(garbage_ratio(o, r) for o, r in zip(outputs, ref, strict=True))


def check_locked(case: Case, seed: int) -> None:
    """The locked model reproduces ``case.model`` with the static key and gives garbage with a
    zero key and a random one."""
    ref = _flat(_run(case.model, case.inputs))
    locked = lock_model(
        case.model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(seed)
    )
    assert locked.skipped_layers == [], f"{case.desc}: {locked.skipped_layers}"
    key = torch.from_numpy(locked.layout.static_key())
    out = _flat(_run(locked.keyed, [*case.inputs, key]))
    err = rel_err(out, ref)
    if err >= RTOL:
        # A small output with values near 0 (one projected LSTM unit) cancels: there the lock's
        # extra float32 rounding (mixing, scales) shows against the output's own magnitude.
        # Accept it when it stays within AMPLIFICATION times the original's own float32
        # error, both measured against the original computed in float64.
        exact = _flat(_run(copy.deepcopy(case.model).double(), [_double(t) for t in case.inputs]))
        own, locked_err = rel_err(ref, exact), rel_err(out, exact)
        assert locked_err < AMPLIFICATION * max(own, 1e-7), (
            f"{case.desc}: rel. error {err:.3g} with the key; versus float64 "
            f"{locked_err:.3g}, the original's own {own:.3g}"
        )
    wrong = torch.from_numpy(np.random.default_rng(seed + 1).random(key.shape, np.float32) * 4)
    for bad in (torch.zeros_like(key), wrong):
        ratio = garbage(_flat(_run(locked.keyed, [*case.inputs, bad])), ref)
        assert ratio > GARBAGE, f"{case.desc}: ‖wrong − ref‖/‖ref‖ {ratio:.3g} without the key"


FAST_SEEDS = range(8)
SLOW_SEEDS = range(8, 40)


@pytest.mark.parametrize("seed", FAST_SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_locked_model_matches_with_key_only(family: str, seed: int) -> None:
    check_locked(make_case(family, seed), seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_locked_model_matches_with_key_only_more(family: str, seed: int) -> None:
    check_locked(make_case(family, seed), seed)


# ---------------------------------------------------------------------------------------------
# Protected files: composites of several cases, protected once, run from the written files
# ---------------------------------------------------------------------------------------------


class Composite(nn.Module):
    """The models of several cases side by side: all their inputs in, all outputs out."""

    def __init__(self, cases: list[Case]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(c.model for c in cases)
        self.counts = [len(c.inputs) for c in cases]

    def forward(self, *inputs: torch.Tensor):
        outs, start = [], 0
        for part, count in zip(self.parts, self.counts, strict=True):
            outs.append(part(*inputs[start : start + count]))
            start += count
        return tuple(outs)


def composite(seeds: list[int]) -> tuple[Composite, list[torch.Tensor], list[Case]]:
    cases = [make_case(family, seed) for seed in seeds for family in FAMILIES]
    return Composite(cases).eval(), [t for c in cases for t in c.inputs], cases


def _static_key(folder: Path) -> np.ndarray:
    text = (folder / "key_vector_inv_net.txt").read_text().split()
    return np.array([np.float32(v) for v in text], dtype=np.float32)


def _per_case(outputs: list, cases: list[Case]) -> list[list]:
    """The flat output list split per case (each case's outputs are contiguous)."""
    split, start = [], 0
    for case in cases:
        n = len(_flat(_run(case.model, case.inputs)))
        split.append(outputs[start : start + n])
        start += n
    return split


def check_outputs(outputs: list, ref: list, cases: list[Case], what: str, keyed: bool) -> None:
    for got, want, case in zip(
        _per_case(outputs, cases), _per_case(ref, cases), cases, strict=True
    ):
        if keyed:
            err = rel_err(got, want)
            assert err < RTOL, f"{what}: {case.desc}: rel. error {err:.3g} with the key"
        else:
            ratio = garbage(got, want)
            assert ratio > GARBAGE, f"{what}: {case.desc}: {ratio:.3g} without the key"


def protect_and_check(workdir: Path, seeds: list[int], formats) -> None:
    model, inputs, cases = composite(seeds)
    ref = [t.numpy() for t in _flat(_run(model, inputs))]
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", inputs, model_export_formats=formats, test_key=True
    )
    assert result.skipped_layers == []
    folder = workdir / "outputs/app/net"
    rng = np.random.default_rng(0)
    if formats & EF.ONNX:
        # no fallback to the legacy exporter (a batch-1 LSTM/GRU needed it until 2026-12-07)
        assert result.formats["onnx"].exporter.startswith("torch.onnx dynamo=True")
        key = _static_key(folder / "onnx")
        session = ort.InferenceSession(
            str(folder / "onnx/net.onnx"), providers=["CPUExecutionProvider"]
        )
        names = [i.name for i in session.get_inputs()]
        for k, keyed in (
            (key, True),
            (np.zeros_like(key), False),
            (rng.random(key.shape, np.float32) * 4, False),
        ):
            feeds = dict(zip(names, [t.numpy() for t in inputs] + [k], strict=True))
            check_outputs(session.run(None, feeds), ref, cases, "ONNX", keyed)
    cpu = list((folder / "cpu").glob("net.*")) if (folder / "cpu").exists() else []
    for path in cpu:
        key = torch.from_numpy(_static_key(folder / "cpu"))
        if path.suffix == ".pt":
            loaded = torch.jit.load(str(path))
        else:
            from torch._inductor import aoti_load_package

            loaded = aoti_load_package(str(path))
        for k, keyed in (
            (key, True),
            (torch.zeros_like(key), False),
            (torch.rand_like(key) * 4, False),
        ):
            got = [t.numpy() for t in _flat(_run(loaded, [*inputs, k]))]
            check_outputs(got, ref, cases, path.suffix, keyed)


def test_protected_onnx_and_torchscript_files(workdir: Path) -> None:
    protect_and_check(workdir, [0], EF.ONNX | EF.TORCHSCRIPT_CPU)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1])
def test_protected_onnx_and_torchscript_files_more(workdir: Path, seed: int) -> None:
    protect_and_check(workdir, [seed, seed + 100], EF.ONNX | EF.TORCHSCRIPT_CPU)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [200])
def test_protected_aot_inductor_files(workdir: Path, seed: int) -> None:
    protect_and_check(workdir, [seed], EF.INDUCTOR_CPU)


# ---------------------------------------------------------------------------------------------
# Refusals: the layer, the option and what to do
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_other_float_dtypes_are_refused_naming_layer_and_fix(family: str, dtype) -> None:
    case = make_case(family, 0)
    model = case.model.to(dtype)
    name = next(n for n, m in model.named_modules() if type(m).__name__ in _SUPPORTED)
    label = name or "<model>"
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{label} (")) as err:
        lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    text = str(err.value)
    assert str(dtype).removeprefix("torch.") in text
    assert "model.float()" in text and "layer_filter" in text


_SUPPORTED = {
    "Linear",
    "Conv1d",
    "Conv2d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "MultiheadAttention",
    "LSTM",
    "GRU",
}


class Packed(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return self.head(pad_packed_sequence(out, batch_first=True)[0])


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_packed_sequences_are_refused_naming_layer_and_fix(workdir: Path, kind) -> None:
    torch.manual_seed(0)
    model = Packed(kind(4, 8, batch_first=True, bidirectional=True)).eval()
    inputs = [torch.randn(3, 5, 4), torch.tensor([5, 2, 3])]
    message = (
        f"Layer 'rnn' ({kind.__name__}) was called with a PackedSequence, but the locked "
        f"{kind.__name__} takes tensors only, not a PackedSequence. Exclude the layer with "
        "layer_filter"
    )
    with pytest.raises(UnsupportedLayerError, match=re.escape(message)):
        SkProtectorPyTorch(application_name="app").protect_new_model(
            model, "net", inputs, model_export_formats=EF.TORCHSCRIPT_CPU, test_key=True
        )
