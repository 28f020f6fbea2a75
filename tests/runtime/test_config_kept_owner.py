"""A rewritten configuration keeps the owner and group of the file it replaces, not only its
permissions: a 0640 file of the runtime's group came back 0640 in the writer's group, which the
runtime cannot read; and a setuid or setgid bit is not copied onto the new file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from tests.runtime.test_config import KEY, make_config

from skruntime.config import load_config, write_config


def _other_ids() -> tuple[int, int]:
    """A user and a group this process may give a file: any as root, else its own user and a
    group it belongs to besides its own."""
    if os.geteuid() == 0:
        return 1234, 4321
    groups = [g for g in os.getgroups() if g != os.getegid()]
    if not groups:
        pytest.skip("this user belongs to no second group to give the file")
    return os.geteuid(), groups[0]


def test_a_rewritten_configuration_keeps_its_owner_and_group(tmp_path: Path) -> None:
    """Before: the file came back owned by the writer (0:0 for root) with mode 0640."""
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(2), KEY)
    uid, gid = _other_ids()
    os.chown(path, uid, gid)
    path.chmod(0o640)
    write_config(path, make_config(2), KEY)
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o640)


def test_a_rewritten_configuration_drops_setuid_and_setgid(tmp_path: Path) -> None:
    """Before: a 06640 file came back 06640."""
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(2), KEY)
    path.chmod(0o6640)
    write_config(path, make_config(2), KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("where", ["user namespace", "windows"])
def test_a_configuration_whose_ids_cannot_be_given_is_still_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """In a rootless container the old file's owner, unmapped there, reads as 65534, and
    fchown to it fails with EINVAL (measured with ``unshare -Ur``); Windows has no os.fchown.
    Before: the write failed (ConfigurationError; AttributeError on Windows) and the
    configuration could not be migrated or updated. Now the new file stays the writer's."""
    path = tmp_path / "skconfig.json"
    write_config(path, make_config(1), KEY)
    if where == "windows":
        monkeypatch.delattr(os, "fchown")
    else:

        def unmapped(fd: int, uid: int, gid: int) -> None:
            raise OSError(errno.EINVAL, "Invalid argument")

        monkeypatch.setattr(os, "fchown", unmapped)
    write_config(path, make_config(2), KEY)
    assert load_config(path).platform_version == 2
