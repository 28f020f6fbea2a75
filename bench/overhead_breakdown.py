"""Where the lock's inference overhead goes in onnxruntime: the locked graph with one kind of
key op taken out at a time, timed side by side with the original and the whole locked graph.

The lock adds three kinds of ops around every locked layer (DESIGN.md §3): the key's **Gather**
(the secret permutation), the key's **Mul** (the secret scales) and the public **un-mix** (a
batched MatMul of 16×16 blocks, or a grouped 1×1 Conv on a conv's channel axis).  For each model
this exports the original and the locked model with the bench's ``export_pair`` (seed 0, the
default lock), finds those ops in the locked graph (Gathers and Muls fed by the key; MatMuls
with a constant ``(k, b, b)`` block stack; grouped 1×1 Convs with a constant weight) and writes
variants of the graph in which the ops of one kind, or of all three, are replaced by Identity.
Nodes left without a consumer (the key decoding, once nothing reads it) are removed.  What the
"all three" variant still adds over the original is the layout: transposes into channel-first
rows, the reshapes around the blocks, the GEMM's operand order, and the fusions the key ops
broke.

The variants compute garbage (that is the point of the key ops); only their latency is used.
All sides are timed in one process, interleaved (:func:`machine.measure_interleaved`), 1 thread,
batch 1 and 32, and printed as ratios to the original, with each kind's share of the overhead,
``(locked - variant) / (locked - original)``.  The recurrent models are not offered: their key
ops on the hidden state run inside a ``Scan`` body, which this does not rewrite.

Usage::

    python bench/overhead_breakdown.py --models mlp,transformer,resnet18_32

No result is asserted: the numbers depend on the machine, which the output names.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line, measure_interleaved
from models import BENCH_MODELS
from overhead import command_line, export_pair, ort_runner

KINDS = ("gather", "scale", "unmix")
VARIANTS: dict[str, frozenset[str]] = {
    "no key Gather": frozenset({"gather"}),
    "no key Mul": frozenset({"scale"}),
    "no un-mix": frozenset({"unmix"}),
    "none of the three": frozenset(KINDS),
}
MODELS = tuple(name for name in BENCH_MODELS if name not in ("lstm", "gru"))
BATCHES = (1, 32)


def key_derived(graph: onnx.GraphProto, key_name: str) -> set[str]:
    """Names of the tensors computed from the key and constants only (the key decoding)."""
    constants = {init.name for init in graph.initializer} | {""}
    derived = {key_name}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant":
            constants.update(node.output)
        elif any(i in derived for i in node.input) and all(
            i in derived or i in constants for i in node.input
        ):
            derived.update(node.output)
    return derived


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def classify_key_ops(graph: onnx.GraphProto, key_name: str) -> dict[int, tuple[str, str]]:
    """Node index → (kind, the data input an Identity would pass on) for every key op."""
    derived = key_derived(graph, key_name)
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    ops: dict[int, tuple[str, str]] = {}
    for i, node in enumerate(graph.node):
        ins = list(node.input)
        if node.op_type == "Gather" and ins[1] in derived and ins[0] not in derived:
            ops[i] = ("gather", ins[0])
        elif node.op_type == "Mul" and sum(name in derived for name in ins) == 1:
            ops[i] = ("scale", next(name for name in ins if name not in derived))
        elif node.op_type == "MatMul":
            block = [name for name in ins if len(shapes.get(name, ())) == 3]
            dims = shapes[block[0]] if len(block) == 1 else ()
            if dims and dims[1] == dims[2] and not set(ins) & derived:
                ops[i] = ("unmix", next(name for name in ins if name != block[0]))
        elif node.op_type == "Conv" and int(_attribute(node, "group", 1)) > 1:
            weight = shapes.get(ins[1], ())
            if len(weight) >= 3 and all(d == 1 for d in weight[2:]) and weight[0] % weight[1] == 0:
                ops[i] = ("unmix", ins[0])
    return ops


def strip_key_ops(model: onnx.ModelProto, kinds: frozenset[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the key ops of ``kinds`` replaced by Identity, dead nodes and
    unused initializers removed (the graph inputs stay, so it takes the same feed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    key_name = graph.input[-1].name
    for i, (kind, data) in classify_key_ops(graph, key_name).items():
        if kind in kinds:
            node = graph.node[i]
            graph.node[i].CopyFrom(onnx.helper.make_node("Identity", [data], [node.output[0]]))
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return out


def count_key_ops(model: onnx.ModelProto) -> dict[str, int]:
    """How many key ops of each kind the model's outer graph has."""
    ops = classify_key_ops(model.graph, model.graph.input[-1].name)
    return {kind: sum(k == kind for k, _ in ops.values()) for kind in KINDS}


@dataclass
class Breakdown:
    """One model at one batch size: median seconds per call of every side."""

    model: str
    batch: int
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def ratio(self, side: str) -> float:
        return self.seconds[side] / self.seconds["original"]

    def share(self, side: str) -> float:
        """The part of the lock's overhead that taking this side's ops out removes."""
        extra = self.seconds["locked"] - self.seconds["original"]
        return (self.seconds["locked"] - self.seconds[side]) / extra if extra > 0 else float("nan")


def breakdown_model(
    name: str, outdir: Path, *, blocks: int, block_s: float, log: Callable[[str], None] = print
) -> list[Breakdown]:
    """Export ``name``, write the stripped variants and time every side at each batch size."""
    bm = BENCH_MODELS[name]
    pair = export_pair(bm, "ONNX", outdir)
    locked = onnx.load(str(pair.locked))
    paths = {"original": pair.original, "locked": pair.locked}
    for variant, kinds in VARIANTS.items():
        path = outdir / f"{name}_{'_'.join(sorted(kinds))}.onnx"
        onnx.save(strip_key_ops(locked, kinds), str(path))
        paths[variant] = path
    counts = count_key_ops(locked)
    log(f"{name}: key ops in the locked graph: {counts}")
    runners = {side: ort_runner(path, 1) for side, path in paths.items()}
    results = []
    for batch in BATCHES:
        if name == "resnet18_224" and batch > 1:
            continue  # minutes per block; overhead.py's --heavy covers it
        x = bm.example(batch).numpy()
        calls = {
            side: bind([x] if side == "original" else [x, pair.key])
            for side, bind in runners.items()
        }
        err = np.max(np.abs(calls["locked"]()[0] - calls["original"]()[0]))
        if not err < 1e-3 * max(1.0, float(np.max(np.abs(calls["original"]()[0])))):
            raise RuntimeError(f"{name}: the locked model does not match the original ({err:.2e})")
        medians, n = measure_interleaved(calls, blocks=blocks, block_s=block_s)
        row = Breakdown(name, batch, medians, counts)
        log(
            f"  b{batch}: locked {row.ratio('locked'):.2f}, "
            + ", ".join(f"{v} {row.ratio(v):.2f}" for v in VARIANTS)
            + f" ({n} calls per side)"
        )
        results.append(row)
    return results


def markdown_table(rows: Sequence[Breakdown]) -> str:
    head = "| model | batch | original ms | locked | " + " | ".join(VARIANTS) + " |"
    lines = [
        "**Ratio to the original (share of the lock's overhead that the ops removed carry)**",
        "",
        head,
        "|---|---:|---:|---:|" + "---:|" * len(VARIANTS),
    ]
    for r in rows:
        cells = [f"{r.ratio(v):.2f} ({100 * r.share(v):.0f} %)" for v in VARIANTS]
        lines.append(
            f"| {r.model} | {r.batch} | {r.seconds['original'] * 1e3:.3g} | "
            f"{r.ratio('locked'):.2f} | " + " | ".join(cells) + " |"
        )
    counts = {r.model: r.counts for r in rows}
    lines += [
        "",
        "Key ops per model (outer graph): "
        + "; ".join(
            f"{m}: {c['gather']} Gather, {c['scale']} Mul, {c['unmix']} un-mix"
            for m, c in counts.items()
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="mlp,transformer,resnet18_32", help=f"subset of {', '.join(MODELS)}"
    )
    parser.add_argument("--blocks", type=int, default=8, help="interleaved blocks per side")
    parser.add_argument("--block-ms", type=float, default=150.0, help="one side's block, ms")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in MODELS]
    if bad:
        parser.error(
            f"unknown or unsupported model(s) {bad}; choose from {', '.join(MODELS)} "
            "(the recurrent models' key ops run inside a Scan body, which is not rewritten)"
        )
    start = time.perf_counter()
    rows: list[Breakdown] = []
    with tempfile.TemporaryDirectory(prefix="skprotect_breakdown_") as tmp:
        for name in names:
            rows += breakdown_model(
                name,
                Path(tmp),
                blocks=args.blocks,
                block_s=args.block_ms / 1e3,
                log=lambda s: print(s, file=sys.stderr, flush=True),
            )
    print(f"machine: {machine_line()}")
    print(f"command: {command_line()}")
    print(
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; onnxruntime CPU, 1 thread; "
        f"{args.blocks} interleaved blocks per side of ~{args.block_ms:.0f} ms, medians; "
        f"total {time.perf_counter() - start:.0f} s"
    )
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
