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

from skprotect_pytorch.audit.constants import (
    artifact_constants,
    find_weight_leaks,
    onnx_optimized_constants,
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
