"""Keeps ``bench/protect_memory.py`` working on a tiny MLP, and checks the memory fixes it
measured: the ONNX exporter inlines the weights one tensor at a time, and the TorchScript
exporter writes its archive entry by entry."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import protect_memory  # noqa: E402


def test_the_script_reports_peaks_ratios_and_stages_of_two_trees(capsys):
    argv = ["--cases", "mlp", "--mlp-million", "0.5", "--stages"]
    assert protect_memory.main([*argv, "--compare-src", str(ROOT / "src")]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| mlp |")]
    assert [row[1] for row in rows] == [f"src {ROOT / 'src'}", "this tree"]
    for row in rows:
        model, protect_peak, per_model = float(row[2]), float(row[4].split()[0]), float(row[5])
        assert model > 0 and protect_peak > model
        assert abs(per_model - protect_peak / model) <= 0.05 * per_model
    stages = [line for line in out.splitlines() if line.startswith("| _save_single_file |")]
    assert len(stages) == 2  # each tree's protection ran the ONNX export's stages


@pytest.mark.parametrize("argv", [["--cases", "resnet"], ["--formats", "INDUCTOR_GPU"]])
def test_unknown_cases_and_formats_are_refused(argv):
    with pytest.raises(SystemExit) as exit_:
        protect_memory.parse_args(argv)
    assert exit_.value.code == 2


_PEAK = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from protect_memory import peak_rss_mb, reset_peak_rss, rss_mb

{setup}
reset_peak_rss()
before = rss_mb()
{call}
print(peak_rss_mb() - before)
"""


def extra_mib(setup: str, call: str, *args: Path) -> float:
    """The peak RSS that ``call`` adds in a fresh process, after ``setup``, in MiB."""
    code = _PEAK.format(setup=setup, call=call)
    argv = [sys.executable, "-c", code, str(ROOT / "bench"), *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def test_inlining_the_weights_holds_one_tensor_at_a_time(tmp_path):
    """16 weights of 8 MiB in a side file: writing them into one file needed the whole model
    twice (parsed, then serialised: 256 MiB more); one tensor at a time needs far less."""
    count, size = 16, 2 * 1024 * 1024
    weights = [np.full(size, i, np.float32) for i in range(count)]
    nodes = [onnx.helper.make_node("Add", ["x", "w0"], ["y0"])]
    nodes += [
        onnx.helper.make_node("Add", [f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(1, count)
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [size])],
        [onnx.helper.make_tensor_value_info(f"y{count - 1}", onnx.TensorProto.FLOAT, [size])],
        [onnx.numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    written, target = tmp_path / "tmp" / "m.onnx", tmp_path / "m.onnx"
    written.parent.mkdir()
    onnx.save_model(model, str(written), save_as_external_data=True, size_threshold=0)
    del model, graph, weights
    setup = "from skprotect_pytorch.export import onnx as onnx_export"
    call = "onnx_export._save_single_file(Path(sys.argv[2]), Path(sys.argv[3]))"
    extra, total = extra_mib(setup, call, written, target), count * size * 4 / 2**20
    assert extra < total / 2, f"{extra:.0f} MiB to inline {total:.0f} MiB"
    assert [p.name for p in target.parent.iterdir() if p.is_file()] == ["m.onnx"]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.zeros(size, np.float32)})
    np.testing.assert_array_equal(y[:3], np.full(3, sum(range(count)), np.float32))
    inlined = onnx.load(str(target), load_external_data=False)
    assert [t.name for t in inlined.graph.initializer] == [f"w{i}" for i in range(count)]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in inlined.graph.initializer)


_ARCHIVE = """
import io
import torch
from skprotect_pytorch.export.torchscript import write_without_debug_records



class Weights(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for i in range(16):
            self.register_buffer(f"w{i}", torch.full((2**21,), float(i)))

    def forward(self, x):
        return x + self.w15[:1]


buffer = io.BytesIO()
torch.jit.save(torch.jit.trace(Weights(), torch.ones(1)), buffer)
"""


def test_the_torchscript_archive_is_written_without_copies_of_it(tmp_path):
    """A 128 MiB archive: filtering it in memory held it three more times (the bytes, the
    filtered archive, its bytes); written entry by entry it needs far less."""
    call = "write_without_debug_records(buffer, Path(sys.argv[2]))"
    extra = extra_mib(_ARCHIVE, call, tmp_path / "m.pt")
    assert extra < 64, f"{extra:.0f} MiB to write a 128 MiB archive"
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert float(loaded.w15[0]) == 15.0
    with zipfile.ZipFile(tmp_path / "m.pt") as archive:
        names = archive.namelist()
    assert names and not [n for n in names if n.endswith(".debug_pkl")]
