"""Configuration-file operations of the protector: add or replace a model, migrate, set customer.

Every write goes through :func:`skruntime.config.write_config` (signed, atomic). The existing file
is read with the application's public key pinned, so a file signed by another application's key
(for example after the private state folder was lost) is refused instead of silently re-signed.
The file format itself is specified in :mod:`skruntime.config`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, ParamSpec, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import skruntime.errors as rt_errors
from skruntime.config import (
    CONFIG_FILENAMES,
    LATEST_PLATFORM_VERSION,
    PLATFORMS,
    SUPPORTED_PLATFORM_VERSIONS,
    Config,
    CustomerEntry,
    FormatEntry,
    ModelEntry,
    load_config,
    public_key_bytes,
    sha256_file,
    write_config,
)
from skruntime.mev import KEK_SIZE

from . import __version__
from .customer import Customer
from .errors import ConfigurationError, InvalidArgumentError
from .formats import ExportPlatform
from .logs import get_logger
from .platforms import KeyFileFault, get_platform

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

_SUPPORTED = ", ".join(str(v) for v in SUPPORTED_PLATFORM_VERSIONS)
_held = threading.local()  # folders whose lock this thread holds: a nested use does not wait
_P = ParamSpec("_P")
_R = TypeVar("_R")


_NO_LOCKS = {errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
"""What ``flock`` answers on a filesystem that cannot lock a folder (NFS emulates ``flock`` with
POSIX locks, whose exclusive kind needs a descriptor open for writing: ``EBADF``)."""


def lock_folder(folder: str | os.PathLike[str], *, wait: bool = True) -> int | None:
    """A descriptor of ``folder`` holding its exclusive ``flock`` (closing it releases the lock),
    or None where no lock can be had: no ``fcntl`` (Windows), or a filesystem that refuses
    it (:data:`_NO_LOCKS`). A folder that cannot be opened raises ``OSError``, and so does one
    another process holds when ``wait`` is False (``BlockingIOError``)."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException as err:  # a refusal, held elsewhere, or interrupted while waiting
        os.close(fd)
        if isinstance(err, OSError) and err.errno in _NO_LOCKS:
            return None
        raise
    return fd


@contextlib.contextmanager
def config_lock(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of an application's outputs folder while the block runs.

    Two protection scripts of one application running at once each read the configuration,
    add their model and write it back: without the lock the second write drops the first's
    model. The lock is an advisory ``flock`` on the folder itself (no lock file ships in
    ``outputs/``); a folder that cannot be opened or locked (:func:`lock_folder`) is used
    without it, as before the lock existed.
    """
    key = os.path.abspath(folder)
    held = _held.__dict__.setdefault("folders", set())
    fd = None
    if key not in held:
        with contextlib.suppress(OSError):  # a missing folder: its write fails on its own
            fd = lock_folder(key)
    if fd is None:
        yield
        return
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        os.close(fd)  # closing releases the lock


def _under_config_lock(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func(config_path, ...)`` holding the lock of the configuration's folder."""

    @functools.wraps(func)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        path = args[0] if args else kwargs["config_path"]
        with config_lock(Path(path).parent):  # type: ignore[arg-type]
            return func(*args, **kwargs)

    return locked


@contextlib.contextmanager
def _as_protector_errors() -> Iterator[None]:
    """Re-raise runtime configuration errors as the protector's (an ``SkProtectError``)."""
    try:
        yield
    except ConfigurationError:
        raise
    except rt_errors.ConfigurationError as e:
        raise ConfigurationError(str(e)) from e


def check_version(version: object, what: str = "platform_version") -> int:
    """``version`` as a supported platform version (an int, not a float or numpy number)."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidArgumentError(
            f"{what} must be an int, one of {_SUPPORTED}, but got {version!r}. Use "
            f"{LATEST_PLATFORM_VERSION} unless your SkRuntime needs an older version."
        )
    if version not in SUPPORTED_PLATFORM_VERSIONS:
        raise InvalidArgumentError(
            f"{what} must be one of {_SUPPORTED}, but got {version}. Use "
            f"{LATEST_PLATFORM_VERSION} unless your SkRuntime needs an older version."
        )
    return version


def _platform_value(platform: object) -> str:
    value = getattr(platform, "value", platform)
    if value not in PLATFORMS:
        raise InvalidArgumentError(
            f"platform must be one of {', '.join(PLATFORMS)}, but got {platform!r}."
        )
    return str(value)


def check_customer(customer: object) -> Customer:
    """``customer`` as a :class:`Customer`; another value (a customer id given as a bare int,
    a dict) is refused saying how to build one."""
    if isinstance(customer, Customer):
        return customer
    given_id = isinstance(customer, int) and not isinstance(customer, bool)
    example = f"Customer(id={customer})" if given_id else 'Customer(id=42, name="acme")'
    raise InvalidArgumentError(
        f"customer must be a skprotect_pytorch.Customer, but got {type(customer).__name__}: "
        f"pass e.g. customer={example} (from skprotect_pytorch import Customer)."
    )


def _customer_entry(customer: Customer | None) -> CustomerEntry:
    customer = check_customer(customer if customer is not None else Customer())
    with _as_protector_errors():
        return CustomerEntry(customer.id, customer.name)


def _describe(customer: CustomerEntry | None) -> str:
    if customer is None:
        return "no customer"
    return f"Customer({customer.id}, {customer.name!r})"


def load_own(path: Path, signing_key: Ed25519PrivateKey) -> Config:
    """Load ``path`` pinned to this application's key, with a protector-level error if not."""
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise InvalidArgumentError(
            f"signing_key must be an Ed25519PrivateKey, but got {type(signing_key).__name__}."
        )
    try:
        return load_config(path, public_key=public_key_bytes(signing_key))
    except rt_errors.ConfigurationError as pinned_error:
        try:
            unpinned = load_config(path)
        except rt_errors.ConfigurationError:
            raise ConfigurationError(
                f"{pinned_error} No protection, migration or customer change can use it until "
                "then; to start this platform's deployment over instead, move it away and "
                "protect every model again with protect_new_model."
            ) from pinned_error
        raise ConfigurationError(
            f"{path} (application '{unpinned.application}') is signed by a different application "
            "key than this protector's: it is another application's file, or the private "
            "protection state (master.key) changed since the file was written. Use the "
            "application's own outputs folder; otherwise restore the state folder from its "
            "backup, or move the outputs folder away and re-protect every model of the "
            "application."
        ) from pinned_error


def check_file_name(path: Path, config: Config) -> None:
    """A configuration must have its platform's file name: the runtime finds, and checks, each
    platform's file by its name (:data:`~skruntime.config.CONFIG_FILENAMES`), so a LINUX file
    renamed to the TXT name (or the reverse) is refused there. Re-signing it would not help."""
    platform = next((p for p, name in CONFIG_FILENAMES.items() if name == path.name), None)
    if platform is not None and platform != config.platform:
        raise ConfigurationError(
            f"{path} holds a {config.platform} configuration, but its name is the {platform} "
            "one: restore the files skprotect wrote."
        )


@_under_config_lock
def add_model(
    config_path: str | os.PathLike[str],
    model_name: str,
    entry: ModelEntry,
    *,
    platform: object,
    platform_version: int,
    customer: Customer | None,
    application: str,
    signing_key: Ed25519PrivateKey,
    replace: bool,
    kek: bytes | None = None,
) -> Config:
    """Add (``replace=False``) or replace (``replace=True``) a model's entry; returns the config.

    The file is created if missing (``replace=False`` only). A file at a lower platform version
    is migrated to ``platform_version`` in the same write (as :func:`migrate_configuration`
    does: its protected model files must be in the file's folder, and with ``kek`` a LINUX
    file's are checked against their encrypted key files). For platform version 0 the
    entry's SHA-256 fields are dropped; from version 1 they are required. For version 2
    ``customer`` must match the file's (change it with :func:`update_customer`); below 2 only
    the default customer is accepted.

    Raises:
        ConfigurationError: the model is already there (new) or missing (replace), the file has
            a higher platform version, another platform, application, customer or signing key,
            its protected model files are missing or replaced for a migration from version 0
            (or their LINUX key files unreadable or damaged), or it cannot be read or written.
        InvalidArgumentError: an argument has the wrong type or value.
    """
    path = Path(config_path)
    version = check_version(platform_version)
    platform_value = _platform_value(platform)
    if not isinstance(entry, ModelEntry):
        raise InvalidArgumentError(f"entry must be a ModelEntry, but got {type(entry).__name__}.")
    wanted_customer = _customer_entry(customer)
    if version < 2 and wanted_customer != CustomerEntry(1, ""):
        raise InvalidArgumentError(
            f"customer={_describe(wanted_customer)} requires platform_version=2, but "
            f"platform_version={version} was given. Use platform_version=2, or leave customer "
            "at its default."
        )
    entry = entry.with_sha256({slug: None for slug in entry.formats}) if version == 0 else entry
    existing = load_own(path, signing_key) if path.exists() else None
    with _as_protector_errors():
        if existing is None:
            if replace:
                raise ConfigurationError(
                    f"Model '{model_name}' cannot be replaced: there is no configuration file "
                    f"{path} yet. Use protect_new_model to protect it for the first time."
                )
            models = {model_name: entry}
            customer_entry = wanted_customer if version == 2 else None
        else:
            check_compatible(path, existing, version, platform_value, application)
            present = model_name in existing.models
            if existing.platform_version < version:  # the usage document's automatic migration
                replacement = (model_name, entry) if replace and present else None
                existing = migrated_config(
                    path, existing, version, path.parent, customer, replacement, kek=kek
                )
            if replace and not present:
                names = ", ".join(sorted(existing.models)) or "none"
                raise ConfigurationError(
                    f"Model '{model_name}' is not in {path} (models there: {names}); use "
                    "protect_new_model to add a new model, or the exact name of the model to "
                    "replace."
                )
            if not replace and present:
                raise ConfigurationError(
                    f"Model '{model_name}' is already in {path}; use protect_updated_model to "
                    "replace it, or choose another model name."
                )
            if version == 2:
                check_same_customer(path, existing, customer)
            models = {**existing.models, model_name: entry}
            customer_entry = existing.customer
        try:
            config = Config(
                platform_version=version,
                platform=platform_value,
                application=application,
                skprotect_version=__version__,
                models=models,
                customer=customer_entry,
            )
        except rt_errors.ConfigurationError as e:
            raise ConfigurationError(
                f"The configuration entry of model '{model_name}' is invalid: {e}"
            ) from e
        write_config(path, config, signing_key)
    return config


def check_same_customer(path: Path, existing: Config, customer: Customer | None) -> None:
    """One version-2 configuration has one customer: refuse another (the default included)."""
    wanted = _customer_entry(customer)
    if existing.platform_version == 2 and existing.customer != wanted:
        raise ConfigurationError(
            f"{path} is licensed to {_describe(existing.customer)} but "
            f"customer={_describe(wanted)} was given. Pass "
            f"customer={_describe(existing.customer)}, or call update_customer first to "
            "change the customer of every model."
        )


def check_compatible(
    path: Path, existing: Config, version: int, platform: str, application: str
) -> None:
    """The existing file must be of this platform and application, at a version not above
    ``version`` (a lower one is migrated; configurations are never downgraded)."""
    if existing.platform != platform:
        raise ConfigurationError(
            f"{path} is a {existing.platform} configuration, but the {platform} platform was "
            "requested. Each platform has its own configuration file; check deployment_platform."
        )
    if existing.application != application:
        raise ConfigurationError(
            f"{path} belongs to application '{existing.application}', not '{application}'. "
            "Use the application's own outputs folder."
        )
    if existing.platform_version > version:
        raise ConfigurationError(
            f"{path} is at platform version {existing.platform_version}, higher than the "
            f"requested {version}; configurations are never downgraded. Pass "
            f"platform_version={existing.platform_version}, or protect into a new application "
            "if your SkRuntime needs the older version."
        )


@_under_config_lock
def migrate_configuration(
    config_path: str | os.PathLike[str],
    version: int,
    *,
    outputs_dir: str | os.PathLike[str] | None = None,
    customer: Customer | None = None,
    signing_key: Ed25519PrivateKey,
    kek: bytes | None = None,
) -> Config:
    """Upgrade the configuration file to platform ``version``; returns the (new) config.

    0 → 1 hashes every protected model file (resolved against ``outputs_dir``, default the
    configuration's folder) after checking it against its key files (a LINUX file's only with
    the application's ``kek``: its key files are encrypted); 1 → 2 adds ``customer`` (default
    ``Customer()``); 0 → 2 does both.
    The same version is a no-op (nothing is written). A non-default ``customer`` with a version
    below 2, or one that differs from a version-2 file's, is refused: it would be ignored.

    Raises:
        ConfigurationError: no file, a downgrade, protected model files missing or replaced
            since their protection (all named), LINUX key files that cannot be read or are
            damaged (named, with what to do), or a file named as the other platform's
            configuration.
        InvalidArgumentError: ``version`` is not a supported platform version, or ``kek`` is
            not a 32-byte key.
    """
    path = Path(config_path)
    version = check_version(version, "version")
    if not path.exists():
        raise ConfigurationError(
            f"There is no configuration file {path} to migrate. Protect a model first "
            f"(protect_new_model with platform_version={version})."
        )
    config = load_own(path, signing_key)
    check_file_name(path, config)
    current = config.platform_version
    asked = customer is not None and customer != Customer()
    if asked and version < 2:
        raise InvalidArgumentError(
            f"customer={customer!r} is written in platform version 2 configurations only, but "
            f"version {version} was asked: migrate to version 2, or leave customer out."
        )
    if version == current:
        if asked and version == 2 and _customer_entry(customer) != config.customer:
            raise InvalidArgumentError(
                f"{path} is already at platform version 2, licensed to "
                f"{_describe(config.customer)}: migrating does not change its customer. Use "
                f"update_customer({customer!r}, deployment_platform) to change it."
            )
        get_logger().info("%s is already at platform version %d: nothing to migrate", path, version)
        return config
    if version < current:
        raise ConfigurationError(
            f"Cannot migrate {path} from platform version {current} down to {version}: "
            "downgrades are not supported. Re-protect the models into a new application with "
            f"platform_version={version} if your SkRuntime needs it."
        )
    folder = Path(outputs_dir) if outputs_dir is not None else path.parent
    migrated = migrated_config(path, config, version, folder, customer, kek=kek)
    with _as_protector_errors():
        write_config(path, migrated, signing_key)
    get_logger().info("migrated %s from platform version %d to %d", path, current, version)
    return migrated


def check_migratable(
    path: Path,
    config: Config,
    folder: Path,
    replacing: str | None,
    *,
    kek: bytes | None = None,
) -> None:
    """A version-0 file records no SHA-256: migrating it hashes every protected model file
    under ``folder`` (except those of ``replacing``, the model whose entry the protection
    replaces), so they must be there, and be the files their key files were written for
    (LINUX key files are checked with the application's ``kek`` only)."""
    if config.platform_version == 0:
        _protected_hashes(path, config, folder, replacing, kek)


def _protected_hashes(
    path: Path,
    config: Config,
    folder: Path,
    replacing: str | None = None,
    kek: bytes | None = None,
) -> dict[str, dict[str, str]]:
    """The SHA-256 of each protected model file of ``config`` under ``folder``, per model and
    format (``replacing``'s left out), for a migration from version 0. Refuses missing files,
    and files their key files were not written for (each platform's check, LINUX's given the
    ``kek``): the runtime refuses those (``KeyFileError``), so version 1 would sign the hash of
    a file that cannot run. Key files that cannot say (unreadable, damaged) are refused as
    such, not as replaced model files."""
    _check_kek(kek)
    models = {name: e for name, e in config.models.items() if name != replacing}
    _refuse_left_backups(path, folder, models)
    missing = _files_where(models, lambda name, slug, fmt: not (folder / fmt.file).is_file())
    if missing:
        _refuse_migration(path, folder, missing, "are missing")
    try:
        hashes = {
            name: {slug: sha256_file(folder / f.file) for slug, f in e.formats.items()}
            for name, e in models.items()
        }
    except OSError as e:
        raise ConfigurationError(
            f"Cannot migrate {path}: reading a protected model file failed: "
            f"{e.strerror or e} ({e.filename}). Check its permissions and retry."
        ) from e
    platform = get_platform(ExportPlatform(config.platform))
    faults: list[KeyFileFault] = []

    def written_for(name: str, slug: str) -> bool:
        try:
            return platform.written_for(folder, name, models[name], slug, hashes[name][slug], kek)
        except KeyFileFault as fault:
            faults.append(fault)
            return True  # reported below, as the key file's fault, not the model file's

    stale = _files_where(models, lambda name, slug, fmt: not written_for(name, slug))
    if faults:
        _refuse_key_file_faults(path, faults)
    if stale:
        _refuse_migration(
            path,
            folder,
            stale,
            "are not the files their key files were written for (the model file or its key "
            "files replaced or modified since their protection: the runtime refuses them with "
            "KeyFileError)",
        )
    return hashes


def _check_kek(kek: object) -> None:
    """``kek`` must be None or the application's key-encryption key (32 bytes)."""
    if kek is None or (isinstance(kek, bytes) and len(kek) == KEK_SIZE):
        return
    got = f"{len(kek)} bytes" if isinstance(kek, bytes) else type(kek).__name__
    raise InvalidArgumentError(
        f"kek must be the application's {KEK_SIZE}-byte key-encryption key "
        f"(ProtectionState.kek), but got {got}."
    )


def _files_where(
    models: dict[str, ModelEntry], test: Callable[[str, str, FormatEntry], bool]
) -> dict[str, list[str]]:
    """The model files for which ``test(model name, format, format entry)`` holds, per model."""
    found: dict[str, list[str]] = {}
    for name, entry in models.items():
        for slug, fmt in entry.formats.items():
            if test(name, slug, fmt):
                found.setdefault(name, []).append(fmt.file)
    return found


def _refuse_migration(path: Path, folder: Path, bad: dict[str, list[str]], what: str) -> NoReturn:
    """Refuse a migration from version 0 because of the model files ``bad`` (per model)."""
    files = ", ".join(str(folder / file) for model_files in bad.values() for file in model_files)
    names = ", ".join(f"'{name}'" for name in bad)
    raise ConfigurationError(
        f"Cannot migrate {path} to a newer platform version: the protected model file(s) "
        f"{files} {what}, and version 1 records the SHA-256 of every protected model file. "
        "Put the old protected models back in outputs/<application>/ (each in its model's "
        f"sub-folder); otherwise re-protect {names} with protect_updated_model(..., "
        "platform_version=0) and migrate then, or re-protect all models in a clean environment."
    )


def _refuse_left_backups(path: Path, folder: Path, models: dict[str, ModelEntry]) -> None:
    """Refuse a migration from version 0 while a protection's backup folder holds a previous
    file of ``models``: that protection was killed while moving its files into place, so the
    files in place may be its own, never recorded, which version 1 would sign as the deployed
    ones (and the next protection would then delete the backups as no longer needed). A
    version-0 file records no SHA-256 to tell, so a person has to (docs/artifacts.md)."""
    recorded = {
        file
        for entry in models.values()
        for fmt in entry.formats.values()
        for file in (fmt.file, *fmt.key_files)
    }
    for backup in sorted(folder.glob(".staging-*-backup")):
        held = sorted(
            relative
            for relative in (p.relative_to(backup).as_posix() for p in backup.rglob("*"))
            if relative in recorded
        )
        if held:
            raise ConfigurationError(
                f"Cannot migrate {path} to a newer platform version: {backup} holds previous "
                f"files of the deployment ({', '.join(held)}), set aside by a protection killed "
                "while moving its files into place. The files in place may be that "
                "protection's, which this configuration does not describe, and version 1 would "
                "record their SHA-256 as the deployed ones. If the killed protection had not "
                "written the configuration (most likely), move each file of the backup folder "
                "back to the same path under the application folder; if it had, keep the files "
                "in place. Then delete the backup folder (and its staging folder) and retry."
            )


def _refuse_key_file_faults(path: Path, faults: list[KeyFileFault]) -> NoReturn:
    """Refuse a migration from version 0 because key files that cannot be read, or are damaged,
    cannot tell whether the model files beside them are the ones they were written for."""
    files = "; ".join(f"{fault.path} {fault.problem}" for fault in faults)
    names = ", ".join(dict.fromkeys(f"'{fault.model_name}'" for fault in faults))
    raise ConfigurationError(
        f"Cannot migrate {path} to a newer platform version: {files}. Such a key file cannot "
        "show that its model file is the one it was written for, which version 1 needs before "
        "it records the model file's SHA-256 (the model files are not in question yet). Make "
        "an unreadable key file readable by this user and retry; put a damaged one back from "
        f"a backup of the deployment, otherwise re-protect {names} with "
        "protect_updated_model(..., platform_version=0) and migrate then."
    )


def migrated_config(
    path: Path,
    config: Config,
    version: int,
    folder: Path,
    customer: Customer | None,
    replacement: tuple[str, ModelEntry] | None = None,
    *,
    kek: bytes | None = None,
) -> Config:
    """``config`` upgraded to ``version`` in memory: 0 → 1 hashes the protected model files
    under ``folder`` (checked against their key files, LINUX ones with ``kek``), → 2 adds
    ``customer``; ``replacement`` (name, new entry) takes the place of that model's entry,
    whose old files are not hashed. Nothing is written."""
    replacing = replacement[0] if replacement else None
    models = {name: e for name, e in config.models.items() if name != replacing}
    if config.platform_version == 0:
        hashes = _protected_hashes(path, config, folder, replacing, kek)
        models = {name: entry.with_sha256(hashes[name]) for name, entry in models.items()}
    if replacement is not None:
        models[replacement[0]] = replacement[1]
    customer_entry = _customer_entry(customer) if version == 2 else None
    with _as_protector_errors():
        return Config(
            platform_version=version,
            platform=config.platform,
            application=config.application,
            skprotect_version=__version__,
            models=models,
            customer=customer_entry,
        )


@_under_config_lock
def update_customer(
    config_path: str | os.PathLike[str],
    customer: Customer,
    *,
    signing_key: Ed25519PrivateKey,
) -> Config:
    """Replace the customer of a platform-version-2 configuration; returns the new config.

    Raises:
        ConfigurationError: no file, the file is below platform version 2, or it is named as
            the other platform's configuration.
        InvalidArgumentError: ``customer`` is not a :class:`~skprotect_pytorch.Customer`.
    """
    path = Path(config_path)
    check_customer(customer)
    if not path.exists():
        raise ConfigurationError(
            f"There is no configuration file {path} to update. Protect a model first "
            "(protect_new_model with platform_version=2)."
        )
    config = load_own(path, signing_key)
    check_file_name(path, config)
    if config.platform_version != 2:
        raise ConfigurationError(
            f"update_customer needs a platform version 2 configuration, but {path} is at "
            f"version {config.platform_version}. Call migrate_configuration(2, ..., "
            "customer=...) instead: it sets the customer while migrating."
        )
    with _as_protector_errors():
        updated = Config(
            platform_version=2,
            platform=config.platform,
            application=config.application,
            skprotect_version=__version__,
            models=config.models,
            customer=_customer_entry(customer),
        )
        write_config(path, updated, signing_key)
    return updated
