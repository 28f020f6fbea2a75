"""The constant extractor reads every tensor of each artifact format, and the leak search finds
plaintext (rescaled, permuted, transposed) weights in originals but not in locked exports."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from tests.models import MODEL_FACTORIES
from torch import nn

from skprotect_pytorch.audit import constants as constants_module
from skprotect_pytorch.audit.constants import (
    artifact_constants,
    artifact_files,
    find_weight_leaks,
    onnx_optimized_constants,
    unlocked_copies,
)
from skprotect_pytorch.errors import InvalidArgumentError
from skprotect_pytorch.lock import lock_model

CNN_AND_MLP = ["mlp", "resnet", "mobilenet", "deconv1d", "deconv2d"]


def weights_of(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def lock(model: nn.Module, seed: int = 0):
    return lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(seed))


def key_of(locked) -> torch.Tensor:
    return torch.from_numpy(locked.layout.static_key())


def export_onnx(module: nn.Module, args: tuple, path: Path, dynamo: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, args, str(path), dynamo=True, verbose=False)
        else:
            torch.onnx.export(module, args, str(path), dynamo=False)
    return path


def export_torchscript(module: nn.Module, args: tuple, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(module.eval(), args))
    frozen.save(str(path))
    return path


@pytest.fixture(scope="module", params=CNN_AND_MLP)
def exported(request, tmp_path_factory):
    """(name, original weights, locked ONNX path, original ONNX path) per toy model."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    model, inputs = MODEL_FACTORIES[name]()
    locked = lock(model)
    locked_path = export_onnx(locked.keyed, (*inputs, key_of(locked)), tmp / "locked.onnx")
    original_path = export_onnx(model, tuple(inputs), tmp / "original.onnx")
    return name, weights_of(model), locked_path, original_path


@pytest.fixture(scope="module")
def mlp_locked_onnx(tmp_path_factory) -> tuple[dict[str, np.ndarray], Path]:
    model, inputs = MODEL_FACTORIES["mlp"]()
    locked = lock(model)
    path = tmp_path_factory.mktemp("mlp") / "locked.onnx"
    return weights_of(model), export_onnx(locked.keyed, (*inputs, key_of(locked)), path)


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------


def test_onnx_original_leaks_every_weight(exported) -> None:
    name, weights, _, original = exported
    leaked = {leak.weight for leak in find_weight_leaks(artifact_constants(original), weights)}
    expected = {k for k, w in weights.items() if w.ndim >= 2 and max(w.shape[0], w[0].size) >= 8}
    assert expected <= leaked, f"{name}: missed {expected - leaked}"


def test_onnx_locked_has_no_leak(exported) -> None:
    _, weights, locked, _ = exported
    constants = artifact_constants(locked)
    assert any(v.ndim >= 2 for v in constants.values())
    assert find_weight_leaks(constants, weights) == []


@pytest.mark.parametrize(
    ("name", "dynamo"),
    [
        pytest.param("mlp", False, id="mlp-legacy-export"),
        pytest.param("resnet", True, id="resnet-dynamo-export"),
    ],
)
def test_onnx_runtime_optimized_locked_has_no_leak(name: str, dynamo: bool, tmp_path) -> None:
    model, inputs = MODEL_FACTORIES[name]()
    weights = weights_of(model)
    locked = lock(model)
    path = export_onnx(locked.keyed, (*inputs, key_of(locked)), tmp_path / "l.onnx", dynamo)
    assert find_weight_leaks(onnx_optimized_constants(path), weights) == []
    original = export_onnx(model, tuple(inputs), tmp_path / "o.onnx")
    leaks = find_weight_leaks(onnx_optimized_constants(original), weights)
    leaked = {leak.weight for leak in leaks}
    # NCHWc-reordered, BN-folded conv weights are found too.
    assert {k for k, w in weights.items() if w.ndim >= 2} <= leaked


def _plant(path: Path, out: Path, tensor: np.ndarray, as_node: bool) -> Path:
    model = onnx.load(str(path))
    t = numpy_helper.from_array(tensor.astype(np.float32), name="planted")
    if as_node:
        node = helper.make_node("Constant", [], ["planted_out"], value=t)
        model.graph.node.insert(0, node)
    else:
        model.graph.initializer.append(t)
    onnx.save(model, str(out))
    return out


PLANTS = {
    # id: (transform of the (32, 20) weight given a row permutation p and scales s, matched form)
    "rows-permuted-rescaled": (lambda w, p, s: (w * s[:, None])[p], "rows"),
    "transposed-rows-permuted": (lambda w, p, s: w[p].T, "rows"),
    "cols-permuted-rescaled": (lambda w, p, s: (w * s[:20])[:, p[p < 20]], "cols"),
    "reshaped-3d-rows-negated": (lambda w, p, s: -w[p].reshape(4, 8, 20), "rows"),
}


@pytest.mark.parametrize("as_node", [False, True], ids=["initializer", "constant-node"])
@pytest.mark.parametrize("plant", list(PLANTS))
def test_planted_weight_copy_is_found(tmp_path, mlp_locked_onnx, plant: str, as_node: bool):
    weights, locked = mlp_locked_onnx
    transform, how = PLANTS[plant]
    w = weights["0.weight"]  # (32, 20)
    rng = np.random.default_rng(1)
    planted = transform(w, rng.permutation(w.shape[0]), rng.uniform(0.1, 5, w.shape[0]))
    path = _plant(locked, tmp_path / "planted.onnx", planted, as_node)
    leaks = find_weight_leaks(artifact_constants(path), weights)
    assert leaks, "planted copy not found"
    assert {(leak.weight, leak.how) for leak in leaks} == {("0.weight", how)}
    assert all("planted" in leak.constant for leak in leaks)
    assert all(leak.max_cos > 0.999 for leak in leaks)


def test_mixed_or_random_constants_are_not_leaks() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 48)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    constants = {
        "mixed": (q @ w).astype(np.float32),
        "random": rng.standard_normal((48, 32)).astype(np.float32),
        "ones": np.ones((16, 48), np.float32),
        "ints": np.arange(48 * 2).reshape(2, 48),
    }
    assert find_weight_leaks(constants, {"w": w}) == []
    planted = {"copy": w[::-1] * 3.0}
    assert [(x.weight, x.how) for x in find_weight_leaks(planted, {"w": w})] == [("w", "rows")]


def test_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        find_weight_leaks({}, {}, threshold=1.5)


def test_unknown_suffix_is_rejected(tmp_path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(InvalidArgumentError, match=r"suffix must be one of .*\.onnx"):
        artifact_constants(path)


# ---------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CNN_AND_MLP)
def test_torchscript_frozen_locked_has_no_leak(name: str, tmp_path) -> None:
    model, inputs = MODEL_FACTORIES[name]()
    weights = weights_of(model)
    locked = lock(model)
    path = export_torchscript(locked.keyed, (*inputs, key_of(locked)), tmp_path / "l.pt")
    constants = artifact_constants(path)
    assert any(k.startswith("root.forward:const") for k in constants), "frozen constants missed"
    original = export_torchscript(model, tuple(inputs), tmp_path / "o.pt")
    leaked = {x.weight for x in find_weight_leaks(artifact_constants(original), weights)}
    assert {k for k, w in weights.items() if w.ndim >= 2} <= leaked
    assert find_weight_leaks(constants, weights) == []


def test_torchscript_unfrozen_attributes_are_read(tmp_path) -> None:
    model, inputs = MODEL_FACTORIES["mlp"]()
    path = tmp_path / "scripted.pt"
    torch.jit.trace(model, tuple(inputs)).save(str(path))
    constants = artifact_constants(path)
    assert any(k.startswith("attribute:") and k.endswith("weight") for k in constants)
    assert {x.weight for x in find_weight_leaks(constants, weights_of(model))} == {
        "0.weight",
        "2.weight",
        "4.weight",
    }


# ---------------------------------------------------------------------------------------------
# Binary blobs (AOTInductor)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 3, 64])
def test_exact_row_bytes_found_in_blob(offset: int) -> None:
    rng = np.random.default_rng(offset)
    w = rng.standard_normal((6, 10)).astype(np.float32)
    junk = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    blob = junk[:offset] + w[4].tobytes() + junk
    leaks = find_weight_leaks({"blob": np.frombuffer(blob, np.uint8)}, {"w": w})
    assert [(x.weight, x.constant, x.how) for x in leaks] == [("w", "blob", "exact")]
    nudged = bytearray(blob)
    nudged[offset + 20] ^= 1
    assert find_weight_leaks({"blob": np.frombuffer(bytes(nudged), np.uint8)}, {"w": w}) == []


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("offset", [0, 1, 64])
def test_half_precision_row_bytes_found_in_blob(dtype: str, offset: int) -> None:
    """An AOTInductor package of a model in half precision holds its weights as 2-byte values:
    `skprotect scan` searched blobs for float32 bytes only, and said "no weight of the original
    found" for an unlocked float16 or bfloat16 package (an MLP's three weights in plaintext)."""
    rng = np.random.default_rng(offset)
    gen = torch.Generator().manual_seed(offset)
    w = torch.randn(6, 10, generator=gen).to(getattr(torch, dtype))
    stored = w[4].view(torch.int16).numpy().tobytes()  # as the package stores it
    junk = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    blob = junk[:offset] + stored + junk
    original = {"w": w.float().numpy()}  # a half-precision state dict, read as float32
    leaks = find_weight_leaks({"blob": np.frombuffer(blob, np.uint8)}, original)
    assert [(x.weight, x.constant, x.how) for x in leaks] == [("w", "blob", "exact")]
    nudged = bytearray(blob)
    nudged[offset + 10] ^= 1
    assert find_weight_leaks({"blob": np.frombuffer(bytes(nudged), np.uint8)}, original) == []


def _encoded(row: torch.Tensor, dtype: str) -> bytes:
    return (
        row.to(getattr(torch, dtype))
        .view(torch.int16 if dtype != "float32" else torch.int32)
        .numpy()
        .tobytes()
    )


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_rows_across_the_blob_chunks_and_at_its_end_are_found(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blob is searched a chunk of words at a time (its whole widening to 8-byte words took
    3.9 GB of memory for a 100 MB blob): a row whose first bytes end a chunk, or which ends the
    blob, is found at every byte offset."""
    monkeypatch.setattr(constants_module, "_BLOB_CHUNK", 8)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(5, 12, generator=gen)
    junk = np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8).tobytes()
    original = {"w": w.numpy()}
    for offset in range(0, 45):
        for tail in (b"", junk[:3]):
            blob = junk[:offset] + _encoded(w[2], dtype) + tail
            leaks = find_weight_leaks({"blob": np.frombuffer(blob, np.uint8)}, original)
            assert [(x.weight, x.how) for x in leaks] == [("w", "exact")], (offset, tail)


def test_blob_search_memory_stays_near_the_blob_size() -> None:
    """A 32 MiB blob: the search widened it whole to 8-byte words, several times over (float16
    rows: 4 words a key), for a peak of 1,073 MiB (3.9 GB for a 100 MB blob); it now goes a
    chunk at a time (about 40 MiB)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    blob = bytearray(rng.integers(0, 256, 32 << 20, dtype=np.uint8).tobytes())
    row = torch.from_numpy(w[7]).half().view(torch.int16).numpy().tobytes()
    blob[-len(row) - 5 : -5] = row
    data = np.frombuffer(bytes(blob), np.uint8)
    del blob
    tracemalloc.start()
    try:
        leaks = find_weight_leaks({"blob": data}, {"w": w})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(x.weight, x.how) for x in leaks] == [("w", "exact")]
    assert peak < 2 * data.nbytes, f"{peak / 2**20:.0f} MiB for a {data.nbytes >> 20} MiB blob"


def test_pruned_originals_and_many_blobs_are_searched_in_seconds() -> None:
    """The rows' lookup prefixes were found by a Python loop over their elements, run again for
    every uint8 constant: for a pruned weight (90% zeros: no four nonzero float16 values in a
    row, the loop ran to the end of each) the search took 183 s for one 2048 x 2048 weight,
    and 63 s for 200 uint8 constants (a quantized ONNX model) and a 1024 x 1024 one; this
    test's case over 60 s."""
    import time

    rng = np.random.default_rng(2)
    pruned = rng.standard_normal((1024, 1024)).astype(np.float32)
    pruned[rng.random(pruned.shape) < 0.9] = 0
    dense = rng.standard_normal((512, 512)).astype(np.float32)
    blobs = {f"q{i}": rng.integers(0, 256, 4096, dtype=np.uint8) for i in range(100)}
    start = time.perf_counter()
    assert find_weight_leaks(blobs, {"pruned": pruned, "dense": dense}) == []
    assert time.perf_counter() - start < 20  # 2.7 s here


def test_only_the_files_of_original_folders_are_unlocked_copies(tmp_path: Path) -> None:
    """``save_original=True`` writes ``<model>/original/<file>``; a model may be named
    "original" (its locked files are in ``original/onnx/``): those were left out of a folder's
    scan ("holds no .onnx, .pt or .pt2 file to scan") and named as unlocked copies."""
    for relative in (
        "original/onnx/original.onnx",
        "original/original/original_onnx.onnx",
        "m/torchscript/m.pt",
        "m/original/m_torchscript.pt",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    assert artifact_files(tmp_path) == [
        tmp_path / "m/torchscript/m.pt",
        tmp_path / "original/onnx/original.onnx",
    ]
    assert unlocked_copies(tmp_path) == [
        tmp_path / "m/original/m_torchscript.pt",
        tmp_path / "original/original/original_onnx.onnx",
    ]
    model = tmp_path / "original"  # the model's own folder, given
    assert artifact_files(model) == [model / "onnx/original.onnx"]
    assert unlocked_copies(model) == [model / "original/original_onnx.onnx"]
    copies = tmp_path / "m" / "original"  # the copies' folder itself, given: scanned
    assert artifact_files(copies) == [copies / "m_torchscript.pt"]
    assert unlocked_copies(copies) == []


@pytest.mark.slow
def test_aoti_package_locked_has_no_plaintext_row(tmp_path) -> None:
    model, inputs = MODEL_FACTORIES["mlp"]()
    weights = weights_of(model)
    locked = lock(model)

    def package(module: nn.Module, args: tuple, path: Path) -> Path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, args)
            return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))

    original = package(model, tuple(inputs), tmp_path / "original.pt2")
    original_constants = artifact_constants(original)
    assert all(v.dtype == np.uint8 for v in original_constants.values())
    leaks = find_weight_leaks(original_constants, weights)
    assert {x.weight for x in leaks} == {"0.weight", "2.weight", "4.weight"}
    assert {x.how for x in leaks} == {"exact"}
    locked_path = package(locked.keyed, (*inputs, key_of(locked)), tmp_path / "locked.pt2")
    assert find_weight_leaks(artifact_constants(locked_path), weights) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk": 0}, "chunk must be a positive integer, but is 0"),
        ({"chunk": -1}, "chunk must be a positive integer, but is -1"),
        ({"min_length": 0}, "min_length must be a positive integer"),
        ({"threshold": 0}, r"threshold must be in \(0, 1\], but got 0"),
        ({"threshold": "0.9"}, r"threshold must be in \(0, 1\], but got '0.9'"),
    ],
)
def test_find_weight_leaks_refuses_bad_settings(kwargs, message) -> None:
    """chunk=-1 used to find no leak at all, and chunk=0 raised a bare ValueError."""
    weights = {"w": np.ones((16, 16), np.float32)}
    with pytest.raises(InvalidArgumentError, match=message):
        find_weight_leaks({"c": np.ones((16, 16), np.float32)}, weights, **kwargs)
