"""Logging: a detailed file log in ./log/ when save_logs=True, a short console summary always."""

from __future__ import annotations

import contextlib
import itertools
import logging
import platform
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from .errors import InvalidArgumentError

LOGGER_NAME = "skprotect"
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s")


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def warn_user(message: str, stacklevel: int, category: type[Warning] = UserWarning) -> None:
    """Warn the caller with ``message`` (``stacklevel`` as the calling function would pass to
    ``warnings.warn``) and write it to the protection's log, where ``save_logs`` keeps it."""
    warnings.warn(message, category, stacklevel=stacklevel + 1)
    get_logger().warning(message)


# Without it, Python's last-resort handler printed every warning and failure on stderr a second
# time (each is also a ``warnings.warn`` or the exception raised); records still reach the file
# of ``save_logs`` and any handler the application installs.
get_logger().addHandler(logging.NullHandler())


def enable_file_log(folder: Path | None = None) -> Path:
    """Create ``./log/skprotect_<time>.log`` (``-<n>`` added when taken) with the library
    versions; returns its path.

    The file receives the log of the calls made inside :func:`file_log` with its path, so that
    each protector's calls go to its own file, not to the last created one."""
    folder = folder or Path.cwd() / "log"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count():  # a protector created in the same second gets its own file
        path = folder / (f"skprotect_{stamp}.log" if n == 0 else f"skprotect_{stamp}-{n}.log")
        with contextlib.suppress(FileExistsError):
            path.open("x", encoding="utf-8").close()
            break
    with file_log(path):
        logger = get_logger()
        logger.debug("python %s on %s", sys.version.split()[0], platform.platform())
        for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "cryptography"):
            module = sys.modules.get(name)
            logger.debug("%s %s", name, getattr(module, "__version__", "not imported"))
    return path


_levels_lock = threading.Lock()
_open_logs = 0  # file_log blocks running, in every thread
_level_before = logging.NOTSET  # the logger's level before the first of them


@contextlib.contextmanager
def file_log(path: Path | None) -> Iterator[None]:
    """Write the skprotect log, DEBUG and up, to ``path`` (appended) while the block runs;
    nothing when ``path`` is None.

    Only the records of the calling thread go to ``path``: two protectors working in two
    threads each keep their own file. The logger stays at DEBUG until the last such block ends.
    """
    if path is None:
        yield
        return
    logger = get_logger()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # a log folder cleaned up since
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        raise InvalidArgumentError(
            f"save_logs=True, but the log {path} cannot be written ({err.strerror or err}). "
            "Make its folder writable, or create the protector with save_logs=False."
        ) from err
    handler.setFormatter(_FORMAT)
    thread = threading.get_ident()
    # None: the application turned logging.logThreads off, so no record says its thread
    handler.addFilter(lambda record: record.thread in (thread, None))
    global _open_logs, _level_before
    with _levels_lock:
        if not _open_logs:
            _level_before = logger.level
        _open_logs += 1
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        with _levels_lock:
            logger.removeHandler(handler)
            _open_logs -= 1
            if not _open_logs:
                logger.setLevel(_level_before)
        handler.close()
