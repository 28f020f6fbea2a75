"""The public protector API of the SkProtect-PyTorch usage document.

>>> from skprotect_pytorch.protect import SkProtectorPyTorch
>>> protector = SkProtectorPyTorch(save_logs=False, application_name="default_app")
>>> result = protector.protect_new_model(model, "my_model", [torch.randn(1, 3, 32, 32)],
...     model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX, test_key=True)
>>> print(result)

The class orchestrates; the math lives in :mod:`skprotect_pytorch.lock`, the formats in
:mod:`skprotect_pytorch.export`, the keys and configuration in :mod:`skprotect_pytorch.platforms`
and :mod:`skprotect_pytorch.configuration`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from skruntime.backends.inductor import row_major
from skruntime.config import CONFIG_FILENAMES, Config, load_config
from skruntime.keyfile import is_test_key, key_params_filename, key_txt_filename

from . import legacy
from .configuration import check_customer, check_version
from .configuration import migrate_configuration as _migrate
from .configuration import update_customer as _update_customer
from .customer import Customer
from .errors import (
    ConfigurationError,
    InvalidArgumentError,
    RemovedAPIError,
    SkProtectError,
    StateError,
)
from .export import DEFAULT_ONNX_PARAMS, get_exporter, registered_formats
from .formats import ExportFormat, ExportPlatform
from .lock.context import DEFAULT_PRESET, LOCK_PRESETS
from .logs import enable_file_log, file_log, get_logger, warn_user
from .pipeline import ProtectRequest, run_protection
from .result import ProtectionResult
from .state import ProtectionState, state_root

default_onnx_params: dict[str, Any] = copy.deepcopy(dict(DEFAULT_ONNX_PARAMS))
"""Default ``onnx_params``: ``input_names=["input.1"]``, ``output_names=["output.1"]``."""

inductor_configs: dict[str, Any] = {}
"""Default ``inductor_configs``: AOTInductor's own defaults."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A name of files and folders, matched whole (``fullmatch``: ``$`` would let a trailing
newline through, which the runtime's own check refuses only after the export)."""
_DEFAULT_FORMATS = ExportFormat.ONNX | ExportFormat.INDUCTOR_CPU | ExportFormat.INDUCTOR_GPU


def _all_layers(_name: str, _module: nn.Module) -> bool:
    return True


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in {".", ".."}:
        raise InvalidArgumentError(
            f"{what} must be 1-128 characters of letters, digits, '.', '_' or '-' starting with "
            f"a letter or digit (it names files and folders), but got {value!r}."
        )
    return value


def _files_named_after(name: str) -> list[tuple[str, str]]:
    """What and which files a protection names after model ``name`` ending with an extension
    of their own: the model files ``<name><extension>`` and the TXT platform's key files."""
    models = [
        (f"{fmt.name} model file", f"{name}{get_exporter(fmt).extension}")
        for fmt in registered_formats()
    ]
    return [
        *models,
        ("TXT key file", key_txt_filename(name)),
        ("TXT key parameters file", key_params_filename(name)),
    ]


MODEL_FILE_EXTENSIONS = frozenset(Path(file).suffix.lower() for _, file in _files_named_after("m"))
"""The extensions (lower case) of the files a protection names after the model, ending with
their extension (``.onnx``, ``.pt``, ``.pt2``, and the TXT key files' ``.txt`` and ``.json``):
a new ``model_name`` (the usage document's "name without file extension") ending with one
would name a file such as ``resnet.onnx.onnx`` or ``asr.pt.pt``. Other endings (``.pth``,
``model.v2``) double nothing and are accepted."""


def _check_model_name(value: Any, new: bool) -> str:
    """A model name also names a folder beside the configuration files: it must not be one.
    A ``new`` model's name (one that no configuration of the application has) must not end with
    the extension of a file named after it (:data:`MODEL_FILE_EXTENSIONS`): a deployed one
    keeps its name, on the other platform too."""
    _check_name(value, "model_name")
    if value.casefold() in {name.casefold() for name in CONFIG_FILENAMES.values()}:
        raise InvalidArgumentError(
            f"model_name {value!r} is the name of a configuration file in outputs/<application>/ "
            f"({', '.join(CONFIG_FILENAMES.values())}), where the model's folder would go. "
            "Choose another model name."
        )
    suffix = Path(value).suffix
    if new and suffix.lower() in MODEL_FILE_EXTENSIONS:
        what, file = next(
            (what, file)
            for what, file in _files_named_after(value)
            if file.lower().endswith(suffix.lower() * 2)
        )
        stem = value[: -len(suffix)]
        raise InvalidArgumentError(
            f"model_name {value!r} ends with {suffix!r}, the extension of the {what} named "
            f"after it, which would be {file}. model_name is the name without file extension: "
            f"pass model_name={stem!r}, or {f'{stem}_{suffix[1:]}'!r} to keep {suffix[1:]!r} "
            "in the name."
        )
    return value


def _check_platform(value: Any) -> ExportPlatform:
    """``value`` as the one platform of a configuration (a string such as ``"TXT"`` has no
    ``.value`` and would fail with an AttributeError from inside the call)."""
    if not isinstance(value, ExportPlatform):
        raise InvalidArgumentError(
            "deployment_platform must be a single SkProtectorPyTorch.ExportPlatform value, but "
            f"got {value!r}."
        )
    return value


def _check_layer_filter(value: Any) -> Callable[[str, nn.Module], bool]:
    """``value`` as a filter the lock can call with ``(name, module)``: a function of another
    arity would fail only once locking starts, with a bare TypeError from inside the lock."""
    if not callable(value):
        raise InvalidArgumentError(
            "layer_filter must be a function (name: str, module: nn.Module) -> bool, but got "
            f"{type(value).__name__}."
        )
    if isinstance(value, type):  # a layer type, as layer_types_to_protect took: called, it
        # builds a layer from (name, module) and failed inside torch ("empty(): argument 'size'")
        raise InvalidArgumentError(
            f"layer_filter must be a function (name: str, module: nn.Module) -> bool, but got "
            f"the class {value.__name__}. To lock only layers of a type, pass "
            f"layer_filter=lambda name, module: isinstance(module, {value.__name__})."
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # a builtin without a signature: calling it will tell
        return value
    try:
        signature.bind("layer", nn.Module())
    except TypeError as err:
        raise InvalidArgumentError(
            "layer_filter must take two positional arguments (name: str, module: nn.Module), "
            f"but its signature is {signature} ({err}). Pass e.g. "
            "layer_filter=lambda name, module: isinstance(module, torch.nn.Linear)."
        ) from None
    return value


def _check_input_items(tensors: list | tuple) -> None:
    """Raise :class:`InvalidArgumentError` naming the first item of ``input_tensors`` that is
    not a tensor: "but got list" named the container, not the item (a ``None`` passed for an
    optional argument, which no exported model can take as an input)."""
    for index, item in enumerate(tensors):
        if isinstance(item, torch.Tensor):
            continue
        hint = (
            "An optional argument left at None is no model input: leave it out of "
            "input_tensors when it is the last (forward then uses its default), or wrap the "
            "model in a module whose forward passes None itself."
            if item is None
            else "Pass one example tensor per argument of the model's forward."
        )
        raise InvalidArgumentError(
            "input_tensors must be a non-empty list of torch.Tensor, one per model input, but "
            f"input_tensors[{index}] is {type(item).__name__}. {hint}"
        )


def _check_example_tensors(tensors: Sequence[torch.Tensor]) -> None:
    """Each example tensor must be one the runtime can be fed like (a dense array) and hold
    values: every protected file is checked against the original on these tensors, and their
    static sizes are the deployed model's, so an empty one (batch 0) would check nothing and
    deploy a model that takes batch 0 only."""
    for i, tensor in enumerate(tensors):
        if tensor.layout is not torch.strided:
            layout = str(tensor.layout).removeprefix("torch.")
            raise InvalidArgumentError(
                f"input_tensors[{i}] is a {layout} tensor, but the protected model is run (and "
                "checked) on dense inputs, as the runtime feeds them: pass "
                f"input_tensors[{i}].to_dense()."
            )
        if tensor.numel() == 0:
            raise InvalidArgumentError(
                f"input_tensors[{i}] has no elements (shape {tuple(tensor.shape)}): the "
                "protected files are checked against the original on input_tensors, which an "
                "empty tensor does not do, and its sizes become the deployed model's. Pass an "
                "example with at least one element on each axis (e.g. a batch of 1 or more; "
                "use dynamic_shapes for sizes that vary)."
            )


def _test_keys(config_path: Path, model_name: str) -> tuple[int, dict[Path, int]]:
    """The deployed key epoch of ``model_name`` and, per folder of it whose key-params file
    says it holds a static test key (``test_key=True``), that key's length; nothing where the
    configuration or a file cannot be read (the protection's own checks say why)."""
    try:
        epoch = load_config(config_path).models[model_name].key_epoch
    except (SkProtectError, OSError, KeyError):
        return -1, {}
    found = {}
    for path in (config_path.parent / model_name).glob(f"*/{key_params_filename(model_name)}"):
        txt = path.with_name(key_txt_filename(model_name))
        if not (path.is_file() and txt.is_file()):  # a named pipe would block the read
            continue
        try:  # read as the runtime reads it: bounded, and a file nested too deep is refused
            if is_test_key(path):
                found[path.parent] = len(txt.read_text().split())
        except (SkProtectError, OSError, ValueError):
            continue
    return epoch, found


def _warn_test_key_kept(result: ProtectionResult, epoch: int, test_keys: dict[Path, int]) -> None:
    """Warn when an update without ``test_key`` kept the keys of a test build (same epoch, same
    key length): a copy of its static key file (handed to testers) unlocks the new files as it
    did the old ones."""
    if not test_keys or result.key_epoch != epoch:
        return
    kept = sorted(
        {
            f.path.parent
            for f in result.formats.values()
            if test_keys.get(f.path.parent) == f.key_length
        }
    )
    if not kept:
        return
    names = ", ".join(
        str((folder / key_txt_filename(result.model_name)).relative_to(result.output_dir))
        for folder in kept
    )
    message = (
        f"The deployed '{result.model_name}' had a static test key ({names}, test_key=True), "
        f"and this update keeps its keys (key epoch {epoch}): a copy of that key file still "
        "unlocks the new files. Protect again with protect_updated_model(..., "
        "rotate_keys=True) to draw new keys, unless the test key never left this machine."
    )
    warn_user(message, stacklevel=4)


def _given(args: dict[str, Any]) -> set[str]:
    """The parameters of a ``protect_*_model`` call that hold other than their default values,
    i.e. that the caller passed."""
    parameters = inspect.signature(SkProtectorPyTorch.protect_new_model).parameters
    return {
        name
        for name, value in args.items()
        if name in parameters and value is not parameters[name].default
    }


class SkProtectorPyTorch:
    """Locks trained PyTorch models with a secret key and exports them for deployment.

    Args:
        save_logs: write a detailed log (versions, per-layer decisions, timings, errors with
            tracebacks) to ``./log/``.
        application_name: the application (deployment) name; files go to
            ``outputs/<application_name>/`` and each application has its own keys.
    """

    ExportFormat = ExportFormat
    ExportPlatform = ExportPlatform

    def __init__(
        self,
        save_logs: bool | None = False,
        application_name: str = "default_app",
        **legacy_kwargs: Any,
    ) -> None:
        legacy.refuse_kwargs(legacy_kwargs, "SkProtectorPyTorch")
        if not isinstance(save_logs, bool | None):
            raise InvalidArgumentError(
                f"save_logs must be a bool, but got {type(save_logs).__name__}."
            )
        self.application_name = _check_name(application_name, "application_name")
        self.save_logs = bool(save_logs)
        self.outputs_dir = Path.cwd() / "outputs" / self.application_name
        # found now, as the outputs folder is: a script that changes directory afterwards
        # would otherwise put the master secret where no later script looks for it
        self._state_root = state_root()
        try:
            self.log_path = enable_file_log() if self.save_logs else None
        except OSError as err:
            raise InvalidArgumentError(
                f"save_logs=True, but the log cannot be written to {Path.cwd() / 'log'} "
                f"({err.strerror or err}). Run from a folder where log/ can be created and "
                "written, or pass save_logs=False."
            ) from err
        self._state: ProtectionState | None = None

    @property
    def state(self) -> ProtectionState:
        """The application's private state (master secret); created on first use."""
        if self._state is None:
            self._state = ProtectionState.open(self.application_name, self._state_root)
        return self._state

    def _existing_state(self) -> ProtectionState:
        """The state of an application already protected here: migrating or re-signing a
        configuration with a new master secret created on the spot would only fail later
        ("signed by a different application key"), leaving that useless secret behind."""
        if self._state is None:
            self._state = ProtectionState.open(
                self.application_name, self._state_root, create=False
            )
        return self._state

    def _configurations(self) -> list[Config | None]:
        """The configurations in the outputs folder, both platforms'; None for one too damaged
        to read (a file that cannot be opened is left out, for the protection's checks)."""
        found: list[Config | None] = []
        for platform in ExportPlatform:
            path = self.config_path(platform)
            try:
                if path.is_file():
                    found.append(load_config(path))
            except SkProtectError:
                found.append(None)
            except OSError:
                continue
        return found

    def _deployed_models(self) -> set[str] | None:
        """The models of this application's configurations in the outputs folder, both
        platforms'; None when it holds none (one of another application, or a damaged one, is
        for the protection's own checks to name)."""
        mine = [c for c in self._configurations() if c and c.application == self.application_name]
        return {name for config in mine for name in config.models} if mine else None

    def _protected_here(self) -> bool:
        """Whether the outputs folder holds a configuration of this application, or one too
        damaged to say whose it is: a master secret made now would fix neither."""
        return any(
            c is None or c.application == self.application_name for c in self._configurations()
        )

    def _protection_state(self) -> ProtectionState:
        """The state a protection uses: an application that already has a configuration was
        protected with a master secret, so none is created (a new one would only be refused
        as "signed by a different application key", and be left behind)."""
        if not self._protected_here():
            return self.state
        try:
            return self._existing_state()
        except StateError as err:
            raise StateError(
                f"{err} To protect the application anew instead, move {self.outputs_dir} away "
                "first: its files would not work with a new secret."
            ) from err

    def config_path(self, deployment_platform: ExportPlatform) -> Path:
        """Path of the configuration file of ``deployment_platform``."""
        return self.outputs_dir / CONFIG_FILENAMES[_check_platform(deployment_platform).value]

    def _existing_config(self, platform: ExportPlatform, what: str) -> Path:
        """The configuration file of ``platform``; when it is missing but the other platform's
        is there, the wrong ``deployment_platform`` was passed: said here, where the error of
        a missing file would advise protecting a model first. With neither, said before the
        master secret is looked for, whose absence would hide the missing file."""
        path = self.config_path(platform)
        if path.exists():
            return path
        for other in ExportPlatform:
            if other is not platform and self.config_path(other).exists():
                raise ConfigurationError(
                    f"{what}: there is no {platform.value} configuration {path}, but there is "
                    f"the {other.value} one ({self.config_path(other).name}): pass "
                    f"deployment_platform=SkProtectorPyTorch.ExportPlatform.{other.value}."
                )
        raise ConfigurationError(
            f"{what}: there is no configuration file {path} (nor the other platform's): no "
            f"model of application '{self.application_name}' was protected into "
            f"{self.outputs_dir}. Run this from the folder the protection scripts ran in and "
            "check the application name, or protect a model first (protect_new_model)."
        )

    def protect(self, *args: Any, **kwargs: Any) -> None:
        """Removed in v0.1.0; raises an error naming the replacement."""
        raise legacy.removed_protect()

    def protect_new_model(
        self,
        model: nn.Module,
        model_name: str,
        input_tensors: list[torch.Tensor] | None = None,
        layer_filter: Callable[[str, nn.Module], bool] | None = _all_layers,
        model_export_formats: ExportFormat = _DEFAULT_FORMATS,
        deployment_platform: ExportPlatform = ExportPlatform.TXT,
        dynamic_shapes: Sequence[dict[int, Any] | None] | None = None,
        onnx_params: dict | None = default_onnx_params,
        inductor_configs: dict | None = inductor_configs,
        save_original: bool | None = False,
        quantize_compatibility: bool | None = False,
        test_key: bool | None = False,
        platform_version: int | None = 2,
        customer: Customer | None = Customer(),  # noqa: B008 (immutable dataclass)
        *,
        lock_preset: str | None = DEFAULT_PRESET,
        **legacy_kwargs: Any,
    ) -> ProtectionResult:
        """Protect a model for the first time and add it to the configuration file.

        Fails if ``model_name`` is already in the configuration (use
        :meth:`protect_updated_model`). See docs/api.md for every parameter.
        """
        return self._protect(locals(), replace=False)

    def protect_updated_model(
        self,
        model: nn.Module,
        model_name: str,
        input_tensors: list[torch.Tensor] | None = None,
        layer_filter: Callable[[str, nn.Module], bool] | None = _all_layers,
        model_export_formats: ExportFormat = _DEFAULT_FORMATS,
        deployment_platform: ExportPlatform = ExportPlatform.TXT,
        dynamic_shapes: Sequence[dict[int, Any] | None] | None = None,
        onnx_params: dict | None = default_onnx_params,
        inductor_configs: dict | None = inductor_configs,
        save_original: bool | None = False,
        quantize_compatibility: bool | None = False,
        test_key: bool | None = False,
        platform_version: int | None = 2,
        customer: Customer | None = Customer(),  # noqa: B008 (immutable dataclass)
        *,
        lock_preset: str | None = DEFAULT_PRESET,
        rotate_keys: bool = False,
        **legacy_kwargs: Any,
    ) -> ProtectionResult:
        """Protect a new version of a deployed model and replace its configuration entry.

        ``model_name`` must already be in the configuration. ``rotate_keys=True`` draws new
        keys (the next key epoch), so that a leaked key of the deployed version unlocks none
        of the new files. See docs/api.md.
        """
        return self._protect(locals(), replace=True)

    @contextlib.contextmanager
    def _logged(self, call: str) -> Iterator[None]:
        """Run a public call's work with this protector's log (``save_logs``), its failure
        included with the traceback: an argument, migration or customer error is as much
        something to send with the log as a failed export."""
        with file_log(self.log_path):
            try:
                yield
            except Exception:
                get_logger().exception("%s failed", call)
                raise

    def _protect(self, args: dict[str, Any], *, replace: bool) -> ProtectionResult:
        args = dict(args)
        args.pop("self")
        where = "protect_updated_model" if replace else "protect_new_model"
        with self._logged(f"{where} of {args['model_name']!r}"):
            legacy_kwargs = args.pop("legacy_kwargs")
            args.update(legacy.translate_kwargs(legacy_kwargs, where, _given(args)))
            request = self._validate(args, replace)
            keeps_keys = replace and not request.test_key and not request.rotate_keys
            epoch, test_keys = (
                _test_keys(request.config_path, request.model_name) if keeps_keys else (-1, {})
            )
            result = run_protection(request, self._protection_state())
            _warn_test_key_kept(result, epoch, test_keys)
        return result

    def _validate(self, a: dict[str, Any], replace: bool) -> ProtectRequest:
        if not isinstance(a["model"], nn.Module):
            raise InvalidArgumentError(
                f"model must be a torch.nn.Module, but got {type(a['model']).__name__}."
            )
        name = _check_name(a["model_name"], "model_name")
        # deployed on the other platform, it keeps its name there too
        _check_model_name(name, new=not replace and name not in (self._deployed_models() or ()))
        tensors = a["input_tensors"]
        if not isinstance(tensors, list | tuple) or not tensors:
            raise InvalidArgumentError(
                "input_tensors must be a non-empty list of torch.Tensor, one per model input "
                f"(e.g. [torch.randn(1, 3, 32, 32)]), but got {type(tensors).__name__}."
            )
        _check_input_items(tensors)
        _check_example_tensors(tensors)
        layer_filter = _check_layer_filter(
            a["layer_filter"] if a["layer_filter"] is not None else _all_layers
        )
        formats = a["model_export_formats"]
        if not isinstance(formats, ExportFormat) or not formats.members:
            raise InvalidArgumentError(
                "model_export_formats must be SkProtectorPyTorch.ExportFormat values combined with "
                f"'|', but got {formats!r}."
            )
        platform = _check_platform(a["deployment_platform"])
        # before the export: 2.0 or numpy's 2 compare equal to 2 but are refused at the write
        version = 2 if a["platform_version"] is None else check_version(a["platform_version"])
        customer = check_customer(a["customer"] if a["customer"] is not None else Customer())
        if version < 2 and customer != Customer():
            raise InvalidArgumentError(
                f"customer requires platform_version >= 2, but platform_version is {version}: "
                "use platform_version=2 or leave customer at its default."
            )
        flags = {}
        for flag in ("save_original", "quantize_compatibility", "test_key"):
            value = a[flag]
            if not isinstance(value, bool | None):
                raise InvalidArgumentError(f"{flag} must be a bool, but got {value!r}.")
            flags[flag] = bool(value)
        rotate_keys = a.get("rotate_keys", False)  # protect_updated_model's only
        if not isinstance(rotate_keys, bool):
            raise InvalidArgumentError(f"rotate_keys must be a bool, but got {rotate_keys!r}.")
        preset = DEFAULT_PRESET if a["lock_preset"] is None else a["lock_preset"]
        if not isinstance(preset, str) or preset not in LOCK_PRESETS:
            raise InvalidArgumentError(
                f"lock_preset must be one of {', '.join(map(repr, LOCK_PRESETS))}, but got "
                f"{preset!r}. See docs/security.md for what each preset costs and protects."
            )
        if a["inductor_configs"] is not None and not isinstance(a["inductor_configs"], dict):
            raise InvalidArgumentError(
                "inductor_configs must be a dict of AOTInductor options, but got "
                f"{type(a['inductor_configs']).__name__}."
            )
        return ProtectRequest(
            model=a["model"],
            model_name=a["model_name"],
            # the strides the runtime feeds (row_major): AOTInductor compiles for the example's
            input_tensors=[row_major(t) for t in tensors],
            layer_filter=layer_filter,
            formats=formats,
            platform=platform,
            dynamic_shapes=a["dynamic_shapes"],
            onnx_params=a["onnx_params"],
            inductor_configs=dict(a["inductor_configs"] or {}),
            platform_version=version,
            customer=customer,
            replace=replace,
            application_name=self.application_name,
            outputs_dir=self.outputs_dir,
            config_path=self.config_path(platform),
            lock_preset=preset,
            rotate_keys=rotate_keys,
            **flags,
        )

    def migrate_configuration(
        self,
        version: int | None,
        deployment_platform: ExportPlatform,
        customer: Customer | None = Customer(),  # noqa: B008 (immutable dataclass)
    ) -> Path:
        """Migrate the platform's configuration file to ``version`` (upgrades only).

        Version 0 → 1 hashes the protected model files found in ``outputs/<app>/``; 1 → 2 adds
        ``customer``. Returns the configuration path.
        """
        with self._logged(f"migrate_configuration to version {version!r}"):
            _check_platform(deployment_platform)
            version = check_version(version, "version")
            customer = check_customer(customer if customer is not None else Customer())
            path = self._existing_config(deployment_platform, "migrate_configuration")
            _migrate(
                path,
                version,
                outputs_dir=self.outputs_dir,
                customer=customer,
                signing_key=self._existing_state().signing_key,
                kek=self._existing_state().kek,
            )
        return path

    def update_customer(self, customer: Customer, deployment_platform: ExportPlatform) -> Path:
        """Replace the customer of the platform's (version 2) configuration file."""
        with self._logged("update_customer"):
            check_customer(customer)
            _check_platform(deployment_platform)
            path = self._existing_config(deployment_platform, "update_customer")
            _update_customer(path, customer, signing_key=self._existing_state().signing_key)
            get_logger().info("customer of %s set to %s", path, customer)
        return path


def __getattr__(name: str) -> Any:
    if name == "SkProtector":
        raise RemovedAPIError(
            "The class SkProtector was renamed SkProtectorPyTorch in v0.1.0: "
            "from skprotect_pytorch.protect import SkProtectorPyTorch."
        )
    raise AttributeError(f"module 'skprotect_pytorch.protect' has no attribute {name!r}")
