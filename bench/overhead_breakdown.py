"""Where the lock's inference overhead goes in onnxruntime: the locked graph with one kind of
key op taken out at a time, timed side by side with the original and the whole locked graph.

The lock adds three kinds of ops around every locked layer (DESIGN.md §3): the key's **Gather**
(the secret permutation), the key's **Mul** (the secret scales) and the public **un-mix** (a
batched MatMul of 16×16 blocks, or a grouped 1×1 Conv on a conv's channel axis).  For each model
this exports the original and the locked model with the bench's ``export_pair`` (seed 0, the
default lock), finds those ops in the locked graph and in its ``Scan`` bodies (Gathers and Muls
fed by the key; MatMuls with a constant ``(k, b, b)`` block stack, or with one that carries the
key's scales, as in the recurrent cells; grouped 1×1 Convs with a constant weight) and writes
variants of the graph in which the ops of one kind, or of all three, are replaced by Identity.
Nodes left without a consumer (the key decoding, once nothing reads it) are removed.  What the
"all three" variant still adds over the original is the layout: transposes into channel-first
rows, the reshapes around the blocks, the GEMM's operand order, the regrouped depthwise convs,
and for the LSTM/GRU the cell written out in a ``Scan`` instead of onnxruntime's fused op.

The variants compute garbage (that is the point of the key ops); only their latency is used.
All sides are timed in one process, interleaved (:func:`machine.measure_interleaved`), 1 thread,
batch 1 and 32, and printed as ratios to the original, with each kind's share of the overhead,
``(locked - variant) / (locked - original)``.

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

from machine import (
    comma_names,
    machine_line,
    measure_interleaved,
    positive_float,
    positive_int,
)
from models import BENCH_MODELS
from overhead import command_line, export_pair, ort_runner

KINDS = ("gather", "scale", "unmix")
VARIANTS: dict[str, frozenset[str]] = {
    "no key Gather": frozenset({"gather"}),
    "no key Mul": frozenset({"scale"}),
    "no un-mix": frozenset({"unmix"}),
    "none of the three": frozenset(KINDS),
}
MODELS = tuple(BENCH_MODELS)
BATCHES = (1, 32)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of a control-flow node (a ``Scan``'s loop body)."""
    return [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from the scope around it."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    used: set[str] = set()
    for node in graph.node:
        used.update(node.input)
        for body in _subgraphs(node):
            used |= _free_names(body)
        local.update(node.output)
    return used - local


def _reads(node: onnx.NodeProto) -> set[str]:
    """Everything a node reads: its inputs and what its bodies take from the outer scope."""
    names = set(node.input)
    for body in _subgraphs(node):
        names |= _free_names(body)
    return names


def key_derived(graph: onnx.GraphProto, derived: set[str]) -> set[str]:
    """``derived`` grown by the tensors of ``graph`` computed from it and constants only (the
    key decoding; in a loop body, the per-step use of key parts decoded outside)."""
    constants = {init.name for init in graph.initializer} | {""}
    derived = set(derived)
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


def _classify(node: onnx.NodeProto, derived: set[str], shapes: dict) -> tuple[str, str] | None:
    """(kind, the data input an Identity would pass on) if ``node`` is a key op."""
    ins = list(node.input)
    keyed = [name in derived for name in ins]
    if node.op_type == "Gather" and keyed == [False, True]:
        return "gather", ins[0]
    if node.op_type == "Mul" and sum(keyed) == 1:
        return "scale", ins[keyed.index(False)]
    if node.op_type == "MatMul":
        if sum(keyed) == 1:  # an un-mix whose blocks carry the key's scales (recurrent cells)
            return "unmix", ins[keyed.index(False)]
        block = [i for i, name in enumerate(ins) if len(shapes.get(name, ())) == 3]
        dims = shapes[ins[block[0]]] if len(block) == 1 else ()
        if dims and dims[1] == dims[2] and not any(keyed):
            return "unmix", ins[1 - block[0]]
    if node.op_type == "Conv" and int(_attribute(node, "group", 1)) > 1:
        weight = shapes.get(ins[1], ())
        if len(weight) >= 3 and all(d == 1 for d in weight[2:]):
            return "unmix", ins[0]
    return None


def _key_ops(
    graph: onnx.GraphProto, derived: set[str], shapes: dict
) -> list[tuple[onnx.GraphProto, int, str, str]]:
    """(graph, node index, kind, data input) of every key op in ``graph`` and its bodies."""
    derived = key_derived(graph, derived)
    shapes = {**shapes, **{init.name: tuple(init.dims) for init in graph.initializer}}
    found = []
    for i, node in enumerate(graph.node):
        op = _classify(node, derived, shapes)
        if op is not None:
            found.append((graph, i, *op))
        for body in _subgraphs(node):
            found += _key_ops(body, derived, shapes)
    return found


def classify_key_ops(model: onnx.ModelProto) -> list[tuple[onnx.GraphProto, int, str, str]]:
    """Every key op of the model, loop bodies included: (graph, node index, kind, data input)."""
    return _key_ops(model.graph, {model.graph.input[-1].name}, {})


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes nothing needs (bodies first) and initializers nothing reads."""
    for node in graph.node:
        for body in _subgraphs(node):
            _prune(body)
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed |= _reads(node)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def strip_key_ops(model: onnx.ModelProto, kinds: frozenset[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the key ops of ``kinds`` replaced by Identity, dead nodes and
    unused initializers removed (the graph inputs stay, so it takes the same feed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for graph, i, kind, data in classify_key_ops(out):
        if kind in kinds:
            output = graph.node[i].output[0]
            graph.node[i].CopyFrom(onnx.helper.make_node("Identity", [data], [output]))
    _prune(out.graph)
    return out


def count_key_ops(model: onnx.ModelProto) -> dict[str, int]:
    """How many key ops of each kind the model has (one in a loop body counts once)."""
    kinds = [kind for _, _, kind, _ in classify_key_ops(model)]
    return {kind: kinds.count(kind) for kind in KINDS}


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
        "Key ops per model (one in a Scan body counted once): "
        + "; ".join(
            f"{m}: {c['gather']} Gather, {c['scale']} Mul, {c['unmix']} un-mix"
            for m, c in counts.items()
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="mlp,transformer,resnet18_32,lstm,gru",
        help=f"subset of {', '.join(MODELS)}",
    )
    parser.add_argument(
        "--blocks", type=positive_int, default=8, help="interleaved blocks per side"
    )
    parser.add_argument(
        "--block-ms", type=positive_float, default=150.0, help="one side's block, ms"
    )
    args = parser.parse_args(argv)
    names = comma_names(parser, args.models, "--models", "model", MODELS)
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
