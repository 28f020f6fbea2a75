"""What skruntime adds to plain onnxruntime: load time and per-call latency, side by side.

For a small MLP and a small CNN, protected on the fly (ONNX, TXT, ``test_key=True``) into a
temporary folder, this measures in the same process:

* load: ``onnxruntime.InferenceSession(path)`` versus ``SkRuntime(dir).load(model)`` (configuration
  read and signature check, streamed SHA-256 of the model file, key files, session key, session),
  and ``rt.load(model)`` alone with the ``SkRuntime`` reused; median of N loads, interleaved;
* per call: ``session.run`` fed the static key versus calling the ``LoadedModel`` (input checks
  and key feeding included); 1 intra-op thread, median over many calls after warm-up, measured
  in interleaved blocks so that drift hits both sides alike.

Usage::

    python bench/runtime_overhead.py            # full run (about a minute)
    python bench/runtime_overhead.py --quick    # short run

No result is asserted: the numbers depend on the machine, which the table names.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line, timed

APP = "bench_app"


def protect_models(workdir: Path) -> dict[str, tuple[int, ...]]:
    """Protect the two models into ``workdir/outputs/APP``; returns model name -> input shape."""
    import torch
    from torch import nn

    from skprotect_pytorch.protect import SkProtectorPyTorch

    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    # a model whose call costs milliseconds, as real ones do: the fixed per-call cost vanishes
    cnn224 = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    shapes = {"mlp": (1, 256), "cnn": (1, 3, 32, 32), "cnn224": (1, 3, 224, 224)}
    protector = SkProtectorPyTorch(application_name=APP)
    for name, model in (("mlp", mlp), ("cnn", cnn), ("cnn224", cnn224)):
        protector.protect_new_model(
            model.eval(),
            name,
            [torch.randn(*shapes[name])],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
            test_key=True,
        )
    return shapes


def bench_model(
    outputs: Path, name: str, shape: tuple[int, ...], loads: int, calls: int, blocks: int
) -> dict[str, float]:
    import onnxruntime as ort

    from skruntime import SkRuntime

    path = outputs / name / "onnx" / f"{name}.onnx"
    key_txt = outputs / name / "onnx" / f"key_vector_inv_{name}.txt"
    key = np.array([np.float32(v) for v in key_txt.read_text().split()], dtype=np.float32)
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def options() -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return so

    cpu = ["CPUExecutionProvider"]
    runtime = SkRuntime(outputs)

    def plain_load() -> object:
        return ort.InferenceSession(str(path), sess_options=options(), providers=cpu)

    def sk_load() -> object:
        model = SkRuntime(outputs).load(name, "onnx", intra_op_threads=1)
        model.close()

    def sk_load_reused() -> object:
        model = runtime.load(name, "onnx", intra_op_threads=1)
        model.close()

    plain_load(), sk_load(), sk_load_reused()  # warm the file cache and onnxruntime
    plain_l, sk_l, reuse_l = [], [], []
    for _ in range(loads):  # interleaved
        plain_l += timed(plain_load, 1)
        sk_l += timed(sk_load, 1)
        reuse_l += timed(sk_load_reused, 1)

    session = plain_load()
    feed = {session.get_inputs()[0].name: x, session.get_inputs()[-1].name: key}
    model = runtime.load(name, "onnx", intra_op_threads=1, static_key=True)
    plain_y = session.run(None, feed)[0]
    sk_y = model(x)
    if not np.array_equal(plain_y, sk_y):
        raise SystemExit(f"{name}: LoadedModel and the plain session disagree")
    per_block = max(1, calls // blocks)
    timed(lambda: session.run(None, feed), per_block)  # warm-up
    timed(lambda: model(x), per_block)
    plain_c, sk_c = [], []
    for _ in range(blocks):
        plain_c += timed(lambda: session.run(None, feed), per_block)
        sk_c += timed(lambda: model(x), per_block)
    model.close()
    return {
        "plain_load": statistics.median(plain_l),
        "sk_load": statistics.median(sk_l),
        "sk_load_reused": statistics.median(reuse_l),
        "plain_call": statistics.median(plain_c),
        "sk_call": statistics.median(sk_c),
        "size": path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer loads and calls")
    args = parser.parse_args(argv)
    loads, calls, blocks = (5, 400, 4) if args.quick else (30, 6000, 12)

    with tempfile.TemporaryDirectory(prefix="skruntime_bench_") as tmp:
        previous = Path.cwd()
        os.chdir(tmp)
        previous_state = os.environ.get("SKPROTECT_STATE_DIR")
        os.environ["SKPROTECT_STATE_DIR"] = tmp
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                shapes = protect_models(Path(tmp))
            outputs = Path(tmp) / "outputs" / APP
            results = {  # the 224 px model costs ~100x more per call: fewer calls
                name: bench_model(
                    outputs, name, shape, loads, calls // 50 if name == "cnn224" else calls, blocks
                )
                for name, shape in shapes.items()
            }
        finally:
            os.chdir(previous)
            if previous_state is None:
                os.environ.pop("SKPROTECT_STATE_DIR", None)
            else:
                os.environ["SKPROTECT_STATE_DIR"] = previous_state

    print(f"machine: {machine_line()}")
    print(
        f"loads: median of {loads} (interleaved); calls: median of {calls} per side after "
        f"warm-up, {blocks} interleaved blocks, 1 intra-op thread, batch 1"
    )
    print()
    header = (
        "| model | file | plain load | SkRuntime()+load | ratio | load (rt reused) | ratio "
        "| plain call | LoadedModel call | ratio |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} {shapes[name]} | {r['size'] / 1024:.0f} KiB "
            f"| {r['plain_load'] * 1e3:.2f} ms | {r['sk_load'] * 1e3:.2f} ms "
            f"| {r['sk_load'] / r['plain_load']:.2f} "
            f"| {r['sk_load_reused'] * 1e3:.2f} ms | {r['sk_load_reused'] / r['plain_load']:.2f} "
            f"| {r['plain_call'] * 1e6:.1f} µs | {r['sk_call'] * 1e6:.1f} µs "
            f"| {r['sk_call'] / r['plain_call']:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
