"""Private protection state: the application's master secret and everything derived from it.

Folder: ``root`` argument, else ``$SKPROTECT_STATE_DIR``, else ``./.skprotect_private``; then
``/<application_name>/``. It is created owner-only (``0700``) and holds ``master.key``: 32
random bytes, mode ``0600``; after a key rotation also ``key_epochs.json`` (mode ``0600``), the
newest key epoch of each rotated model (:meth:`ProtectionState.key_epoch_floor`). It must never
ship, so a folder inside any ``outputs`` folder is refused. Everything else is derived with
HKDF-SHA256 from the master secret, so re-protecting an unchanged model reproduces the same keys
and files:

- ``key_rng(model, group, epoch)``: the random generator that draws a model's key per format group
  and key epoch;
- ``signing_key``: the Ed25519 key that signs the configuration file;
- ``kek``: the AES-256 key-encryption key of the LINUX key files (handed to the licence server with
  :meth:`ProtectionState.export_kek`).

Back up this folder: losing ``master.key`` means new keys (re-protect and re-deploy every model).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from skruntime.config import NAME_RE, atomic_write_bytes, canonical_json, public_key_bytes
from skruntime.files import open_regular, path_kind
from skruntime.keysource import kek_encoding

from .configuration import config_lock
from .errors import StateError

STATE_ENV_VAR = "SKPROTECT_STATE_DIR"
DEFAULT_STATE_DIRNAME = ".skprotect_private"
MASTER_KEY_FILENAME = "master.key"
MASTER_KEY_SIZE = 32
KEY_EPOCHS_FILENAME = "key_epochs.json"
_HKDF_SALT = b"skprotect/state/v1"
_POSIX = os.name == "posix"


def _inside_outputs(path: Path) -> bool:
    return "outputs" in path.resolve().parts


def state_root() -> Path:
    """The folder that holds the applications' state folders, as an absolute path:
    ``$SKPROTECT_STATE_DIR``, else ``./.skprotect_private`` of the current directory."""
    return Path(os.environ.get(STATE_ENV_VAR) or DEFAULT_STATE_DIRNAME).expanduser().absolute()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class ProtectionState:
    """An application's private protection state (see the module docstring).

    >>> state = ProtectionState.open("default_app")  # doctest: +SKIP
    >>> rng = state.key_rng("resnet18", "onnx", 0)  # doctest: +SKIP
    """

    def __init__(self, folder: Path, application_name: str, master: bytes) -> None:
        self.folder = folder
        self.application_name = application_name
        self._master = master

    def __repr__(self) -> str:
        return f"ProtectionState(application_name={self.application_name!r}, folder={self.folder})"

    def __reduce__(self) -> tuple:
        """Refuse pickling (and copying): the pickle would hold the master secret in plain bytes,
        from which every key of the application and its KEK derive."""
        raise TypeError(
            "ProtectionState (and an SkProtectorPyTorch holding it) cannot be pickled or copied: "
            "it holds the application's master secret. Create one SkProtectorPyTorch in each "
            "process instead (it reopens the private state folder)."
        )

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls, application_name: str, root: Path | str | None = None, *, create: bool = True
    ) -> ProtectionState:
        """Open (creating on first use, unless ``create`` is False) the state folder of
        ``application_name``.

        Raises:
            StateError: invalid application name; the folder is inside an ``outputs`` folder,
                accessible to other users, or not creatable; ``master.key`` is readable by
                others or has the wrong size; no ``master.key`` yet and ``create`` is False.
        """
        if not isinstance(application_name, str) or not NAME_RE.fullmatch(application_name):
            raise StateError(
                "application_name must be 1-128 characters of letters, digits, '_', '.' or '-' "
                f"(not starting with '.' or '-'), but got {application_name!r}."
            )
        base = Path(root).expanduser() if root else state_root()
        folder = base / application_name
        if _inside_outputs(folder.parent):  # the application's own name may be 'outputs'
            raise StateError(
                f"The private protection state folder {folder.resolve()} is inside an 'outputs' "
                "folder, which is shipped with the application; the master secret must never "
                f"ship. Set {STATE_ENV_VAR} (or run from another directory) so that the state "
                "lives outside outputs/."
            )
        master = folder / MASTER_KEY_FILENAME
        if not create and not master.exists():  # a new secret would unlock none of its files
            raise StateError(
                f"application '{application_name}' has no master secret ({master} does not "
                "exist): no model of it was protected with this state folder, and a new secret's "
                "key would unlock none of its files. Run this from the folder the "
                f"protection scripts ran in (with their {STATE_ENV_VAR}, if they set it), and "
                "check the application name."
            )
        try:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise StateError(
                f"Cannot create the private protection state folder {folder}: "
                f"{e.strerror or e}. Set {STATE_ENV_VAR} to a writable folder."
            ) from e
        if _POSIX and _mode(folder) & 0o077:
            raise StateError(
                f"The private protection state folder {folder} is accessible to other users "
                f"(mode {_mode(folder):o}). Run `chmod 700 {folder}` and retry."
            )
        return cls(folder, application_name, _load_or_create_master(master))

    # ------------------------------------------------------------------ derivations

    def _derive(self, purpose: str, **context: object) -> bytes:
        info = canonical_json({"app": self.application_name, "purpose": purpose, **context})
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=info).derive(
            self._master
        )

    def key_rng(self, model_name: str, group_value: str, epoch: int) -> np.random.Generator:
        """The deterministic generator that draws the key of (model, format group, key epoch)."""
        if not isinstance(model_name, str) or not model_name:
            raise StateError(f"model_name must be a non-empty string, but got {model_name!r}.")
        if not isinstance(group_value, str) or not group_value:
            raise StateError(f"group_value must be a non-empty string, but got {group_value!r}.")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise StateError(f"epoch must be an integer >= 0, but got {epoch!r}.")
        seed = self._derive("key-rng", model=model_name, group=group_value, epoch=epoch)
        return np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))

    def key_epoch_floor(self, model_name: str) -> int:
        """The newest key epoch that keys of ``model_name`` were drawn for in a rotation (0 if
        none). The configurations record a model's epoch too, but they live in ``outputs/``:
        once they are deleted (a clean build folder) or the model is dropped from them, the next
        protection would start again at epoch 0 and lock with a key that a rotation replaced
        because it had leaked. This record, beside the master secret, keeps it from going back.

        Raises:
            StateError: ``key_epochs.json`` cannot be read or is not what this class writes.
        """
        return self._key_epochs().get(model_name, 0)

    def record_key_epoch(self, model_name: str, epoch: int) -> None:
        """Remember that ``model_name``'s keys are drawn for ``epoch`` (a newer one recorded
        before is kept). Epoch 0 needs no record and writes nothing.

        Raises:
            StateError: ``key_epochs.json`` cannot be read or written.
        """
        path = self.folder / KEY_EPOCHS_FILENAME
        try:
            # the state folder's lock: two protections of the application rotating other
            # models at once would each write back what it read, and one record would be lost
            with config_lock(self.folder):
                epochs = self._key_epochs()
                if epoch <= epochs.get(model_name, 0):
                    return
                epochs[model_name] = epoch
                atomic_write_bytes(path, canonical_json(epochs) + b"\n", mode=0o600)
        except OSError as e:
            raise StateError(
                f"Could not record the key epoch of model '{model_name}' in {path}: "
                f"{e.strerror or e}. Free disk space or fix the folder's permissions, then "
                "protect again."
            ) from e

    def _key_epochs(self) -> dict[str, int]:
        path = self.folder / KEY_EPOCHS_FILENAME
        try:
            epochs = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise StateError(
                f"The key epochs file {path} cannot be read ({e}). Restore it from the backup "
                "of this state folder: without it a protection could lock a model with a key "
                "that a rotation replaced."
            ) from None
        if not isinstance(epochs, dict) or not all(
            type(v) is int and v > 0 for v in epochs.values()
        ):
            raise StateError(
                f"The key epochs file {path} is corrupted (expected an object of model names "
                "to epochs >= 1). Restore it from the backup of this state folder."
            )
        return epochs

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key that signs the configuration file (deterministic)."""
        return Ed25519PrivateKey.from_private_bytes(self._derive("config-signing-key"))

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key of :attr:`signing_key` (pin it in the runtime)."""
        return public_key_bytes(self.signing_key)

    @property
    def kek(self) -> bytes:
        """The 32-byte AES-256 key-encryption key of the LINUX key files (deterministic)."""
        return self._derive("key-encryption-key")

    def export_kek(self, path: Path | str) -> Path:
        """Write the KEK, base64 and a newline, to ``path`` (mode 0600) for the licence server.

        Raises:
            StateError: ``path`` is inside an ``outputs`` folder (the KEK must never ship), is
                a master secret of this state folder (writing it would destroy every key of
                that application), a folder, a device or named pipe, a path through a file, an
                existing file that holds something other than a key-encryption key (replacing
                it would destroy it), or cannot be written; ``path`` is not a path.
        """
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise StateError(f"path must be a file path (str or Path), but got {path!r}.")
        path = Path(path)
        if problem := kek_output_problem(path):
            raise StateError(problem)
        target = path.resolve()  # through '..' and symbolic links
        if (
            target.name == MASTER_KEY_FILENAME
            and target.parent.parent == self.folder.parent.resolve()
        ):
            raise StateError(
                f"{path} is the master secret of application '{target.parent.name}': writing the "
                "key there would destroy it. Pass another file name."
            )
        if _inside_outputs(path.parent):
            raise StateError(
                f"Refusing to write the key-encryption key to {path.resolve()}: it is inside an "
                "'outputs' folder, which ships with the application. Export it elsewhere and "
                "hand it to the licence server only."
            )
        if problem := _other_content(path):
            raise StateError(problem)
        data = base64.b64encode(self.kek) + b"\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data, mode=0o600)
        except OSError as e:
            raise StateError(
                f"Could not write the key-encryption key to {path}: {e.strerror or e}."
            ) from e
        return path


def kek_output_problem(output: Path) -> str | None:
    """Why the key-encryption key must not be written to ``output``, or None: a folder, a device
    or named pipe (the key file replaced it: ``/dev/null`` as root), or a path through a file
    (where mkdir would say only "File exists")."""
    if output.is_dir():  # '' and '.' too: typer reads an empty path as '.'
        return f"{output} is a folder; pass a file name for the key."
    if kind := path_kind(output):
        return f"{output} is {kind}, not a file; pass a file name for the key (mode 0600)."
    blocking = next((p for p in output.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        return f"{blocking} is a file, not a folder; pass a path in a folder."
    return None


def _other_content(path: Path) -> str | None:
    """Why the existing file ``path`` must not be replaced by the key-encryption key, or None:
    nothing there, an empty file, or a key-encryption key file (exported before, of any
    application). Anything else would be lost: a state folder's ``key_epochs.json``, the master
    secret of another state folder, a file of the user's."""
    try:
        with open_regular(path) as file:
            data = file.read(4097)
    except FileNotFoundError:
        return None
    except OSError as e:
        return (
            f"{path} exists and cannot be read ({e.strerror or e}) to check that replacing it "
            "loses nothing. Remove it first, or pass another file name."
        )
    if not data or kek_encoding(data) is not None:
        return None
    return (
        f"{path} exists and holds something other than a key-encryption key "
        f"({len(data) if len(data) <= 4096 else 'over 4096'} bytes): writing the key there "
        "would destroy it. Remove it first if it is not needed, or pass another file name."
    )


def _load_or_create_master(path: Path) -> bytes:
    if not path.exists():
        _create_master(path)
    try:
        if _POSIX and _mode(path) & 0o077:
            raise StateError(
                f"The master secret {path} is accessible to other users (mode "
                f"{_mode(path):o}). Run `chmod 600 {path}`; if others may have read it, delete "
                "the state folder and re-protect every model of the application."
            )
        if not path.is_file():
            raise StateError(f"The master secret {path} is not a regular file. Remove it.")
        secret = path.read_bytes()
    except OSError as e:
        raise StateError(f"Cannot read the master secret {path}: {e.strerror or e}.") from e
    if len(secret) != MASTER_KEY_SIZE:
        raise StateError(
            f"The master secret {path} is {len(secret)} bytes, expected {MASTER_KEY_SIZE}: it is "
            "corrupted. Restore it from your backup; otherwise delete it and re-protect every "
            "model of the application (new keys)."
        )
    return secret


def _create_master(path: Path) -> None:
    """Create ``master.key``: no reader ever sees a partial file, and the first writer wins."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".master.", suffix=".tmp")
    try:
        try:
            os.chmod(tmp, 0o600)
            if os.write(fd, os.urandom(MASTER_KEY_SIZE)) != MASTER_KEY_SIZE:
                raise OSError("short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
            os.link(tmp, path)
    except OSError as e:
        raise StateError(f"Cannot create the master secret {path}: {e.strerror or e}.") from e
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
