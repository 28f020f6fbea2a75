"""TXT platform: two plaintext key files per model and format group, ``key_vector_inv_<model>.txt``
and ``key_params_<model>.json``, from which the runners build a fresh key each session. The
LINUX platform writes the same files for ``test_key=True``."""

from __future__ import annotations

import json
from pathlib import Path

from skruntime.config import FormatEntry, ModelEntry
from skruntime.files import NotRegularFileError, open_regular
from skruntime.keyfile import key_params_filename, key_txt_filename, write_txt_keys

from ..formats import ExportPlatform
from .base import GroupKeys, KeyFileFault, register_platform


def plain_key_names(model_name: str) -> tuple[str, str]:
    """The TXT key files of ``model_name`` in a group folder: the key (or share A), params."""
    return key_txt_filename(model_name), key_params_filename(model_name)


def holds_test_key(folder: Path, model_name: str) -> bool:
    """Whether the TXT key files in ``folder`` are a static test key (not key shares)."""
    try:  # a named pipe there would block read_text(): refused unread
        with open_regular(folder / key_params_filename(model_name)) as file:
            params = json.loads(file.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False  # unreadable: taken for shares (its own runtime reports it)
    return isinstance(params, dict) and params.get("static") is True


def write_plain_keys(folder: Path, keys: GroupKeys, *, test_key: bool) -> list[Path]:
    """Write the group's TXT key files: the static key (``test_key``) or its two shares, bound
    to every model file the group's TXT key files unlock, with the nonce of the key commitment
    those model files record."""
    return write_txt_keys(
        folder,
        keys.model_name,
        keys.static_key,
        keys.spec,
        test_key=test_key,
        rng=keys.rng,
        model_sha256=keys.unlocks,
        commitment_nonce=keys.commitment_nonce,
    )


def plain_keys_written_for(
    outputs_dir: Path, model_name: str, fmt: FormatEntry, digest: str
) -> bool:
    """Whether the format's TXT key files were written for the model file of SHA-256 ``digest``;
    True where they do not say (none listed, written before they recorded it, or missing,
    which the runtime reports itself).

    Raises:
        KeyFileFault: the key-params file is there but cannot be read, or is not a JSON object.
    """
    params = next(
        (k for k in fmt.key_files if Path(k).name == key_params_filename(model_name)), None
    )
    if params is None:
        return True
    path = outputs_dir / params
    try:  # a named pipe there would block read_bytes(): refused unread
        with open_regular(path) as file:
            document = json.loads(file.read())
    except FileNotFoundError:
        return True
    except NotRegularFileError as err:
        raise KeyFileFault(path, model_name, f"is not a regular file but {err.kind}") from None
    except OSError as err:
        raise KeyFileFault(path, model_name, f"cannot be read ({err.strerror or err})") from None
    except (ValueError, RecursionError) as err:
        problem = f"is not a key-params file (not JSON: {str(err)[:80]})"
        raise KeyFileFault(path, model_name, problem) from None
    if not isinstance(document, dict):
        raise KeyFileFault(path, model_name, "is not a key-params file (not a JSON object)")
    written_for = document.get("model_sha256")
    return not isinstance(written_for, list) or digest in written_for


@register_platform(ExportPlatform.TXT)
class TxtPlatform:
    """Plaintext key files, one pair per format group, listed by each format of the group."""

    member = ExportPlatform.TXT

    def writes_plain_keys(self, test_key: bool) -> bool:
        """Always: the TXT key files are this platform's keys."""
        return True

    def write_keys(self, folder: Path, keys: GroupKeys) -> dict[str, list[Path]]:
        """The group's pair of TXT key files, listed by each of its formats."""
        paths = write_plain_keys(folder, keys, test_key=keys.test_key)
        return {slug: list(paths) for slug in keys.model_hashes}

    def written_for(
        self,
        outputs_dir: Path,
        model_name: str,
        entry: ModelEntry,
        slug: str,
        digest: str,
        kek: bytes | None,
    ) -> bool:
        """The key-params file's recorded SHA-256 (plain files: ``kek`` is not needed)."""
        return plain_keys_written_for(outputs_dir, model_name, entry.formats[slug], digest)
