"""One error hierarchy for the protector: every message says what is wrong, then what to do."""


class SkProtectError(Exception):
    """Base class of every error raised by skprotect."""


class InvalidArgumentError(SkProtectError, ValueError):
    """A public API argument has the wrong type or value."""


class UnsupportedLayerError(SkProtectError):
    """A supported layer type was used in a way the locker cannot preserve exactly."""


class ExportError(SkProtectError):
    """Exporting the locked model to a requested format failed."""


class VerificationError(SkProtectError):
    """An exported artifact does not reproduce the original model with its key."""


class ConfigurationError(SkProtectError):
    """The configuration file is missing, unreadable, tampered or of the wrong version."""


class StateError(SkProtectError):
    """The private protection state (master secret) is missing, unreadable or unsafe."""


class RemovedAPIError(SkProtectError, TypeError):
    """A pre-0.2 API name was used; the message names its replacement."""
