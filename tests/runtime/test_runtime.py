"""End-to-end tests of SkRuntime / LoadedModel on models protected by SkProtectorPyTorch (ONNX)."""

from __future__ import annotations

import base64
import copy
import json
import pickle
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from skprotect_pytorch.protect import SkProtectorPyTorch
from skruntime import (
    BackendError,
    ConfigurationError,
    InputError,
    IntegrityError,
    KeyFileError,
    KeyUnavailableError,
    LoadedModel,
    ModelClosedError,
    ModelFileError,
    ModelNotFoundError,
    SkRuntime,
)
from skruntime.backends.base import ModelFile
from skruntime.config import canonical_json, public_key_bytes
from skruntime.keyfile import _params_sha256, read_txt_keys

EF = SkProtectorPyTorch.ExportFormat
EP = SkProtectorPyTorch.ExportPlatform
BATCH = torch.export.Dim("batch", min=1, max=64)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class TwoInTwoOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.a(x) + self.b(z))
        return self.head(h), h.sum(dim=1)


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallNet()
    model.bn.running_mean.normal_()
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


X = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)


class Protected:
    """The module's protected application: original models and the protector's outputs."""

    def __init__(self, root: Path) -> None:
        protector = SkProtectorPyTorch(application_name="app")
        self.kek = protector.state.kek
        self.public_key = protector.state.public_key_bytes
        self.models: dict[str, nn.Module] = {"net": small_net(0), "tnet": small_net(1)}
        example = [torch.from_numpy(X)]
        protector.protect_new_model(
            self.models["net"],
            "net",
            example,
            model_export_formats=EF.ONNX,
            dynamic_shapes=({0: BATCH},),
        )
        protector.protect_new_model(
            self.models["tnet"],
            "tnet",
            example,
            model_export_formats=EF.ONNX,
            dynamic_shapes=({0: BATCH},),
            test_key=True,
        )
        torch.manual_seed(2)
        self.models["multi"] = TwoInTwoOut().eval()
        protector.protect_new_model(
            self.models["multi"],
            "multi",
            [torch.randn(2, 6), torch.randn(2, 4)],
            model_export_formats=EF.ONNX,
            dynamic_shapes=({0: BATCH}, {0: BATCH}),
        )
        self.models["lnet"] = small_net(3)
        protector.protect_new_model(
            self.models["lnet"],
            "lnet",
            example,
            model_export_formats=EF.ONNX,
            dynamic_shapes=({0: BATCH},),
            deployment_platform=EP.LINUX,
        )
        self.out = root / "outputs" / "app"

    def expected(self, name: str, *inputs: np.ndarray) -> Any:
        with torch.no_grad():
            y = self.models[name](*(torch.from_numpy(x) for x in inputs))
        if isinstance(y, tuple):
            return tuple(t.numpy() for t in y)
        return y.numpy()

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.out, dest)
        return dest


@pytest.fixture(scope="module")
def app(module_workdir: Path) -> Protected:
    return Protected(module_workdir)


@pytest.fixture(scope="module")
def rt(app: Protected) -> SkRuntime:
    return SkRuntime(app.out, platform="TXT", public_key=app.public_key)


# --------------------------------------------------------------------------- happy paths


def test_outputs_match_original_with_session_key(app: Protected, rt: SkRuntime) -> None:
    assert rt.models() == ["multi", "net", "tnet"]
    assert rt.formats("net") == ["onnx"]
    assert rt.config.platform == "TXT" and rt.config.platform_version == 2
    with rt.load("net") as model:
        assert isinstance(model, LoadedModel)
        assert (model.name, model.format) == ("net", "onnx")
        assert model.input_names == ["input.1"] and len(model.output_names) == 1
        assert model.inputs[0].dynamic_dims == {0: "batch"}
        assert model.key_length == rt.config.models["net"].key.length
        y = model(X)
        assert isinstance(y, np.ndarray) and y.shape == (2, 5)
        assert rel(y, app.expected("net", X)) < 1e-4


@pytest.mark.parametrize("static", [False, True], ids=["session_key", "static_key"])
def test_test_key_model(app: Protected, rt: SkRuntime, static: bool) -> None:
    with rt.load("tnet", static_key=static) as model:
        assert rel(model(X), app.expected("tnet", X)) < 1e-4
        folder = app.out / "tnet" / "onnx"
        file_key = np.loadtxt(folder / "key_vector_inv_tnet.txt", dtype=np.float32)
        assert np.array_equal(model._key, file_key) is static


def test_static_key_refused_without_test_key(rt: SkRuntime) -> None:
    with pytest.raises(KeyUnavailableError, match="test_key=True"):
        rt.load("net", static_key=True)


def test_session_keys_differ_outputs_bitwise_identical(rt: SkRuntime) -> None:
    with rt.load("net") as m1, rt.load("net") as m2:
        assert m1._key.tobytes() != m2._key.tobytes()
        assert np.array_equal(m1(X), m2(X))


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch(app: Protected, rt: SkRuntime, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 4, 4)).astype(np.float32)
    with rt.load("net") as model:
        y = model(x)
    assert y.shape == (batch, 5)
    assert rel(y, app.expected("net", x)) < 1e-4


def test_named_inputs_and_multiple_outputs(app: Protected, rt: SkRuntime) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    z = rng.standard_normal((3, 4)).astype(np.float32)
    expected = app.expected("multi", x, z)
    with rt.load("multi") as model:
        n1, n2 = model.input_names
        assert len(model.output_names) == 2
        positional = model(x, z)
        assert isinstance(positional, tuple) and len(positional) == 2
        for got, ref in zip(positional, expected, strict=True):
            assert rel(got, ref) < 1e-4
        for out in (model(**{n1: x, n2: z}), model(x, **{n2: z}), model(**{n2: z, n1: x})):
            assert all(np.array_equal(a, b) for a, b in zip(out, positional, strict=True))
        listed = model.run([x, z])
        named = model.run({n2: z, n1: x})
        assert isinstance(listed, list) and isinstance(named, list)
        assert all(np.array_equal(a, b) for a, b in zip(listed, positional, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(named, positional, strict=True))
        with pytest.raises(InputError, match="both by position and by name"):
            model(x, **{n1: x, n2: z})
        with pytest.raises(InputError, match="Unknown input name"):
            model(x, nope=z)
        with pytest.raises(InputError, match="Missing input"):
            model(**{n1: x})


def test_run_returns_list_for_single_output(rt: SkRuntime) -> None:
    with rt.load("net") as model:
        out = model.run([X])
        assert isinstance(out, list) and len(out) == 1
        assert np.array_equal(out[0], model(X))


def test_torch_tensor_input_on_onnx(rt: SkRuntime) -> None:
    with rt.load("net") as model:
        assert np.array_equal(model(torch.from_numpy(X)), model(X))


def test_non_contiguous_input(rt: SkRuntime) -> None:
    wide = np.zeros((2, 3, 4, 8), dtype=np.float32)
    wide[..., ::2] = X
    view = wide[..., ::2]
    assert not view.flags.c_contiguous
    with rt.load("net") as model:
        assert np.array_equal(model(view), model(X))


def test_session_options_and_threads(rt: SkRuntime) -> None:
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = rt.load("net")
    with rt.load(
        "net",
        intra_op_threads=1,
        inter_op_threads=1,
        session_options={"graph_optimization_level": level},
    ) as model:
        # same locked graph, optimised or not: only float32 rounding differs (the conditioned
        # public mixing scales it by up to its condition number, 16; measured 2.8e-6)
        assert rel(model(X), reference(X)) < 1e-5
    with pytest.raises(BackendError, match="bogus_option"):
        rt.load("net", session_options={"bogus_option": 1})
    refused = {  # a value of the wrong type: one line naming the type, not pybind's signatures
        "intra_op_num_threads": ("x", "int (its default is 0)"),
        "graph_optimization_level": (7, "onnxruntime.GraphOptimizationLevel (its default is <"),
    }
    for name, (value, takes) in refused.items():
        with pytest.raises(BackendError) as error:
            rt.load("net", session_options={name: value})
        message = str(error.value)
        assert f"{name}={value!r} was refused by onnxruntime: it takes a value of type {takes}" in (
            message
        )
        assert "\n" not in message and "incompatible function arguments" not in message
    with rt.load("net", intra_op_threads=np.int64(1), inter_op_threads=np.int32(1)) as model:
        assert np.array_equal(model(X), reference(X))  # numpy integers are thread counts
    reference.close()


INTRA = "intra_op_threads"


def threads_error(name: str, got: str) -> str:
    return (
        f"{name} must be an int from 1 to 1024, but got {got}; None uses the framework's default."
    )


def device_error(got: str) -> str:
    return f"device must be 'cpu', 'cuda' or 'cuda:N' (lower case, N a GPU index), but got {got}."


def providers_error(got: str) -> str:
    return (
        "session_options['providers'] must be a non-empty list of execution provider names (or "
        f"(name, options) pairs), e.g. ['CPUExecutionProvider'], but got {got}."
    )


BAD_LOAD_ARGUMENTS = {
    "threads-0": ({"intra_op_threads": 0}, threads_error(INTRA, "0")),
    "threads-2**40": ({"intra_op_threads": 2**40}, threads_error(INTRA, str(2**40))),
    "inter-1025": ({"inter_op_threads": 1025}, threads_error("inter_op_threads", "1025")),
    "threads-bool": ({"intra_op_threads": True}, threads_error(INTRA, "the bool True")),
    "threads-float": ({"intra_op_threads": 1.5}, threads_error(INTRA, "the float 1.5")),
    "threads-str": ({"intra_op_threads": "2"}, threads_error(INTRA, "the str '2'")),
    "device-upper": ({"device": "CPU"}, device_error("'CPU'")),
    "device-none": ({"device": None}, device_error("None")),
    "device-cudax": ({"device": "cudax"}, device_error("'cudax'")),
    "device-cuda-abc": ({"device": "cuda:abc"}, device_error("'cuda:abc'")),
    "device-cuda-colon": ({"device": "cuda:"}, device_error("'cuda:'")),
    "options-list": (
        {"session_options": [("intra_op_num_threads", 1)]},
        "session_options must be a dict from option names (str) to values, or None, but got the "
        "list [('intra_op_num_threads', 1)].",
    ),
    "providers-str": (
        {"session_options": {"providers": "CPUExecutionProvider"}},
        providers_error("'CPUExecutionProvider'"),
    ),
    "providers-empty": ({"session_options": {"providers": []}}, providers_error("[]")),
    "providers-int": ({"session_options": {"providers": [3]}}, providers_error("[3]")),
    "providers-unknown": (
        {"session_options": {"providers": ["CPUExecutionProvider", "FooExecutionProvider"]}},
        "session_options['providers'] names FooExecutionProvider, which this onnxruntime does "
        f"not have; available: {', '.join(ort.get_available_providers())}. Use those names "
        "(GPU providers need the matching onnxruntime package, e.g. onnxruntime-gpu).",
    ),
}


@pytest.mark.parametrize(
    "kwargs, message", list(BAD_LOAD_ARGUMENTS.values()), ids=list(BAD_LOAD_ARGUMENTS)
)
def test_bad_backend_options_are_backend_errors(rt: SkRuntime, kwargs: dict, message: str) -> None:
    """Refused before anything is loaded, naming the parameter: not onnxruntime's pybind
    TypeError, a ValueError or AttributeError, nor a silent fallback to the CPU provider."""
    with pytest.raises(BackendError) as info:
        rt.load("net", **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("value", ["no", 1, None], ids=["str", "int", "none"])
def test_static_key_must_be_a_bool(rt: SkRuntime, value: object) -> None:
    with pytest.raises(KeyUnavailableError) as info:
        rt.load("tnet", static_key=value)
    assert str(info.value) == (
        f"static_key must be True or False, but got the {type(value).__name__} {value!r}."
    )


def test_outputs_dir_must_be_a_path() -> None:
    with pytest.raises(ConfigurationError) as info:
        SkRuntime(None)
    assert str(info.value) == (
        "outputs_dir must be the path (str or os.PathLike) of the folder skprotect wrote, e.g. "
        "'outputs/default_app', but got the NoneType None."
    )


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present"
)
def test_cuda_without_provider_is_a_clear_error(rt: SkRuntime) -> None:
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        rt.load("net", device="cuda")


def test_a_gpu_device_with_cpu_only_providers_is_refused(rt: SkRuntime) -> None:
    """device= and the providers list disagree: refused, not run on the CPU silently."""
    options = {"providers": ["CPUExecutionProvider"]}
    with pytest.raises(BackendError, match="asks for a GPU, but session_options"):
        rt.load("net", device="cuda", session_options=options)
    with rt.load("net", session_options=options) as model:  # agreeing: fine
        assert model(X).shape == (2, 5)


def test_kek_on_a_txt_configuration_is_refused(app: Protected) -> None:
    with pytest.raises(KeyUnavailableError, match=r"kek decrypts LINUX key files, but .* TXT"):
        SkRuntime(app.out, platform="TXT", kek=b"\0" * 32)


def test_a_base64_public_key_says_to_decode_it(app: Protected) -> None:
    text = base64.b64encode(app.public_key).decode()
    for given, kind in ((text, "str 44 bytes"), (text.encode(), "bytes 44 bytes")):
        with pytest.raises(ConfigurationError, match=f"but got {kind}: a base64 text"):
            SkRuntime(app.out, platform="TXT", public_key=given)


# --------------------------------------------------------------------------- close / repr


def test_close_erases_key_and_refuses_calls(rt: SkRuntime) -> None:
    model = rt.load("net")
    key = model._key
    assert np.any(key != 0)
    model.close()
    assert model.closed and np.all(key == 0)
    with pytest.raises(ModelClosedError, match="closed"):
        model(X)
    with pytest.raises(ModelClosedError):
        model.run([X])
    model.close()  # idempotent
    with rt.load("net") as m:
        inner = m._key
    assert np.all(inner == 0)


def slowed(model: LoadedModel, before_run: Callable[[], None]) -> None:
    """Make ``model``'s backend call ``before_run()`` at the start of every run."""
    backend = model._backend
    run = backend.run

    def slow_run(values: list) -> list:
        before_run()
        return run(values)

    backend.run = slow_run


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_close_waits_for_the_calls_in_flight(app: Protected, rt: SkRuntime) -> None:
    """close() from another thread while a call runs: the call still gets the intact key (its
    output is right), close() returns only after it, and calls after close() are refused.
    Before, close() zeroed the key under the running call: all-zero outputs, no error."""
    model = rt.load("net")
    key = model._key
    in_run, release = threading.Event(), threading.Event()
    slowed(model, lambda: (in_run.set(), release.wait(10)))
    result: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: result.update(y=model(X)))
    caller.start()
    assert in_run.wait(10)
    closer = threading.Thread(target=model.close)
    closer.start()
    wait_until(lambda: model.closed)
    with pytest.raises(ModelClosedError, match="is closed"):  # no new call once closing
        model(X)
    time.sleep(0.05)
    assert closer.is_alive() and np.any(key != 0)  # waits; the running call keeps its key
    release.set()
    caller.join(10)
    closer.join(10)
    assert not closer.is_alive() and np.all(key == 0)
    assert rel(result["y"], app.expected("net", X)) < 1e-4


def test_close_race_gives_right_outputs_or_model_closed(app: Protected, rt: SkRuntime) -> None:
    """A thread calling in a loop while the model is closed: every call returns the right output
    or raises ModelClosedError."""
    expected = app.expected("net", X)
    for _ in range(20):
        model = rt.load("net", intra_op_threads=1, inter_op_threads=1)
        outcomes: list[Any] = []

        def call_until_closed(model: LoadedModel = model, outcomes: list = outcomes) -> None:
            while True:
                try:
                    outcomes.append(model(X))
                except ModelClosedError as err:
                    outcomes.append(err)
                    return

        caller = threading.Thread(target=call_until_closed)
        caller.start()
        wait_until(lambda outcomes=outcomes: len(outcomes) > 0)
        model.close()
        caller.join(10)
        *outputs, last = outcomes
        assert isinstance(last, ModelClosedError)
        assert all(rel(y, expected) < 1e-4 for y in outputs)


def test_concurrent_calls_run_in_parallel(rt: SkRuntime) -> None:
    """Six threads calling one model are all inside the backend at once: calls are counted,
    not serialised behind one lock (a serialised model would break the barrier)."""
    barrier = threading.Barrier(6, timeout=10)
    with rt.load("net") as model:
        reference = model(X)
        slowed(model, barrier.wait)
        outputs: list[np.ndarray] = []
        threads = [threading.Thread(target=lambda: outputs.append(model(X))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not barrier.broken and len(outputs) == 6
    assert all(np.array_equal(y, reference) for y in outputs)


def test_runtime_cannot_be_pickled(app: Protected) -> None:
    """An SkRuntime may hold the raw kek: pickling it would write the key to a byte string."""
    rt = SkRuntime(app.out, platform="LINUX", kek=app.kek)
    for copier in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError) as info:
            copier(rt)
        assert str(info.value) == (
            "SkRuntime cannot be pickled: it may hold key material (kek) and licence state. "
            "Create one SkRuntime in each process instead."
        )


def test_repr_never_shows_key(rt: SkRuntime) -> None:
    with rt.load("tnet", static_key=True) as model:
        text = repr(model) + str(model)
        assert text == (
            f"LoadedModel(name='tnet', format='onnx', key_length={model.key_length})" * 2
        )
        with pytest.raises(TypeError, match="pickled"):
            import pickle

            pickle.dumps(model)


# --------------------------------------------------------------------------- input errors


def test_wrong_input_count(rt: SkRuntime) -> None:
    with rt.load("net") as model:
        for args in ((), (X, X)):
            with pytest.raises(InputError, match=r"Got \d input") as err:
                model(*args)
            assert "'input.1': shape (batch, 3, 4, 4), dtype float32" in str(err.value)
        with pytest.raises(InputError, match="Got 2 input"):
            model.run([X, X])
        with pytest.raises(InputError, match=r"run\(\) takes a list of inputs .* got one array"):
            model.run(X)  # list(X) would have split it into rows


@pytest.mark.parametrize("inputs", [None, 3, "ab"], ids=["none", "int", "str"])
def test_run_needs_a_list_or_dict(rt: SkRuntime, inputs: object) -> None:
    with rt.load("net") as model, pytest.raises(InputError) as info:
        model.run(inputs)
    assert str(info.value).startswith(
        f"run() takes a list of inputs (or a dict by name), but got a {type(inputs).__name__} "
        "value: pass [x], or call the model as model(x). Model 'net' (onnx) expects 1 input(s):"
    )


@pytest.mark.parametrize(
    "given, message",
    [
        (
            None,
            "Input 'input.1' is a NoneType value, not an array: pass a numpy array or torch "
            "tensor of dtype float32 and shape (batch, 3, 4, 4).",
        ),
        (
            "abc",
            "Input 'input.1' is a str value, not an array: pass a numpy array or torch tensor of "
            "dtype float32 and shape (batch, 3, 4, 4).",
        ),
        (
            X.tolist(),
            "Input 'input.1' (a Python list, read as a float64 array) has dtype float64, but the "
            "configuration expects float32 (pass a numpy array or torch tensor, e.g. "
            "np.asarray(x, dtype=np.float32)).",
        ),
        (
            [[1.0, 2.0], [3.0]],
            "Input 'input.1' is a list that is not a regular array of numbers: pass a numpy "
            "array or torch tensor of dtype float32 and shape (batch, 3, 4, 4).",
        ),
        (
            2.5,
            "Input 'input.1' (a Python float, read as a float64 array) has shape () (0-d), but "
            "the configuration expects 4-d (batch, 3, 4, 4).",
        ),
        (
            torch.from_numpy(X).double(),
            "Input 'input.1' has dtype float64, but the configuration expects float32 (convert "
            "it, e.g. x.to(torch.float32)).",
        ),
    ],
    ids=["none", "str", "list-float64", "ragged-list", "python-float", "torch-float64"],
)
def test_inputs_that_are_not_arrays_name_their_type(
    rt: SkRuntime, given: object, message: str
) -> None:
    with rt.load("net") as model, pytest.raises(InputError) as info:
        model(given)
    assert str(info.value).startswith(f"{message} Model 'net' (onnx) expects 1 input(s):")


def test_a_list_of_the_right_dtype_is_still_accepted(app: Protected, rt: SkRuntime) -> None:
    with rt.load("net") as model:
        assert np.array_equal(model(list(X)), model(X))  # a list of float32 arrays


def test_inputs_sharing_a_dynamic_dimension_must_agree(app: Protected, rt: SkRuntime) -> None:
    """x and z share the dynamic 'batch': sizes 3 and 2 are refused before the backend (which
    raised its own error; AOTInductor read out of bounds)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    z = rng.standard_normal((3, 4)).astype(np.float32)
    with rt.load("multi") as model:
        n1, n2 = model.input_names
        assert model.inputs[0].dynamic_dims == model.inputs[1].dynamic_dims == {0: "batch"}
        with pytest.raises(InputError) as info:
            model(x, z[:2])
        assert str(info.value) == (
            f"Inputs {n1!r}, {n2!r} share the dynamic dimension 'batch', which must have one "
            f"size in a call, but {n1!r} has 3 on axis 0, {n2!r} has 2 on axis 0. Pass inputs "
            f"of the same 'batch' size. Model 'multi' (onnx) expects 2 input(s):\n"
            f"  {n1!r}: shape (batch, 6), dtype float32, batch 1 to 64\n"
            f"  {n2!r}: shape (batch, 4), dtype float32, batch 1 to 64"
        )
        for got, want in zip(model(x, z), app.expected("multi", x, z), strict=True):
            assert rel(got, want) < 1e-4


@pytest.mark.parametrize(
    "bad, match",
    [
        (X[0], r"\(3, 4, 4\) \(3-d\).*expects 4-d \(batch, 3, 4, 4\)"),
        (X[:, :2], r"axis 1 must be 3: expected \(batch, 3, 4, 4\)"),
        (np.zeros((2, 3, 4, 5), np.float32), r"axis 3 must be 4"),
        (X.astype(np.float64), r"dtype float64, but the configuration expects float32"),
        (X.astype(np.float16), r"dtype float16"),
        (torch.from_numpy(X).double(), r"dtype float64, .*x\.to\(torch\.float32\)"),
    ],
    ids=["rank", "channels", "width", "float64", "float16", "torch_float64"],
)
def test_wrong_input_shape_or_dtype(rt: SkRuntime, bad: Any, match: str) -> None:
    with rt.load("net") as model, pytest.raises(InputError, match=match) as err:
        model(bad)
    assert "shape (batch, 3, 4, 4), dtype float32" in str(err.value)


# --------------------------------------------------------------------------- lookup errors


def test_unknown_model_and_format(rt: SkRuntime) -> None:
    with pytest.raises(ModelNotFoundError, match="Models there: multi, net, tnet"):
        rt.load("nope")
    with pytest.raises(ModelNotFoundError, match="its formats: onnx"):
        rt.load("net", fmt="torchscript_cpu")
    with pytest.raises(ModelNotFoundError):
        rt.formats("nope")


def test_missing_folder_and_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SkRuntime(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match=r"skconfig\.json \(TXT\) or skrpl \(LINUX\)"):
        SkRuntime(tmp_path)
    with pytest.raises(ConfigurationError, match="platform must be one of TXT, LINUX"):
        SkRuntime(tmp_path, platform="WINDOWS")


def test_both_platforms_need_platform_argument(app: Protected) -> None:
    with pytest.raises(ConfigurationError, match="platform='TXT' or 'LINUX'"):
        SkRuntime(app.out)
    assert SkRuntime(app.out, platform="txt").platform == "TXT"
    assert SkRuntime(app.out, platform=EP.LINUX).platform == "LINUX"


def test_missing_model_file(app: Protected, tmp_path: Path) -> None:
    out = app.copy(tmp_path / "app")
    (out / "net" / "onnx" / "net.onnx").unlink()
    with pytest.raises(ModelFileError, match=r"net\.onnx.*not found"):
        SkRuntime(out, platform="TXT").load("net")


def test_a_model_path_that_is_no_file_is_not_called_missing(app: Protected, tmp_path: Path) -> None:
    """A folder (or a link to a device) where the model file belongs was reported "not found",
    which ``ls`` contradicts."""
    out = app.copy(tmp_path / "app")
    model = out / "net" / "onnx" / "net.onnx"
    model.unlink()
    model.mkdir()
    with pytest.raises(ModelFileError, match=r"net\.onnx of model 'net' \(onnx\) is not a "):
        SkRuntime(out, platform="TXT").load("net")


def test_an_unreadable_model_file_says_what_to_do(
    app: Protected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests run as root, who reads any file: the permission error is simulated. The error gave
    errno's text and no way out."""
    out = app.copy(tmp_path / "app")

    def denied(path: Path, check_size: object = None) -> ModelFile:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(ModelFile, "read", denied)
    with pytest.raises(ModelFileError) as e:
        SkRuntime(out, platform="TXT").load("net")
    assert str(e.value) == (
        f"Model file {out / 'net' / 'onnx' / 'net.onnx'} cannot be read: Permission denied. "
        "Give this user read access to it, or deploy the app/ folder written by skprotect again."
    )


# --------------------------------------------------------------------------- tampering


def test_tampered_model_file(app: Protected, tmp_path: Path) -> None:
    out = app.copy(tmp_path / "app")
    path = out / "net" / "onnx" / "net.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    rt = SkRuntime(out, platform="TXT")
    with pytest.raises(IntegrityError, match="tampered or post-processed") as err:
        rt.load("net")
    assert str(path) in str(err.value)
    assert rt.load("tnet")(X).shape == (2, 5)  # other models still load


def test_tampered_configuration(app: Protected, tmp_path: Path) -> None:
    out = app.copy(tmp_path / "app")
    path = out / "skconfig.json"
    path.write_text(path.read_text().replace('"float32"', '"float16"', 1))
    with pytest.raises(ConfigurationError, match="invalid signature"):
        SkRuntime(out, platform="TXT")


def _resign(path: Path, edit: Any) -> Ed25519PrivateKey:
    """Edit a configuration's payload and sign it with a fresh (foreign) key."""
    doc = json.loads(path.read_text())
    edit(doc["payload"])
    key = Ed25519PrivateKey.generate()
    doc["signature"] = base64.b64encode(key.sign(canonical_json(doc["payload"]))).decode()
    doc["public_key"] = base64.b64encode(public_key_bytes(key)).decode()
    path.write_text(json.dumps(doc))
    return key


def test_newer_platform_version_shows_compatibility_table(app: Protected, tmp_path: Path) -> None:
    out = app.copy(tmp_path / "app")
    _resign(out / "skconfig.json", lambda p: p.update(platform_version=3))
    with pytest.raises(ConfigurationError) as err:
        SkRuntime(out, platform="TXT")
    message = str(err.value)
    assert "platform version 3 is newer" in message
    assert "reads platform versions 0, 1, 2" in message
    assert "| Platform version | skprotect minimal version | skruntime minimal version |" in message
    assert "| 2 | 0.3.0 | 0.3.0 |" in message
    assert SkRuntime.SUPPORTED_PLATFORM_VERSIONS == (0, 1, 2)
    # a pinned public key refuses the foreign signature before looking at the version
    with pytest.raises(ConfigurationError, match="signed by a different key"):
        SkRuntime(out, platform="TXT", public_key=app.public_key)


def test_resigned_configuration_refused_when_key_pinned(app: Protected, tmp_path: Path) -> None:
    out = app.copy(tmp_path / "app")
    _resign(out / "skconfig.json", lambda p: None)
    assert SkRuntime(out, platform="TXT").models() == ["multi", "net", "tnet"]
    with pytest.raises(ConfigurationError, match="signed by a different key"):
        SkRuntime(out, platform="TXT", public_key=app.public_key)


def test_swapped_key_files_refused(app: Protected, tmp_path: Path) -> None:
    """net's key files copied over tnet's (same architecture, same key length)."""
    out = app.copy(tmp_path / "app")
    src, dst = out / "net" / "onnx", out / "tnet" / "onnx"
    shutil.copy(src / "key_vector_inv_net.txt", dst / "key_vector_inv_tnet.txt")
    shutil.copy(src / "key_params_net.json", dst / "key_params_tnet.json")
    rt = SkRuntime(out, platform="TXT")
    # the params file names its model: refused
    with pytest.raises(KeyFileError, match="belongs to model 'net', not 'tnet'"):
        rt.load("tnet")
    # only the .txt swapped: the params' txt_sha256 binds the pair: refused
    shutil.copy(app.out / "tnet/onnx/key_params_tnet.json", dst / "key_params_tnet.json")
    with pytest.raises(KeyFileError, match="do not belong together"):
        rt.load("tnet")
    # the model name rewritten in the params: their seal refuses it
    params = json.loads((src / "key_params_net.json").read_text())
    params["model"] = "tnet"
    (dst / "key_params_tnet.json").write_text(json.dumps(params))
    with pytest.raises(KeyFileError, match="does not match its params_sha256"):
        rt.load("tnet")
    # resealed too: the model file hashes they list still refuse it
    params["params_sha256"] = _params_sha256(params)
    (dst / "key_params_tnet.json").write_text(json.dumps(params))
    with pytest.raises(KeyFileError, match="written for another protection of model 'tnet'"):
        rt.load("tnet")
    # an attacker who rewrites the hashes too (TXT files are not signed) has a valid key of
    # the wrong model (same length): the key commitment the model file records refuses it
    params["model_sha256"] = json.loads((app.out / "tnet/onnx/key_params_tnet.json").read_text())[
        "model_sha256"
    ]
    params["params_sha256"] = _params_sha256(params)
    (dst / "key_params_tnet.json").write_text(json.dumps(params))
    assert read_txt_keys(dst, "tnet").length == rt.config.models["tnet"].key.length
    with pytest.raises(KeyFileError, match=r"do not belong to model file .*tnet\.onnx"):
        rt.load("tnet")


def test_truncated_key_file(app: Protected, tmp_path: Path) -> None:
    out = app.copy(tmp_path / "app")
    txt = out / "net" / "onnx" / "key_vector_inv_net.txt"
    lines = txt.read_text().splitlines(keepends=True)
    txt.write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(KeyFileError, match="truncated"):
        SkRuntime(out, platform="TXT").load("net")


# --------------------------------------------------------------------------- LINUX


def test_linux_with_kek(app: Protected) -> None:
    rt = SkRuntime(app.out, platform="LINUX", kek=app.kek)
    assert rt.models() == ["lnet"] and rt.config.platform == "LINUX"
    with rt.load("lnet") as m1, rt.load("lnet") as m2:
        assert m1._key.tobytes() != m2._key.tobytes()
        assert np.array_equal(m1(X), m2(X))
        assert rel(m1(X), app.expected("lnet", X)) < 1e-4


def test_linux_without_or_with_wrong_kek(app: Protected) -> None:
    with pytest.raises(KeyUnavailableError, match=r"licence server.*kek="):
        SkRuntime(app.out, platform="LINUX").load("lnet")
    with pytest.raises(KeyFileError, match="cannot be decrypted"):
        SkRuntime(app.out, platform="LINUX", kek=bytes(32)).load("lnet")
    with pytest.raises(KeyUnavailableError, match="32 bytes"):
        SkRuntime(app.out, platform="LINUX", kek=b"short")
