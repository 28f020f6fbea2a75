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
    """A protected model file does not match the configuration: its SHA-256, or its inputs."""


class KeyFileError(SkRuntimeError):
    """A key file is missing, truncated, corrupted, tampered or does not belong to this model."""


class ModelNotFoundError(SkRuntimeError):
    """The model name is not in the configuration, or the model was not protected for a format."""


class ModelFileError(SkRuntimeError):
    """A protected model file is missing or unreadable."""


class KeyUnavailableError(SkRuntimeError):
    """The model's key cannot be obtained here (e.g. LINUX keys need the licence server's KEK)."""


class InputError(SkRuntimeError):
    """The inputs of a call do not match the model's inputs (count, names, dtype, rank or shape)."""


class BackendError(SkRuntimeError):
    """The inference framework failed to load or run a model file."""


class ModelClosedError(SkRuntimeError):
    """The loaded model was closed; its key is erased and it cannot run any more."""


class LicenceError(SkRuntimeError):
    """Base class of the licensing errors: no usable licence, or the device identity is unusable.

    Also raised directly for an invalid licence (bad server signature, another device, another
    application or customer, a request nonce that is not echoed) and for unsafe state files.
    """


# What a device's user can do about each denial of the server (docs/licensing.md, decision
# table): the error message says what is wrong, then this.
DENIAL_ADVICE = {
    "rate_limited": "Wait a minute, then try again.",
    "bad_signature": (
        "The request did not arrive as the device signed it, or the device key in the state "
        "folder is damaged: check any proxy between the device and the server, or restore "
        "the state folder."
    ),
    "stale_request": "Set the device clock right (e.g. with NTP), then try again.",
    "replayed_request": "Try again: the next attempt sends a new request.",
    "device_key_mismatch": (
        "The state folder's device keys are not the ones the server registered for this "
        "device id: restore the device's original state folder."
    ),
    "unknown_application": (
        "Ask the licence administrator to register the application (sklicense app create)."
    ),
    "unknown_model": (
        "Ask the licence administrator to add the model to the application "
        "(sklicense app set-models)."
    ),
    "customer_not_proven": (
        "Ship the configuration file the application's protector signed, or ask the licence "
        "administrator to register the application's public key (sklicense app "
        "set-public-key)."
    ),
    "unknown_customer": (
        "Ask the licence administrator to create the customer the configuration names "
        "(sklicense customer create)."
    ),
    "device_customer_mismatch": (
        "This device is registered for another customer: use another state folder "
        "(state_dir, --state-dir) for this customer's models."
    ),
    "device_revoked": (
        "Ask the licence administrator to reactivate the device "
        "(sklicense device edit DEVICE_ID --activate)."
    ),
    "contract_ended": (
        "Ask the licence administrator to extend the contract "
        "(sklicense customer edit --contract-end)."
    ),
    "too_many_devices": (
        "Ask the licence administrator to raise the customer's device limit "
        "(sklicense customer edit --max-devices), or run on a device already registered."
    ),
    "quota_exhausted": (
        "Ask the licence administrator to raise the quota (sklicense customer edit --quota)."
    ),
}


class LicenceDeniedError(LicenceError):
    """The licence server refused the licence: ``reason`` is its reason code, ``detail`` text.

    The default message adds what the device's user can do (:data:`DENIAL_ADVICE`)."""

    def __init__(self, reason: str, detail: str = "", message: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        advice = DENIAL_ADVICE.get(reason)
        super().__init__(
            message
            or f"The licence server denied the licence: {reason}"
            + (f" ({detail})" if detail else "")
            + "."
            + (f" {advice}" if advice else "")
        )


class LicenceUnavailableError(LicenceError):
    """No valid licence: none cached, or the cached one expired, and the server is unreachable."""


class ClockRollbackError(LicenceError):
    """The system clock is before the last time seen by the runtime or a licence's issue time."""


class QuotaExhaustedError(LicenceError):
    """The licence's inference allowance is used up and no new licence grants more."""
