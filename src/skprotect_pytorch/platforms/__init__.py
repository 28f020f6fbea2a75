"""Deployment platforms: how a locked model's key is written next to it and checked.

One module per platform behind :class:`~.base.Platform` (registered by ``ExportPlatform``):

- :mod:`.txt`: two plaintext files per model and format group (``key_vector_inv_<model>.txt``
  and ``key_params_<model>.json``), read by the runners to build a fresh key each session.
- :mod:`.linux`: one AES-256-GCM encrypted key file ``mev_<model>_<format>.bin`` per protected
  model file, bound to the model name, format and model hash, for the Skyld Linux keystore.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..formats import ExportPlatform
from . import linux, txt  # noqa: F401  (registers the platforms)
from .base import GroupKeys, KeyFileFault, Platform, get_platform, register_platform

if TYPE_CHECKING:
    from ..lock.key_layout import KeyLayout
    from ..state import ProtectionState

__all__ = [
    "GroupKeys",
    "KeyFileFault",
    "Platform",
    "commitment_nonce",
    "get_platform",
    "register_platform",
    "write_platform_keys",
]


def commitment_nonce(state: ProtectionState, model_name: str, group: str, key_epoch: int) -> str:
    """The nonce of the key commitment of (model, format group, key epoch): secret, from its own
    derived stream, and the same for every protection of that key (a model file kept from the
    other platform records the commitment of the TXT key files written beside it)."""
    rng = state.key_rng(model_name, f"{group}/key-commitment", key_epoch)
    return rng.bytes(32).hex()


def write_platform_keys(
    platform: ExportPlatform,
    folder: Path,
    *,
    model_name: str,
    layout: KeyLayout,
    model_hashes: dict[str, str],
    test_key: bool,
    state: ProtectionState,
    key_epoch: int,
    also_unlocks: list[str] | None = None,
) -> dict[str, list[Path]]:
    """Write the key files of one format group; returns the key files of each format slug.
    ``also_unlocks``: SHA-256 of the other platform's model files that share this group's TXT
    key files, recorded with this group's own so that both runtimes accept them."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = GroupKeys(
        model_name=model_name,
        static_key=layout.static_key(),
        spec=layout.spec(),
        model_hashes=model_hashes,
        unlocks=sorted({*model_hashes.values(), *(also_unlocks or [])}),
        test_key=test_key,
        # the shares' masks come from their own derived stream: independent of the key's
        # draws, and reproducible like the rest of the files
        rng=state.key_rng(model_name, f"{folder.name}/txt-shares", key_epoch),
        commitment_nonce=commitment_nonce(state, model_name, folder.name, key_epoch),
        kek=state.kek,
    )
    return get_platform(platform).write_keys(folder, keys)
