"""What the lock cannot take, and how it says so: non-float32 layers and hook-based
reparametrisations are refused up front, layers with hooks or overridden forward-path methods
are skipped with the reason, model code that reads a locked layer's hyper-parameters keeps
working, and a forward that still breaks on the locked model is a project error naming the
layer.  Each case is checked through ``lock_model`` and through the public protector."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from tests.assertions import assert_equivalent
from torch import nn
from torch.nn.utils import parametrizations, prune, weight_norm

from skprotect_pytorch.errors import InvalidArgumentError, UnsupportedLayerError, VerificationError
from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.lock.conv import LockedConv
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
Inputs = list[torch.Tensor]


def lock_all(model: nn.Module):
    return lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))


def run_locked(model: nn.Module, inputs: Inputs):
    """The locked model's outputs with the static key, and the locked model."""
    locked = lock_all(model)
    with torch.no_grad():
        return locked.keyed(*inputs, torch.from_numpy(locked.layout.static_key())), locked


def reference(model: nn.Module, inputs: Inputs):
    with torch.no_grad():
        return model(*inputs)


def protect(model: nn.Module, inputs: Inputs, **kwargs):
    return SkProtectorPyTorch(application_name="app").protect_new_model(
        model, "net", inputs, model_export_formats=EF.ONNX, test_key=True, **kwargs
    )


def assert_onnx_matches(workdir: Path, model: nn.Module, inputs: Inputs) -> None:
    """The protected ONNX file, run with its static key, reproduces ``model`` on ``inputs``."""
    folder = workdir / "outputs/app/net/onnx"
    key = np.array(
        [np.float32(v) for v in (folder / "key_vector_inv_net.txt").read_text().split()],
        dtype=np.float32,
    )
    session = ort.InferenceSession(str(folder / "net.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, [t.numpy() for t in inputs] + [key], strict=True))
    assert_equivalent(session.run(None, feeds)[0], reference(model, inputs))


# ---------------------------------------------------------------------------------------------
# Float dtypes: refused before any work, naming the layers and their dtype
# ---------------------------------------------------------------------------------------------

DTYPE_CASES = {
    "linear-float64": (
        lambda: nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4)).double(),
        lambda: [torch.randn(4, 12, dtype=torch.float64)],
        "0 (Linear, float64); 2 (Linear, float64)",
    ),
    "conv-float16": (
        lambda: nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU()).half(),
        lambda: [torch.randn(2, 4, 6, 6).half()],
        "0 (Conv2d, float16)",
    ),
    "lstm-bfloat16": (
        lambda: nn.LSTM(8, 16).bfloat16(),
        lambda: [torch.randn(5, 2, 8).bfloat16()],
        "<model> (LSTM, bfloat16)",
    ),
}


def _dtype_message(layers: str) -> str:
    return re.escape(
        f"but {layers.count('(')} layer(s) to lock are not float32: {layers}. Convert the model "
        "with model.float() and pass float32 input_tensors (the protected model then computes "
        "in float32 and returns float32 outputs), or leave those layers unlocked with "
        "layer_filter."
    )


@pytest.mark.parametrize("case", DTYPE_CASES.values(), ids=DTYPE_CASES.keys())
def test_non_float32_layers_are_refused_by_lock_model(case) -> None:
    make, _, layers = case
    with pytest.raises(InvalidArgumentError, match=_dtype_message(layers)):
        lock_all(make().eval())


@pytest.mark.parametrize("case", DTYPE_CASES.values(), ids=DTYPE_CASES.keys())
def test_non_float32_layers_are_refused_before_any_work(workdir: Path, case) -> None:
    make, inputs, layers = case
    with pytest.raises(InvalidArgumentError, match=_dtype_message(layers)):
        protect(make().eval(), inputs())
    assert not (workdir / "outputs").exists()


class _Mixed(nn.Module):
    """A float64 layer the user keeps out of the lock, before a float32 one."""

    def __init__(self) -> None:
        super().__init__()
        self.precise = nn.Linear(12, 10).double()
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.precise(x.double())).float())


def test_a_layer_left_out_by_layer_filter_keeps_its_dtype(workdir: Path) -> None:
    """Mixed precision with the other-precision layers excluded was refused as a whole."""
    torch.manual_seed(0)
    model, inputs = _Mixed().eval(), [torch.randn(4, 12)]
    with pytest.raises(InvalidArgumentError, match=_dtype_message("precise (Linear, float64)")):
        protect(model, inputs)
    result = protect(model, inputs, layer_filter=lambda name, m: name != "precise")
    assert [d.name for d in result.layers if d.locked] == ["head"]
    assert_onnx_matches(workdir, model, inputs)


def test_a_float_converted_model_protects(workdir: Path) -> None:
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4)).double().float().eval()
    inputs = [torch.randn(4, 12)]
    assert protect(model, inputs).formats["onnx"].max_rel_error < 1e-4
    assert_onnx_matches(workdir, model, inputs)


# ---------------------------------------------------------------------------------------------
# Pruning and the legacy weight norm: refused, with how to make them permanent
# ---------------------------------------------------------------------------------------------


def _pruned() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    return model.eval()


PRUNE_MESSAGE = (
    "Layer '0' (Conv2d) is pruned with torch.nn.utils.prune: its 'weight' is recomputed from "
    "'weight_orig' and 'weight_mask' by a hook, which cannot be copied or locked. Make the "
    "pruning permanent first with torch.nn.utils.prune.remove(module, 'weight') for every pruned "
    "parameter, then protect."
)
WEIGHT_NORM_MESSAGE = (
    "Layer '0' (Conv1d) uses the legacy torch.nn.utils.weight_norm on 'weight', whose "
    "hook-computed weight cannot be copied or locked. Build the layer with "
    "torch.nn.utils.parametrizations.weight_norm instead, or fold the norm into a plain weight "
    "with torch.nn.utils.remove_weight_norm(module), then protect."
)
REPARAM_CASES = {
    "prune": (_pruned, lambda: [torch.randn(2, 4, 6, 6)], PRUNE_MESSAGE),
    "legacy-weight-norm": (
        lambda: nn.Sequential(weight_norm(nn.Conv1d(4, 8, 3)), nn.ReLU()).eval(),
        lambda: [torch.randn(2, 4, 9)],
        WEIGHT_NORM_MESSAGE,
    ),
}


@pytest.mark.parametrize("case", REPARAM_CASES.values(), ids=REPARAM_CASES.keys())
def test_hook_reparametrisations_are_refused(workdir: Path, case) -> None:
    make, inputs, message = case
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        lock_all(make())
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        protect(make(), inputs())
    assert not (workdir / "outputs").exists()


def test_the_suggested_fixes_lock_exactly() -> None:
    pruned = _pruned()
    prune.remove(pruned[0], "weight")
    x = torch.randn(2, 4, 6, 6)
    out, locked = run_locked(pruned, [x])
    assert_equivalent(out, reference(pruned, [x]))
    assert [d.name for d in locked.locked_layers] == ["0", "3"]
    normed = nn.Sequential(parametrizations.weight_norm(nn.Conv1d(16, 8, 3)), nn.ReLU()).eval()
    y = torch.randn(2, 16, 9)
    out, locked = run_locked(normed, [y])
    assert_equivalent(out, reference(normed, [y]))
    assert [d.name for d in locked.locked_layers] == ["0"]


# ---------------------------------------------------------------------------------------------
# Hooks and overridden forward-path methods: the layer stays unlocked, with the reason
# ---------------------------------------------------------------------------------------------


class StdConv(nn.Conv2d):
    """Weight standardisation: keeps forward(), overrides _conv_forward."""

    def _conv_forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return super()._conv_forward(x, w, b)


def _forward_hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model[0].register_forward_hook(lambda mod, inp, out: out * 2.0)
    return model.eval()


def _pre_hooked() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model[0].register_forward_pre_hook(lambda mod, inp: (inp[0] + 1.0,))
    return model.eval()


SKIP_CASES = {
    "forward-hook": (
        _forward_hooked,
        lambda: [torch.randn(3, 8)],
        "Linear has forward hooks, which the locked layer would not run; the layer is left "
        "unlocked so that they still do. Remove the hooks to lock it.",
    ),
    "forward-pre-hook": (
        _pre_hooked,
        lambda: [torch.randn(2, 4, 6, 6)],
        "Conv2d has forward pre-hooks, which the locked layer would not run; the layer is left "
        "unlocked so that they still do. Remove the hooks to lock it.",
    ),
    "conv-forward-override": (
        lambda: nn.Sequential(StdConv(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(),
        lambda: [torch.randn(2, 4, 6, 6)],
        "StdConv subclasses Conv2d but overrides _conv_forward(), which the locked layer cannot "
        "reproduce;",
    ),
}


@pytest.mark.parametrize("case", SKIP_CASES.values(), ids=SKIP_CASES.keys())
def test_layers_whose_call_does_more_are_skipped_by_lock_model(case) -> None:
    make, inputs, reason = case
    model, x = make(), inputs()
    out, locked = run_locked(model, x)
    assert_equivalent(out, reference(model, x))
    [skipped] = locked.skipped_layers
    assert skipped.name == "0" and skipped.reason.startswith(reason)
    assert [d.name for d in locked.locked_layers] == ["2"]


@pytest.mark.parametrize("case", SKIP_CASES.values(), ids=SKIP_CASES.keys())
def test_layers_whose_call_does_more_are_skipped_when_protecting(workdir: Path, case) -> None:
    make, inputs, reason = case
    model, x = make(), inputs()
    result = protect(model, x)
    assert [d.name for d in result.skipped_layers] == ["0"]
    assert result.skipped_layers[0].reason.startswith(reason)
    assert result.formats["onnx"].max_rel_error < 1e-4
    assert_onnx_matches(workdir, model, x)


# ---------------------------------------------------------------------------------------------
# The original layer's API that model code uses
# ---------------------------------------------------------------------------------------------


class FlattensLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rnn.flatten_parameters()
        return self.rnn(x)[0][:, :, : self.rnn.hidden_size // 2]


class PatchEmbed(nn.Module):
    """Hugging Face's CLIP vision embeddings read the conv's weight dtype and its sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4, bias=False)
        self.fc = nn.Linear(16, 2)

    def forward(self, px: torch.Tensor) -> torch.Tensor:
        y = self.patch(px.to(dtype=self.patch.weight.dtype)).flatten(2).transpose(1, 2)
        return self.fc(y.reshape(-1, self.patch.out_channels)) * self.fc.in_features


API_CASES = {
    "lstm-flatten-parameters": (FlattensLSTM, lambda: [torch.randn(2, 5, 4)]),
    "conv-weight-dtype-out-channels": (PatchEmbed, lambda: [torch.randn(2, 3, 8, 8)]),
}


@pytest.mark.parametrize("case", API_CASES.values(), ids=API_CASES.keys())
def test_model_code_reading_the_layer_api_is_locked_exactly(workdir: Path, case) -> None:
    make, inputs = case
    torch.manual_seed(0)
    model, x = make().eval(), inputs()
    out, locked = run_locked(model, x)
    assert_equivalent(out, reference(model, x))
    assert not locked.skipped_layers
    assert protect(model, x).formats["onnx"].max_rel_error < 1e-4
    assert_onnx_matches(workdir, model, x)


CONVS = {
    "conv1d": nn.Conv1d(16, 8, 3, stride=2, padding=1, dilation=2, padding_mode="reflect"),
    "conv2d-unfolded-stem": nn.Conv2d(3, 16, (3, 5), padding="same"),
    "conv2d-grouped": nn.Conv2d(32, 32, 3, groups=8, bias=False),
    "conv-transpose2d": nn.ConvTranspose2d(16, 8, 3, stride=2, output_padding=1, groups=2),
}
HYPER_PARAMETERS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
    "output_padding",
    "transposed",
)


@pytest.mark.parametrize("conv", CONVS.values(), ids=CONVS.keys())
def test_locked_convs_keep_the_hyper_parameters_read_only(conv: nn.Module) -> None:
    locked = lock_all(nn.Sequential(conv)).keyed.model[0]
    assert isinstance(locked, LockedConv)
    for name in HYPER_PARAMETERS:
        assert getattr(locked, name) == getattr(conv, name), name
    assert locked.weight.dtype == conv.weight.dtype
    assert not torch.equal(locked.weight, conv.weight)
    with pytest.raises(AttributeError, match="out_channels of a locked conv is a read-only"):
        locked.out_channels = 3


def test_recurrent_layers_keep_the_hyper_parameters() -> None:
    for rnn in (nn.LSTM(4, 8, 2, batch_first=True, dropout=0.1, proj_size=3), nn.GRU(4, 8)):
        locked = lock_all(nn.Sequential(rnn)).keyed.model[0]
        for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first"):
            assert getattr(locked, name) == getattr(rnn, name), name
        for name in ("bidirectional", "proj_size", "dropout"):
            assert getattr(locked, name) == getattr(rnn, name), name
        assert locked.flatten_parameters() is None


# ---------------------------------------------------------------------------------------------
# A forward that still breaks on the locked model: a project error naming the layer
# ---------------------------------------------------------------------------------------------


class ReadsRNNWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0] + self.rnn.weight_hh_l0.sum() * 0)


class ConvolvesWithTheWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.conv2d(x, self.stem.weight, self.stem.bias))


BREAK_CASES: dict[str, tuple[Callable[[], nn.Module], Inputs, str, str, type]] = {
    "missing-attribute": (
        ReadsRNNWeight,
        [torch.randn(5, 2, 4)],
        "rnn",
        "The forward() of 'net' uses attribute 'weight_hh_l0' of layer 'rnn', which the locked "
        "layer (LockedGRU) does not have. Exclude that layer with layer_filter (e.g. lambda "
        "name, module: name != 'rnn'), or change forward() to only call the layer.",
        AttributeError,
    ),
    "other-error": (
        ConvolvesWithTheWeight,
        [torch.randn(2, 3, 6, 6)],
        "stem",
        "The locked model of 'net' fails on input_tensors where the original runs (RuntimeError: ",
        RuntimeError,
    ),
}


@pytest.mark.parametrize("case", BREAK_CASES.values(), ids=BREAK_CASES.keys())
def test_a_forward_broken_by_the_lock_names_the_layer(workdir: Path, case) -> None:
    make, inputs, layer, message, cause = case
    with pytest.raises(UnsupportedLayerError, match=re.escape(message)) as err:
        protect(make().eval(), inputs)
    assert isinstance(err.value.__cause__, cause)
    model = make().eval()
    result = protect(model, inputs, layer_filter=lambda name, m: name != layer)
    assert [d.name for d in result.skipped_layers] == [layer]
    assert result.formats["onnx"].max_rel_error < 1e-4
    assert_onnx_matches(workdir, model, inputs)


# ---------------------------------------------------------------------------------------------
# nn.TransformerEncoder's nested-tensor path
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, nested: bool) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.enc(x, src_key_padding_mask=padding)


def _encoder_inputs() -> Inputs:
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, -2:] = True
    return [torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0)), padding]


def test_a_nested_tensor_encoder_is_named_as_the_cause(workdir: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(VerificationError) as err:
        protect(Encoder(nested=True).eval(), _encoder_inputs())
    message = str(err.value)
    assert "Its nn.TransformerEncoder enc was built with enable_nested_tensor=True" in message
    assert (
        "Build the encoder with enable_nested_tensor=False (the outputs at real tokens are "
        "unchanged) and protect again." in message
    )
    assert "reads a layer's weights" not in message


def test_an_encoder_without_nested_tensors_protects(workdir: Path) -> None:
    torch.manual_seed(0)
    model, x = Encoder(nested=False).eval(), _encoder_inputs()
    assert protect(model, x).formats["onnx"].max_rel_error < 1e-4
    assert_onnx_matches(workdir, model, x)
