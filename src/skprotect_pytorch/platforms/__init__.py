"""Deployment platforms: how a locked model's key is written next to it.

- TXT: two plaintext files per model and format group (``key_vector_inv_<model>.txt`` and
  ``key_params_<model>.json``), read by the runners to build a fresh key each session.
- LINUX: one AES-256-GCM encrypted key file ``mev_<model>_<format>.bin`` per protected model
  file, bound to the model name, format and model hash, for the Skyld Linux keystore.
"""

from __future__ import annotations

from pathlib import Path

from skruntime.keyfile import write_txt_keys
from skruntime.mev import mev_filename, write_mev

from ..formats import ExportPlatform
from ..lock.key_layout import KeyLayout
from ..state import ProtectionState


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
    unlocks = sorted({*model_hashes.values(), *(also_unlocks or [])})
    folder.mkdir(parents=True, exist_ok=True)
    static_key = layout.static_key()
    # the shares' masks come from their own derived stream: independent of the key's draws,
    # and reproducible like the rest of the files
    rng = state.key_rng(model_name, f"{folder.name}/txt-shares", key_epoch)
    if platform is ExportPlatform.TXT:
        paths = write_txt_keys(
            folder,
            model_name,
            static_key,
            layout.spec(),
            test_key=test_key,
            rng=rng,
            model_sha256=unlocks,
        )
        return {slug: list(paths) for slug in model_hashes}
    files: dict[str, list[Path]] = {}
    extra = []
    if test_key:  # test keys are meant to be fed by hand, next to the encrypted ones
        extra = write_txt_keys(
            folder,
            model_name,
            static_key,
            layout.spec(),
            test_key=True,
            rng=rng,
            model_sha256=unlocks,
        )
    for slug, digest in model_hashes.items():
        path = folder / mev_filename(model_name, slug)
        write_mev(
            path,
            model_name=model_name,
            fmt_slug=slug,
            model_sha256=digest,
            key=static_key,
            spec=layout.spec(),
            kek=state.kek,
        )
        files[slug] = [path, *extra]
    return files
