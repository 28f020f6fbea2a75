"""This host's folders of an earlier boot are swept; another host's are still kept.

A folder's name carries the tag of the system that made it, and only this system's were swept:
the tag hashed the host name and boot id together, so after a reboot (or a power loss) the
folders of the earlier boot looked like another host's and stayed for ever: the runtime's
AOTInductor load folders (the package extracted in each) and the protector's staging folders
(locked models, keys, plaintext copies, in the folder that ships). The tag now names the host
in its first 12 hex digits and the boot in its last 4; no process of an earlier boot lives on,
so a folder of this host and an earlier boot, unchanged since this boot began, is swept."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import skprotect_pytorch.staging as staging_module
from skruntime import system
from skruntime.backends import inductor

EARLIER_BOOT = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
LONG_AGO = 1_000_000_000.0  # 2001: before this boot began


@contextlib.contextmanager
def running_as(
    monkeypatch: pytest.MonkeyPatch,
    boot_id: str | None = None,
    host: str | None = None,
    machine_id: str | None = None,
) -> Iterator[None]:
    """The system seen as another boot, host name or machine id: what Linux's boot id file,
    the host name and the machine id file say is replaced by those given."""
    replaced = {"/proc/sys/kernel/random/boot_id": boot_id, "/etc/machine-id": machine_id}
    read_text = pathlib.Path.read_text

    def read_replaced(path: Path, *args: object, **kwargs: object) -> str:
        if replaced.get(str(path)) is not None:
            return f"{replaced[str(path)]}\n"
        return read_text(path, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as there:
        there.setattr(pathlib.Path, "read_text", read_replaced)
        if host is not None:
            there.setattr(socket, "gethostname", lambda: host)
        yield


def tag_of(monkeypatch: pytest.MonkeyPatch, **system_seen: str) -> str:
    """:func:`system_tag` on the system :func:`running_as` makes of ``system_seen``."""
    with running_as(monkeypatch, **system_seen):
        return system.system_tag()


def dated(folder: Path, when: float) -> Path:
    """``folder``, it and all below it last changed at ``when``."""
    for path in (*folder.rglob("*"), folder):
        os.utime(path, (when, when))
    return folder


def load_folder(parent: Path, tag: str, pid: int, changed: float = LONG_AGO) -> Path:
    """A folder named as a load of system ``tag`` names its private folder, the package
    extracted in it as torch does, unlocked (its process is gone), last changed at ``changed``."""
    folder = parent / f"skruntime-aoti-{tag}-{pid}-abcd1234"
    (folder / "aotinductor_x").mkdir(parents=True, mode=0o700)
    (folder / "aotinductor_x" / "model.so").write_bytes(b"x" * 100)
    return dated(folder, changed)


def test_a_reboot_changes_only_the_boot_digits_of_the_tag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host (host name and machine id) in the first 12 digits, the boot in the last 4."""
    this = system.system_tag()
    earlier = tag_of(monkeypatch, boot_id=EARLIER_BOOT)
    assert (earlier[:12], len(earlier)) == (this[:12], 16)
    assert earlier[12:] != this[12:]
    for other in (
        tag_of(monkeypatch, host="another-host"),
        tag_of(monkeypatch, machine_id="0123456789abcdef0123456789abcdef"),
    ):
        assert (other[:12] != this[:12], other[12:]) == (True, this[12:])


def test_a_sweep_removes_this_hosts_folders_of_an_earlier_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removed: this host's folder of an earlier boot. Kept: the same folder of another host
    (its lock is not seen here), and one named for an earlier boot of this host but changed
    since this boot began, even deep inside (another machine with this host name and machine
    id: its process may run)."""
    earlier = tag_of(monkeypatch, boot_id=EARLIER_BOOT)
    elsewhere = tag_of(monkeypatch, boot_id=EARLIER_BOOT, host="another-host")
    swept = load_folder(tmp_path, earlier, pid=1)
    other_host = load_folder(tmp_path, elsewhere, pid=2)
    changed_since = load_folder(tmp_path, earlier, pid=3, changed=time.time())
    written_since = load_folder(tmp_path, earlier, pid=4)
    os.utime(written_since / "aotinductor_x" / "model.so")  # now
    inductor._sweep_leftovers(str(tmp_path))
    kept = sorted(p.name for p in (other_host, changed_since, written_since))
    assert sorted(os.listdir(tmp_path)) == kept
    assert not swept.exists()
    assert (other_host / "aotinductor_x" / "model.so").read_bytes() == b"x" * 100


def test_this_boots_folders_of_earlier_versions_are_still_swept_and_others_kept(
    tmp_path: Path,
) -> None:
    """A folder named with the tag versions before 2026-12-07 gave this host in this boot is
    judged by its lock as before; folders of versions that named no system (``<pid>-*``, locked
    but maybe on another host; 8 random characters, never locked) are left alone."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    named = f"skprotect-staging\0{socket.gethostname()}\0{boot}".encode()
    earlier_version = hashlib.sha256(named).hexdigest()[:16]
    swept = load_folder(tmp_path, earlier_version, pid=1)
    held = load_folder(tmp_path, earlier_version, pid=os.getpid())
    lock = inductor._locked(str(held))
    assert lock is not None
    unnamed = [tmp_path / "skruntime-aoti-5-abcd1234", tmp_path / "skruntime-aoti-k2j4_x9q"]
    for folder in unnamed:
        folder.mkdir()
        dated(folder, LONG_AGO)
    inductor._sweep_leftovers(str(tmp_path))
    os.close(lock)
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (held, *unnamed))
    assert not swept.exists()


def test_a_staging_folder_of_this_host_before_a_reboot_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A protection killed by a reboot leaves its staging folder (a plaintext copy in it, in
    the folder that ships): the next protection on this host removes it; another host's
    folder, as old, is kept."""
    app = tmp_path / "outputs" / "app"
    killed = {}
    for name, system_seen in {
        "this host": {"boot_id": EARLIER_BOOT},
        "another host": {"boot_id": EARLIER_BOOT, "host": "another-host"},
    }.items():
        with running_as(monkeypatch, **system_seen):
            staging = staging_module.Staging(app)
        staging.path("net/original/net_onnx.onnx").write_bytes(b"plaintext weights")
        assert staging.owner is not None
        os.close(staging.owner)  # the reboot released its lock
        killed[name] = staging.root
    for folder in killed.values():  # dated once both exist: each one's scan kept the other
        dated(folder, LONG_AGO)
    with pytest.warns(UserWarning, match="on another machine") as said:
        staging_module.Staging(app).cleanup()
    assert [str(killed["another host"]) in str(w.message) for w in said] == [True]
    assert not killed["this host"].exists()
    assert (killed["another host"] / "net/original/net_onnx.onnx").is_file()
