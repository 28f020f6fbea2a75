"""The torch-free root of skprotect's one error hierarchy: every message says what is wrong, then
what to do.

``SkProtectError`` is defined here (not in ``skprotect_pytorch``) so that the runtime, which must
import without torch, shares the root with the protector: ``skprotect_pytorch.errors`` re-exports
it, and ``except SkProtectError`` catches runtime errors too.
"""


class SkProtectError(Exception):
    """Base class of every error raised by skprotect: protector, runtime and licensing."""


class SkRuntimeError(SkProtectError):
    """Base class of every error raised by skruntime."""


class ConfigurationError(SkRuntimeError):
    """The configuration file is missing, unreadable, tampered, unsigned or of the wrong version."""


class IntegrityError(SkRuntimeError):
    """A protected model file does not match the SHA-256 recorded in the configuration."""


class KeyFileError(SkRuntimeError):
    """A key file is missing, truncated, corrupted, tampered or does not belong to this model."""
