"""LockedMultiheadAttention reproduces eval-mode nn.MultiheadAttention for every variant."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.attention import LockedMultiheadAttention

E, H = 16, 4
L, S, N = 5, 7, 3
REL_TOL = 1e-4


@contextlib.contextmanager
def _slow_path():
    """Reference runs: torch's own slow path, which is what the locked module mirrors."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


class MHACall(nn.Module):
    """Calls its attention with fixed keyword flags; masks come in as trailing inputs."""

    def __init__(self, mha: nn.MultiheadAttention, mask_names: tuple[str, ...] = (), **flags):
        super().__init__()
        self.mha = mha
        self.mask_names = mask_names
        self.flags = flags

    def forward(self, q, k, v, *masks):
        return self.mha(q, k, v, **dict(zip(self.mask_names, masks, strict=True)), **self.flags)


class SelfAttnCall(MHACall):
    """Self-attention: the very same tensor as query, key and value."""

    def forward(self, x, *masks):
        return super().forward(x, x, x, *masks)


class EncoderCall(nn.Module):
    def __init__(self, encoder: nn.TransformerEncoder, **flags):
        super().__init__()
        self.encoder = encoder
        self.flags = flags

    def forward(self, src, src_key_padding_mask):
        return self.encoder(src, src_key_padding_mask=src_key_padding_mask, **self.flags)


class DecoderCall(nn.Module):
    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, tgt, memory, tgt_mask, tgt_kpm, memory_kpm):
        return self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            tgt_key_padding_mask=tgt_kpm,
            memory_key_padding_mask=memory_kpm,
            tgt_is_causal=True,
        )


@dataclass
class Case:
    id: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[torch.Tensor, ...]]
    nan_rows: bool = False  # torch itself returns NaN rows (every key masked)
    extra: dict = field(default_factory=dict)


def _g(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed))


def _mha(**kw) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    m = nn.MultiheadAttention(E, H, **kw)
    with torch.no_grad():  # non-zero biases so that they are exercised
        for name, p in m.named_parameters():
            if "bias" in name:
                p.normal_(0.0, 0.5)
    return m.eval()


def _qkv(batch_first=False, kdim=E, vdim=E, batched=True):
    def shape(t, d):
        if not batched:
            return (t, d)
        return (N, t, d) if batch_first else (t, N, d)

    return (
        _randn(*shape(L, E), seed=1),
        _randn(*shape(S, kdim), seed=2),
        _randn(*shape(S, vdim), seed=3),
    )


def _bool_attn_mask(three_d=False, batch=N):
    m = torch.rand(L, S, generator=_g(4)) < 0.3
    m[:, 0] = False  # every query keeps one key
    if three_d:
        m = (torch.rand(batch * H, L, S, generator=_g(5)) < 0.3) | m
        m[..., 1] = False
    return m


def _float_attn_mask(three_d=False, batch=N):
    shape = (batch * H, L, S) if three_d else (L, S)
    m = torch.randn(*shape, generator=_g(6))
    m[..., 2] = float("-inf")
    return m


def _bool_kpm(batch=N):
    m = torch.zeros(batch, S, dtype=torch.bool)
    m[0, -2:] = True
    if batch > 1:
        m[1, :3] = True
    return m


def _float_kpm(batch=N):
    return torch.where(_bool_kpm(batch), float("-inf"), 0.0) + 0.1 * _randn(batch, S, seed=7)


def _causal_mask(n: int = L) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(n)


def _mha_case(id, mha_kw=None, masks=None, flags=None, qkv_kw=None, **case_kw) -> Case:
    mha_kw, masks, flags, qkv_kw = mha_kw or {}, masks or {}, flags or {}, qkv_kw or {}
    qkv_kw.setdefault("batch_first", mha_kw.get("batch_first", False))
    return Case(
        id,
        lambda: MHACall(_mha(**mha_kw), tuple(masks), **flags),
        lambda: (*_qkv(**qkv_kw), *(make() for make in masks.values())),
        **case_kw,
    )


def _self_attn_case(id, mha_kw=None, masks=None, flags=None) -> Case:
    mha_kw, masks, flags = mha_kw or {}, masks or {}, flags or {}
    shape = (N, L, E) if mha_kw.get("batch_first") else (L, N, E)
    return Case(
        id,
        lambda: SelfAttnCall(_mha(**mha_kw), tuple(masks), **flags),
        lambda: (_randn(*shape), *(make() for make in masks.values())),
    )


def _square_kpm():
    """A key padding mask sized for self-attention (S == L) that leaves key 0 visible."""
    m = torch.zeros(N, L, dtype=torch.bool)
    m[1, -2:] = True
    return m


def _encoder_case(batch_first: bool, norm_first: bool) -> Case:
    def build():
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(
            E, H, dim_feedforward=32, batch_first=batch_first, norm_first=norm_first
        )
        nested = batch_first and not norm_first  # torch warns when it cannot use nested tensors
        encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=nested)
        return EncoderCall(encoder).eval()

    def inputs():
        kpm = torch.zeros(N, L, dtype=torch.bool)
        kpm[0, -2:] = True
        kpm[1, -1] = True
        return _randn(*((N, L, E) if batch_first else (L, N, E))), kpm

    return Case(f"encoder-bf{int(batch_first)}-nf{int(norm_first)}-kpm", build, inputs)


def _decoder_case(batch_first: bool, norm_first: bool) -> Case:
    def build():
        torch.manual_seed(0)
        layer = nn.TransformerDecoderLayer(
            E, H, dim_feedforward=32, batch_first=batch_first, norm_first=norm_first
        )
        return DecoderCall(nn.TransformerDecoder(layer, num_layers=2)).eval()

    def inputs():
        tgt_kpm = torch.zeros(N, L, dtype=torch.bool)
        tgt_kpm[1, -1] = True
        mem_kpm = torch.zeros(N, S, dtype=torch.bool)
        mem_kpm[0, -3:] = True
        tgt = _randn(*((N, L, E) if batch_first else (L, N, E)), seed=1)
        memory = _randn(*((N, S, E) if batch_first else (S, N, E)), seed=2)
        return tgt, memory, _causal_mask(), tgt_kpm, mem_kpm

    return Case(f"decoder-bf{int(batch_first)}-nf{int(norm_first)}-masks", build, inputs)


KPM = "key_padding_mask"
AM = "attn_mask"

CASES = [
    # projections and module options
    _mha_case("packed-seqfirst-cross"),
    _mha_case("packed-batchfirst-cross", {"batch_first": True}),
    _self_attn_case("packed-seqfirst-self"),
    _self_attn_case("packed-batchfirst-self", {"batch_first": True}),
    _mha_case("separate-kdim-vdim", {"kdim": 12, "vdim": 10}, qkv_kw={"kdim": 12, "vdim": 10}),
    _mha_case(
        "separate-kdim-vdim-batchfirst-nobias",
        {"kdim": 12, "vdim": 10, "batch_first": True, "bias": False},
        qkv_kw={"kdim": 12, "vdim": 10},
    ),
    _mha_case("separate-kdim-only", {"kdim": 6}, qkv_kw={"kdim": 6}),
    _mha_case("no-bias", {"bias": False}),
    _mha_case("bias-kv", {"add_bias_kv": True}),
    _mha_case("zero-attn", {"add_zero_attn": True}),
    _mha_case(
        "bias-kv-zero-attn-masks-noweights",
        {"add_bias_kv": True, "add_zero_attn": True},
        {KPM: _bool_kpm, AM: _bool_attn_mask},
        {"need_weights": False},
    ),
    _mha_case(
        "bias-kv-zero-attn-masks-weights",
        {"add_bias_kv": True, "add_zero_attn": True, "batch_first": True},
        {KPM: _float_kpm, AM: lambda: _float_attn_mask(three_d=True)},
        {"average_attn_weights": False},
    ),
    _mha_case("dropout-ignored-in-eval", {"dropout": 0.5}),
    # outputs
    _mha_case("need-weights-false", flags={"need_weights": False}),
    _mha_case("per-head-weights", flags={"average_attn_weights": False}),
    _mha_case(
        "per-head-weights-batchfirst", {"batch_first": True}, flags={"average_attn_weights": False}
    ),
    # masks
    _mha_case("attn-mask-bool-2d", masks={AM: _bool_attn_mask}),
    _mha_case("attn-mask-float-2d", masks={AM: _float_attn_mask}),
    _mha_case("attn-mask-bool-3d", masks={AM: lambda: _bool_attn_mask(True)}),
    _mha_case(
        "attn-mask-float-3d-noweights",
        masks={AM: lambda: _float_attn_mask(True)},
        flags={"need_weights": False},
    ),
    _mha_case("kpm-bool", masks={KPM: _bool_kpm}),
    _mha_case("kpm-float-noweights", masks={KPM: _float_kpm}, flags={"need_weights": False}),
    _mha_case("kpm-bool-attn-float", masks={KPM: _bool_kpm, AM: _float_attn_mask}),
    _mha_case(
        "kpm-bool-attn-bool-3d-batchfirst-noweights",
        {"batch_first": True},
        {KPM: _bool_kpm, AM: lambda: _bool_attn_mask(True)},
        {"need_weights": False},
    ),
    _self_attn_case(
        "self-batchfirst-kpm-bool-attn-bool",
        {"batch_first": True},
        {KPM: _square_kpm, AM: lambda: _bool_attn_mask()[:, :L]},
    ),
    # is_causal hint (torch ignores attn_mask only without kpm and with need_weights=False)
    _mha_case(
        "causal-hint-noweights-uses-causal",
        masks={AM: _float_attn_mask},  # deliberately not causal: torch ignores it here
        flags={"is_causal": True, "need_weights": False},
    ),
    _self_attn_case(
        "causal-hint-self-batchfirst",
        {"batch_first": True},
        {AM: _causal_mask},
        {"is_causal": True, "need_weights": False},
    ),
    _mha_case(
        "causal-hint-weights-uses-mask",
        masks={AM: _float_attn_mask},
        flags={"is_causal": True},
    ),
    _mha_case(
        "causal-hint-kpm-uses-mask",
        masks={AM: _bool_attn_mask, KPM: _bool_kpm},
        flags={"is_causal": True, "need_weights": False},
    ),
    # unbatched (2-D) inputs; batch_first is ignored for them
    _mha_case("unbatched", qkv_kw={"batched": False}),
    _mha_case(
        "unbatched-batchfirst-masks-per-head",
        {"batch_first": True},
        {KPM: lambda: _bool_kpm(1)[0], AM: lambda: _float_attn_mask(True, batch=1)},
        {"average_attn_weights": False},
        qkv_kw={"batched": False},
    ),
    _mha_case(
        "unbatched-separate-bias-kv-zero-attn-noweights",
        {"kdim": 12, "vdim": 10, "add_bias_kv": True, "add_zero_attn": True},
        {AM: _bool_attn_mask, KPM: lambda: _float_kpm(1)[0]},
        {"need_weights": False},
        qkv_kw={"kdim": 12, "vdim": 10, "batched": False},
    ),
    # every key of a row masked: NaN with weights (softmax), zeros without (SDPA)
    _mha_case(
        "fully-masked-row-weights",
        masks={KPM: lambda: torch.ones(N, S, dtype=torch.bool)},
        nan_rows=True,
    ),
    _mha_case(
        "fully-masked-row-noweights",
        masks={KPM: lambda: torch.ones(N, S, dtype=torch.bool)},
        flags={"need_weights": False},
    ),
    # transformer layers
    *[_encoder_case(bf, nf) for bf in (False, True) for nf in (False, True)],
    *[_decoder_case(bf, nf) for bf in (False, True) for nf in (False, True)],
]


def _outputs(result) -> list[torch.Tensor | None]:
    return list(result) if isinstance(result, tuple) else [result]


def _lock(model: nn.Module):
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    key = torch.from_numpy(locked.layout.static_key())
    return locked, key


def _rel_max(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_torch(case: Case) -> None:
    model = case.build().eval()
    inputs = case.inputs()
    with torch.no_grad(), _slow_path():
        want = _outputs(model(*inputs))
    locked, key = _lock(model)
    assert any(isinstance(m, LockedMultiheadAttention) for m in locked.keyed.modules())
    assert not any(isinstance(m, nn.MultiheadAttention) for m in locked.keyed.modules())
    with torch.no_grad():
        got = _outputs(locked.keyed(*inputs, key))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
            continue
        assert g.shape == w.shape
        if case.nan_rows:
            assert torch.equal(torch.isnan(g), torch.isnan(w))
            assert torch.isnan(w).any()
            g, w = torch.nan_to_num(g), torch.nan_to_num(w)
            if not w.abs().max() > 0:
                continue
        assert not torch.isnan(g).any()
        assert _rel_max(g, w) < REL_TOL, case.id


def _attention_outputs(locked, inputs, key) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: seen.append(out[0]))
        for m in locked.keyed.modules()
        if isinstance(m, LockedMultiheadAttention)
    ]
    try:
        with torch.no_grad():
            final = _outputs(locked.keyed(*inputs, key))[0]
    finally:
        for h in hooks:
            h.remove()
    return [final, *seen]


@pytest.mark.parametrize("case", [c for c in CASES if not c.nan_rows], ids=lambda c: c.id)
def test_wrong_keys_scramble(case: Case) -> None:
    """A zero key and a random key each change every attention output by more than 50 %.

    Checked on each locked attention's output; the model output too, except for transformer
    stacks, whose residual connections carry the (unlocked) input through to the output.
    """
    locked, key = _lock(case.build().eval())
    inputs = case.inputs()
    right = _attention_outputs(locked, inputs, key)
    zero = _attention_outputs(locked, inputs, torch.zeros_like(key))
    rand = _attention_outputs(locked, inputs, torch.randn(key.shape, generator=_g(9)) * 10)
    start = 0 if isinstance(locked.keyed.model, MHACall) else 1
    assert len(right) >= 2
    for wrong in (zero, rand):
        for r, w in list(zip(right, wrong, strict=True))[start:]:
            assert ((torch.nan_to_num(w) - r).norm() / r.norm()).item() > 0.5


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_encoder_matches_default_fast_path_on_real_tokens() -> None:
    """With fast paths on, torch zeroes padded positions (nested tensors); real tokens agree."""
    case = _encoder_case(batch_first=True, norm_first=False)
    model = case.build().eval()
    src, kpm = case.inputs()
    with torch.no_grad():
        want = model(src, kpm)
    locked, key = _lock(model)
    with torch.no_grad():
        got = locked.keyed(src, kpm, key)
    real = ~kpm
    assert _rel_max(got[real], want[real]) < REL_TOL


def test_is_causal_without_mask_raises_like_torch() -> None:
    model = MHACall(_mha(), is_causal=True)
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        model(q, k, v)
    locked, key = _lock(model)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        locked.keyed(q, k, v, key)


def test_attributes_read_by_transformer_layers() -> None:
    locked, _ = _lock(MHACall(_mha(kdim=12, vdim=10, batch_first=True)))
    mha = locked.keyed.model.mha
    assert isinstance(mha, LockedMultiheadAttention)
    assert (mha.embed_dim, mha.num_heads, mha.batch_first) == (E, H, True)
    assert mha._qkv_same_embed_dim is False
    assert mha.in_proj_weight is None and mha.in_proj_bias is None
    names = [d.name for d in locked.layers]
    assert names == ["mha"]


def _export_case():
    model = MHACall(_mha(batch_first=True, add_bias_kv=True), (KPM, AM))

    def inputs(batch: int, seq: int):
        x = _randn(batch, seq, E, seed=seq)
        kpm = torch.zeros(batch, seq, dtype=torch.bool)
        kpm[0, -1] = True
        causal = torch.ones(seq, seq, dtype=torch.bool).triu(1)
        return x, x, x, kpm, causal

    return model, inputs


def test_torch_export_dynamic_sequence() -> None:
    model, inputs = _export_case()
    locked, key = _lock(model)
    seq = torch.export.Dim("seq", min=2, max=64)
    batch = torch.export.Dim("batch", min=2, max=64)
    x_spec = {0: batch, 1: seq}
    spec = ((x_spec, x_spec, x_spec, {0: batch, 1: seq}, {0: seq, 1: seq}, None),)
    with torch.no_grad():
        program = torch.export.export(locked.keyed, (*inputs(2, 6), key), dynamic_shapes=spec)
    exported = program.module()
    for b, n in ((2, 3), (3, 9)):
        args = inputs(b, n)
        with torch.no_grad(), _slow_path():
            want = model(*args)
        got = exported(*args, key)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            assert _rel_max(g, w) < REL_TOL


def test_jit_trace_other_sequence_length() -> None:
    model, inputs = _export_case()
    locked, key = _lock(model)
    with torch.no_grad():
        traced = torch.jit.trace(locked.keyed, (*inputs(2, 6), key), check_trace=False)
        for b, n in ((2, 3), (3, 9)):
            args = inputs(b, n)
            with _slow_path():
                want = model(*args)
            got = traced(*args, key)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape
                assert _rel_max(g, w) < REL_TOL
