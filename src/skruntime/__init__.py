"""skruntime: run skprotect-protected models (configuration, integrity, keys, session keys).

Importing this package never imports torch: the configuration, key-file and encrypted-key
modules need only numpy and cryptography, and backends are imported on first use, so ONNX
models run without torch installed.

>>> from skruntime import SkRuntime
>>> rt = SkRuntime("outputs/default_app")  # doctest: +SKIP
>>> model = rt.load("my_model", fmt="onnx")  # doctest: +SKIP
>>> y = model(x)  # doctest: +SKIP
"""

from .backends.base import BackendOptions
from .errors import (
    BackendError,
    ClockRollbackError,
    ConfigurationError,
    InputError,
    IntegrityError,
    KeyFileError,
    KeyUnavailableError,
    LicenceDeniedError,
    LicenceError,
    LicenceUnavailableError,
    ModelClosedError,
    ModelFileError,
    ModelNotFoundError,
    QuotaExhaustedError,
    SkProtectError,
    SkRuntimeError,
)
from .runtime import RUNTIME_VERSION, LoadedModel, SkRuntime

__version__ = RUNTIME_VERSION

__all__ = [
    "BackendError",
    "BackendOptions",
    "ClockRollbackError",
    "ConfigurationError",
    "InputError",
    "IntegrityError",
    "KeyFileError",
    "KeyUnavailableError",
    "LicenceDeniedError",
    "LicenceError",
    "LicenceUnavailableError",
    "LoadedModel",
    "ModelClosedError",
    "ModelFileError",
    "ModelNotFoundError",
    "QuotaExhaustedError",
    "SkProtectError",
    "SkRuntime",
    "SkRuntimeError",
    "__version__",
]
