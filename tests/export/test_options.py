"""build_export_options validation, the exporter registry and verify_artifact (no export here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.export import Dim

from skprotect_pytorch.errors import ExportError, InvalidArgumentError, VerificationError
from skprotect_pytorch.export import (
    DEFAULT_ONNX_PARAMS,
    build_export_options,
    get_exporter,
    registered_formats,
    verify_artifact,
)
from skprotect_pytorch.export import base as export_base
from skprotect_pytorch.export.base import signature_dynamic_shapes
from skprotect_pytorch.formats import ExportFormat

X = torch.randn(2, 3, 8, 8)
T = torch.randn(2, 5)


def params(**kw):
    return {"input_names": ["image"], "output_names": ["logits"], **kw}


def test_defaults_follow_the_seed_and_are_not_mutated():
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULT_ONNX_PARAMS.items()}
    opts = build_export_options([X, T], None, None, None)
    assert opts.input_names == ["input.1", "input.2"]
    assert opts.output_names == ["output.1"]
    assert opts.key_name == "key_vector"
    assert opts.dynamic_shapes is None and opts.dynamic_axes is None
    assert opts.onnx_extra == {} and opts.inductor_configs == {}
    opts.input_names.append("mutated")
    assert dict(DEFAULT_ONNX_PARAMS) == before
    assert build_export_options([X], DEFAULT_ONNX_PARAMS).input_names == ["input.1"]


def test_key_is_the_last_input_name():
    opts = build_export_options([X], params())
    assert opts.names(with_key=True) == ["image", "key_vector"]
    assert opts.names(with_key=False) == ["image"]
    assert build_export_options([X], params(), key_name="k").names(True) == ["image", "k"]


def test_fewer_input_names_are_completed():
    opts = build_export_options([X, T, T], params())
    assert opts.input_names == ["image", "input.1", "input.2"]
    opts = build_export_options([X, T], params(input_names=["input.1"]))
    assert opts.input_names == ["input.1", "input.2"]


def test_dynamic_shapes_are_normalised_and_key_is_static():
    batch = Dim("batch")
    opts = build_export_options([X, T], params(), ({-4: batch}, None))
    assert opts.dynamic_shapes == ({0: batch}, None)
    assert opts.export_dynamic_shapes(with_key=True) == ({0: batch}, None, None)
    assert opts.export_dynamic_shapes(with_key=False) == ({0: batch}, None)
    assert opts.onnx_dynamic_axes() == {"image": {0: "batch"}}


def test_dynamic_axes_alone_gives_torch_export_shapes():
    axes = {"image": {0: "batch", 2: "height"}, "input.1": [0], "logits": {0: "batch"}}
    opts = build_export_options([X, T], params(dynamic_axes=axes))
    img, tab = opts.dynamic_shapes
    assert set(img) == {0, 2} and set(tab) == {0}
    assert img[0].__name__ == "batch" and img[2].__name__ == "height"
    assert tab[0].__name__ == "input_1_0"
    assert opts.dynamic_axes["input.1"] == {0: "input_1_0"}
    assert opts.onnx_dynamic_axes()["logits"] == {0: "batch"}


def test_shared_dimension_names_share_one_dim():
    axes = {"image": {0: "batch"}, "input.1": {0: "batch"}}
    img, tab = build_export_options([X, T], params(dynamic_axes=axes)).dynamic_shapes
    assert img[0] is tab[0]


def test_consistent_dynamic_shapes_and_axes_are_accepted():
    shapes = ({0: Dim("b")},)
    opts = build_export_options([X], params(dynamic_axes={"image": [0]}), shapes)
    assert opts.dynamic_shapes == shapes
    inner = build_export_options([X], params(dynamic_shapes=shapes))
    assert inner.dynamic_shapes == shapes


def test_onnx_extra_and_inductor_configs_pass_through():
    inductor = {"max_autotune": False, "triton.autotune_at_compile_time": True}
    onnx_extra = {"opset_version": 17, "do_constant_folding": True, "export_params": True}
    opts = build_export_options([X], params(**onnx_extra), None, inductor)
    assert opts.onnx_extra == onnx_extra
    assert opts.inductor_configs == inductor


def test_inductor_config_aliases_pass_through():
    """``force_disable_caches`` is an option of torch._inductor.config (an alias of
    torch.compiler.config's) that AOTInductor takes, but get_config_copy lists no alias: it was
    refused as unknown ("Did you mean 'force_shape_pad'?"). The module's own names are not."""
    inductor = {"force_disable_caches": True, "cpp.threads": 2}
    assert build_export_options([X], params(), None, inductor).inductor_configs == inductor
    with pytest.raises(InvalidArgumentError, match=r"inductor_configs\['patch'\] is not an option"):
        build_export_options([X], params(), None, {"patch": True})


ERROR_CASES = {
    "tensors-not-list": (dict(input_tensors=X), "input_tensors must be a non-empty list"),
    "tensors-empty": (dict(input_tensors=[]), "input_tensors must be a non-empty list"),
    "tensors-not-tensor": (
        dict(input_tensors=[X, np.zeros(3)]),
        "input_tensors[1] must be a torch.Tensor, but got ndarray",
    ),
    "params-not-dict": (dict(onnx_params=["image"]), "onnx_params must be a dict, but got list"),
    "input-names-missing": (
        dict(onnx_params={"output_names": ["y"]}),
        'onnx_params["input_names"] is missing or empty',
    ),
    "input-names-empty": (
        dict(onnx_params=params(input_names=[])),
        'onnx_params["input_names"] is missing or empty',
    ),
    "too-many-input-names": (
        dict(onnx_params=params(input_names=["a", "b"])),
        "has 2 names (['a', 'b']) but input_tensors has only 1 tensor(s)",
    ),
    "duplicate-input-names": (
        dict(input_tensors=[X, T], onnx_params=params(input_names=["a", "a"])),
        'onnx_params["input_names"] must not repeat a name',
    ),
    "input-name-is-key": (
        dict(onnx_params=params(input_names=["key_vector"])),
        'uses "key_vector", the name of the key input',
    ),
    "output-reuses-input": (
        dict(onnx_params=params(output_names=["image"])),
        "reuses input name(s) ['image']",
    ),
    "shapes-wrong-count": (
        dict(dynamic_shapes=({0: Dim("b")}, None)),
        "dynamic_shapes has 2 entries but input_tensors has 1 tensor(s)",
    ),
    "shapes-dict": (
        dict(dynamic_shapes={"x": {0: Dim("b")}}),
        "dynamic_shapes must be a tuple or list with one dict",
    ),
    "shapes-entry-not-dict": (
        dict(dynamic_shapes=([0],)),
        "dynamic_shapes[0] must be a dict {dim: torch.export.Dim} or None, but got list",
    ),
    "shapes-dim-out-of-range": (
        dict(dynamic_shapes=({4: Dim("b")},)),
        "dynamic_shapes[0]: dimension 4 is out of range for a tensor with 4 dimension(s)",
    ),
    "shapes-dim-not-int": (
        dict(dynamic_shapes=({"0": Dim("b")},)),
        "dynamic_shapes[0]: dimension keys must be integers, but got '0'",
    ),
    "shapes-value-not-dim": (
        dict(dynamic_shapes=({0: "batch"},)),
        "dynamic_shapes[0][0] must be a torch.export.Dim or None, but got 'batch'",
    ),
    "shapes-size-one": (
        dict(input_tensors=[torch.randn(1, 3, 8, 8)], dynamic_shapes=({0: Dim("b")},)),
        "input_tensors[0] has size 1 in dimension 0, which dynamic_shapes marks dynamic",
    ),
    "shapes-outside-dim-range": (
        dict(dynamic_shapes=({0: Dim("b", min=4, max=8)},)),
        "input_tensors[0] has size 2 in dimension 0, outside the range [4, 8]",
    ),
    "axes-not-dict": (
        dict(onnx_params=params(dynamic_axes=[0])),
        'onnx_params["dynamic_axes"] must be a dict {tensor name: axes} or None, but got list',
    ),
    "axes-unknown-name": (
        dict(onnx_params=params(dynamic_axes={"x": [0]})),
        'onnx_params["dynamic_axes"] names "x", which is neither an input name',
    ),
    "axes-on-key": (
        dict(onnx_params=params(dynamic_axes={"key_vector": [0]})),
        'makes the key input "key_vector" dynamic',
    ),
    "axes-out-of-range": (
        dict(onnx_params=params(dynamic_axes={"image": [7]})),
        'onnx_params["dynamic_axes"]["image"]: dimension 7 is out of range',
    ),
    "axes-size-one": (
        dict(
            input_tensors=[torch.randn(1, 3, 8, 8)], onnx_params=params(dynamic_axes={"image": [0]})
        ),
        "input_tensors[0] has size 1 in dimension 0, which "
        'onnx_params["dynamic_axes"] marks dynamic',
    ),
    "axes-bad-value": (
        dict(onnx_params=params(dynamic_axes={"image": 0})),
        'onnx_params["dynamic_axes"]["image"] must be a list of axes or a dict',
    ),
    "shapes-and-axes-disagree": (
        dict(onnx_params=params(dynamic_axes={"image": [0, 2]}), dynamic_shapes=({0: Dim("b")},)),
        'dynamic_shapes and onnx_params["dynamic_axes"] disagree for input "image": '
        'dynamic_shapes makes dimension(s) [0] dynamic, onnx_params["dynamic_axes"] makes [0, 2]',
    ),
    "shapes-and-onnx-shapes-disagree": (
        dict(onnx_params=params(dynamic_shapes=(None,)), dynamic_shapes=({0: Dim("b")},)),
        'dynamic_shapes and onnx_params["dynamic_shapes"] disagree for input "image"',
    ),
    "reserved-onnx-key": (
        dict(onnx_params=params(external_data=True)),
        'onnx_params["external_data"] cannot be set: the protected model is always written as '
        "one self-contained .onnx file",
    ),
    "unknown-onnx-key": (
        dict(onnx_params=params(opset=17)),
        'onnx_params["opset"] is not an argument of torch.onnx.export. Accepted keys are',
    ),
    "bad-opset": (
        dict(onnx_params=params(opset_version="18")),
        'onnx_params["opset_version"] must be an integer from 9 to',
    ),
    "opset-too-new": (
        dict(onnx_params=params(opset_version=999)),
        "(the newest this onnx knows), but got 999",
    ),
    # 0 and -4 are one dimension of X: the second used to replace the first silently
    "dynamic-shapes-axis-twice": (
        dict(dynamic_shapes=({0: Dim("a"), -4: Dim("b")},)),
        "dimension -4 is dimension 0 again, given twice",
    ),
    "dynamic-axes-axis-twice": (
        dict(onnx_params=params(dynamic_axes={"image": {0: "a", -4: "b"}})),
        "dimension -4 is dimension 0 again, given twice",
    ),
    "inductor-configs-not-dict": (
        dict(inductor_configs=[("max_autotune", True)]),
        "inductor_configs must be a dict with string keys",
    ),
    # AOTInductor raised it only when compiling, after the lock and the other exports (11.5 s)
    "inductor-configs-unknown-option": (
        dict(inductor_configs={"max_autotun": True}),
        "inductor_configs['max_autotun'] is not an option of torch._inductor.config (torch "
        f"{torch.__version__}). Did you mean 'max_autotune'?",
    ),
    # torch.export refused it only in the AOTInductor export, after the ONNX one took it
    "dim-name-defined-twice": (
        dict(input_tensors=[X, T], dynamic_shapes=({0: Dim("b", max=4)}, {0: Dim("b", max=8)})),
        "dynamic_shapes gives the dimension 'b' two definitions: Dim('b', min=0, max=4) at "
        "dynamic_shapes[0][0] and Dim('b', min=0, max=8) at dynamic_shapes[1][0]",
    ),
    # the file had no weights: a VerificationError "Node input 'val_2' is not a graph input"
    "onnx-export-params-false": (
        dict(onnx_params=params(export_params=False)),
        'onnx_params["export_params"] must be True: False writes the graph without its',
    ),
    # wrote the exported program, weights included, into the current folder
    "onnx-dump-exported-program": (
        dict(onnx_params=params(dump_exported_program=True)),
        'onnx_params["dump_exported_program"] must be False: True writes the exported program',
    ),
    # recorded as one size, so the runtime refused the example inputs themselves
    "shared-dim-other-example-sizes": (
        dict(input_tensors=[T, torch.randn(3, 5)], dynamic_shapes=({0: Dim("b")}, {0: Dim("b")})),
        "dynamic_shapes gives input_tensors[0] dimension 0 and input_tensors[1] dimension 0 the "
        "one dimension 'b', but their example sizes differ (2 and 3)",
    ),
    "shared-axes-name-other-example-sizes": (
        dict(
            input_tensors=[T, torch.randn(3, 5)],
            onnx_params=params(input_names=["a", "b"], dynamic_axes={"a": {0: "n"}, "b": {0: "n"}}),
        ),
        'onnx_params["dynamic_axes"] gives input_tensors[0] dimension 0 and input_tensors[1] '
        "dimension 0 the one dimension 'n', but their example sizes differ (2 and 3)",
    ),
    "derived-dim-other-example-size": (
        dict(
            input_tensors=[T, torch.randn(5, 5)],
            dynamic_shapes=({0: Dim("b")}, {0: 2 * Dim("b")}),
        ),
        "dynamic_shapes gives input_tensors[1] dimension 0 the dimension '2*b', 4 for the size 2 "
        "of 'b' in the example, but its example size is 5",
    ),
    # bool("False") is True: the dynamo exporter ran
    "onnx-dynamo-not-bool": (
        dict(onnx_params=params(dynamo="False")),
        "onnx_params[\"dynamo\"] must be True or False, but got 'False'",
    ),
    # torch's dynamo exporter drops these without a word
    "onnx-legacy-only-key": (
        dict(onnx_params=params(do_constant_folding=False)),
        'onnx_params["do_constant_folding"] = False is read only by the legacy exporter',
    ),
    "onnx-legacy-only-training": (
        dict(onnx_params=params(training=torch.onnx.TrainingMode.TRAINING)),
        'onnx_params["training"] = <TrainingMode.TRAINING: 2> is read only by the legacy',
    ),
    # AOTInductor took the text "False" as true
    "inductor-configs-text-flag": (
        dict(inductor_configs={"layout_optimization": "False"}),
        "inductor_configs['layout_optimization'] takes True or False, but got 'False' (str)",
    ),
    "inductor-configs-fraction-count": (
        dict(inductor_configs={"cpp.threads": 2.5}),
        "inductor_configs['cpp.threads'] takes an integer, but got 2.5 (float)",
    ),
}


def test_legacy_only_onnx_keys_pass_with_the_legacy_exporter_or_neutral_values():
    """Refused only where they would be ignored: the dynamo exporter does what these values say."""
    legacy = params(dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    assert build_export_options([X], legacy).onnx_extra["do_constant_folding"] is False
    neutral = params(do_constant_folding=True, custom_opsets={}, dynamo=None)
    assert build_export_options([X], neutral).onnx_extra["do_constant_folding"] is True
    inductor = {"max_autotune": True, "cpp.threads": 2, "max_autotune_gemm_backends": "ATEN"}
    assert build_export_options([X], params(), None, inductor).inductor_configs == inductor


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_invalid_arguments_raise_clear_errors(case):
    overrides, message = ERROR_CASES[case]
    kwargs = {
        "input_tensors": [X],
        "onnx_params": params(),
        "dynamic_shapes": None,
        "inductor_configs": None,
        **overrides,
    }
    with pytest.raises(InvalidArgumentError) as info:
        build_export_options(**kwargs)
    assert message in str(info.value)


def test_signature_dynamic_shapes_wraps_varargs():
    class VarArgs(torch.nn.Module):
        def forward(self, *inputs):
            return inputs[0]

    class Fixed(torch.nn.Module):
        def forward(self, x, key):
            return x

    shapes = ({0: Dim("b")}, None)
    assert signature_dynamic_shapes(VarArgs(), shapes) == (shapes,)
    assert signature_dynamic_shapes(Fixed(), shapes) == shapes
    assert signature_dynamic_shapes(VarArgs(), None) is None


def test_every_format_has_an_exporter():
    assert registered_formats() == list(ExportFormat)
    extensions = {f: get_exporter(f).extension for f in registered_formats()}
    assert extensions == {
        ExportFormat.ONNX: ".onnx",
        ExportFormat.TORCHSCRIPT_CPU: ".pt",
        ExportFormat.TORCHSCRIPT_GPU: ".pt",
        ExportFormat.INDUCTOR_CPU: ".pt2",
        ExportFormat.INDUCTOR_GPU: ".pt2",
    }
    assert all(get_exporter(f).fmt is f for f in registered_formats())


def test_get_exporter_rejects_combined_formats():
    with pytest.raises(InvalidArgumentError, match="get_exporter needs one single ExportFormat"):
        get_exporter(ExportFormat.ONNX | ExportFormat.INDUCTOR_CPU)


def test_get_exporter_miss_lists_registered_formats(monkeypatch):
    monkeypatch.delitem(export_base._EXPORTERS, ExportFormat.INDUCTOR_GPU)
    with pytest.raises(ExportError) as info:
        get_exporter(ExportFormat.INDUCTOR_GPU)
    assert str(info.value) == (
        "No exporter is registered for ExportFormat.INDUCTOR_GPU. Registered formats: ONNX, "
        "TORCHSCRIPT_CPU, TORCHSCRIPT_GPU, INDUCTOR_CPU. Choose one of these in "
        "model_export_formats."
    )


class FakeExporter:
    """Returns fixed outputs: verify_artifact's comparison without any export."""

    fmt = ExportFormat.ONNX
    extension = ".onnx"

    def __init__(self, outputs=None, fail=None):
        self.outputs, self.fail = outputs, fail

    def load(self, path, options):
        def run(inputs):
            if self.fail:
                raise self.fail
            return self.outputs

        return run


OPTS = build_export_options([X])
REF = [np.array([[1.0, -2.0, 4.0]], dtype=np.float32)]


def test_verify_artifact_returns_relative_error():
    close = [REF[0] + np.float32(1e-5)]
    err = verify_artifact(FakeExporter(close), Path("m.onnx"), OPTS, [], REF)
    assert err == pytest.approx(1e-5 / 4, rel=1e-2)
    assert verify_artifact(FakeExporter(REF), Path("m.onnx"), OPTS, [], REF) == 0.0


@pytest.mark.parametrize(
    ("exporter", "message"),
    [
        (FakeExporter([REF[0] * 1.01]), "max relative error 0.01 > tolerance 0.0001"),
        (FakeExporter([REF[0][0]]), "has shape (3,), expected (1, 3)"),
        (FakeExporter([REF[0], REF[0]]), "returned 2 output(s), expected 1"),
        (FakeExporter([np.full_like(REF[0], np.nan)]), "max relative error inf"),
        (FakeExporter(fail=RuntimeError("boom")), "could not be run on the example inputs"),
    ],
    ids=["too-far", "shape", "count", "nan", "load-fails"],
)
def test_verify_artifact_raises_verification_error(exporter, message):
    with pytest.raises(VerificationError) as info:
        verify_artifact(exporter, Path("m.onnx"), OPTS, [], REF)
    assert message in str(info.value)
