"""Staging folders: a protection writes its files under a hidden folder of ``outputs/<app>/``
and moves them into place all together, setting the previous ones aside for a rollback.

Also the scan each protection runs when it starts, under the application's lock: it removes the
staging folders of dead protections and recovers (or, when it cannot tell how, warns about)
the backup folders that a protection killed while moving its files into place left behind.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from skruntime.config import CONFIG_FILENAMES, load_config, sha256_file
from skruntime.system import last_change, system_tag, this_system

from .configuration import config_lock, lock_folder
from .errors import ExportError, SkProtectError
from .logs import get_logger, warn_user

_STAGING_NAME = re.compile(r"\.staging-(?P<system>[0-9a-f]{16})-[0-9a-f]{12}")
"""A staging folder's name: the tag of the system that writes it (:func:`system_tag`), then
a random id; its backup folder adds ``-backup``."""

_OWNER_FILE = ".owner.json"
"""In each staging folder: the host name, process id and start time of its protection, for the
messages about a folder this system keeps; never moved into place (no model name starts with
a dot)."""

_STALE_AFTER_S = 24 * 3600
"""Another system's staging folder unchanged this long is said (a warning), not only logged."""


class Staging:
    """Files written under a private staging folder, moved into place all together."""

    def __init__(self, outputs_dir: Path) -> None:
        self.outputs_dir = outputs_dir
        self.root = outputs_dir / f".staging-{system_tag()}-{uuid.uuid4().hex[:12]}"
        self.owner: int | None = None  # the folder's descriptor, locked while the run lasts
        try:
            outputs_dir.mkdir(parents=True, exist_ok=True)
            with config_lock(outputs_dir):  # no orphan scan between the mkdir and the lock
                _remove_orphans(outputs_dir)
                self.root.mkdir()
                _write_owner(self.root / _OWNER_FILE)
                self.owner = lock_folder(self.root)
        except OSError as err:
            shutil.rmtree(self.root, ignore_errors=True)  # unlocked: the next scan could not tell
            raise ExportError(
                f"Cannot write to {outputs_dir} ({err.strerror or err}): protect from a folder "
                "where outputs/ can be created and written, with space left."
            ) from err
        self.moved: list[tuple[Path, Path | None]] = []  # (final path, backup or None)
        self.kept: set[str] = set()  # files in place that stay as they are (never retired)

    def path(self, relative: str) -> Path:
        p = self.root / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def final(self, staged: Path) -> Path:
        return self.outputs_dir / staged.relative_to(self.root)

    def keep_final(self, staged: Path) -> None:
        """Drop ``staged``: the file already in place at its final path is kept instead."""
        self.kept.add(str(staged.relative_to(self.root)))
        staged.unlink()

    def commit_files(self, retire: Iterable[str] = ()) -> None:
        """Move the staged files into place, and those of ``retire`` (paths relative to the
        outputs folder) that were not written again out of it; every replaced or retired file
        is kept for a rollback."""
        backup_dir = self.root.with_name(self.root.name + "-backup")
        marker = self.root / _OWNER_FILE
        staged_files = sorted(p for p in self.root.rglob("*") if p.is_file() and p != marker)
        written = {str(p.relative_to(self.root)) for p in staged_files} | self.kept
        for staged in staged_files:
            relative = staged.relative_to(self.root)
            final = self.outputs_dir / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                self._set_aside(final, backup_dir / relative, replaced=True)
            else:
                self.moved.append((final, None))
            os.replace(staged, final)
        for name in sorted(set(retire) - written):
            if (self.outputs_dir / name).is_file():
                self._set_aside(self.outputs_dir / name, backup_dir / name, replaced=False)

    def _set_aside(self, final: Path, backup: Path, *, replaced: bool) -> None:
        """Keep ``final`` at ``backup``, recorded for :meth:`rollback` first: an interruption
        (Ctrl-C) between the two would otherwise lose the previous file, which the cleanup
        deletes with the backup folder. A file about to be ``replaced`` is hard-linked there,
        so that the rename of the new file replaces it in one step: a runtime loading the model
        meanwhile finds the previous file or the new one, never none. A retired file, or one on
        a file system without hard links, is moved."""
        backup.parent.mkdir(parents=True, exist_ok=True)
        self.moved.append((final, backup))
        if replaced:
            with contextlib.suppress(OSError):
                os.link(final, backup)
                return
        os.replace(final, backup)

    def rollback(self) -> None:
        """Put every replaced file back and remove the new ones; a file recorded but not moved
        yet (no backup there) is still in place. What cannot be restored stays in the backup
        folder, which :meth:`cleanup` then keeps, and the error says where it is."""
        while self.moved:
            final, backup = self.moved[-1]
            try:
                if backup is None:
                    final.unlink(missing_ok=True)
                elif backup.exists():
                    os.replace(backup, final)
            except OSError as err:
                raise ExportError(
                    f"Could not restore {final} ({err.strerror or err}) after a failed update; "
                    f"the previous files are kept in {self.root.name}-backup under "
                    f"{self.outputs_dir}: move them back by hand."
                ) from err
            self.moved.pop()

    def cleanup(self) -> None:
        """Remove the staging folder, and its backups unless some are still to restore; the
        backups first, so that no scan sees them without their staging folder (a leftover)."""
        if not self.moved:
            shutil.rmtree(self.root.with_name(self.root.name + "-backup"), ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.owner is not None:
            os.close(self.owner)
            self.owner = None


def _write_owner(marker: Path) -> None:
    """Say in ``marker`` which protection writes its staging folder, for a person reading a
    message about it on another host: host name, process id and start time, nothing else."""
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    marker.write_text(json.dumps(owner) + "\n", encoding="utf-8")


def _describe_owner(folder: Path) -> str:
    """Who wrote ``folder``, from its owner file, for a message."""
    try:
        owner = json.loads((folder / _OWNER_FILE).read_text(encoding="utf-8"))
        return (
            f"the protection of process {int(owner['pid'])} on host {str(owner['host'])!r}, "
            f"started {owner['started']}"
        )
    except (OSError, ValueError, TypeError, KeyError):
        return "a protection whose host is not recorded"


def _keep_other_systems(folder: Path) -> None:
    """Keep a staging folder another system writes: its lock is not visible from here, so its
    protection may still run. Logged; said as a warning once it has not changed for
    :data:`_STALE_AFTER_S`, with how to remove it, since it would ship with ``outputs/``."""
    owner = _describe_owner(folder)
    idle_s = time.time() - last_change(folder)  # a running protection keeps writing
    if idle_s < _STALE_AFTER_S:
        get_logger().info(
            "kept %s: written by %s, on another machine (or on this one before it restarted), "
            "which this protection cannot tell running or ended",
            folder,
            owner,
        )
        return
    message = (
        f"{folder} was written by {owner}, on another machine (or on this one before it "
        f"restarted), and has not changed for {idle_s / 3600:.0f} hours. It holds locked models "
        f"and keys and ships with {folder.parent}. Protections on other machines cannot tell "
        "whether it still runs, so they keep it: if it ended, or its machine restarted since, "
        "delete this folder by hand."
    )
    warn_user(message, stacklevel=7)


def _remove_orphans(outputs_dir: Path) -> None:
    """Remove the staging folders of protections whose process died (killed, out of memory):
    hidden in ``outputs/``, which ships, they hold locked models, keys, even save_original's
    plaintext copies. Only this host's folders (:meth:`~skruntime.system.ThisSystem.owns`:
    of this boot, or of an earlier one) whose lock can be taken are removed: a running
    protection holds its folder's lock; every folder where no lock can tell (Windows, NFS) or
    whose lock is another host's is kept. Folders named without a system (written before the
    tag existed) are judged by the lock. A backup folder left without its staging folder (its
    protection died while moving files into place) is settled from the configuration on disk
    (:func:`_plan_recovery`), or said when it cannot be."""
    here = this_system()
    folders = sorted(outputs_dir.glob(".staging-*"))
    for folder in folders:
        if folder.name.endswith("-backup") or not folder.is_dir():
            continue
        named = _STAGING_NAME.fullmatch(folder.name)
        if named is not None and not here.owns(named["system"], folder):
            _keep_other_systems(folder)
            continue
        try:
            fd = lock_folder(folder, wait=False)
        except OSError:  # its protection is still running, or removed it meanwhile: kept
            continue
        if fd is None:  # no lock can tell a running protection's folder
            continue
        os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        get_logger().info("removed %s, left by an interrupted protection", folder)
    for backup in (folder for folder in folders if folder.name.endswith("-backup")):
        if backup.with_name(backup.name.removesuffix("-backup")).exists():
            continue  # its protection still runs, or is another system's (kept above)
        recovery = _plan_recovery(backup)  # its protection ended, unfinished
        if recovery is not None and _applied(recovery):
            _warn_recovered(recovery)
        else:
            _warn_left_backup(backup)


def _warn_left_backup(backup: Path) -> None:
    """Say that a backup folder outlived its protection: that protection was killed while it
    moved its files into place, or could not put the previous ones back (its error said so).
    The files in place may then differ from what the configuration records, and the backup
    holds the previous locked models and keys, hidden in the folder that ships."""
    message = (
        f"{backup} holds the files a protection of this application moved aside while moving "
        "its own into place, and that protection did not finish (it was killed, or could not "
        "restore them). Where a file in place differs from what the configuration records "
        "(the runtime refuses it with IntegrityError), move it back from this folder, at the "
        f"same relative path; then delete this folder: it ships with {backup.parent}."
    )
    warn_user(message, stacklevel=7)


@dataclass(frozen=True)
class _Recorded:
    """What the application's configurations record, to judge a backup folder by: each model
    file's SHA-256s (none at platform version 0), and for each key file the SHA-256s of the
    model files that it must unlock (a key-params file lists those it unlocks)."""

    models: dict[str, set[str]] = field(default_factory=dict)
    keys: dict[str, set[str]] = field(default_factory=dict)

    def paths(self) -> set[str]:
        """Every file a configuration records, model or key."""
        return {*self.models, *self.keys}


@dataclass(frozen=True)
class _Recovery:
    """How to settle a dead protection's backup folder: ``committed`` (the configuration on
    disk records the files in place) deletes the backups; otherwise the backups move back, and
    ``strays``, files in place that no configuration records, are named (not deleted: the dead
    protection's new files, most likely, but a file someone put there is theirs)."""

    backup: Path
    committed: bool
    files: list[str]  # the backup folder's files, relative to it and to the outputs folder
    strays: list[str]


def _recorded(outputs_dir: Path) -> _Recorded | None:
    """What the configurations in ``outputs_dir`` (both platforms') record; None when one
    cannot be read, so that no recovery is decided from part of the picture."""
    recorded = _Recorded()
    for name in sorted(set(CONFIG_FILENAMES.values())):
        path = outputs_dir / name
        if not path.exists():
            continue
        try:
            config = load_config(path)
        except (SkProtectError, OSError):
            return None
        for entry in (f for model in config.models.values() for f in model.formats.values()):
            hashes = {entry.sha256} if entry.sha256 else set()
            recorded.models.setdefault(entry.file, set()).update(hashes)
            for key_file in entry.key_files:
                recorded.keys.setdefault(key_file, set()).update(hashes)
    return recorded


def _unlocked_by(key_params: Path) -> set[str]:
    """The model SHA-256s a key-params file says it unlocks; none if it is not one."""
    try:
        listed = json.loads(key_params.read_text(encoding="utf-8")).get("model_sha256", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {h for h in listed if isinstance(h, str)} if isinstance(listed, list) else set()


def _fits(path: Path, relative: str, recorded: _Recorded) -> bool | None:
    """Whether the file at ``path`` is what the configurations record at ``relative``: a model
    file by its SHA-256, a key-params file by the models it unlocks; None where they record
    nothing to tell by (no hash, or a key file that lists no model)."""
    hashes = recorded.models.get(relative)
    if hashes:
        return path.is_file() and sha256_file(path) in hashes
    unlocks = recorded.keys.get(relative)
    if unlocks and relative.endswith(".json"):
        return unlocks <= _unlocked_by(path)
    return None


def _verdict(backup: Path, files: list[str], recorded: _Recorded) -> bool | None:
    """Whether the configuration on disk was written by the backup's protection (True: it
    records the files in place) or not (False: it records the backups); None when the files
    do not tell, or tell both (a platform version 0 configuration, files edited by hand)."""
    votes = set()
    for relative in files:
        before = _fits(backup / relative, relative, recorded)
        after = _fits(backup.parent / relative, relative, recorded)
        if before is None:  # nothing to tell by
            continue
        if before == after:  # neither is the recorded file, or both (the same one, if any)
            if before and filecmp.cmp(backup / relative, backup.parent / relative, False):
                continue
            return None
        votes.add(after)
    return votes.pop() if len(votes) == 1 else None


def _strays(outputs_dir: Path, files: list[str], recorded: _Recorded) -> list[str]:
    """The files in the folders the backups come from that no configuration records and no
    backup replaces: most likely those the dead protection moved in new. ``original/`` folders
    (unlocked copies, never recorded) are not listed."""
    folders = {Path(relative).parent for relative in files} - {Path(".")}
    found = (
        (folder / p.name).as_posix()
        for folder in sorted(folders)
        if folder.name != "original" and (outputs_dir / folder).is_dir()
        for p in (outputs_dir / folder).iterdir()
        if p.is_file()
    )
    kept = {*recorded.paths(), *files}
    return [relative for relative in found if relative not in kept]


def _plan_recovery(backup: Path) -> _Recovery | None:
    """How to settle ``backup``, left by a protection that died while moving its files into
    place, from the configuration on disk; None when it cannot tell, or when deleting the
    backups would lose a file the configuration records (missing in place)."""
    recorded = _recorded(backup.parent)
    if recorded is None:
        return None
    files = sorted(p.relative_to(backup).as_posix() for p in backup.rglob("*") if p.is_file())
    if not files:  # killed while making the folder, before setting any file aside
        return _Recovery(backup, False, [], [])
    committed = _verdict(backup, files, recorded)
    if committed is None:
        return None
    if committed:
        needed = [f for f in files if f in recorded.paths()]
        if not all((backup.parent / f).is_file() for f in needed):
            return None
        return _Recovery(backup, True, files, [])
    return _Recovery(backup, False, files, _strays(backup.parent, files, recorded))


def _applied(recovery: _Recovery) -> bool:
    """Carry ``recovery`` out; False (logged) when the disk refuses, the backups that are left
    then staying where they are for the warning about them."""
    outputs_dir = recovery.backup.parent
    try:
        if not recovery.committed:
            for relative in recovery.files:
                (outputs_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                os.replace(recovery.backup / relative, outputs_dir / relative)
        shutil.rmtree(recovery.backup)
    except OSError as err:
        get_logger().warning("could not recover %s: %s", recovery.backup, err)
        return False
    return True


def _warn_recovered(recovery: _Recovery) -> None:
    """Say how a dead protection's backup folder was settled, naming the files: the model it
    was protecting is back as the configuration records it, and that protection is to redo."""
    files = ", ".join(recovery.files) or "none"
    if recovery.committed:
        message = (
            f"{recovery.backup} was left by a protection of this application killed after it "
            "wrote the configuration, which records its files: that protection was complete, "
            f"so the previous files it had set aside were deleted ({files})."
        )
    else:
        strays = ", ".join(recovery.strays) or "none"
        message = (
            f"{recovery.backup} was left by a protection of this application killed while it "
            "moved its files into place, before it wrote the configuration: its changes were "
            f"rolled back. Moved back into place: {files}. Left in place, though no "
            f"configuration records them (the runtime ignores them; delete them unless you "
            f"put them there): {strays}. Run that protection again."
        )
    warn_user(message, stacklevel=7)
