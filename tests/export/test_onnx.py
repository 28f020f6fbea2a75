"""ONNX exporter: one self-contained file, names, dynamic shapes, fallback, verification."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tests.export.toy_models import ConvNet, Toy, eager
from torch import nn
from torch.export import Dim

from skprotect_pytorch.errors import ExportError, InvalidArgumentError, VerificationError
from skprotect_pytorch.export import build_export_options, get_exporter, verify_artifact
from skprotect_pytorch.export import onnx as onnx_export
from skprotect_pytorch.formats import ExportFormat
from skprotect_pytorch.lock import lock_model

EXPORTER = get_exporter(ExportFormat.ONNX)


def graph_inputs(path: Path) -> list[tuple[str, list]]:
    model = onnx.load(str(path))
    return [
        (i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
        for i in model.graph.input
    ]


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory):
    torch.manual_seed(0)
    model, x, key = Toy().eval(), torch.randn(2, 8), torch.rand(10)
    opts = build_export_options(
        [x], {"input_names": ["x"], "output_names": ["y"]}, ({0: Dim("batch")},)
    )
    folder = tmp_path_factory.mktemp("onnx_toy")
    report = EXPORTER.export(model, (x, key), folder / "toy.onnx", opts, with_key=True)
    return model, key, opts, report, folder


def test_single_file_with_key_last(toy_export):
    _, _, _, report, folder = toy_export
    assert sorted(p.name for p in folder.iterdir()) == ["toy.onnx"]
    model = onnx.load(str(report.path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert graph_inputs(report.path) == [("x", ["batch", 8]), ("key_vector", [10])]
    assert [o.name for o in model.graph.output] == ["y"]
    assert report.fmt is ExportFormat.ONNX
    assert report.exporter == "torch.onnx dynamo=True opset 18"
    assert report.seconds > 0


@pytest.mark.parametrize("batch", [5, 1])
def test_dynamic_batch_runs_at_other_sizes(toy_export, batch):
    model, key, opts, report, _ = toy_export
    x = torch.randn(batch, 8)
    err = verify_artifact(
        EXPORTER, report.path, opts, [x.numpy(), key.numpy()], eager(model, x, key)
    )
    assert err < 1e-5


def test_wrong_expected_output_raises(toy_export):
    model, key, opts, report, _ = toy_export
    x = torch.randn(3, 8)
    wrong = [eager(model, x, key)[0] + 1.0]
    with pytest.raises(VerificationError, match=r"max relative error .* > tolerance 0\.0001"):
        verify_artifact(EXPORTER, report.path, opts, [x.numpy(), key.numpy()], wrong)


def test_loader_checks_input_count(toy_export):
    _, _, opts, report, _ = toy_export
    run = EXPORTER.load(report.path, opts)
    with pytest.raises(InvalidArgumentError, match=r"takes 2 input\(s\) \(\['x', 'key_vector'\]\)"):
        run([np.zeros((2, 8), np.float32)])


def test_locked_conv_model_with_dynamic_axes_only(tmp_path):
    """A real KeyedModel (forward(*inputs)); dynamic_axes alone makes the batch dynamic."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    key = torch.from_numpy(locked.layout.static_key())
    x = torch.randn(2, 3, 16, 16)
    params = {
        "input_names": ["image"],
        "output_names": ["logits"],
        "dynamic_axes": {"image": {0: "batch"}, "logits": {0: "batch"}},
    }
    opts = build_export_options([x], params)
    report = EXPORTER.export(locked.keyed, (x, key), tmp_path / "m.onnx", opts, with_key=True)
    assert graph_inputs(report.path) == [
        ("image", ["batch", 3, 16, 16]),
        ("key_vector", [len(key)]),
    ]
    x3 = torch.randn(3, 3, 16, 16)
    inputs = [x3.numpy(), key.numpy()]
    assert verify_artifact(EXPORTER, report.path, opts, inputs, eager(model, x3)) < 1e-4
    wrong_key = np.random.default_rng(1).permutation(key.numpy())
    with pytest.raises(VerificationError):
        verify_artifact(EXPORTER, report.path, opts, [x3.numpy(), wrong_key], eager(model, x3))


def test_save_original_without_key_and_opset(tmp_path):
    torch.manual_seed(0)
    model, x = nn.Linear(8, 3).eval(), torch.randn(2, 8)
    params = {"input_names": ["x"], "output_names": ["y"], "opset_version": 17}
    opts = build_export_options([x], params, ({0: Dim("batch")},))
    report = EXPORTER.export(model, (x,), tmp_path / "orig.onnx", opts, with_key=False)
    assert graph_inputs(report.path) == [("x", ["batch", 8])]
    assert report.exporter == "torch.onnx dynamo=True opset 17"
    x4 = torch.randn(4, 8)
    assert verify_artifact(EXPORTER, report.path, opts, [x4.numpy()], eager(model, x4)) < 1e-5


def test_falls_back_to_legacy_exporter_when_dynamo_fails(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_broken(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo broke")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_broken)
    model, x, key = Toy().eval(), torch.randn(2, 8), torch.rand(10)
    opts = build_export_options(
        [x], {"input_names": ["x"], "output_names": ["y"]}, ({0: Dim("batch")},)
    )
    report = EXPORTER.export(model, (x, key), tmp_path / "m.onnx", opts, with_key=True)
    assert report.exporter == "torch.onnx dynamo=False opset 18"
    assert report.notes[0] == (
        "dynamo export failed (dynamo=True: RuntimeError: dynamo broke); "
        "used the legacy dynamo=False exporter"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    x5 = torch.randn(5, 8)
    inputs = [x5.numpy(), key.numpy()]
    assert verify_artifact(EXPORTER, report.path, opts, inputs, eager(model, x5, key)) < 1e-5


def test_an_exporter_graph_of_another_shape_keeps_the_dynamo_export(tmp_path, monkeypatch):
    """Detaching the weights from the exporter's graph only frees memory sooner: an onnx_ir
    whose graph lacks what it touches must not turn a written dynamo export into a fallback."""

    def other_graph(graph):
        raise AttributeError("'Graph' object has no attribute 'initializers'")

    monkeypatch.setattr(onnx_export, "_drop_weights", other_graph)
    model, x, key = Toy().eval(), torch.randn(2, 8), torch.rand(10)
    opts = build_export_options(
        [x], {"input_names": ["x"], "output_names": ["y"]}, ({0: Dim("batch")},)
    )
    report = EXPORTER.export(model, (x, key), tmp_path / "m.onnx", opts, with_key=True)
    assert report.exporter == "torch.onnx dynamo=True opset 18"
    assert report.notes == []
    inputs = [x.numpy(), key.numpy()]
    assert verify_artifact(EXPORTER, report.path, opts, inputs, eager(model, x, key)) < 1e-5


def test_user_choice_of_exporter_is_not_second_guessed(tmp_path, monkeypatch):
    calls = []

    def failing(*args, dynamo=True, **kwargs):
        calls.append(dynamo)
        raise RuntimeError("no")

    monkeypatch.setattr(torch.onnx, "export", failing)
    x = torch.randn(2, 8)
    opts = build_export_options([x], {"input_names": ["x"], "dynamo": True})
    with pytest.raises(ExportError) as info:
        EXPORTER.export(nn.Linear(8, 3), (x,), tmp_path / "m.onnx", opts, with_key=False)
    assert calls == [True]
    assert str(info.value).startswith("ONNX export failed (dynamo=True: RuntimeError: no).")
    assert list(tmp_path.iterdir()) == []


def test_both_exporters_failing_is_one_clear_error(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(torch.onnx, "export", failing)
    x = torch.randn(2, 8)
    opts = build_export_options([x], {"input_names": ["x"]})
    with pytest.raises(ExportError) as info:
        EXPORTER.export(nn.Linear(8, 3), (x,), tmp_path / "m.onnx", opts, with_key=False)
    assert str(info.value) == (
        "ONNX export failed (dynamo=True: RuntimeError: unsupported op; dynamo=False: "
        "RuntimeError: unsupported op). Check that the model runs with input_tensors and that "
        "onnx_params holds valid torch.onnx.export arguments."
    )


def test_external_data_is_inlined_into_one_file(tmp_path):
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64])],
            [onnx.numpy_helper.from_array(np.arange(64, dtype=np.float32), "w")],
        )
    )
    written = tmp_path / "tmp" / "m.onnx"
    written.parent.mkdir()
    onnx.save_model(model, str(written), save_as_external_data=True, size_threshold=0)
    assert len(list(written.parent.iterdir())) == 2
    target = tmp_path / "m.onnx"
    assert onnx_export._save_single_file(written, target) is True
    inlined = onnx.load(str(target), load_external_data=False)
    assert inlined.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(inlined.graph.initializer[0]), np.arange(64)
    )


def test_wrong_example_input_count_is_rejected(tmp_path):
    x = torch.randn(2, 8)
    opts = build_export_options([x], {"input_names": ["x"]})
    with pytest.raises(
        InvalidArgumentError, match=r"needs 2 example tensor\(s\) \(x, key_vector\)"
    ):
        EXPORTER.export(Toy(), (x,), tmp_path / "m.onnx", opts, with_key=True)


class _LastStep(nn.Module):
    """An LSTM classifier: the model whose Dynamo guards leaked from one export to the next."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def test_a_fixed_batch_export_does_not_break_a_later_dynamic_one(tmp_path):
    """Exporting a locked LSTM with a fixed batch left Dynamo guards that failed a later
    dynamic-batch export in the same process (``2 != N``): each export traces afresh."""
    torch.manual_seed(0)
    locked = lock_model(
        _LastStep().eval(), layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0)
    )
    key = torch.from_numpy(locked.layout.static_key())
    x = torch.randn(2, 5, 6)
    params = {"input_names": ["x"], "output_names": ["y"]}
    fixed = build_export_options([x], params, None)
    EXPORTER.export(locked.keyed, (x, key), tmp_path / "fixed.onnx", fixed, with_key=True)
    dynamic = build_export_options([x], params, ({0: Dim("batch")},))
    path = tmp_path / "dynamic.onnx"
    report = EXPORTER.export(locked.keyed, (x, key), path, dynamic, with_key=True)
    assert report.exporter.startswith("torch.onnx dynamo=True")  # not the legacy fallback
    x4 = torch.randn(4, 5, 6)
    with torch.no_grad():
        expected = [locked.keyed(x4, key).numpy()]
    assert verify_artifact(EXPORTER, path, dynamic, [x4.numpy(), key.numpy()], expected) < 1e-5


def test_shipped_file_has_no_stack_traces_or_build_paths(tmp_path):
    """The dynamo exporter records each op's Python stack trace (absolute paths and the
    model's own source lines), class hierarchy and FX node in the node metadata."""
    torch.manual_seed(0)
    model, x, key = Toy().eval(), torch.randn(2, 8), torch.rand(10)
    params = {"input_names": ["x"], "output_names": ["y"]}
    opts = build_export_options([x], params, ({0: Dim("batch")},))
    path = EXPORTER.export(model, (x, key), tmp_path / "toy.onnx", opts, with_key=True).path
    content = path.read_bytes()
    for where in (Path(__file__).parent, Path(torch.__file__).parent, Path(sys.prefix)):
        assert str(where).encode() not in content
    assert b"stack_trace" not in content and b"class_hierarchy" not in content
    proto = onnx.load(str(path))
    assert not any(n.metadata_props or n.doc_string for n in proto.graph.node)
    xb = torch.randn(3, 8)
    inputs = [xb.numpy(), key.numpy()]
    assert verify_artifact(EXPORTER, path, opts, inputs, eager(model, xb, key)) < 1e-5


def test_an_older_opset_exports_without_upstream_tracebacks_in_the_log(tmp_path, caplog):
    """Below opset 18 torch logs that it converts, and the converter logged its failure with a
    full traceback (on stderr without a logging set-up), although the export then succeeds
    with the legacy exporter, noted in the report."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1, padding_mode="reflect")).eval()
    x = torch.randn(2, 4, 10)
    opts = build_export_options([x], {"input_names": ["x"], "opset_version": 14})
    with caplog.at_level(logging.WARNING):
        report = EXPORTER.export(model, (x,), tmp_path / "m.onnx", opts, with_key=False)
    upstream = [r.getMessage()[:80] for r in caplog.records if r.name.startswith(("onnx", "torch"))]
    assert upstream == []
    assert report.exporter.endswith("opset 14")
    assert report.notes[0].startswith("dynamo export failed")
    assert verify_artifact(EXPORTER, report.path, opts, [x.numpy()], eager(model, x)) < 1e-5


def test_overlapping_quieting_in_two_threads_restores_every_logger_and_filter() -> None:
    """Two exports in two threads that end in the order they began (not nested): each used to
    restore what it saw on entry, so the second left torch's loggers at ERROR for good."""
    import logging
    import threading
    import warnings

    from skprotect_pytorch.export.base import _QUIETED_LOGGERS, quiet_upstream_warnings

    loggers = [logging.getLogger(name) for name in _QUIETED_LOGGERS]
    levels = [logger.level for logger in loggers]
    filters = list(warnings.filters)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    quiet_after_first_ended: list[bool] = []

    def first() -> None:
        with quiet_upstream_warnings():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with quiet_upstream_warnings():
            b_in.set()
            a_out.wait(10)
            quiet_after_first_ended.append(all(lg.level == logging.ERROR for lg in loggers))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert quiet_after_first_ended == [True]
    assert [logger.level for logger in loggers] == levels
    assert list(warnings.filters) == filters
