"""LINUX platform: one AES-256-GCM encrypted key file ``mev_<model>_<format>.bin`` per protected
model file, bound to the model name, format and model file's SHA-256, which skruntime opens with
the application's key-encryption key (given to it, or released by the licence server); with
``test_key=True`` the TXT key files of the static key too, for testing."""

from __future__ import annotations

from pathlib import Path

from skruntime.config import ModelEntry
from skruntime.errors import KeyFileError
from skruntime.files import NotRegularFileError, open_regular
from skruntime.mev import (
    MAX_MEV_BYTES,
    MEV_MAGIC,
    NONCE_SIZE,
    TAG_SIZE,
    mev_filename,
    read_mev,
    write_mev,
)

from ..formats import ExportPlatform
from .base import GroupKeys, KeyFileFault, register_platform
from .txt import plain_keys_written_for, write_plain_keys


@register_platform(ExportPlatform.LINUX)
class LinuxPlatform:
    """Encrypted key files, one per format; plain ones only for a test key."""

    member = ExportPlatform.LINUX

    def writes_plain_keys(self, test_key: bool) -> bool:
        """Only for a test key, meant to be fed by hand next to the encrypted ones."""
        return test_key

    def write_keys(self, folder: Path, keys: GroupKeys) -> dict[str, list[Path]]:
        """Each format's encrypted key file, followed by the test key's TXT files if any."""
        plain = write_plain_keys(folder, keys, test_key=True) if keys.test_key else []
        files: dict[str, list[Path]] = {}
        for slug, digest in keys.model_hashes.items():
            path = folder / mev_filename(keys.model_name, slug)
            write_mev(
                path,
                model_name=keys.model_name,
                fmt_slug=slug,
                model_sha256=digest,
                key=keys.static_key,
                spec=keys.spec,
                kek=keys.kek,
            )
            files[slug] = [path, *plain]
        return files

    def written_for(
        self,
        outputs_dir: Path,
        model_name: str,
        entry: ModelEntry,
        slug: str,
        digest: str,
        kek: bytes | None,
    ) -> bool:
        """The encrypted key file opens for ``digest`` (its AES-GCM tag authenticates the model,
        format and model file's SHA-256); without the ``kek``, a test key's TXT files say."""
        fmt = entry.formats[slug]
        mev = next(
            (k for k in fmt.key_files if Path(k).name == mev_filename(model_name, slug)), None
        )
        if mev is None or kek is None:
            return plain_keys_written_for(outputs_dir, model_name, fmt, digest)
        path = outputs_dir / mev
        if not path.exists():  # a folder or named pipe there is refused by _fault, as TXT's
            return True  # the runtime reports a missing key file
        problem = _fault(path, entry.key.length)
        if problem is not None:
            raise KeyFileFault(path, model_name, problem)
        try:
            read_mev(path, model_name=model_name, fmt_slug=slug, model_sha256=digest, kek=kek)
        except KeyFileError:
            return False
        return True


def _fault(path: Path, key_length: int) -> str | None:
    """Why the encrypted key file ``path`` of a key of ``key_length`` values cannot be tried on
    a model file at all (unreadable, too short or long, not a key file); None when it can, and
    then a failed decryption means another model file, or a key file modified in place."""
    try:  # not open(): a named pipe swapped in since the is_file() check would block it
        with open_regular(path) as file:
            data = file.read(MAX_MEV_BYTES + 1)
    except NotRegularFileError as err:
        return f"is not a regular file but {err.kind}"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if len(data) > MAX_MEV_BYTES:
        return f"is larger than any key file (more than {MAX_MEV_BYTES} bytes)"
    # magic, nonce, header length, the key's float32 values and the tag: the header adds more
    least = len(MEV_MAGIC) + NONCE_SIZE + 4 + 4 * key_length + TAG_SIZE
    if not data.startswith(MEV_MAGIC[: len(data)]):
        return f"is not an encrypted key file (it does not start with {MEV_MAGIC.decode()})"
    if len(data) < least:
        return (
            f"is truncated ({len(data)} bytes, where a key of {key_length} values needs at "
            f"least {least})"
        )
    return None
