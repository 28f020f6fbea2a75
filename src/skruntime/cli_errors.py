"""How the runner reports what went wrong: its exit codes, by error class (:data:`EXIT_CODES`),
and its own usage errors (:class:`CliError`) about the paths its options name."""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = [
    "EXIT_CODES",
    "EXIT_CONFIGURATION",
    "EXIT_INPUT",
    "EXIT_KEY",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OTHER",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "CliError",
    "empty_option",
    "empty_path",
    "exit_code_for",
    "not_a_file",
]

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_CONFIGURATION = 3
EXIT_KEY = 4
EXIT_INPUT = 5
EXIT_NOT_FOUND = 6
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended

#: error class name (anywhere in the raised error's MRO, most derived first) -> exit code. Names,
#: not classes, so that this table needs no import of the runtime (and of its frameworks).
EXIT_CODES: dict[str, int] = {
    "ConfigurationError": EXIT_CONFIGURATION,
    "IntegrityError": EXIT_CONFIGURATION,
    "KeyFileError": EXIT_KEY,
    "KeyUnavailableError": EXIT_KEY,
    "InputError": EXIT_INPUT,
    "ModelNotFoundError": EXIT_NOT_FOUND,
    "ModelFileError": EXIT_NOT_FOUND,
    "FileNotFoundError": EXIT_NOT_FOUND,
    # licensing: no usable licence is a key error (the key is released with the licence)
    "LicenceDeniedError": EXIT_KEY,
    "LicenceUnavailableError": EXIT_KEY,
    "ClockRollbackError": EXIT_KEY,
    "QuotaExhaustedError": EXIT_KEY,
    "LicenceError": EXIT_KEY,
}


class CliError(Exception):
    """An error detected by the runner itself, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(err: BaseException) -> int:
    """The runner's exit code for an error raised while running (see :data:`EXIT_CODES`)."""
    if isinstance(err, CliError):
        return err.code
    for cls in type(err).__mro__:
        if cls.__name__ in EXIT_CODES:
            return EXIT_CODES[cls.__name__]
    return EXIT_OTHER


def not_a_file(
    path: Path, what: str, kind: str | None = None, wanted: str | None = None
) -> CliError:
    """The error for a path that should be an existing file: a folder, a named pipe or a
    device (whose reads block or never end), or nothing there. ``kind``: what the path was
    found to be (:class:`~skruntime.files.NotRegularFileError`), else it is looked at;
    ``wanted``: the file to pass instead, when "the file" does not say which."""
    from skruntime.files import path_kind

    kind = kind or path_kind(path)
    if kind is not None:
        return CliError(
            f"{what} {path} is {kind}, not a file; pass {wanted or 'the file'}.", EXIT_NOT_FOUND
        )
    advice = f"; pass {wanted}" if wanted else ""
    return CliError(f"{what} {path} does not exist{advice}.", EXIT_NOT_FOUND)


def empty_path(path: Path, option: str, wanted: str = "a file name") -> str | None:
    """What is wrong with an empty path (``-o ''``: typer reads it as the folder ``.``, which a
    command would then use), or None."""
    if str(path) != ".":
        return None
    return f"{option}: the path is empty (or '.'); pass {wanted}."


def empty_option(path: Path, option: str, wanted: str = "a file name") -> CliError | None:
    """:func:`empty_path` as the runner's usage error."""
    problem = empty_path(path, option, wanted)
    return None if problem is None else CliError(problem, EXIT_USAGE)
