"""What holds the key-encryption key cannot be pickled or copied.

``SkRuntime``, ``LoadedModel`` and ``KeyMaterial`` refused pickling already, but the
``KeyUnlock`` a runtime hands its key source (public in :mod:`skruntime.keysource`) did not:
until 2026-12-07 ``pickle.dumps`` of it, or of the LINUX key source holding it
(``LinuxKeySource``), wrote the 32 raw bytes of the KEK, which decrypts every model key of the
application, into the pickle (measured: a 113-byte pickle of a ``KeyUnlock`` held them)."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skruntime.keysource import KeyUnlock
from skruntime.mev import LinuxKeySource

KEK = bytes(range(32))
COPIES: list[Callable[[Any], Any]] = [pickle.dumps, copy.deepcopy]


@pytest.mark.parametrize("copier", COPIES, ids=["pickle", "deepcopy"])
def test_the_kek_is_not_pickled_nor_copied(copier: Callable[[Any], Any], tmp_path: Path) -> None:
    unlock = KeyUnlock(kek=KEK, from_licence=None)
    source = LinuxKeySource(tmp_path, tmp_path / "skrpl", unlock)
    for holder in (unlock, source):
        with pytest.raises(TypeError, match="key-encryption key"):
            copier(holder)
    with pytest.raises(TypeError, match="key-encryption key"):
        copy.copy(unlock)


def test_repr_does_not_show_the_kek(tmp_path: Path) -> None:
    unlock = KeyUnlock(kek=KEK, from_licence=None)
    for holder in (unlock, LinuxKeySource(tmp_path, tmp_path / "skrpl", unlock)):
        for text in (repr(holder), str(holder)):
            assert repr(KEK) not in text and KEK.hex() not in text
