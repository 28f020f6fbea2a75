"""One error hierarchy for the protector: every message says what is wrong, then what to do.

The root :class:`SkProtectError` and the file-format errors live in the torch-free
``skruntime.errors`` so the runtime and the protector share them.
"""

from skruntime.errors import ConfigurationError as _RuntimeConfigurationError
from skruntime.errors import SkProtectError

__all__ = ["SkProtectError"]


class InvalidArgumentError(SkProtectError, ValueError):
    """A public API argument has the wrong type or value."""


class UnsupportedLayerError(SkProtectError):
    """A supported layer type was used in a way the locker cannot preserve exactly."""


class ExportError(SkProtectError):
    """Exporting the locked model to a requested format failed."""


class VerificationError(SkProtectError):
    """An exported artifact does not reproduce the original model with its key."""


class ConfigurationError(_RuntimeConfigurationError):
    """The configuration file is missing, unreadable, tampered or of the wrong version."""


class StateError(SkProtectError):
    """The private protection state (master secret) is missing, unreadable or unsafe."""


class RemovedAPIError(SkProtectError, TypeError):
    """A pre-0.2 API name was used; the message names its replacement."""


class RemovedFormatError(RemovedAPIError, AttributeError):
    """A pre-0.2 export format value was used; the message names its replacement."""
