"""What the lock costs once both models are int8: quantized locked vs quantized original latency
on the overhead bench's reference models, side by side.

For each model of ``bench/models.py`` (random weights, seed 0) this locks a copy with the
default preset and ``quantize_compatibility=True`` (what a model meant for int8 is locked
with, docs/api.md), exports both with the project's ONNX exporter (``bench/overhead.py``'s
``export_pair``), runs ONNX Runtime's ``quant_pre_process`` on both, and quantizes both the same
way as ``bench/quantization.py`` does (its ``quantize``, the library's
``quantize_protected_onnx``: the key's nodes and the public mixing left float, the key path
checked float): ``dynamic`` and ``static_fo`` (static QDQ with the layers' outputs left float,
the mode that bench recommends), static calibration on 64 seeded random inputs, the locked model's
fed with its key. Then every model, fp32 and int8, original and locked, is timed in one
process, interleaved, one onnxruntime thread, at batch 1 and 32 (``ort_latency``), and the
ratio locked / original is printed per precision. Accuracy is not measured here (random
weights): ``bench/quantization.py`` measures it on trained models.

    python bench/quantized_overhead.py                      # every model but resnet18_224
    python bench/quantized_overhead.py --models mlp,gru     # a subset

No result is asserted: the numbers depend on the machine, which the output names.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import comma_names, machine_line, positive_float
from models import BENCH_MODELS
from overhead import command_line, export_pair, lock_settings
from quantization import LATENCY_BATCHES, ort_latency, preprocess, quantize
from skprotect_pytorch.quantization import int8_saturates

MODES = ("dynamic", "static_fo")
PRECISIONS = ("fp32", *MODES)
CALIBRATION_SAMPLES = 64
DEFAULT_MODELS = [name for name in BENCH_MODELS if name != "resnet18_224"]


def quantized_pair(name: str, outdir: Path, preset: str) -> dict[str, tuple[Path, object]]:
    """``"<precision> original|locked"`` → (ONNX path, key or None) for one bench model."""
    bm = BENCH_MODELS[name]
    pair = export_pair(bm, "ONNX", outdir, preset=preset)
    calib = bm.example(CALIBRATION_SAMPLES, seed=7).numpy()
    reduce_range = int8_saturates()
    out: dict[str, tuple[Path, object]] = {}
    for side, path, key in (("original", pair.original, None), ("locked", pair.locked, pair.key)):
        pre = preprocess(path, outdir / f"{name}_{side}.pre.onnx")
        out[f"fp32 {side}"] = (pre, key)
        for mode in MODES:
            dst = outdir / f"{name}_{side}.{mode}.onnx"
            quantize(pre, dst, mode, calib, key, reduce_range=reduce_range)  # key checked float
            out[f"{mode} {side}"] = (dst, key)
    return out


def table(results: dict[str, dict[int, dict[str, float]]]) -> str:
    """Markdown: per model and batch, original → locked milliseconds and the ratio, per
    precision."""
    header = ["model", "batch"] + [f"{p}: original → locked (ms), ratio" for p in PRECISIONS]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---|" * len(PRECISIONS)]
    for name, per_batch in results.items():
        for batch, t in per_batch.items():
            cells = [
                f"{1e3 * t[f'{p} original']:.3g} → {1e3 * t[f'{p} locked']:.3g}, "
                f"**{t[f'{p} locked'] / t[f'{p} original']:.2f}**"
                for p in PRECISIONS
            ]
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument(
        "--preset", default="strong", help="lock preset (quantize_compatibility is added)"
    )
    parser.add_argument(
        "--block-s", type=positive_float, default=0.3, help="timing block per side, s"
    )
    args = parser.parse_args(argv)
    names = comma_names(parser, args.models, "--models", "model", BENCH_MODELS)
    preset = f"{args.preset}+quantize_compatibility=True"
    try:  # before the first export
        lock_settings(preset)
    except (ValueError, TypeError) as err:
        parser.error(f"--preset: {err}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="skprotect-qbench-") as tmp:
        for name in names:
            print(f"{name}: exporting and quantizing", file=sys.stderr, flush=True)
            models = quantized_pair(name, Path(tmp), preset)
            x = BENCH_MODELS[name].example(max(LATENCY_BATCHES), seed=0).numpy()
            results[name] = ort_latency(models, x, block_s=args.block_s)
            print(table({name: results[name]}).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"machine: {machine_line()}")
    print(f"command: {command_line()}")
    print(f"lock: {preset}; onnxruntime 1 thread; interleaved, medians")
    print()
    print(table(results))


if __name__ == "__main__":
    main()
