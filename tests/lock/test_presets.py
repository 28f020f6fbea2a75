"""Lock presets (strong, balanced) and the one-sided key setting: every reference model is
reproduced exactly with the static key and turned into garbage without it; ``keyed_sides="mixed"``
keys only the mixed side; gate 4 (aligned correlation of stored and true weights) holds for
``strong`` and detects weaker constructions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent, assert_garbage
from tests.models import MODEL_FACTORIES
from torch import nn

from skprotect_pytorch.audit.stored_weights import _unkey, aligned_weight_correlations
from skprotect_pytorch.lock import LockSettings, lock_model
from skprotect_pytorch.lock.channel_lock import ChannelOps, lock_matrix, plan_channels
from skprotect_pytorch.lock.context import DEFAULT_PRESET, LOCK_PRESETS, KeySlots, LockContext
from skprotect_pytorch.lock.key_layout import KeyLayout

ONE_SIDED = {"mix_sides": "smaller", "keyed_sides": "mixed"}


def _lock(model: nn.Module, preset: str, seed: int = 0, **overrides):
    settings = (
        LockSettings(**ONE_SIDED, **overrides)
        if preset == "one-sided"
        else LockSettings.preset(preset, **overrides)
    )
    return lock_model(
        model,
        layer_filter=lambda n, m: True,
        secret_rng=np.random.default_rng(seed),
        settings=settings,
    )


@pytest.mark.parametrize("preset", [*LOCK_PRESETS, "one-sided"])
@pytest.mark.parametrize("model_name", list(MODEL_FACTORIES))
def test_each_preset_reproduces_the_model_with_the_key_and_garbles_it_without(preset, model_name):
    model, inputs = MODEL_FACTORIES[model_name](3)
    locked = _lock(model, preset)
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        ref = model(*inputs)
        assert_equivalent(locked.keyed(*inputs, key), ref)
        assert_garbage(locked.keyed(*inputs, torch.zeros_like(key)), ref)
        assert_garbage(locked.keyed(*inputs, torch.rand_like(key) * 100), ref)


def test_one_sided_keys_only_the_mixed_side_and_needs_a_shorter_key():
    model, _ = MODEL_FACTORIES["mlp"](0)
    fast, balanced = _lock(model, "one-sided"), _lock(model, "balanced")
    assert fast.layout.length < balanced.layout.length
    ops = [m for m in fast.keyed.modules() if isinstance(m, ChannelOps)]
    assert ops
    for o in ops:  # one mixed side per layer; exactly that side keyed
        assert (o.in_perm_slot is None) == (o.mix_in is None)
        assert (o.out_perm_slot is None) == (o.mix_out is None)


def test_strong_mixes_both_sides_of_every_layer():
    model, _ = MODEL_FACTORIES["resnet"](0)
    ops = [m for m in _lock(model, "strong").keyed.modules() if isinstance(m, ChannelOps)]
    assert ops and all(o.mix_in is not None and o.mix_out is not None for o in ops)


def test_unknown_preset_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="Unknown lock preset 'fast'"):
        LockSettings.preset("fast")
    with pytest.raises(ValueError, match="mix_sides"):
        LockSettings(mix_sides="left")
    with pytest.raises(ValueError, match="keyed_sides"):
        LockSettings(keyed_sides="none")
    assert DEFAULT_PRESET in LOCK_PRESETS
    assert LockSettings.preset("strong", quantize_compatibility=True).quantize_compatibility


@pytest.mark.parametrize("model_name", ["resnet", "mobilenet", "mlp", "transformer", "gru", "lstm"])
def test_strong_keeps_every_stored_weight_below_the_gate_4_correlation(model_name):
    model, _ = MODEL_FACTORIES[model_name](1)
    scores = aligned_weight_correlations(_lock(model, "strong", seed=5), model)
    assert scores
    failing = [s for s in scores if not s.passes]
    assert not failing, failing


def test_strong_stays_below_0_1_where_the_noise_floor_is_lower():
    model = nn.Sequential(nn.Linear(96, 256), nn.ReLU(), nn.Linear(256, 128)).eval()
    scores = aligned_weight_correlations(_lock(model, "strong", seed=2), model)
    assert [s.layer for s in scores] == ["0", "2"]
    assert all(s.noise_floor < 0.1 and s.correlation <= 0.1 for s in scores), scores
    # one orthogonal mixed side: ≈ 1/√16 per entry (a conditioned mixing lowers it to ≈ 0.1)
    fast = aligned_weight_correlations(_lock(model, "balanced", seed=2, mix_condition=1.0), model)
    assert any(s.correlation > 0.1 for s in fast), fast


@pytest.mark.parametrize("condition", [1.0, 16.0])
def test_mixing_condition_number_and_exact_unmix(condition):
    """The public mixing has the requested condition number, its un-mix is its inverse, and
    every reference model stays exact with the key (float32, 1e-4)."""
    from skprotect_pytorch.lock.channel_lock import BlockMix

    mix = BlockMix(64, 2, 16, np.random.default_rng(0), condition)
    assert len(mix.q_blocks) == 4
    for _, _, block in mix.q_blocks:
        assert np.linalg.cond(block) == pytest.approx(condition, rel=1e-6)
    x = torch.randn(64, 5, dtype=torch.float64)
    q = mix.mixing()
    torch.testing.assert_close(mix.apply_rows((q @ x).float()).double(), x, rtol=0, atol=1e-4)
    model, inputs = MODEL_FACTORIES["resnet"](0)
    locked = _lock(model, "strong", mix_condition=condition)
    key = torch.from_numpy(locked.layout.static_key())
    with torch.no_grad():
        assert_equivalent(locked.keyed(*inputs, key).numpy(), model(*inputs).numpy(), rtol=1e-4)


@pytest.mark.parametrize("onnx_export", [False, True], ids=["matmul", "grouped-conv"])
@pytest.mark.parametrize(
    ("n_total", "groups", "segments"), [(64, 2, 1), (40, 1, 2), (80, 2, 4), (1000, 1, 2)]
)
def test_unmix_runs_per_segment_of_equal_blocks(
    n_total, groups, segments, onnx_export, monkeypatch
):
    """Channels that are not a multiple of the block (a larger last block) are un-mixed one
    segment of equal blocks at a time, never as a dense block-diagonal matrix, and every way of
    applying the un-mix (rows, on a conv's channel axis as a batched MatMul or, while exporting
    ONNX, a grouped conv, any axis, the dense form) inverts ``Q`` exactly."""
    from skprotect_pytorch.lock.channel_lock import BlockMix

    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: onnx_export)

    mix = BlockMix(n_total, groups, 16, np.random.default_rng(0), 16.0)
    assert mix.segments == segments and mix.uniform is (segments == 1)
    assert max(b.shape[-1] for b in mix.segment_blocks()) < 32
    q = mix.mixing()
    x = torch.randn(n_total, 6, dtype=torch.float64)
    mixed = (q @ x).float()
    torch.testing.assert_close(mix.apply_rows(mixed).double(), x, rtol=0, atol=1e-4)
    image = mixed.T.reshape(2, 3, n_total).transpose(1, 2).unsqueeze(-1)  # (N, C, 3, 1)
    back = mix.apply_conv(image, 1).squeeze(-1).transpose(1, 2).reshape(6, n_total).T
    torch.testing.assert_close(back.double(), x, rtol=0, atol=1e-4)
    back_1d = mix.apply_conv(image.squeeze(-1), 1).transpose(1, 2).reshape(6, n_total).T
    torch.testing.assert_close(back_1d.double(), x, rtol=0, atol=1e-4)
    torch.testing.assert_close(mix.apply_transpose(mixed.T, -1).T.double(), x, rtol=0, atol=1e-4)
    torch.testing.assert_close(mix.dense().double(), torch.linalg.inv(q).T, rtol=0, atol=1e-5)


def test_conv_unmix_is_a_grouped_conv_in_onnx_and_a_matmul_elsewhere(tmp_path):
    """The un-mix on a conv's channel axis takes the form each backend runs fastest: a grouped
    1×1 conv in ONNX (onnxruntime keeps it in NCHWc), a batched MatMul when traced for
    TorchScript or exported with ``torch.export`` for AOTInductor (ATen and Inductor run a
    small grouped conv slowly); outputs agree."""
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 32, 3)).eval()
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    keyed = locked.keyed.eval()
    key = torch.from_numpy(locked.layout.static_key())
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        traced = torch.jit.trace(keyed, (x, key))
        program = torch.export.export(keyed, (x, key))
        torch.onnx.export(keyed, (x, key), tmp_path / "m.onnx", dynamo=False, opset_version=18)
        expected = model(x)
        torch.testing.assert_close(traced(x, key), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(program.module()(x, key), expected, rtol=1e-4, atol=1e-4)
    convs = ("aten::_convolution", "aten::conv2d")
    traced_convs = [n for n in traced.inlined_graph.nodes() if n.kind() in convs]
    exported_convs = [n for n in program.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    onnx_convs = [n for n in onnx.load(tmp_path / "m.onnx").graph.node if n.op_type == "Conv"]
    assert len(traced_convs) == len(exported_convs) == 2  # the locked convs; un-mixes MatMuls
    assert len(onnx_convs) == 2 + 4  # and a grouped conv un-mix on each side of each


def test_quantize_compatibility_keeps_the_mixing_orthogonal():
    assert LockSettings(quantize_compatibility=True).mixing_condition == 1.0
    assert LockSettings().mixing_condition == LockSettings().mix_condition == 16.0
    with pytest.raises(ValueError, match="mix_condition must be >= 1"):
        LockSettings(mix_condition=0.5)


def test_gate_4_flags_a_one_sided_mix_of_a_three_channel_input():
    """A conv with 3 input channels mixed only there keeps ~1/√3 of each true kernel (unit key
    magnitudes: secret magnitudes blur it by a random amount).  Unfolding its 27 taps into
    channels (the default for such a stem) lets the same one-sided lock mix them: the
    correlation drops to about its noise floor (under it for 4 of 10 seeded models, so not a
    pass to rely on), and ``strong`` passes.  The model is seeded: the margins are a few
    hundredths, so an unseeded one made this test depend on the tests run before it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 8, 1)).eval()
    fast = _lock(model, "one-sided", quantize_compatibility=True, unfold_taps_max=0)
    folded = {s.layer: s for s in aligned_weight_correlations(fast, model)}["0"]
    assert folded.correlation > folded.noise_floor + 0.1 and not folded.passes
    unfolded = _lock(model, "one-sided", quantize_compatibility=True)
    scores = {s.layer: s for s in aligned_weight_correlations(unfolded, model)}
    assert scores["0"].shape == (1, 32, 27, 1, 1)
    assert scores["0"].correlation < folded.correlation - 0.05
    strong = _lock(model, "strong", quantize_compatibility=True)
    strong = {s.layer: s for s in aligned_weight_correlations(strong, model)}
    assert strong["0"].passes and strong["0"].correlation < scores["0"].correlation


def test_unkey_recovers_a_weight_stored_without_mixing_exactly():
    """Control for the measurement: with the mixing removed, undoing the true permutations and
    signs gives back the true weight (unit magnitudes), so its correlation is 1."""
    ctx = LockContext(
        KeyLayout(),
        np.random.default_rng(0),
        KeySlots(),
        LockSettings(quantize_compatibility=True),
    )
    w = torch.randn(1, 24, 20, dtype=torch.float64)
    plan = replace(plan_channels(ctx, "probe", 1, 24, 20), mix_in=None, mix_out=None)
    stored = lock_matrix(w, plan).numpy()
    aligned = _unkey(stored, ChannelOps(plan, ctx), ctx.layout)
    np.testing.assert_allclose(aligned, w.numpy(), atol=1e-12)
    assert not np.allclose(stored, w.numpy())  # the permutation did move rows and columns
