"""The protection pipeline behind ``protect_*_model``: lock per format group, export, verify,
write keys, then commit files and configuration together (or nothing at all).

Everything is first written to a staging folder inside ``outputs/<app>/``; only when every
artifact has been exported and re-run against the original model are the files moved into
place and the configuration rewritten.  If that final step fails, replaced files are restored.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import functools
import gc
import inspect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from skruntime.backends.gpu import gpu_float32
from skruntime.backends.inputs import recorded_commitment
from skruntime.config import (
    CONFIG_FILENAMES,
    Config,
    FormatEntry,
    ModelEntry,
    load_config,
    sha256_file,
)
from skruntime.keyfile import key_commitment

from .configuration import (
    add_model,
    check_compatible,
    check_migratable,
    check_same_customer,
    config_lock,
    load_own,
)
from .customer import Customer
from .dynamic_axes import DynamicAxes, describe_inputs, dynamic_axes, other_sizes
from .errors import (
    ConfigurationError,
    ExportError,
    InvalidArgumentError,
    SkProtectError,
    UnsupportedLayerError,
    VerificationError,
)
from .export import build_export_options, cuda_available, get_exporter
from .export.base import (
    Exporter,
    Runner,
    VersionedCopies,
    as_wide,
    check_outputs,
    dataclass_fields,
    first_line,
    load_artifact,
    numpy_holds,
    recorded_ranges,
)
from .export.onnx import check_fits_one_file
from .export.options import ExportOptions
from .formats import ExportFormat, ExportPlatform, FormatGroup
from .lock import LockedModel, lock_model, once_per_layer
from .lock.context import LockSettings
from .lock.coverage import PlaintextWeight, WeightAlias, weight_aliases
from .lock.diagnose import eager_failure, mismatch_error, type_check_error, type_checked_layers
from .lock.key_layout import KeyLayout
from .lock.keyed_model import plain_outputs
from .lock.outside import run_keyed_checked
from .lock.preflight import (
    check_lockable,
    check_no_scripted_submodules,
    copy_model,
    uncompiled_named_modules,
)
from .logs import get_logger, warn_user
from .output_checks import (
    refuse_none_outputs,
    refuse_numpyless_outputs,
    refuse_untraceable_outputs,
)
from .platforms import commitment_nonce, get_platform, write_platform_keys
from .progress import console, step
from .result import FormatResult, ProtectionResult
from .rounding import RTOL, ExactOutputs, within_rounding
from .shared_files import OtherPlatform, warn_plain_keys_beside_linux, warn_untracked_files
from .staging import Staging
from .state import ProtectionState

COLLECT_FROM_BYTES = 64 * 2**20
"""Locked models whose weights, added up since the last full garbage collection after a format
group's exports, reach this size are freed by one; smaller ones are left to the collector's own
pace (a full collection costs 0.2 s and more in a process of many objects: a large share of a
small model's protection). Added up, not each model on its own: the collector's own full
collections are rare in a process that imported torch, and a model just under the size, left
to them, stayed alive through the next groups and protections (a 63 MiB MLP protected 3 times
to ONNX and TORCHSCRIPT_CPU: 3 locked models, 190 MiB, alive at the last check)."""

_uncollected_bytes = 0
"""The weights of the locked models left to the collector since the last full collection."""


@dataclass
class ProtectRequest:
    """A validated protect call."""

    model: nn.Module
    model_name: str
    input_tensors: list[torch.Tensor]
    layer_filter: Callable[[str, nn.Module], bool]
    formats: ExportFormat
    platform: ExportPlatform
    dynamic_shapes: Any
    onnx_params: dict | None
    inductor_configs: dict
    platform_version: int
    customer: Customer
    replace: bool
    application_name: str
    outputs_dir: Path
    config_path: Path
    save_original: bool
    quantize_compatibility: bool
    lock_preset: str
    test_key: bool
    rotate_keys: bool


def _as_numpy(outputs: Any) -> list[np.ndarray]:
    """Flatten a model's outputs (tensor, tuple, list, dict, dataclass, nested) to a list of
    arrays: a dict's values and a dataclass's fields in their order, the rule of the exporters'
    check (:func:`~skprotect_pytorch.export.base.flatten_outputs`) and of the runtime's
    backends."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().cpu().numpy()]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    elif (fields := dataclass_fields(outputs)) is not None:
        outputs = list(fields.values())
    if isinstance(outputs, list | tuple):
        return [a for o in outputs if o is not None for a in _as_numpy(o)]
    raise ExportError(
        f"The model returned {type(outputs).__name__}; only tensors and (nested) tuples, lists, "
        "dicts or dataclasses of tensors can be exported. Wrap the model so forward() returns "
        "tensors."
    )


def _clones(tensors: Iterable[torch.Tensor], device: str | None = None) -> list[torch.Tensor]:
    """Copies of ``tensors`` (on ``device``, if given) for a model to run on: a forward that
    changes its inputs in place (``x.mul_(2)``) must change neither the caller's example
    tensors nor the inputs of the next run, which would then differ from the first."""
    return [t.detach().to(device or t.device, copy=True) for t in tensors]


def _on_copies(run: Runner) -> Runner:
    """``run`` fed copies of its input arrays: an artifact reads numpy arrays without copying
    them (``torch.from_numpy``), so an in-place forward would change the check's inputs."""
    return lambda inputs: run([np.array(x, copy=True) for x in inputs])


def _complete_output_names(options: ExportOptions, count: int) -> ExportOptions:
    """Name every output the model returns: the user's names first, then ``output.N``."""
    names = list(options.output_names)
    if len(names) > count:
        raise InvalidArgumentError(
            f"onnx_params['output_names'] has {len(names)} names ({', '.join(names)}) but the "
            f"model returns {count} output(s). Give one name per output."
        )
    taken = {*names, *options.input_names, options.key_name}
    index = 1
    while len(names) < count:
        candidate = f"output.{index}"
        if candidate not in taken:
            names.append(candidate)
            taken.add(candidate)
        index += 1
    return dataclasses.replace(options, output_names=names)


def _rel_diff(outputs: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """The norm of the outputs' differences from ``expected`` relative to ``expected``'s."""
    num = sum(
        float(np.linalg.norm(as_wide(o) - as_wide(e)))
        for o, e in zip(outputs, expected, strict=True)
    )
    den = sum(float(np.linalg.norm(as_wide(e))) for e in expected) or 1.0
    return num / den


def _rounding_only(
    outputs: list[np.ndarray], expected: list[np.ndarray], exact: list[np.ndarray] | None
) -> bool:
    """Whether ``outputs`` differ from ``expected`` by float32 rounding alone: no further from
    the original's float64 outputs ``exact`` than :func:`.rounding.within_rounding` allows
    (outputs that cancel to near zero); False without them."""
    if exact is None or [e.shape for e in exact] != [e.shape for e in expected]:
        return False
    got, own = _rel_diff(outputs, exact), _rel_diff(expected, exact)
    if not within_rounding(got, own):
        return False
    get_logger().info(
        "The locked model differs from the original by float32 rounding only: %.3g from its "
        "float64 outputs, where the original's own float32 outputs are %.3g from them",
        got,
        own,
    )
    return True


_Check = tuple[list[np.ndarray], list[np.ndarray], Callable[[], list[np.ndarray] | None]]
"""An artifact check: its inputs, the original's outputs on them, and its float64 outputs."""


def _replaced_files(request: ProtectRequest) -> set[str]:
    """The files the replaced entry lists: those the update does not write again (a format left
    out now) are retired, so that no untracked locked model or key stays."""
    if not request.replace:
        return set()
    old = load_config(request.config_path).models[request.model_name]
    return {f.file for f in old.formats.values()} | {
        k for f in old.formats.values() for k in f.key_files
    }


def _tell(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn the line that called the protector (through ``run_protection`` and the
    protector's method) with ``message``, and log it."""
    warn_user(message, stacklevel=6, category=category)


def _warn_stale_originals(request: ProtectRequest, written: list[Path]) -> None:
    """Say that unlocked copies from an earlier ``save_original=True`` protection are still in
    the shipped folder: this protection did not write them (``written``: the copies it did
    write, with ``save_original=True``; a format it left out keeps the earlier copy), so its
    summary does not list them, and whoever gets the folder reads the plaintext weights."""
    folder = request.outputs_dir / request.model_name / "original"
    files = folder.glob("*") if folder.is_dir() else ()
    stale = sorted(p.name for p in files if p.is_file() and p not in written)
    if not stale:
        return
    message = (
        f"{folder} still holds unlocked copies of '{request.model_name}' from an earlier "
        f"save_original=True protection ({', '.join(stale)}): plaintext weights, readable by "
        f"whoever gets {request.outputs_dir}. Delete that folder before shipping."
    )
    _tell(message)


def _warn_migrated(request: ProtectRequest, config: Config | None) -> None:
    """Say that this protection migrated the configuration (``config``, as it was) to a higher
    platform version: the usage document's automatic migration, but for every model of the
    file and for good, so a ``platform_version`` left at its default by mistake is seen now,
    not when a device's older runtime refuses the file (it was logged only)."""
    if config is None or config.platform_version >= request.platform_version:
        return
    old, new = config.platform_version, request.platform_version
    message = (
        f"{request.config_path} was at platform version {old}: this protection migrated it, "
        f"with every model in it, to platform_version={new}, which a runtime that supports "
        f"only version {old} refuses. Configurations are never downgraded: if your devices "
        f"need version {old}, re-protect every model of the application into a new "
        f"application_name with platform_version={old}."
    )
    _tell(message)


def _refuse_numpyless_inputs(inputs: list[torch.Tensor]) -> None:
    """Refuse example tensors of a dtype NumPy lacks: every file is checked on NumPy copies of
    them, as onnxruntime is fed (it failed after the lock with torch's "Got unsupported
    ScalarType BFloat16"). After :func:`check_lockable`, whose advice for a model that
    computes in such a dtype (convert it, and the inputs, with ``.float()``) comes first."""
    for i, tensor in enumerate(inputs):
        if not numpy_holds(tensor.dtype):
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise InvalidArgumentError(
                f"input_tensors[{i}] is {dtype}, which NumPy has no type for: every protected file "
                "is checked on NumPy copies of input_tensors, and onnxruntime is fed NumPy arrays. "
                f"Pass a float32 example (input_tensors[{i}].float()) and convert in forward() "
                f"(x.to(torch.{dtype})) if the model computes in {dtype}."
            )


def _keyword_only(model: nn.Module) -> list[str]:
    """The keyword-only parameters without default of ``model``'s forward: input_tensors are
    passed by position, so they cannot be given."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): nothing to say
        return []
    return [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]


def _run_reference(
    model: nn.Module, inputs: list[torch.Tensor], formats: Iterable[ExportFormat] = ()
) -> list[np.ndarray]:
    """The original model's outputs on ``inputs``; a model that fails on them is the caller's
    input error, said with the inputs it got, not a traceback from inside torch. ``formats``:
    those to be written, which outputs holding ``None`` are checked against (the first run
    does it; a run at other sizes has the same outputs)."""
    try:
        with torch.no_grad():
            raw = model(*_clones(inputs))
    except Exception as err:
        given = ", ".join(
            f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}" for t in inputs
        )
        keywords = _keyword_only(model)
        advice = (
            f"forward() has keyword-only argument(s) {', '.join(keywords)}, which "
            "input_tensors cannot give (they are passed by position): wrap the model in a "
            "module whose forward() takes every input by position and calls it by keyword."
            if keywords
            else "Pass one example tensor per argument of the model's forward, with the "
            "shapes, dtypes and device it expects."
        )
        raise InvalidArgumentError(
            f"The model fails on input_tensors ({len(inputs)} tensor(s): {given}): "
            f"{first_line(err)}. {advice}"
        ) from err
    refuse_none_outputs(raw, formats)
    refuse_untraceable_outputs(raw, formats)
    refuse_numpyless_outputs(raw)
    outputs = _as_numpy(raw)
    bad = [i for i, y in enumerate(outputs) if y.dtype.kind in "fc" and np.isnan(y).any()]
    if bad:  # no artifact can be checked against NaN (it never equals itself)
        raise InvalidArgumentError(
            f"The model's output(s) {bad} hold NaN on input_tensors, so no protected file can "
            "be checked against them. Pass example inputs on which the outputs are numbers "
            "(for instance, no sequence whose attention keys are all masked)."
        )
    return outputs


def _dynamic_source(request: ProtectRequest) -> str:
    """The argument that declared the dynamic axes, as the user wrote it: ``dynamic_shapes``,
    else ``onnx_params["dynamic_shapes"]``, else ``onnx_params["dynamic_axes"]``."""
    if request.dynamic_shapes is not None:
        return "dynamic_shapes"
    key = "dynamic_shapes" if (request.onnx_params or {}).get("dynamic_shapes") else "dynamic_axes"
    return f'onnx_params["{key}"]'


def _check_other_sizes(
    reference: nn.Module,
    request: ProtectRequest,
    axes: DynamicAxes,
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Inputs at other sizes of the dynamic axes and the original's outputs on them, for the
    CPU artifacts to be checked against; an axis the model itself cannot vary is refused."""
    found = other_sizes(list(request.input_tensors), axes)
    if found is None:
        return None
    tensors, sizes = found
    try:
        expected = _run_reference(reference, tensors)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(
            f"{_dynamic_source(request)} declares axes the model cannot vary: with {sizes} "
            "(one from the example) the original model fails "
            f"({first_line(err.__cause__ or err)}). Declare only the axes the model accepts at "
            "any size (e.g. the batch), or give their real range."
        ) from err.__cause__
    return [t.detach().cpu().numpy() for t in tensors], expected


def _lock_settings(request: ProtectRequest) -> LockSettings:
    """The lock settings the request's preset and ``quantize_compatibility`` name."""
    return LockSettings.preset(
        request.lock_preset, quantize_compatibility=request.quantize_compatibility
    )


def _links_copies(request: ProtectRequest) -> bool:
    """Whether the request's lock links the keys of two locked copies of one weight: with an
    unmixed keyed side and sign-only scales a thief matches the copies' rows there; under the
    other locks every matcher tried stays at chance (docs/security.md, "Tied locked weights")."""
    settings = _lock_settings(request)
    return settings.mix_sides != "both" and settings.quantize_compatibility


def _warn_shared_weights(request: ProtectRequest, groups: list[tuple[str, ...]]) -> None:
    """Say that locked layers store copies of one weight under a lock that links their keys
    (:func:`_links_copies`)."""
    listed = "; ".join(", ".join(map(repr, names)) for names in groups)
    _tell(
        f"Locked layers of '{request.model_name}' store copies of one weight ({listed}): with "
        f"lock_preset={request.lock_preset!r} and quantize_compatibility=True a thief matches "
        "the copies' unmixed side and, from either copy's key there, reads the other's. Use "
        "lock_preset='strong' (docs/security.md, \"Tied locked weights\"); cloning the weight "
        "before protecting stores the same two copies.",
        RuntimeWarning,
    )


def _warn_plaintext(model_name: str, weights: list[PlaintextWeight]) -> None:
    """Say that some weight tensors ship unlocked: the user may not know a layer type is
    unsupported, and a thief reads these tensors without the key."""
    listed = "; ".join(f"{w.name} {tuple(w.shape)}: {w.reason}" for w in weights)
    message = (
        f"{len(weights)} weight tensor(s) of '{model_name}' are stored in plaintext and readable "
        f"without the key ({listed}). Replace them with supported layers (docs/api.md) if they "
        "must be protected; ProtectionResult.plaintext_weights lists them."
    )
    _tell(message, RuntimeWarning)


def _log_plaintext_buffers(model_name: str, buffers: list[PlaintextWeight]) -> None:
    """Say (info: most are public tables, such as attention masks) which buffers ship as they
    are: one holding trained values is as readable as a plaintext weight."""
    get_logger().info(
        "%d buffer(s) of '%s' are stored as they are, readable without the key (%s): public "
        "tables (masks, position encodings) need no key; register trained values as parameters "
        "of a supported layer instead. ProtectionResult.plaintext_buffers lists them.",
        len(buffers),
        model_name,
        "; ".join(f"{b.name} {tuple(b.shape)}" for b in buffers),
    )


def _selected_formats(request: ProtectRequest, result: ProtectionResult) -> list[ExportFormat]:
    wanted = request.formats.members
    if cuda_available():
        return wanted
    kept = [f for f in wanted if not f.needs_cuda]
    for fmt in wanted:
        if fmt.needs_cuda:
            reason = "CUDA is not available on this machine; protect on a machine with a GPU"
            result.skipped_formats[fmt.slug] = reason
            warn_user(f"{fmt.name} skipped: {reason}.", stacklevel=5, category=RuntimeWarning)
    if not kept:
        raise ExportError(
            "Only GPU formats were requested ("
            + ", ".join(f.name for f in wanted)
            + ") but CUDA is not available on this machine. Run on a machine with a CUDA GPU, "
            "or add CPU formats (ONNX, TORCHSCRIPT_CPU, INDUCTOR_CPU)."
        )
    return kept


def _warn_unused_settings(options: ExportOptions, formats: list[ExportFormat]) -> None:
    """Say which format settings no format of this protection uses (``inductor_configs``
    without an AOTInductor format, ``torch.onnx.export`` arguments of ``onnx_params`` without
    ONNX): given, they look applied; the input and output names serve every format."""
    unused = []
    if options.inductor_configs and not any(f.slug.startswith("inductor") for f in formats):
        unused.append(f"inductor_configs ({', '.join(options.inductor_configs)})")
    if options.onnx_extra and ExportFormat.ONNX not in formats:
        unused.append(f"onnx_params {', '.join(options.onnx_extra)}")
    if not unused:
        return
    message = (
        f"{' and '.join(unused)}: not used, since no format this protection writes "
        f"({', '.join(f.name for f in formats)}) takes them. Add the format to "
        "model_export_formats, or leave them out."
    )
    _tell(message)


def _where_else(request: ProtectRequest, advice: str) -> str:
    """What to do about a model to replace that this platform's configuration lacks: when the
    other platform's configuration has it, the ``deployment_platform`` was forgotten (TXT is the
    default), and ``advice`` (protect it as new) would add plain key files beside a LINUX
    deployment's files."""
    other = OtherPlatform.of(request.outputs_dir, request.platform, request.model_name)
    if other is None:
        return advice
    return (
        f"It is in the {other.platform.value} configuration "
        f"({CONFIG_FILENAMES[other.platform.value]}): pass deployment_platform="
        f"SkProtectorPyTorch.ExportPlatform.{other.platform.value} to replace it there."
    )


def _refuse_case_twin(request: ProtectRequest) -> None:
    """Refuse a new model whose name differs from a model of the application (either
    platform's) only in case: on a case-insensitive disk (macOS, Windows: where the folder may
    be protected, copied or deployed) both name one folder, so the new model's files silently
    replace the other's, whose configuration entry then fails (``IntegrityError``).  A model
    that the other platform has already is no new folder: it may be added to this one."""
    wanted = request.model_name.casefold()
    models: dict[str, Path] = {}
    for path in (request.outputs_dir / name for name in sorted(set(CONFIG_FILENAMES.values()))):
        if not path.is_file():
            continue
        try:
            models.update(dict.fromkeys(load_config(path).models, path))
        except SkProtectError:
            continue  # the configuration checks report it
    if request.model_name in models:
        return
    twin = next((n for n in models if n.casefold() == wanted), None)
    if twin is not None:
        raise InvalidArgumentError(
            f"model_name '{request.model_name}' differs from the model '{twin}' of "
            f"{models[twin]} only in case: on a case-insensitive disk (macOS, Windows) both are "
            f"the folder {request.outputs_dir / twin}, and this model's files would replace "
            f"those of '{twin}'. Choose another name, or pass '{twin}' to "
            "protect_updated_model to replace that model."
        )


def _precheck_config(
    request: ProtectRequest, signing_key: Ed25519PrivateKey, kek: bytes
) -> Config | None:
    """Fail before the expensive work if the configuration would refuse the model, with the
    errors of the write itself: a file signed by another key (a lost master secret) included.
    Returns the configuration as it is now (None when there is none yet)."""
    if not request.replace:
        _refuse_case_twin(request)
    if not request.config_path.exists():
        if request.replace:
            raise ConfigurationError(
                f"protect_updated_model: there is no configuration {request.config_path} yet, so "
                f"there is no model '{request.model_name}' to replace. "
                + _where_else(request, "Use protect_new_model.")
            )
        return None
    config = load_own(request.config_path, signing_key)
    present = request.model_name in config.models
    if request.replace and not present:
        names = ", ".join(sorted(config.models)) or "none"
        raise ConfigurationError(
            f"protect_updated_model: model '{request.model_name}' is not in "
            f"{request.config_path} (models there: {names}). "
            + _where_else(
                request,
                "Use protect_new_model for a new model, or the exact name of the model to replace.",
            )
        )
    if not request.replace and present:
        raise ConfigurationError(
            f"protect_new_model: model '{request.model_name}' is already in "
            f"{request.config_path}. Use protect_updated_model to replace it, or another name."
        )
    # what the configuration write checks, before the export instead of after it
    check_compatible(
        request.config_path,
        config,
        request.platform_version,
        request.platform.value,
        request.application_name,
    )
    check_same_customer(request.config_path, config, request.customer)
    if config.platform_version < request.platform_version:  # migrated with the write
        check_migratable(
            request.config_path,
            config,
            request.config_path.parent,
            request.model_name if request.replace else None,
            kek=kek,
        )
        get_logger().info(
            "%s is at platform version %d: it is migrated to %d with this protection",
            request.config_path,
            config.platform_version,
            request.platform_version,
        )
    return config


def _key_epoch(
    request: ProtectRequest,
    config: Config | None,
    other_platform: OtherPlatform | None,
    state: ProtectionState,
) -> int:
    """The key epoch of this protection: the newest one the model is deployed with, one more
    with ``rotate_keys``. An update without it keeps its deployed keys (reproducible), and never
    goes back to a key that a rotation replaced. Both platforms count: they derive a group's
    key alike and share its model files, so a model protected for one platform after a rotation
    on the other takes the rotated keys, not the replaced (possibly leaked) ones. So does the
    private state's record of rotations, which outlives the configurations (a deleted
    ``outputs/``, a model dropped from them)."""
    entry = config.models.get(request.model_name) if config is not None else None
    epochs = [
        state.key_epoch_floor(request.model_name),
        *([entry.key_epoch] if entry is not None else []),
        *([other_platform.key_epoch] if other_platform is not None else []),
    ]
    epoch = max(epochs, default=0)
    if request.rotate_keys:
        epoch += 1
        get_logger().info(
            "rotate_keys: new keys for every format group of '%s', key epoch %d",
            request.model_name,
            epoch,
        )
    return epoch


def _refuse_dropping_deployed(
    request: ProtectRequest, config: Config | None, result: ProtectionResult
) -> None:
    """An update removes the formats of the replaced entry that it does not write again: that is
    how a format is dropped on purpose (left out of ``model_export_formats``). A format that was
    asked for but skipped here (a GPU format on a machine without CUDA) is no such choice, so
    the update is refused before the export instead of deleting that deployed file and key."""
    if not request.replace or config is None:
        return
    deployed = config.models[request.model_name].formats
    lost = [slug for slug in result.skipped_formats if slug in deployed]
    if not lost:
        return
    names = ", ".join(slug.upper() for slug in lost)
    files = ", ".join(deployed[slug].file for slug in lost)
    raise ExportError(
        f"protect_updated_model: model '{request.model_name}' is deployed in {names} ({files}), "
        "which cannot be protected here (CUDA is not available on this machine): the update "
        "would remove that deployed format with its files. Run the update on a machine with a "
        f"CUDA GPU, or leave {names} out of model_export_formats to remove it on purpose."
    )


def _reproduces(
    exporter: Exporter,
    path: Path,
    staged: Path,
    options: ExportOptions,
    checks: list[tuple[list[np.ndarray], list[np.ndarray]]],
    *,
    plain_keys: bool,
) -> bool:
    """Whether the artifact at ``path`` can stand for the one ``staged``: it computes every
    check's outputs from its inputs, and records no other dynamic ranges (the runtime enforces
    a file's own: kept with another one, it refused sizes this protection asked for) and no
    other key commitment (the TXT key files written now would be refused with it). A file that
    records no ranges (written before they were) is kept as before, and so is one that records
    no commitment where this protection writes no TXT key files (``plain_keys`` False): kept
    beside them, it left them unbound for good (an edited key-params file gave wrong outputs,
    however often the model was protected again). ``checks``: inputs with the staged file's own
    outputs on them, held at the tolerance alone: widened for float32 rounding (outputs that
    cancel), another version of the model up to 1 % off was kept as this one."""
    kept = recorded_ranges(path)
    if kept is not None and kept != recorded_ranges(staged):
        return False
    commitment = recorded_commitment(path)
    if (commitment is not None or plain_keys) and commitment != recorded_commitment(staged):
        return False
    try:
        run = _on_copies(load_artifact(exporter, path, options))
        for inputs, outputs in checks:
            check_outputs(exporter, path, run, inputs, outputs)
    except SkProtectError:
        return False
    return True


class _Reference:
    """The protector's eval-mode copy of the model (the user's own is never changed): the
    original's outputs come from it and every format group is locked from a copy of it, but
    the last, which locks it in place: the weights are not held once more while locking (the
    protection's peak memory), nor through the last group's exports and artifact checks.
    ``aliases``: the user's buffers over a weight's storage, which the copy no longer shares
    (:func:`.lock.coverage.weight_aliases`). ``exact``: the original's float64 outputs, for
    checks that fail on float32 rounding alone (from the user's model, never locked)."""

    def __init__(self, original: nn.Module) -> None:
        self.aliases = weight_aliases(original)
        self._model: nn.Module | None = copy_model(original).eval()
        self.exact = ExactOutputs(original, _as_numpy)

    @property
    def model(self) -> nn.Module:
        """The copy; a step that asks for it after :meth:`release` is a bug of the pipeline."""
        if self._model is None:
            raise RuntimeError("the protector's reference copy of the model is already released")
        return self._model

    def take(self) -> nn.Module:
        """The copy, handed over for good (the last lock changes it): no longer held here."""
        model = self.model
        self._model = None
        return model


def _lock_checked(
    request: ProtectRequest,
    state: ProtectionState,
    group: FormatGroup,
    reference: nn.Module,
    expected: list[np.ndarray],
    layer_filter: Callable[[str, nn.Module], bool],
    key_epoch: int,
    *,
    in_place: bool,
    find_shared: bool,
    aliases: list[WeightAlias],
    exact: ExactOutputs,
) -> tuple[LockedModel, tuple[int, ...]]:
    """``reference`` locked for ``group`` (``in_place``: itself, not a copy), run once with its
    key on the example inputs, whose outputs must be the original's. Returns it with the
    positions of the inputs (key last) that this run changed in place: the torch exporters
    then need no run of their own."""
    logger = get_logger()
    name = request.model_name
    # the types forward() may check, read before an in-place lock replaces the layers
    types = {n: type(m) for n, m in uncompiled_named_modules(reference)}
    with step(f"Locking '{name}' for the {group.value} format group"):
        locked = lock_model(
            reference,
            layer_filter=layer_filter,
            secret_rng=state.key_rng(name, group.value, key_epoch),
            settings=_lock_settings(request),
            public_seed=f"{request.application_name}/{name}/{group.value}",
            in_place=in_place,
            find_shared=find_shared,
            aliases=aliases,
        )
    for d in locked.layers:
        logger.debug(
            "[%s] layer %s (%s): %s %s",
            group.value,
            d.name,
            d.layer_type,
            "locked" if d.locked else "skipped",
            d.reason,
        )
    args = VersionedCopies([*request.input_tensors, torch.from_numpy(locked.layout.static_key())])
    try:
        with torch.no_grad():
            eager = _as_numpy(run_keyed_checked(name, locked.keyed, args.tensors))
    except Exception as err:  # the original ran on these inputs: the lock broke its forward
        found = None
        if not isinstance(err, SkProtectError):  # a refusal of ours says what it is already
            failed = f"fails on input_tensors where the original runs ({first_line(err)})"
            found = _type_check_error(
                name, locked, types, args.tensors, expected, failed, UnsupportedLayerError
            )
        raise found or eager_failure(name, locked.keyed.model, err) from err
    eager_err = _rel_diff(eager, expected)
    if eager_err > RTOL:
        # never widened under autocast: that is float16/bfloat16, not float32 rounding, and
        # within 1 % by the key's chance it went on to an ONNX file onnxruntime cannot load
        autocast = _autocast_error(name, locked, args.tensors, eager_err)
        if autocast is not None or not _rounding_only(
            eager, expected, exact(request.input_tensors)
        ):
            differs = f"differs from the original by {eager_err:.2e} (relative) before export"
            raise (
                _type_check_error(
                    name, locked, types, args.tensors, expected, differs, VerificationError
                )
                or autocast
                or mismatch_error(name, reference, eager_err)
            )
    return locked, tuple(args.changed())


def _type_check_error(
    model_name: str,
    locked: LockedModel,
    types: dict[str, type],
    inputs: list[torch.Tensor],
    expected: list[np.ndarray],
    what: str,
    error: type[SkProtectError],
) -> SkProtectError | None:
    """The ``error`` for a locked model that fails or differs (``what``) because forward() checks
    the type of locked layers (``isinstance(self.rnn, nn.LSTM)``), which the general diagnosis
    would blame on weights or attributes; ``None`` when no such check is the cause. ``types``
    are the original modules' types by name."""

    def matches() -> bool:
        with torch.no_grad():
            return _rel_diff(_as_numpy(locked.keyed(*_clones(inputs))), expected) <= RTOL

    originals = {d.name: types[d.name] for d in locked.locked_layers if d.name in types}
    layers = type_checked_layers(locked.keyed.model, originals, matches)
    return type_check_error(model_name, layers, what, error) if layers else None


def _autocast_layers(locked: LockedModel, inputs: list[torch.Tensor]) -> list[str]:
    """The locked layers that forward() runs under ``torch.autocast`` (in float16 or
    bfloat16), seen by running ``locked.keyed`` once more on copies of ``inputs`` (key last)."""
    found: list[str] = []

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple) -> None:
            if name not in found and any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")):
                found.append(name)

        return hook

    handles = [
        locked.keyed.model.get_submodule(d.name).register_forward_pre_hook(record(d.name))
        for d in locked.locked_layers
    ]
    try:
        with torch.no_grad():
            locked.keyed(*_clones(inputs))
    except Exception:  # it ran just before: whatever fails now, the general diagnosis says
        return []
    finally:
        for handle in handles:
            handle.remove()
    return found


def _autocast_error(
    model_name: str, locked: LockedModel, inputs: list[torch.Tensor], rel_diff: float
) -> VerificationError | None:
    """The error for a locked model that differs because forward() computes locked layers
    under ``torch.autocast``: the lock's added ops round otherwise in float16 or bfloat16 (a
    relative difference of about 1e-2), which the general diagnosis would blame on weights
    read outside forward(). ``None`` when no locked layer runs under autocast."""
    layers = _autocast_layers(locked, inputs)
    if not layers:
        return None
    names = ", ".join(f"'{n}'" for n in layers)
    return VerificationError(
        f"The locked model of '{model_name}' differs from the original by {rel_diff:.2e} "
        f"(relative) before export: its forward() runs layer(s) {names} under torch.autocast, "
        "in float16 or bfloat16, where the ops the lock adds round otherwise than the "
        "original layer. Remove the autocast from forward() (the protected model then "
        "computes in float32), or leave those layers unlocked with layer_filter (e.g. "
        f"lambda name, module: name not in {{{names}}}), and protect again."
    )


def _gpu_reference(reference: nn.Module, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    """The original's outputs on the GPU in full float32: GPU float32 differs from the CPU's
    by more than the lock's own rounding (other conv algorithms), so the GPU group is
    verified against these. The reference itself stays on the CPU."""
    with gpu_float32(), torch.no_grad():
        return _as_numpy(copy.deepcopy(reference).to("cuda")(*_clones(inputs, "cuda")))


def _run_group(
    request: ProtectRequest,
    state: ProtectionState,
    group: FormatGroup,
    formats: list[ExportFormat],
    reference: _Reference,
    options: ExportOptions,
    expected: list[np.ndarray],
    other_sizes: tuple[list[np.ndarray], list[np.ndarray]] | None,
    staging: Staging,
    layer_filter: Callable[[str, nn.Module], bool],
    result: ProtectionResult,
    other_platform: OtherPlatform | None,
    *,
    last: bool,
) -> tuple[KeyLayout, dict[str, FormatEntry], dict[str, str]]:
    """Lock for ``group``, export every format of it, then verify each artifact; the lock's
    decisions go to ``result``. ``last``: no later step needs ``reference``, so this lock
    takes it. The locked model is dropped once every format is written."""
    logger = get_logger()
    name = request.model_name
    device = "cuda" if group is FormatGroup.GPU else "cpu"
    exact = reference.exact
    cpu_expected = expected
    if device == "cuda":  # before the lock, which may take the reference
        expected = _gpu_reference(reference.model, request.input_tensors)
    locked, mutated = _lock_checked(
        request,
        state,
        group,
        reference.take() if last else reference.model,
        cpu_expected,
        layer_filter,
        result.key_epoch,
        in_place=last,
        find_shared=not result.layers and _links_copies(request),  # the first group: warn once
        aliases=reference.aliases,
        exact=exact,
    )
    if locked.shared_weights:
        _warn_shared_weights(request, locked.shared_weights)
    result.layers = locked.layers
    result.folded_batchnorms = locked.folded_batchnorms
    result.plaintext_weights = locked.plaintext
    result.plaintext_buffers = locked.plaintext_buffers
    layout = locked.layout
    keyed = locked.keyed.to(device)
    del locked  # the locked model lives in ``keyed`` alone, dropped after the exports
    static_key = layout.static_key()
    key_tensor = torch.from_numpy(static_key)
    inputs_np = [t.detach().cpu().numpy() for t in request.input_tensors]
    zero_key = np.zeros_like(static_key)
    other = other_sizes if device == "cpu" else None  # the GPU group: the example size only
    plain_keys = get_platform(request.platform).writes_plain_keys(request.test_key)
    nonce = commitment_nonce(state, name, group.value, result.key_epoch)
    group_options = dataclasses.replace(
        options,
        mutated_inputs=mutated,
        key_commitment=key_commitment(static_key, layout.spec(), nonce),
    )
    group_dir = f"{name}/{group.value}"
    entries: dict[str, FormatEntry] = {}
    hashes: dict[str, str] = {}
    # the GPU group is exported and verified in full float32, as its outputs were computed
    with gpu_float32() if device == "cuda" else contextlib.nullcontext():
        written = []
        for fmt in formats:
            exporter = get_exporter(fmt)
            path = staging.path(f"{group_dir}/{name}{exporter.extension}")
            start = time.perf_counter()
            with step(f"Exporting '{name}' to {fmt.name}"):
                example = (*_clones(request.input_tensors, device), key_tensor.to(device))
                report = exporter.export(keyed, example, path, group_options, with_key=True)
            written.append((fmt, exporter, path, report, time.perf_counter() - start))
        # as large as the model (+382 MiB for a 400 MB MLP): not kept through the checks, where
        # each loaded artifact holds the model again; its modules refer to each other, so only
        # the cycle collector frees it, a full collection worth its time (0.2 s or more in a
        # process of many objects) once the models left to it add up to COLLECT_FROM_BYTES
        weights = sum(t.numel() * t.element_size() for t in (*keyed.parameters(), *keyed.buffers()))
        del keyed
        global _uncollected_bytes
        _uncollected_bytes += weights
        if _uncollected_bytes >= COLLECT_FROM_BYTES:
            gc.collect()
            _uncollected_bytes = 0
        for fmt, exporter, path, report, export_seconds in written:
            start = time.perf_counter()
            checks: list[_Check] = [
                ([*inputs_np, static_key], expected, lambda: exact(request.input_tensors))
            ]
            if other is not None:  # the dynamic axes: the artifact at another size too
                checks.append(([*other[0], static_key], other[1], lambda: exact(other[0])))
            relative = f"{group_dir}/{path.name}"
            final = staging.final(path)
            # the other platform's file at this path (its SHA-256), a candidate to keep; a GPU
            # file is checked at the example size only: kept only without dynamic axes
            shipped = (
                other_platform.shipped_digest(relative, final)
                if other_platform is not None
                else None
            )
            candidate = bool(shipped) and (device == "cpu" or other_sizes is None)
            with step(f"Verifying {fmt.name} artifact"):
                run = _on_copies(load_artifact(exporter, path, options))  # once: AOTI is slow
                err = check_outputs(exporter, path, run, *checks[0][:2], exact=checks[0][2])
                no_key = _rel_diff(run([*inputs_np, zero_key]), expected)
                for inputs, outputs, exact_outputs in checks[1:]:
                    check_outputs(exporter, path, run, inputs, outputs, exact=exact_outputs)
                # what the other platform's file must compute to be this one: the same model
                # and key give the same float32 operations (no rounding to allow for)
                staged = [(i, run(i)) for i, _, _ in checks] if candidate else []
            # the loaded artifact holds the model again (an onnxruntime session: +505 MiB for a
            # 400 MB MLP): freed here, not kept through the next format's check
            del run
            kept = None  # the SHA-256 of the other platform's file, when it is kept
            if candidate and _reproduces(
                exporter, final, path, options, staged, plain_keys=plain_keys
            ):
                staging.keep_final(path)  # the other platform's file: this model, this key
                kept = shipped
            elif shipped:  # said once committed: a failure leaves that file as it was
                other_platform.replaced.append(relative)
            seconds = export_seconds + time.perf_counter() - start
            logger.info(
                "%s: max rel error %.2e, zero-key rel diff %.2f, %.1f s (%s)",
                fmt.name,
                err,
                no_key,
                seconds,
                report.exporter,
            )
            result.formats[fmt.slug] = FormatResult(
                format=fmt.slug,
                group=group.value,
                path=request.outputs_dir / relative,
                key_length=layout.length,
                max_rel_error=err,
                no_key_rel_diff=no_key,
                seconds=seconds,
                exporter=report.exporter,
            )
            hashes[fmt.slug] = kept or sha256_file(path)
            entries[fmt.slug] = FormatEntry(
                group=group.value,
                file=relative,
                key_files=[],
                sha256=hashes[fmt.slug] if request.platform_version >= 1 else None,
            )
    return layout, entries, hashes


class _PlainOutputs(nn.Module):
    """The original model returning plain tuples where it returns a ``NamedTuple`` or a
    dataclass, as the locked model does (:func:`.lock.keyed_model.plain_outputs`): AOTInductor
    cannot serialise a NamedTuple class of the user's, and ``save_original=True`` failed with
    "AOTInductor compilation failed (NotImplementedError: Can't serialize TreeSpec of
    namedtuple ...)"; no export returns a dataclass. Used for those exports only
    (:func:`_for_export`): the wrapper prefixes every weight's name with ``model.`` (ONNX
    initializers, ``skprotect scan --original``'s names) and renames TorchScript's inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> Any:
        return plain_outputs(self.model(*inputs))


def _holds(value: Any, found: Callable[[Any], bool]) -> bool:
    """Whether ``value`` (a model's outputs) or anything in it, through nested tuples, lists,
    dicts and dataclasses, is ``found``: what :func:`.lock.keyed_model.plain_outputs` changes."""
    if found(value):
        return True
    if isinstance(value, dict):
        inner = value.values()
    elif (fields := dataclass_fields(value)) is not None:
        inner = fields.values()
    elif isinstance(value, tuple | list):
        inner = value
    else:
        return False
    return any(_holds(v, found) for v in inner)


def _tuple_subclass(value: Any) -> bool:
    """A ``NamedTuple``, or another tuple subclass (``torch.return_types``)."""
    return isinstance(value, tuple) and type(value) is not tuple


def _dataclass(value: Any) -> bool:
    """A dataclass instance that is not a dict (a dataclass class is not one; Hugging Face's
    ``ModelOutput`` is a dict, which every export returns)."""
    return not isinstance(value, dict) and dataclass_fields(value) is not None


def _for_export(
    module: nn.Module, fmt: ExportFormat, example: tuple[torch.Tensor, ...]
) -> nn.Module:
    """The original ``module`` to export to ``fmt``: itself, but when it returns a dataclass
    (which no export returns) or, for AOTInductor, a ``NamedTuple``, :class:`_PlainOutputs`
    returning it as a plain tuple."""
    with torch.no_grad():
        outputs = module(*example)
    inductor = fmt in (ExportFormat.INDUCTOR_CPU, ExportFormat.INDUCTOR_GPU)
    plain = _holds(outputs, _dataclass) or (inductor and _holds(outputs, _tuple_subclass))
    return _PlainOutputs(module) if plain else module


def _export_originals(
    request: ProtectRequest,
    formats: list[ExportFormat],
    reference: _Reference,
    options: ExportOptions,
    expected: list[np.ndarray],
    staging: Staging,
    result: ProtectionResult,
) -> None:
    inputs_np = [t.detach().cpu().numpy() for t in request.input_tensors]
    model = reference.model
    for fmt in formats:
        exporter = get_exporter(fmt)
        device = "cuda" if fmt.needs_cuda else "cpu"
        path = staging.path(
            f"{request.model_name}/original/{request.model_name}_{fmt.slug}{exporter.extension}"
        )
        with step(f"Exporting the original (unlocked) model to {fmt.name}"):
            probe = tuple(_clones(request.input_tensors, device))  # forward may change it
            module = _for_export(model.to(device), fmt, probe)
            example = tuple(_clones(request.input_tensors, device))
            exporter.export(module, example, path, options, with_key=False)
            run = _on_copies(load_artifact(exporter, path, options))
            exact = functools.partial(reference.exact, request.input_tensors)
            check_outputs(exporter, path, run, inputs_np, expected, exact=exact)
            model.to("cpu")
        result.original_files.append(staging.final(path))


def _file_identity(path: Path) -> tuple[int, int] | None:
    """Inode and modification time of ``path`` (None if missing): an atomic rewrite changes
    both, so a changed identity says the file was written."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _os_error(err: OSError) -> str:
    """``err`` as a message part naming the file it is about, e.g. ``".../m/cpu: File exists"``."""
    reason = err.strerror or str(err)
    return f"{err.filename}: {reason}" if err.filename else reason


def _move_advice(err: OSError) -> str:
    """What to do when moving the staged files into place failed with ``err``."""
    if err.errno == errno.EXDEV:  # a model folder linked to another disk: no file moves there
        return (
            "Every folder under the application's outputs folder must be on its disk: replace "
            "a symbolic link to another disk inside it by a real folder (link the whole "
            "application folder instead), then protect again."
        )
    return (
        "Free space, or check the folder's permissions and that no file is in the way, then "
        "protect again."
    )


def _commit(
    request: ProtectRequest,
    staging: Staging,
    entry: ModelEntry,
    other_platform: OtherPlatform | None,
    signing_key: Ed25519PrivateKey,
    kek: bytes,
) -> None:
    """Move the staged files into place and write the configuration, holding the application's
    lock: another protection waits, so that neither drops the other's model nor mixes their
    files. A failure before the configuration is written restores every previous file; an
    interruption once it is written (Ctrl-C as the write returns) leaves the protection
    complete, since a rollback then would put back files the configuration no longer records."""
    with config_lock(request.outputs_dir):
        before = _file_identity(request.config_path)
        try:
            retire = _replaced_files(request)
            if other_platform is not None:  # still the other deployment's
                retire -= other_platform.files
            staging.commit_files(retire=retire)
            add_model(
                request.config_path,
                request.model_name,
                entry,
                platform=request.platform.value,
                platform_version=request.platform_version,
                customer=request.customer,
                application=request.application_name,
                signing_key=signing_key,
                replace=request.replace,
                kek=kek,
            )
        except BaseException as err:
            if _file_identity(request.config_path) != before:  # written: committed
                staging.moved.clear()
                raise
            staging.rollback()
            if isinstance(err, OSError):  # a full or read-only disk while moving files in
                raise ExportError(
                    f"Could not move the protected files into {request.outputs_dir} "
                    f"({_os_error(err)}); the previous files are restored. {_move_advice(err)}"
                ) from err
            raise
    staging.moved.clear()  # committed: the backups are no longer needed


def run_protection(request: ProtectRequest, state: ProtectionState) -> ProtectionResult:
    """Lock, export, verify and commit; see the module docstring."""
    start = time.perf_counter()
    logger = get_logger()
    layer_filter = once_per_layer(request.layer_filter)  # each format group locks anew
    # before any work: pruned, legacy weight norm, a layer to lock that is not float32
    check_lockable(request.model, layer_filter)
    _refuse_numpyless_inputs(request.input_tensors)
    config = _precheck_config(request, state.signing_key, state.kek)
    options = build_export_options(
        request.input_tensors,
        request.onnx_params,
        request.dynamic_shapes,
        request.inductor_configs,
    )
    other_platform = OtherPlatform.of(request.outputs_dir, request.platform, request.model_name)
    result = ProtectionResult(
        model_name=request.model_name,
        application_name=request.application_name,
        output_dir=request.outputs_dir,
        platform=request.platform.value,
        platform_version=request.platform_version,
        config_path=request.config_path,
        key_epoch=_key_epoch(request, config, other_platform, state),
    )
    formats = _selected_formats(request, result)
    _warn_unused_settings(options, formats)
    if ExportFormat.ONNX in formats:  # before the model is copied, locked or exported
        check_fits_one_file(request.model, f"The model '{request.model_name}'")
    scripted = (ExportFormat.TORCHSCRIPT_CPU, ExportFormat.TORCHSCRIPT_GPU)
    traced = [f.name for f in formats if f not in scripted]  # torch.export, torch.onnx.export
    if traced:
        check_no_scripted_submodules(request.model, traced)
    _refuse_dropping_deployed(request, config, result)
    console.print(  # markup=False: a folder named "[v2]" is a path, not a style
        f"skprotect: protecting '{request.model_name}' into {request.outputs_dir}", markup=False
    )
    reference = _Reference(request.model)
    expected = _run_reference(reference.model, request.input_tensors, formats)
    options = _complete_output_names(options, len(expected))
    axes = dynamic_axes(reference.model, options, request.input_tensors)
    other_sizes = _check_other_sizes(reference.model, request, axes)
    logger.info(
        "protecting '%s': inputs %s, formats %s, platform %s v%d",
        request.model_name,
        [tuple(t.shape) for t in request.input_tensors],
        [f.name for f in formats],
        request.platform.value,
        request.platform_version,
    )
    by_group: dict[FormatGroup, list[ExportFormat]] = {}
    for fmt in formats:
        by_group.setdefault(fmt.group, []).append(fmt)
    if other_platform is not None and get_platform(request.platform).writes_plain_keys(
        request.test_key
    ):
        other_platform.refuse_key_clash(
            request.outputs_dir,
            request.model_name,
            [group.value for group in by_group],
            static=request.test_key,
        )
    staging = Staging(request.outputs_dir)
    try:
        format_entries: dict[str, FormatEntry] = {}
        key_length = 0
        for index, (group, group_formats) in enumerate(by_group.items()):
            layout, entries, hashes = _run_group(
                request,
                state,
                group,
                group_formats,
                reference,
                options,
                expected,
                other_sizes,
                staging,
                layer_filter,
                result,
                other_platform,
                # the originals are exported from the reference after the groups
                last=index == len(by_group) - 1 and not request.save_original,
            )
            if index == 0 and result.plaintext_weights:  # every group locks the same layers
                _warn_plaintext(request.model_name, result.plaintext_weights)
            if index == 0 and result.plaintext_buffers:
                _log_plaintext_buffers(request.model_name, result.plaintext_buffers)
            key_length = layout.length
            key_paths = write_platform_keys(
                request.platform,
                staging.root / request.model_name / group.value,
                model_name=request.model_name,
                layout=layout,
                model_hashes=hashes,
                test_key=request.test_key,
                state=state,
                key_epoch=result.key_epoch,
                also_unlocks=(
                    other_platform.hashes_beside(request.model_name, group.value)
                    if other_platform is not None
                    else None
                ),
            )
            for slug, entry in entries.items():
                entry.key_files = [
                    f"{request.model_name}/{group.value}/{p.name}" for p in key_paths[slug]
                ]
            result.key_files += sorted({staging.final(p) for ps in key_paths.values() for p in ps})
            format_entries.update(entries)
        if request.save_original:
            _export_originals(request, formats, reference, options, expected, staging, result)
        entry = ModelEntry(
            key_epoch=result.key_epoch,
            inputs=describe_inputs(options, request.input_tensors, axes),
            outputs=[{"name": n} for n in options.output_names],
            key={"name": options.key_name, "length": key_length},
            formats=format_entries,
        )
        # before the configuration that deploys the epoch: a record ahead of a failed
        # protection only means new keys next time, never a replaced one
        state.record_key_epoch(request.model_name, result.key_epoch)
        _commit(request, staging, entry, other_platform, state.signing_key, state.kek)
    except OSError as err:  # a full or read-only disk while writing the staged files
        where = f" ({err.filename})" if err.filename else ""
        raise ExportError(
            f"Could not write the protected files{where}: {err.strerror or err}. Nothing in "
            f"{request.outputs_dir} was changed. Free space or check the folder's permissions, "
            "then protect again."
        ) from err
    finally:
        staging.cleanup()
    result.seconds = time.perf_counter() - start
    logger.info("protected '%s' in %.1f s", request.model_name, result.seconds)
    console.print(str(result), highlight=False, markup=False, soft_wrap=True)
    if other_platform is not None:
        other_platform.warn_replaced(request.model_name)
    warn_plain_keys_beside_linux(request.outputs_dir, request.model_name)
    with config_lock(request.outputs_dir):  # no other protection half-way through its commit
        warn_untracked_files(request.outputs_dir, request.model_name)
    _warn_stale_originals(request, result.original_files)
    _warn_migrated(request, config)
    return result
