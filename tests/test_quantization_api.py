"""``skprotect_pytorch.quantization``: int8 quantization of a protected ONNX model.

A small MLP is protected (ONNX, ``test_key=True``, ``quantize_compatibility=True``) and its
unprotected export written beside it, once per module. Both are quantized static and dynamic;
the int8 protected model, run with onnxruntime and the key, must stay close to the float
protected model, and about as close as the same quantization of the original is to the original
(the protection must not cost accuracy in int8); its key path must stay float; and every wrong
argument must be refused before anything is written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from skprotect_pytorch import quantization as q
from skprotect_pytorch.errors import InvalidArgumentError, VerificationError
from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime.keyfile import read_txt_keys

pytest.importorskip("onnxruntime.quantization")

FEATURES = 20
BATCH = 4  # the protection's example batch: the exported input is (4, 20)
# int8 with per-channel weights: each layer adds ~0.5-1 % of relative error (weight step
# max|w|/127 per channel; static also rounds activations to 1/255 of their calibrated range).
# Over the MLP's three layers that is a few %: measured over 5 keys 0.8-0.9 % dynamic,
# 2.6-3.4 % static. 5 % leaves room for other onnxruntime versions and CPUs, and is far below
# the > 50 % of a wrong key (checked below), so the test still tells "quantized" from "broken".
TOLERANCE = 0.05
# How much further from its float self the int8 protected MLP may be than the int8 original
# from the original. Dynamic: weights only, measured 1.6-1.7x. Static also quantizes each
# layer's input, which in the protected model is in the lock's basis (mixed, sign-keyed, scaled
# per channel) with a wider range than the original's post-ReLU tensor, so a coarser step
# (docs/api.md): measured 3.4-4.5x (3 % vs 0.75 %), argmax agreement 95-98 % vs 97 %.
ERROR_RATIO = {"dynamic": 2.0, "static": 6.0}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    ).eval()


def _export_original(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The unprotected model with the project's ONNX exporter (as the protection exports)."""
    from skprotect_pytorch.export import build_export_options, get_exporter
    from skprotect_pytorch.formats import ExportFormat

    opts = build_export_options([example], {"input_names": ["input.1"]})
    get_exporter(ExportFormat.ONNX).export(model, (example,), path, opts, with_key=False)
    return path


def _protect_onnx(
    model: nn.Module, name: str, example: torch.Tensor, root: Path, app: str = "app", **options
) -> Path:
    """``model`` protected to ONNX with its test key, from ``root``; its output folder."""
    previous = Path.cwd()
    os.chdir(root)
    try:
        SkProtectorPyTorch(application_name=app).protect_new_model(
            model, name, [example], model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
            test_key=True, **options,
        )  # fmt: skip
    finally:
        os.chdir(previous)
    return root / "outputs" / app / name / "onnx"


class Protected:
    """The module's protected MLP: paths, key, calibration and test inputs."""

    def __init__(self, root: Path) -> None:
        model = _mlp()
        example = torch.randn(BATCH, FEATURES)
        folder = _protect_onnx(model, "mlp", example, root, quantize_compatibility=True)
        self.model = folder / "mlp.onnx"
        self.key = read_txt_keys(folder, "mlp").static_key()  # what the docs tell users
        self.original = _export_original(model, example, root / "original.onnx")
        rng = np.random.default_rng(1)
        self.calibration = rng.standard_normal((256, FEATURES)).astype(np.float32)
        self.x = rng.standard_normal((64, FEATURES)).astype(np.float32)  # 16 batches


@pytest.fixture(scope="module")
def protected(module_workdir: Path) -> Protected:
    return Protected(module_workdir)


def _run(path: Path, x: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """The model's first output on ``x`` with onnxruntime, fed in chunks of its fixed batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    step = first.shape[0] if isinstance(first.shape[0], int) else len(x)
    feeds = ({first.name: x[i : i + step]} for i in range(0, len(x), step))
    extra = {} if key is None else {q.KEY_NAME: key}
    return np.concatenate([session.run(None, {**f, **extra})[0] for f in feeds])


def _error(y: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(y - reference) / np.linalg.norm(reference))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_protected_model_runs_with_its_key_like_the_float_one(
    protected: Protected, tmp_path: Path, mode: str
) -> None:
    static = mode == "static"
    calibration = protected.calibration if static else None
    out = tmp_path / f"mlp.{mode}.onnx"
    report = q.quantize_protected_onnx(
        protected.model, out, mode=mode, key=protected.key, calibration_inputs=calibration
    )
    assert report.output_path == out and out.is_file() and _leftovers(tmp_path) == []
    assert report.int8_weights == 3  # every trained Linear is int8
    assert report.calibration_batches == (256 // BATCH if static else 0)
    assert report.reduce_range == q.int8_saturates()
    # the key path and the public mixing were left float, and the check agrees
    assert report.key_nodes and report.mixing_nodes
    assert set(report.key_nodes) | set(report.mixing_nodes) <= set(report.excluded_nodes)
    assert q.check_key_not_quantized(out) == []
    import onnx

    ops = {n.name: n.op_type for n in onnx.load(str(out)).graph.node}
    assert all(n in ops for n in report.key_nodes)  # still there, not replaced
    assert not {ops[n] for n in report.key_nodes} & {"QLinearMul", "QGemm", "QLinearConv"}

    reference, locked = (
        _run(protected.model, protected.x, protected.key),
        _run(out, protected.x, protected.key),
    )
    locked_error = _error(locked, reference)
    assert locked_error < TOLERANCE
    assert _error(_run(out, protected.x, np.zeros_like(protected.key)), reference) > 0.5

    # the same quantization of the original lands about as close to the original
    original_out = tmp_path / f"original.{mode}.onnx"
    original_report = q.quantize_original_onnx(
        protected.original, original_out, mode=mode, calibration_inputs=calibration
    )
    assert original_report.key_nodes == () and original_report.int8_weights == 3
    original_reference, original_int8 = (
        _run(protected.original, protected.x),
        _run(original_out, protected.x),
    )
    assert np.allclose(reference, original_reference, atol=1e-4)
    original_error = _error(original_int8, original_reference)
    assert locked_error <= ERROR_RATIO[mode] * original_error + 0.005, (
        locked_error,
        original_error,
    )
    agreement = (locked.argmax(1) == reference.argmax(1)).mean()
    original_agreement = (original_int8.argmax(1) == original_reference.argmax(1)).mean()
    assert agreement >= original_agreement - 0.05, (agreement, original_agreement)


def test_a_quantized_key_path_is_refused_and_nothing_is_written(
    protected: Protected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the key nodes in ``nodes_to_exclude``, static quantization puts QuantizeLinear
    nodes on the key (accuracy at chance): the check must catch it and write nothing."""
    monkeypatch.setattr(q, "key_nodes", lambda graph: [])
    out = tmp_path / "mlp.int8.onnx"
    with pytest.raises(VerificationError, match="quantized the key path"):
        q.quantize_protected_onnx(
            protected.model,
            out,
            mode="static",
            key=protected.key,
            calibration_inputs=protected.calibration,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_quantized_key_path_in_dynamic_mode_is_not_told_to_use_dynamic_mode(
    protected: Protected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal's way out was "or use mode='dynamic'" whatever the mode: in dynamic mode,
    the mode that failed."""
    monkeypatch.setattr(q, "_key_problems", lambda graph: ["DynamicQuantizeLinear reads key"])
    with pytest.raises(VerificationError, match="quantized the key path") as refused:
        q.quantize_protected_onnx(protected.model, tmp_path / "m.int8.onnx", mode="dynamic")
    assert "mode='dynamic'" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_leaves_an_existing_output_as_it_was(
    protected: Protected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "mlp.int8.onnx"
    out.write_bytes(b"previous")
    monkeypatch.setattr(q, "key_nodes", lambda graph: [])
    with pytest.raises(VerificationError):
        q.quantize_protected_onnx(
            protected.model,
            out,
            mode="static",
            key=protected.key,
            calibration_inputs=protected.calibration,
        )
    assert out.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_reduce_range_none_follows_the_cpu_and_stores_7_bit_weights(
    protected: Protected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from onnx import numpy_helper

    peaks = {}
    for saturates in (True, False):
        monkeypatch.setattr(q, "int8_saturates", lambda s=saturates: s)
        out = tmp_path / f"mlp.{saturates}.onnx"
        report = q.quantize_protected_onnx(protected.model, out, mode="dynamic")
        assert report.reduce_range is saturates
        peaks[saturates] = max(
            int(np.abs(numpy_helper.to_array(t).astype(int)).max())
            for t in onnx.load(str(out)).graph.initializer
            if t.name.endswith("_quantized")
        )
    assert peaks[True] <= 64 and peaks[False] == 127, peaks


def test_a_fixed_batch_model_is_calibrated_in_its_batch_size(
    protected: Protected, tmp_path: Path
) -> None:
    """The protected MLP's input is (4, 20): 10 samples make 2 batches, 2 left over."""
    report = q.quantize_protected_onnx(
        protected.model,
        tmp_path / "mlp.int8.onnx",
        mode="static",
        key=protected.key,
        calibration_inputs={"input.1": protected.calibration[:10]},
    )
    assert report.calibration_batches == 2


def test_int8_saturation_is_detected_from_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(q, "Path", lambda _: cpuinfo)
    monkeypatch.setattr(q.platform, "machine", lambda: "x86_64")
    cpuinfo.write_text("flags\t: fpu sse avx2 fma\n")
    assert q.int8_saturates()
    cpuinfo.write_text("flags\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not q.int8_saturates()
    monkeypatch.setattr(q.platform, "machine", lambda: "aarch64")
    assert not q.int8_saturates()


def test_key_name_is_the_exporters() -> None:
    from skprotect_pytorch.export.options import DEFAULT_KEY_NAME

    assert q.KEY_NAME == DEFAULT_KEY_NAME


# (arguments changed from a valid static call, words the error must contain)
BAD_ARGUMENTS = {
    "static without key": ({"key": None}, "pass key=read_txt_keys(folder, model_name)"),
    "static without calibration": ({"calibration_inputs": None}, "needs calibration_inputs"),
    "key of another length": ({"key": np.zeros(7, np.float32)}, "another model's key"),
    "key not an array": ({"key": [0.0] * 3}, "key must be a numpy array"),
    "key not 1-D": ({"key": "2d"}, "key must be 1-D, got shape (1,"),
    "key with NaN": ({"key": "nan"}, "finite floating-point"),
    "mode misspelled": ({"mode": "statc"}, "mode must be 'static' or 'dynamic', got 'statc'"),
    "dynamic with calibration": ({"mode": "dynamic"}, "takes no calibration_inputs"),
    "calibration names": ({"calibration_inputs": "names"}, "pass one array per input"),
    "calibration shape": ({"calibration_inputs": "shape"}, "the model's input takes (4, 20)"),
    "calibration dtype": ({"calibration_inputs": "float64"}, "array.astype(np.float32)"),
    "calibration too few": ({"calibration_inputs": "few"}, "fewer than the model's batch of 4"),
    "calibration not arrays": ({"calibration_inputs": [1, 2]}, "a dict {input name: array}"),
    "per_channel not bool": ({"per_channel": 1}, "per_channel must be True or False"),
    "reduce_range not bool": ({"reduce_range": "auto"}, "True, False or None"),
    "calibration_batch zero": ({"calibration_batch": 0}, "calibration_batch must be >= 1"),
    "output is the input": ({"output_path": "model"}, "is the model itself"),
    "output is a folder": ({"output_path": "folder"}, "is a folder"),
    "output folder missing": ({"output_path": "missing"}, "does not exist"),
    "output folder unwritable": ({"output_path": "unwritable"}, "folder you can write"),
    "model is not ONNX": ({"model_path": "text"}, "is not an ONNX model"),
    "model missing": ({"model_path": "missing"}, "is not a file"),
    "model not protected": ({"model_path": "original"}, "no 'key_vector' input"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=str)
def test_each_wrong_argument_is_refused_before_anything_is_written(
    protected: Protected, tmp_path: Path, case: str
) -> None:
    changes, words = BAD_ARGUMENTS[case]
    good = protected.calibration
    calibrations = {
        "names": {"x": good},
        "shape": good[:, :5],
        "float64": good.astype(np.float64),
        "few": good[:3],
    }
    paths = {
        "model": protected.model,
        "folder": tmp_path,
        "missing": tmp_path / "no" / "such.onnx",
        "unwritable": Path("/sys/mlp.int8.onnx"),  # refused even to root
        "text": tmp_path / "notes.onnx",
        "original": protected.original,
    }
    (tmp_path / "notes.onnx").write_text("not a model")
    kwargs = {
        "model_path": protected.model,
        "output_path": tmp_path / "mlp.int8.onnx",
        "mode": "static",
        "key": protected.key,
        "calibration_inputs": good,
    }
    for name, value in changes.items():
        if name == "calibration_inputs" and isinstance(value, str):
            value = calibrations[value]
        elif name.endswith("_path"):
            value = paths[value]
        elif isinstance(value, str) and value == "nan":
            value = np.full_like(protected.key, np.nan)
        elif isinstance(value, str) and value == "2d":
            value = protected.key[None]
        kwargs[name] = value
    with pytest.raises(InvalidArgumentError) as raised:
        q.quantize_protected_onnx(**kwargs)
    assert words in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.onnx"]


def test_the_original_function_refuses_a_protected_model(
    protected: Protected, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgumentError, match="Quantize it with quantize_protected_onnx"):
        q.quantize_original_onnx(protected.model, tmp_path / "x.onnx", mode="dynamic")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(q, "missing_modules", lambda names: ["onnxruntime"])
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'skprotect\[protect\]'"):
        q.quantize_protected_onnx(tmp_path / "m.onnx", tmp_path / "o.onnx", mode="dynamic")


def test_the_module_imports_without_onnx_and_onnxruntime() -> None:
    """A ``skprotect[runtime]`` install (no onnx) can import it; the functions say what to
    install when called."""
    code = (
        "import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
        "from skprotect_pytorch import quantization\n"
        "assert 'onnxruntime' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_a_protected_cnn_quantizes_like_its_original(
    workdir: Path, tmp_path: Path, mode: str
) -> None:
    """Convolutions: the lock's mixing there is 1x1 convs, left float; the int8 protected CNN
    stays as close to its float self as the int8 original is to the original."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),
    ).eval()
    example = torch.randn(2, 3, 8, 8)
    folder = _protect_onnx(model, "cnn", example, workdir, quantize_compatibility=True)
    key = read_txt_keys(folder, "cnn").static_key()
    original = _export_original(model, example, workdir / "cnn_original.onnx")
    rng = np.random.default_rng(2)
    calibration = (
        rng.standard_normal((128, 3, 8, 8)).astype(np.float32) if mode == "static" else None
    )
    x = rng.standard_normal((128, 3, 8, 8)).astype(np.float32)  # 64 batches of 2
    report = q.quantize_protected_onnx(
        folder / "cnn.onnx",
        tmp_path / "cnn.int8.onnx",
        mode=mode,
        key=key,
        calibration_inputs=calibration,
    )
    original_out = tmp_path / "original.int8.onnx"
    q.quantize_original_onnx(original, original_out, mode=mode, calibration_inputs=calibration)
    assert report.key_nodes and q.check_key_not_quantized(report.output_path) == []
    reference, original_reference = _run(folder / "cnn.onnx", x, key), _run(original, x)
    locked, original_int8 = _run(report.output_path, x, key), _run(original_out, x)
    locked_error = _error(locked, reference)
    original_error = _error(original_int8, original_reference)
    assert locked_error < TOLERANCE
    # Measured (random weights, 256 inputs): 2.5 % vs 1.3 % static, 2.1 % vs 1.0 % dynamic;
    # argmax agreement 97-99 % vs 99-100 % (near-tie logits of random weights flip).
    # The locked convs' inputs are quantized in the lock's mixed, sign-keyed basis, whose range
    # is wider than the original's post-ReLU one (docs/api.md): about twice the logit error,
    # which cost trained CNNs <= 0.26 accuracy points (docs/benchmarks.md). 3x bounds that.
    assert locked_error <= 3 * original_error + 0.005, (locked_error, original_error)
    agreement = (locked.argmax(1) == reference.argmax(1)).mean()
    original_agreement = (original_int8.argmax(1) == original_reference.argmax(1)).mean()
    assert agreement >= original_agreement - 0.05, (agreement, original_agreement)  # 6 of 128


def test_a_model_protected_without_quantize_compatibility_is_warned_about(
    protected: Protected, tmp_path: Path
) -> None:
    """Its mixing blocks have condition number 16, not orthogonal: int8 may lose most of its
    accuracy (the digits CNN fell to 13.7-55.6 %). Quantized without a word before."""
    folder = _protect_onnx(_mlp(), "mlp", torch.randn(BATCH, FEATURES), tmp_path, "plain")
    plain = folder / "mlp.onnx"
    with pytest.warns(RuntimeWarning, match="without quantize_compatibility=True") as caught:
        q.quantize_protected_onnx(plain, tmp_path / "plain.int8.onnx", mode="dynamic")
    assert caught[0].filename == __file__  # the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the compatible model: not a word
        q.quantize_protected_onnx(protected.model, tmp_path / "ok.int8.onnx", mode="dynamic")


@pytest.mark.parametrize("compatible", [False, True])
def test_a_convolutional_model_without_quantize_compatibility_is_warned_about(
    tmp_path: Path, compatible: bool
) -> None:
    """A model of convolutions alone: its lock's mixing is 1x1 convs (16 channels: one block,
    32: two groups), no MatMul. Until 2026-12-07 those were never looked at (only grouped convs,
    and their kernel's shape was compared with a tuple of the wrong length), so its int8
    version lost its accuracy without a word."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 10, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    example = torch.randn(2, 3, 8, 8)
    folder = _protect_onnx(model, "fcn", example, tmp_path, quantize_compatibility=compatible)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q.quantize_protected_onnx(folder / "fcn.onnx", tmp_path / "fcn.int8.onnx", mode="dynamic")
    warned = [w for w in caught if "without quantize_compatibility=True" in str(w.message)]
    assert len(warned) == (0 if compatible else 1), [str(w.message) for w in caught]


def test_a_quantized_key_path_inside_a_subgraph_is_found(tmp_path: Path) -> None:
    """A locked LSTM exports as a Scan whose body reads the decoded indices and scales of the
    main graph by name; a (de)quantize node there (one quantized by other means, in a Scan,
    Loop or If body) was not looked at: check_key_not_quantized said [] until 2026-12-07."""
    from onnx import TensorProto, helper, numpy_helper, save

    def constant(name: str, value: float, dtype: type = np.float32) -> Any:
        return numpy_helper.from_array(np.array(value, dtype), name)

    def branch(name: str, quantized: bool) -> Any:
        read = "scale_dq" if quantized else "scale"
        nodes = [helper.make_node("Mul", ["x", read], [f"{name}_y"], name=f"{name}_mul")]
        if quantized:
            nodes[:0] = [
                helper.make_node("QuantizeLinear", ["scale", "s", "z"], ["scale_q"], name="q"),
                helper.make_node("DequantizeLinear", ["scale_q", "s", "z"], [read], name="dq"),
            ]
        output = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [4])
        return helper.make_graph(
            nodes, name, [], [output], [constant("s", 0.01), constant("z", 0, np.int8)]
        )

    graph = helper.make_graph(
        [
            helper.make_node("Mul", [q.KEY_NAME, "two"], ["scale"], name="decode"),
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                name="if",
                then_branch=branch("then", quantized=True),
                else_branch=branch("else", quantized=False),
            ),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info(q.KEY_NAME, TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [constant("two", 2.0), constant("cond", True, np.bool_)],
    )
    path = tmp_path / "subgraph.onnx"
    save(helper.make_model(graph), str(path))
    assert q.check_key_not_quantized(path) == [
        "QuantizeLinear q reads key-derived scale",
        "DequantizeLinear dq reads key-derived scale_q",
    ]


def test_an_output_path_that_is_a_link_is_written_through(
    protected: Protected, tmp_path: Path
) -> None:
    """As onnx.save (and onnxruntime's own quantizers) write: the file the link points to gets
    the model, the link stays. Until 2026-12-07 the link was replaced by a file and its target
    kept the previous model; a link into a missing folder names that folder."""
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v2.onnx"
    target.write_bytes(b"previous")
    link = tmp_path / "current.onnx"
    link.symlink_to(Path("models") / "v2.onnx")  # relative, as ln -s writes it
    q.quantize_protected_onnx(protected.model, link, mode="dynamic")
    assert link.is_symlink() and target.read_bytes() != b"previous"
    assert (
        _error(
            _run(link, protected.x, protected.key),
            _run(protected.model, protected.x, protected.key),
        )
        < TOLERANCE
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["current.onnx", "models", "v2.onnx"]
    dangling = tmp_path / "dangling.onnx"
    dangling.symlink_to(tmp_path / "gone" / "v3.onnx")
    with pytest.raises(InvalidArgumentError, match="gone does not exist"):
        q.quantize_protected_onnx(protected.model, dangling, mode="dynamic")


@pytest.mark.parametrize("content", [b"", b"\x08\x07"], ids=["empty", "stray bytes"])
def test_an_empty_file_is_not_taken_for_an_onnx_model(tmp_path: Path, content: bytes) -> None:
    """Both parse as an empty ModelProto: quantize_original_onnx went on to onnxruntime, which
    failed with AttributeError ('NoneType' object has no attribute 'graph'), and
    check_key_not_quantized said [] (no problem) until 2026-12-07."""
    model = tmp_path / "model.onnx"
    model.write_bytes(content)
    for call in (
        lambda: q.quantize_original_onnx(model, tmp_path / "o.onnx", mode="dynamic"),
        lambda: q.quantize_protected_onnx(model, tmp_path / "o.onnx", mode="dynamic"),
        lambda: q.check_key_not_quantized(model),
    ):
        with pytest.raises(InvalidArgumentError, match="is not an ONNX model"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_check_key_not_quantized_refuses_what_it_cannot_check(
    protected: Protected, tmp_path: Path
) -> None:
    """A missing file, a folder or a text file raised FileNotFoundError, IsADirectoryError or
    protobuf's DecodeError; a model without a key (the original) got [], "the key path is
    float", for a key path it does not have (until 2026-12-07)."""
    (tmp_path / "notes.onnx").write_text("not a model")
    for path, words in (
        (tmp_path / "missing.onnx", "is not a file"),
        (tmp_path, "is not a file"),
        (tmp_path / "notes.onnx", "is not an ONNX model"),
        (protected.original, "no 'key_vector' input"),
    ):
        with pytest.raises(InvalidArgumentError, match=words):
            q.check_key_not_quantized(path)
    with pytest.raises(InvalidArgumentError, match="must be a file path"):
        q.check_key_not_quantized(None)  # type: ignore[arg-type]


def test_an_output_path_that_is_a_link_loop_is_refused(
    protected: Protected, tmp_path: Path
) -> None:
    """Path.resolve raised RuntimeError ('Symlink loop') until 2026-12-07."""
    loop = tmp_path / "loop.onnx"
    loop.symlink_to(loop)
    with pytest.raises(InvalidArgumentError, match="symbolic link that cannot be followed"):
        q.quantize_protected_onnx(protected.model, loop, mode="dynamic")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop.onnx"]


def test_a_gemm_with_its_weight_first_gets_it_second(tmp_path: Path) -> None:
    """ORT's GemmTransposeFusion (in quant_pre_process) folds a Gemm's output Transpose into
    it, ``(x Wᵀ)ᵀ = W xᵀ``, which moves the weight to the first input, where ORT's quantizers
    leave it float (dynamic) or per-tensor (static). The rewrite computes the same values."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    bias = rng.standard_normal((6, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["w", "x", "b"], ["y"], name="g", alpha=0.5, transB=1),
            helper.make_node("Gemm", ["w", "xt", ""], ["z"], name="h"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
            helper.make_tensor_value_info("xt", TensorProto.FLOAT, [4, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [6, 3]),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")],
    )
    path = tmp_path / "gemm.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    feeds = {"x": x, "xt": np.ascontiguousarray(x.T)}

    def run() -> list[np.ndarray]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    before = run()
    assert q.untranspose_gemm_inputs(path) == 2
    import onnx

    gemms = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"]
    assert [n.input[1] for n in gemms] == ["w", "w"]
    assert all(
        a.i == 0 for n in gemms for a in n.attribute if a.name == "transA"
    )  # what ORT's dynamic quantizer takes
    for b, a in zip(before, run(), strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_a_locked_multihead_attention_has_every_projection_quantized(
    module_workdir: Path, tmp_path: Path
) -> None:
    """Its q/k/v/out projections came out of pre-processing as Gemm(W, x): dynamic mode left
    all four float (1 int8 weight of 5, the original's 3 of 3) and static quantized them
    per-tensor whatever per_channel said, until 2026-12-07."""
    import onnx

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.attention(x, x, x)[0].mean(1))

    torch.manual_seed(0)
    example = torch.randn(2, 5, 16)
    folder = _protect_onnx(
        Attention().eval(), "mha", example, module_workdir, quantize_compatibility=True
    )
    key = read_txt_keys(folder, "mha").static_key()
    dynamic = q.quantize_protected_onnx(folder / "mha.onnx", tmp_path / "d.onnx", mode="dynamic")
    assert dynamic.int8_weights == 5
    rng = np.random.default_rng(0)
    static = q.quantize_protected_onnx(
        folder / "mha.onnx",
        tmp_path / "s.onnx",
        mode="static",
        key=key,
        calibration_inputs=rng.standard_normal((8, 5, 16)).astype(np.float32),
    )
    scales = {
        t.name: t.dims
        for t in onnx.load(str(static.output_path)).graph.initializer
        if t.name.endswith("weight_scale")
    }
    assert len(scales) == 5 and all(len(d) == 1 for d in scales.values()), scales  # per channel
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    reference = _run(folder / "mha.onnx", x, key)
    for report in (dynamic, static):
        assert q.check_key_not_quantized(report.output_path) == []
        assert _error(_run(report.output_path, x, key), reference) < TOLERANCE
