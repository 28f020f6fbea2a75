"""Logging: a detailed file log in ./log/ when save_logs=True, a short console summary always."""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path

LOGGER_NAME = "skprotect"


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def enable_file_log(folder: Path | None = None) -> Path:
    """Attach a DEBUG file handler writing to ``./log/skprotect_<time>.log``; returns its path."""
    folder = folder or Path.cwd() / "log"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"skprotect_{time.strftime('%Y%m%d-%H%M%S')}.log"
    logger = get_logger()
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.debug("python %s on %s", sys.version.split()[0], platform.platform())
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "cryptography"):
        module = sys.modules.get(name)
        logger.debug("%s %s", name, getattr(module, "__version__", "not imported"))
    return path
