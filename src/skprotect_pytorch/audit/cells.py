"""A folder of finished audit cells, so that a gate run of many hours can stop and go on later,
run as two processes on two cores, and never mix results from two victims (issue 5).

A *cell* is one unit of the audit that the rest does not depend on: a baseline B(x), or one
attack variant at one budget with all its seeds.  Its result is stored as JSON under a folder
named for everything it depends on (model, victim epochs, data and lock seeds, lock settings,
sweep, seed count); the trained networks it attacks (victim, twin, A5's base and victim) are
stored there too, so a later run, on this machine or another one, attacks the very same
networks instead of retraining them.  Writes are atomic: a run killed mid-cell loses that cell
only, and not even all of it: the pieces of a cell that take long (one seed, one init gain,
one learning rate: :func:`part`) are stored as they finish, so a cell of more hours than a
session has resumes where it stopped.  A process claims a cell with a ``.claim`` file before it
computes it; another process on the same folder skips claimed cells, computes the others, then
waits for the claimed ones (a claim whose process has died on this host is taken over, and so
is one left by a killed run whose pid this process now has, as after a container restart).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from skruntime.config import atomic_write_bytes

from .. import __version__
from ..errors import StateError

CELL_FORMAT = 1
"""Bumped when what a cell stores changes: older folders are then not reused.  Rows stored
without ``unmeasured`` (before every attack recorded it) are still read: see
``audit._judged``."""

PART_FORMAT = 3
"""What a stored part's value is: 3 since the references (B(x), A4's no-files control, A5's
base fine-tune) store a :class:`~.models.Score` per seed too; 2 when only the attacks did;
1: a bare accuracy.  A part of another format is computed again, not read back into code that
expects the other."""

PENDING = object()
"""What :meth:`CellStore.try_get` returns for a cell another live process is computing."""
MISSING = object()
"""What :meth:`CellStore.try_get` returns for a cell not stored when the store computes nothing."""

T = TypeVar("T")


def fingerprint(context: dict[str, Any]) -> str:
    """A short hash of the run settings a cell depends on (sorted JSON)."""
    text = json.dumps({"cell_format": CELL_FORMAT, **context}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def code_version() -> str:
    """The git commit of the audit's source (``+changes`` when it differs from the commit), or
    the package version outside a checkout: each cell records the code that computed it."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", str(source.parents[1])],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return commit + ("+changes" if changed else "")


CLAIM_TOKEN = uuid.uuid4().hex
"""This process's mark in its claims: a restarted container gets the same host name and often
the same pid (1 as its first process), so a pid alone cannot tell this run's claims from those
of the run it replaced."""


def _process_alive(host: str, pid: int, token: str | None = None) -> bool:
    """Whether the claim's process still runs; a claim from another host is assumed alive, and
    one with this process's pid but not its token is a killed predecessor's."""
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return token == CLAIM_TOKEN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_part(path: Path) -> dict[str, Any]:
    """A stored part's record (``value``, ``seconds``, ``code``, ``format``: 1 when it has
    none); a damaged file gives a StateError naming the file to delete."""
    try:
        record = torch.load(path, weights_only=True)
        value, seconds, code = record["value"], float(record["seconds"]), str(record["code"])
        part_format = int(record.get("format", 1))
    except Exception as err:  # torch raises several types for a damaged file
        raise StateError(
            f"Audit cell part {path} is unreadable ({type(err).__name__}: {err}); delete "
            "it and run again to recompute that part (the other parts and cells are kept)."
        ) from err
    return {"value": value, "seconds": seconds, "code": code, "format": part_format}


def read_cell(path: Path) -> dict[str, Any]:
    """A stored cell's record (``value``, ``seconds`` as a float, and what else it holds); a
    damaged file gives a StateError naming the file to delete."""
    try:
        record = json.loads(path.read_text())
        value, seconds = record["value"], float(record["seconds"])
    except (ValueError, KeyError, TypeError) as err:
        raise StateError(
            f"Audit cell {path} is unreadable ({type(err).__name__}: {err}); delete it and run "
            "again to recompute that cell (the other cells are kept)."
        ) from err
    return {**record, "value": value, "seconds": seconds}


class _Parts:
    """The stored parts of the one cell being computed: ``<cell>.parts/<name>.pt``, a nested
    part's in its parents' subfolder until they are stored, each with its value and compute
    time."""

    def __init__(self, folder: Path, write: Callable[[Path, bytes], None]) -> None:
        self.folder = folder
        self.write = write
        self.prefix: list[str] = []
        self.reused_seconds = 0.0
        """Compute time of the parts read back instead of computed (a cell's cost includes it)."""
        self.code: set[str] = set()
        """The code versions that computed the parts read back."""

    def get(self, name: str, compute: Callable[[], T]) -> T:
        path = self.folder.joinpath(*self.prefix, f"{name}.pt")
        record = read_part(path) if path.exists() else None
        if record is not None and record["format"] == PART_FORMAT:
            self.reused_seconds += record["seconds"]
            self.code.add(record["code"])
            return record["value"]
        start, reused = time.perf_counter(), self.reused_seconds
        self.prefix.append(name)
        try:
            value = compute()
        finally:
            self.prefix.pop()
        seconds = time.perf_counter() - start + self.reused_seconds - reused
        buffer = io.BytesIO()
        record = {"value": value, "seconds": seconds, "code": code_version()}
        torch.save({**record, "format": PART_FORMAT}, buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StateError(
                f"Cannot store audit cell part {path} ({err.strerror}); free space or pick "
                "another folder. Cells stored before are intact."
            ) from err
        self.write(path, buffer.getvalue())
        shutil.rmtree(path.with_suffix(""), ignore_errors=True)  # its own parts, now inside it
        return value


_PARTS: ContextVar[_Parts | None] = ContextVar("audit_cell_parts", default=None)


def part(name: str, compute: Callable[[], T]) -> T:
    """``compute()``, stored as a part of the cell being computed in a cell folder, or read back
    when a stopped run stored it: attacks wrap each seed, init gain and learning rate in one, so
    a cell of hours loses at most the part it was in.  ``compute`` must return what
    ``torch.load(weights_only=True)`` reads back (numbers, strings, tensors, lists, dicts) and
    act on nothing outside it; ``name`` is unique among its siblings.  Outside a cell folder it
    just computes."""
    parts = _PARTS.get()
    return compute() if parts is None else parts.get(name, compute)


def _check_cells_path(root: Path) -> None:
    """``root`` must be a folder, or a path where one can be made: a file there read as "no
    cells for these settings" with ``compute=False``, and as a failed write otherwise."""
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == root else f"goes through the file {existing}"
        raise StateError(
            f"The cells path {root} {where}, not a folder: pass a writable folder for the "
            "audit's cells (the one a previous run wrote them to, or a new one)."
        )
    if (root / "settings.json").is_file():  # the report names it: given, all was recomputed
        raise StateError(
            f"The cells path {root} is the cell folder of one run's settings (it holds "
            f"settings.json): pass the folder above it, {root.parent}, where each run's "
            "settings get their own cell folder."
        )


class CellStore:
    """Finished cells of one audit run: in memory (``root=None``) or in ``root/<model>-<hash>``.

    ``context`` is every setting the cells depend on; it names the folder and is written beside
    the cells as ``settings.json``.  With ``compute=False`` the store only reads: missing cells
    are :data:`MISSING` and missing networks an error.  ``log`` tells when a cell goes on from
    stored parts.
    """

    def __init__(
        self,
        root: Path | None,
        context: dict[str, Any],
        *,
        poll_s: float = 5.0,
        compute: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.context = context
        self.poll_s = poll_s
        self.compute = compute
        self.log = log
        self.reused = 0
        self.computed = 0
        self.cell_times: dict[str, float] = {}
        """Each cell's compute time in this run's report, reused ones included, in the order
        the run met them: what a cell costs is what decides how to schedule the next ones."""
        self.code: set[str] = set()
        """The code versions that computed this run's cells (:func:`code_version`)."""
        self._memory: dict[str, Any] = {}
        self._networks: dict[str, dict[str, nn.Module]] = {}
        self.folder: Path | None = None
        if root is not None:
            _check_cells_path(Path(root))
            name = f"{context.get('model', 'audit')}-{fingerprint(context)}"
            self.folder = Path(root) / name
            if not compute and not self.folder.is_dir():
                others = sorted(p.name for p in Path(root).glob(f"{context.get('model')}-*"))
                raise StateError(
                    f"No cells for these settings in {root} (expected {name}/; found "
                    f"{', '.join(others) or 'none for this model'}): compare their "
                    "settings.json with the options given."
                )
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                settings = self.folder / "settings.json"
                if not settings.exists():
                    text = json.dumps(context, indent=2, sort_keys=True, default=str)
                    atomic_write_bytes(settings, text.encode())
            except OSError as err:
                raise StateError(
                    f"Cannot use {self.folder} for the audit's cells ({err.strerror}); pass a "
                    "writable folder with free space, or no cell folder at all."
                ) from err

    @property
    def cell_seconds(self) -> float:
        """Compute time of every cell in this run's report, reused ones included."""
        return sum(self.cell_times.values())

    def summary(self) -> dict[str, Any]:
        """What the report says of the cells (empty when they were kept in memory)."""
        if self.folder is None:
            return {}
        return {
            "folder": str(self.folder),
            "computed": self.computed,
            "reused": self.reused,
            "cell_seconds": round(self.cell_seconds, 1),
            "cell_times": {name: round(t, 1) for name, t in self.cell_times.items()},
            "code": sorted(self.code),
        }

    # -- cells ------------------------------------------------------------------------------
    def try_get(self, name: str, compute: Callable[[], Any]) -> Any:
        """The cell's stored value, or ``compute()`` run now and stored; :data:`PENDING` when
        another live process holds the cell's claim, :data:`MISSING` when the store only reads."""
        if self.folder is None:
            if name not in self._memory:
                self._memory[name] = self._timed(name, compute)["value"]
            return self._memory[name]
        path = self.folder / f"{name}.json"
        parts_folder = self.folder / f"{name}.parts"

        def produce() -> Any:
            if stored := len(list(parts_folder.rglob("*.pt"))):
                self.log(f"{name}: going on from {stored} stored part(s) of a stopped run")
            parts = _Parts(parts_folder, self._write)
            token = _PARTS.set(parts)
            try:
                record = {**self._timed(name, compute, parts), "code": code_version()}
            finally:
                _PARTS.reset(token)
            if parts.code:
                record["parts_code"] = sorted(parts.code)
            self._write(path, json.dumps(record, indent=2).encode())
            shutil.rmtree(parts_folder, ignore_errors=True)
            return record["value"]

        return self._obtain(path, lambda: self._load(path), produce)

    def get(self, name: str, compute: Callable[[], Any]) -> Any:
        """Like :meth:`try_get`, but waits for a cell another process is computing (taking it
        over if that process dies)."""
        told = False
        while (value := self.try_get(name, compute)) is PENDING:
            told = told or self._waiting(self.folder / f"{name}.json")  # type: ignore[operator]
            time.sleep(self.poll_s)
        return value

    def _waiting(self, path: Path) -> bool:
        """Say once what this run waits for, and what to do if that process is gone."""
        claim = self._claim_path(path)
        with contextlib.suppress(OSError):
            holder = " ".join(claim.read_text().split()[:2])  # host and pid
            self.log(
                f"waiting for {path.name}: claimed by {holder} ({claim}); if that process is "
                "gone (on another host it cannot be checked), delete the claim file"
            )
        return True

    def _timed(
        self, name: str, compute: Callable[[], Any], parts: _Parts | None = None
    ) -> dict[str, Any]:
        """``compute()`` with its compute time, counting that of the parts read back."""
        start = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - start + (parts.reused_seconds if parts else 0.0)
        self.computed += 1
        self.cell_times[name] = seconds
        if self.folder is not None:
            self.code.add(code_version())
        if parts is not None:
            self.code.update(parts.code)
        return {"value": value, "seconds": seconds, "host": socket.gethostname()}

    def _load(self, path: Path) -> Any:
        record = read_cell(path)
        self.reused += 1
        self.cell_times[path.stem] = record["seconds"]
        self.code.add(record.get("code", "unknown"))
        self.code.update(record.get("parts_code", ()))
        return record["value"]

    def _obtain(self, path: Path, load: Callable[[], Any], produce: Callable[[], Any]) -> Any:
        """``load()`` if ``path`` exists, else ``produce()`` under this process's claim (which
        writes ``path``); :data:`PENDING` while another live process holds the claim."""
        while True:
            if path.exists():
                return load()
            if not self.compute:
                return MISSING
            if self._claim(path):
                try:
                    # finished between our check and our claim?
                    return load() if path.exists() else produce()
                finally:
                    self._release(path)
            if self._claim_alive(path):
                return PENDING

    # -- networks ---------------------------------------------------------------------------
    def modules(
        self,
        name: str,
        factory: Callable[[], nn.Module],
        make: Callable[[], dict[str, nn.Module]],
    ) -> dict[str, nn.Module]:
        """Networks stored under ``name`` (state dicts loaded into ``factory()``), or ``make()``
        trained now and stored; in eval mode either way.  Waits while another process trains
        them."""
        if self.folder is None:
            if name not in self._networks:
                self._networks[name] = make()
            return self._networks[name]
        path = self.folder / f"{name}.pt"

        def produce() -> dict[str, nn.Module]:
            nets = make()
            buffer = io.BytesIO()
            torch.save({k: net.state_dict() for k, net in nets.items()}, buffer)
            self._write(path, buffer.getvalue())
            return {k: net.eval() for k, net in nets.items()}

        told = False
        while True:
            nets = self._obtain(path, lambda: self._load_modules(path, factory), produce)
            if nets is MISSING:
                raise StateError(
                    f"{path} does not exist: no run has stored its networks in {self.folder} "
                    "yet. Run the audit with this cell folder once without --stored-only."
                )
            if nets is not PENDING:
                return nets
            told = told or self._waiting(path)
            time.sleep(self.poll_s)

    @staticmethod
    def _load_modules(path: Path, factory: Callable[[], nn.Module]) -> dict[str, nn.Module]:
        try:
            states = torch.load(path, weights_only=True)
            nets = {}
            for key, state in states.items():
                net = factory()
                net.load_state_dict(state)
                nets[key] = net.eval()
        except Exception as err:  # torch raises several types for a damaged or foreign file
            raise StateError(
                f"Stored networks {path} cannot be loaded ({type(err).__name__}: {err}); delete "
                "the whole cell folder and run again (its cells were computed on these networks)."
            ) from err
        return nets

    # -- claims and writes ------------------------------------------------------------------
    def _write(self, path: Path, data: bytes) -> None:
        try:
            atomic_write_bytes(path, data)
        except OSError as err:
            raise StateError(
                f"Cannot store audit cell {path} ({err.strerror}); free space or pick another "
                "folder. Cells stored before are intact."
            ) from err

    @staticmethod
    def _claim_path(path: Path) -> Path:
        return path.with_name(path.name + ".claim")

    def _claim(self, path: Path) -> bool:
        """Link a written claim file into place (atomic, so never seen empty); ``False`` if
        another process holds the claim."""
        claim = self._claim_path(path)
        tmp = claim.with_name(f".{claim.name}.{os.getpid()}")
        try:
            tmp.write_text(f"{socket.gethostname()} {os.getpid()} {CLAIM_TOKEN}\n")
            os.link(tmp, claim)
        except FileExistsError:
            return False
        except OSError as err:
            raise StateError(
                f"Cannot claim audit cell {path} ({err.strerror}); free space or pick another "
                "folder. Cells stored before are intact."
            ) from err
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return True

    def _claim_alive(self, path: Path) -> bool:
        """Whether the claim's holder still runs; a dead holder's claim is removed."""
        claim = self._claim_path(path)
        try:
            host, pid, *token = claim.read_text().split()  # no token: written before it
            alive = _process_alive(host, int(pid), *token[:1])
        except FileNotFoundError:
            return False  # released meanwhile: look again
        except ValueError:
            alive = False  # not a claim this module wrote
        if not alive:
            with contextlib.suppress(FileNotFoundError):
                claim.unlink()
        return alive

    def _release(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._claim_path(path).unlink()
