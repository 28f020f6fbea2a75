"""Keeps ``bench/overhead.py`` working: its export, runner and timing logic on the small MLP.

No timing is asserted (the numbers depend on the machine); only that the pieces run and agree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import overhead  # noqa: E402
from models import BENCH_MODELS  # noqa: E402


@pytest.fixture(scope="module")
def mlp_onnx_pair(tmp_path_factory) -> overhead.ExportedPair:
    """The MLP exported to ONNX, original and locked, once for the tests that only read it."""
    return overhead.export_pair(BENCH_MODELS["mlp"], "ONNX", tmp_path_factory.mktemp("mlp"))


def test_overhead_logic_on_mlp(mlp_onnx_pair):
    bm, pair = BENCH_MODELS["mlp"], mlp_onnx_pair
    assert pair.original.exists() and pair.locked.exists() and pair.locked_layers == 3
    x = bm.example(1).numpy()
    orig = overhead.ort_runner(pair.original, 1)([x])
    locked = overhead.ort_runner(pair.locked, 1)([x, pair.key])
    np.testing.assert_allclose(locked()[0], orig()[0], rtol=1e-4, atol=1e-4)
    timing = overhead.measure_pair(orig, locked, blocks=2, block_s=0.001, max_calls=3)
    assert timing.calls >= 4 and timing.original > 0 and timing.locked > 0
    result = overhead.ModelResult("mlp", {overhead.column("ORT", 1, 1): timing})
    table = overhead.markdown_tables([result], ["ORT"])
    assert "| mlp | " in table and f"{timing.ratio:.2f}" in table


def test_lock_variants_are_presets_with_overrides():
    from skprotect_pytorch.lock import LockSettings

    assert overhead.lock_settings(None) == LockSettings()
    assert overhead.lock_settings("balanced") == LockSettings.preset("balanced")
    variant = overhead.lock_settings("strong+unfold_taps_max=0+mix_condition=1.0")
    assert variant == LockSettings(unfold_taps_max=0, mix_condition=1.0)
    assert overhead.lock_settings("strong+mix_sides=smaller").mix_sides == "smaller"
    with pytest.raises(ValueError, match="LockSettings field"):
        overhead.lock_settings("strong+no_such_field=1")
    with pytest.raises(ValueError, match="Unknown lock preset"):
        overhead.lock_settings("fastest")
    with pytest.raises(SystemExit):
        overhead.main(["--presets", "strong+mix_block", "--models", "mlp"])


@pytest.mark.parametrize("backend", ["ORT", "TorchScript"])
def test_compare_trees_exports_a_checkout_and_times_it_side_by_side(tmp_path, backend):
    import compare_trees

    repo = BENCH.parent
    compare_trees.export_tree(repo, tmp_path / "t", ["mlp"], backend)
    original, locked = compare_trees.artifacts(tmp_path / "t", "mlp")
    assert original.exists() and locked.exists() and locked.parent == tmp_path / "t"
    assert locked.suffix == (".onnx" if backend == "ORT" else ".pt")
    dirs = {"before": tmp_path / "t", "after": tmp_path / "t"}
    lines = compare_trees.compare(dirs, ["mlp"], backend, rounds=2, blocks=2, block_s=0.001)
    assert lines[0] == "| model | batch | before | after |"
    rows = [line for line in lines if line.startswith("| mlp |")]
    assert [row.split(" | ")[1] for row in rows] == ["1", "32"]
    assert all(row.count("(") == 2 for row in rows)  # two trees, each with its two rounds
    if backend == "ORT":
        assert re.fullmatch(r"Optimised nodes: mlp (\d+) → \1", lines[-1])  # same graph twice
    else:
        assert lines[-1] == rows[-1]  # node counts are onnxruntime's only
    with pytest.raises(SystemExit, match="no src/skprotect_pytorch"):
        compare_trees.export_tree(tmp_path, tmp_path / "u", ["mlp"], backend)


def test_random_keys_scores_the_audits_key_among_others(capsys):
    import random_keys

    argv = ["--model", "mlp", "--victim-epochs", "1", "--keys", "3", "--search-budget", "1"]
    random_keys.main([*argv, "--wrong-only", "4", "--wrong-only", "0,2,4"])
    out = capsys.readouterr().out
    with_key, chance = map(
        float, re.search(r"with the key ([\d.]+) %, chance ([\d.]+) %", out).groups()
    )
    assert with_key > chance + 20  # one epoch already learns the task
    labels = (
        "random keys",
        "other locks' keys",
        "untrained networks",
        "victim, weights shuffled",
        "victim, weights turned and scaled",
    )
    for label in labels:
        line = re.search(rf"{label} \(3\): mean ([\d.]+) %, sd [\d.]+, max ([\d.]+) %", out)
        assert line is not None and float(line[1]) <= float(line[2]) < with_key
    randoms = re.search(r"random keys \(3\): mean [\d.]+ %, sd [\d.]+, max ([\d.]+) %", out)
    search = re.search(
        r"key search on 1 % \(200 labelled samples\): best of 3 random keys \(seed \d\) "
        r"scores ([\d.]+) % there, ([\d.]+) % on the test set",
        out,
    )
    assert search is not None and float(search[2]) <= float(randoms[1])
    assert re.search(r"the audit's random key \(seed 1\): [\d.]+ %", out)
    every_layer = re.search(r"random keys on 0,2,4 only \(3\): (mean .*)", out)
    all_random = re.search(r"^random keys \(3\): (mean .*)", out, re.MULTILINE)
    assert every_layer is not None and every_layer[1] == all_random[1]
    assert re.search(r"random keys on 4 only \(3\): mean [\d.]+ %", out)
    random_keys.main([*argv, "--no-controls", "--wrong-only", "4", "--information"])
    short = capsys.readouterr().out
    assert "random keys (3)" in short and "random keys on 4 only (3)" in short
    assert not any(label in short for label in labels[1:])
    keyed_bits = float(re.search(r"information with the key: ([\d.]+) bits", short)[1])
    info = re.findall(
        r"information: mean ([\d.]+) bits, max ([\d.]+); best relabelling: mean ([\d.]+) %, "
        r"max ([\d.]+) %",
        short,
    )
    assert len(info) == 2  # the random keys, then the ablation
    for mean_bits, max_bits, mean_relabelled, max_relabelled in info:
        assert 0 <= float(mean_bits) <= float(max_bits) < keyed_bits
        assert float(mean_relabelled) <= float(max_relabelled) <= 100
    bad_args = (
        ["--keys", "0"],
        ["--search-budget", "0"],
        ["--search-budget", "101"],
        ["--mix-condition", "0.5"],
        ["--mix-block", "1"],
        ["--victim-epochs", "1", "--wrong-only", "head"],  # the MLP's layers are 0, 2, 4
        ["--scale-range", "-1"],
        ["--victim-epochs", "1", "--attention"],  # the MLP has no attention layer
    )
    for bad in bad_args:
        with pytest.raises(SystemExit):
            random_keys.main(["--model", "mlp", *bad])


def test_random_keys_reports_attention_sharpness_per_layer(capsys):
    import random_keys

    argv = ["--model", "transformer", "--victim-epochs", "1", "--keys", "2", "--no-controls"]
    random_keys.main([*argv, "--attention"])
    lines = re.findall(
        r"attention entropy per layer \(1 uniform, 0 one-hot\): ([\d.]+), ([\d.]+)$",
        capsys.readouterr().out,
        re.MULTILINE,
    )
    assert len(lines) == 2  # with the key, then the random keys; one figure per block
    assert all(0 <= float(e) <= 1 for line in lines for e in line)


def test_attention_entropy_is_one_for_uniform_and_near_zero_for_sharp_attention():
    import random_keys

    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(4, 5, 8)
    with torch.no_grad():
        attention.in_proj_weight[:16].zero_()  # q = k = bias only: every key scores the same
        attention.in_proj_bias.zero_()

    def run() -> None:
        attention(x, x, x, need_weights=False)

    (uniform,) = random_keys.attention_entropy(attention, run)
    assert uniform == pytest.approx(1.0)
    with torch.no_grad():
        attention.in_proj_weight[:16] = 100 * torch.eye(8).repeat(2, 1)  # q = k = 100 x
    (sharp,) = random_keys.attention_entropy(attention, run)
    assert sharp < 0.01
    assert not attention._forward_hooks  # the hooks are gone afterwards


def test_label_information_ignores_class_names_and_sees_constant_outputs():
    import random_keys

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=4000)
    entropy = -sum(f * np.log2(f) for f in np.bincount(y) / len(y))
    bits, relabelled = random_keys.label_information(y, y, 4)
    assert bits == pytest.approx(entropy) and relabelled == pytest.approx(100)
    renamed = (y + 1) % 4  # every prediction wrong, every class still told apart
    bits, relabelled = random_keys.label_information(renamed, y, 4)
    assert bits == pytest.approx(entropy) and relabelled == pytest.approx(100)
    constant = np.full_like(y, 2)
    bits, relabelled = random_keys.label_information(constant, y, 4)
    assert bits == pytest.approx(0, abs=1e-12)
    assert relabelled == pytest.approx(100 * np.bincount(y).max() / len(y))
    independent = rng.integers(0, 4, size=4000)
    bits, relabelled = random_keys.label_information(independent, y, 4)
    assert bits < 0.01 and relabelled < 30


def test_wrong_key_on_some_layers_leaves_the_others_exact():
    """The ablation's spliced key: true everywhere but the named layers' slots."""
    import random_keys
    from skprotect_pytorch.audit import AuditConfig
    from skprotect_pytorch.audit.attacks import StolenModel, a0_random_key
    from skprotect_pytorch.audit.models import TabularMLP

    config = AuditConfig(model="mlp")
    torch.manual_seed(0)
    locked = config.lock(TabularMLP().eval(), 1)
    stolen = StolenModel.from_locked(locked)
    true_key = torch.from_numpy(locked.layout.static_key())
    wrong = a0_random_key(stolen, 1)
    sizes = stolen.perm_sizes, stolen.scale_sizes
    every = random_keys.key_slots(locked, ["0", "2", "4"])
    assert torch.equal(random_keys.splice(true_key, wrong, every, *sizes), wrong)
    assert torch.equal(random_keys.splice(true_key, wrong, (set(), set()), *sizes), true_key)
    head_only = random_keys.splice(true_key, wrong, random_keys.key_slots(locked, ["4"]), *sizes)

    seen = []
    head = locked.keyed.model[4]
    handle = head.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    x = torch.randn(5, 40)
    with torch.no_grad():
        locked.keyed(x, true_key)
        locked.keyed(x, head_only)
    handle.remove()
    (true_in, true_out), (spliced_in, spliced_out) = seen
    torch.testing.assert_close(spliced_in, true_in)  # the layers before the head: true key
    assert not torch.allclose(spliced_out, true_out, atol=1e-2)
    with pytest.raises(ValueError, match="no locked layer under head"):
        random_keys.key_slots(locked, ["head"])


def test_rescaled_keys_keep_the_draw_and_change_only_the_magnitudes():
    import random_keys

    perms = torch.tensor([2.0, 0.0, 1.0])
    u = torch.tensor([-8.0, 0.125, 2.0, -1.0])
    key = torch.cat([perms, u, torch.ones(4)])
    torch.testing.assert_close(random_keys.rescaled(key, 3, 4, 3.0), key)
    signs = random_keys.rescaled(key, 3, 4, 0.0)
    torch.testing.assert_close(signs, torch.cat([perms, torch.sign(u), torch.ones(4)]))
    half = random_keys.rescaled(key, 3, 4, 1.5)[3:7]
    torch.testing.assert_close(half, torch.tensor([-(8.0**0.5), 0.125**0.5, 2.0**0.5, -1.0]))


def test_task_probe_finds_the_class_in_the_transitions(capsys):
    import task_probe

    task_probe.main(["--model", "lstm", "--iterations", "30"])
    out = capsys.readouterr().out
    chance = float(re.search(r"chance ([\d.]+) %", out)[1])
    means = float(re.search(r"on token means: ([\d.]+) %", out)[1])
    transitions = float(re.search(r"on transitions: ([\d.]+) %", out)[1])
    assert means < chance + 5 and transitions > chance + 50  # Markov chains differ in transitions
    with pytest.raises(SystemExit):
        task_probe.main(["--model", "lstm", "--iterations", "0"])
    with pytest.raises(SystemExit):
        task_probe.main(["--model", "mlp"])  # tabular: no time axis


def test_random_keys_locks_with_the_mixing_asked_for(monkeypatch):
    import random_keys
    from skprotect_pytorch.lock import LockSettings

    seen = []

    class Stop(Exception):
        pass

    def record(**kwargs):
        settings = kwargs["lock_settings"]
        seen.append((settings.mix_condition, settings.mix_block))
        raise Stop

    monkeypatch.setattr(random_keys, "AuditConfig", record)
    default = LockSettings()
    cases = (
        ([], (default.mix_condition, default.mix_block)),
        (["--mix-condition", "1"], (1.0, default.mix_block)),
        (["--mix-block", "64", "--mix-condition", "4"], (4.0, 64)),
    )
    for argv, expected in cases:
        with pytest.raises(Stop):
            random_keys.main(["--model", "mlp", *argv])
        assert seen.pop() == expected


def test_controls_keep_what_they_claim_to_keep():
    """Shuffling keeps each weight's entries; turning changes them and permutes the biases."""
    import random_keys
    from skprotect_pytorch.audit.models import RecurrentClassifier, TransformerClassifier

    for model in (TransformerClassifier(), RecurrentClassifier("lstm")):
        weights = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
        mixed = dict(random_keys.shuffled(model, 0).named_parameters())
        turned = dict(random_keys.rotated(model, 0).named_parameters())
        for name, w in weights.items():
            torch.testing.assert_close(mixed[name].flatten().sort()[0], w.flatten().sort()[0])
            assert not torch.allclose(mixed[name], w) and not torch.allclose(turned[name], w)
        for name, p in model.named_parameters():
            if p.dim() < 2:  # biases are permuted, norm parameters kept
                torch.testing.assert_close(turned[name].sort()[0], p.sort()[0])


def test_overhead_breakdown_strips_one_kind_of_key_op_at_a_time(mlp_onnx_pair, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    import overhead_breakdown as ob

    bm, pair = BENCH_MODELS["mlp"], mlp_onnx_pair
    locked = onnx.load(str(pair.locked))
    key_name = locked.graph.input[-1].name
    # 3 locked linears, keyed and mixed on both sides
    assert ob.count_key_ops(locked) == {"gather": 6, "scale": 6, "unmix": 6}
    x = bm.example(2).numpy()

    def run(model: onnx.ModelProto) -> np.ndarray:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"x": x, key_name: pair.key})[0]

    expected = run(locked)
    np.testing.assert_array_equal(run(ob.strip_key_ops(locked, frozenset())), expected)
    for kinds in ob.VARIANTS.values():
        stripped = ob.strip_key_ops(locked, kinds)
        onnx.checker.check_model(stripped)
        left = ob.count_key_ops(stripped)
        assert all(left[k] == (0 if k in kinds else 6) for k in ob.KINDS)
        out = run(stripped)
        assert out.shape == expected.shape and not np.allclose(out, expected, atol=1e-3)
    bare = ob.strip_key_ops(locked, frozenset(ob.KINDS))
    assert ob.key_derived(bare.graph, {key_name}) == {key_name}  # the key decoding is gone
    assert {n.op_type for n in bare.graph.node} <= {
        "Identity",
        "Transpose",
        "Reshape",
        "Gemm",
        "Relu",
    }

    row = ob.Breakdown("mlp", 1, {"original": 1.0, "locked": 3.0, "no key Gather": 2.0})
    assert row.ratio("locked") == 3.0 and row.share("no key Gather") == 0.5
    rows = ob.breakdown_model("mlp", tmp_path, blocks=2, block_s=0.001, log=lambda s: None)
    assert [r.batch for r in rows] == [1, 32]
    assert all(set(r.seconds) == {"original", "locked", *ob.VARIANTS} for r in rows)
    table = ob.markdown_table(rows)
    assert table.count("| mlp | ") == 2 and "mlp: 6 Gather, 6 Mul, 6 un-mix" in table
    with pytest.raises(SystemExit):
        ob.main(["--models", "mlp,resnet50"])
    assert "unknown model(s) ['resnet50']" in capsys.readouterr().err


def test_overhead_breakdown_reaches_into_the_recurrent_scan_body(tmp_path):
    import onnx
    import onnxruntime as ort

    import overhead_breakdown as ob
    from skprotect_pytorch.export import get_exporter
    from skprotect_pytorch.formats import ExportFormat

    # the locked GRU only, as export_pair locks and exports it: its original (another dynamo
    # export of a recurrent model, 10 s) is not read here
    bm = BENCH_MODELS["gru"]
    x = bm.example(overhead.EXAMPLE_BATCH)
    net = overhead.lock(bm.make(), name=bm.name)
    key = net.layout.static_key()
    path = tmp_path / "gru_locked.onnx"
    options = overhead.export_options(x)
    get_exporter(ExportFormat.ONNX).export(
        net.keyed, (x, torch.from_numpy(key)), path, options, with_key=True
    )
    locked = onnx.load(str(path))
    ops = ob.classify_key_ops(locked)
    in_body = {kind for graph, _, kind, _ in ops if graph is not locked.graph}
    assert in_body == {"gather", "unmix"}  # the hidden state's key ops, scales folded in
    bare = ob.strip_key_ops(locked, frozenset(ob.KINDS))
    assert ob.count_key_ops(bare) == {"gather": 0, "scale": 0, "unmix": 0}
    key_name = locked.graph.input[-1].name
    assert ob.key_derived(bare.graph, {key_name}) == {key_name}
    x = bm.example(2).numpy()
    session = ort.InferenceSession(bare.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x, key_name: key})[0].shape == (2, 10)
