"""Files the other platform's configuration lists: both platforms write a format group's model
file to the same path, so a protection for one must not silently break the other's deployment.

TorchScript and AOTInductor files are never byte-identical from one export to the next, so
protecting a model for the second platform used to rewrite them and leave the first platform's
configuration refusing its own files (``IntegrityError``). Now an existing file that the other
platform ships is kept when it still computes this protection's model with this protection's
key (the same model version: the key depends on the application, model and group only); a
file of another version is replaced with a warning that names what to protect again. An update
never retires a file the other platform lists, and TXT key files both list unlock both
platforms' model files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from skruntime.config import CONFIG_FILENAMES, load_config, sha256_file
from skruntime.errors import SkProtectError

from .errors import InvalidArgumentError
from .formats import ExportPlatform
from .logs import get_logger
from .platforms.txt import holds_test_key, plain_key_names


@dataclass(frozen=True)
class OtherPlatform:
    """The other platform's files of one model: model files with their recorded SHA-256, and
    key files (paths relative to the application's outputs folder), and its key epoch."""

    platform: ExportPlatform
    model_files: dict[str, str | None]
    key_files: frozenset[str]
    key_epoch: int
    # its model files this protection's replace (once committed), in the order found
    replaced: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls, outputs_dir: Path, platform: ExportPlatform, model_name: str
    ) -> OtherPlatform | None:
        """The other platform's entry of ``model_name``; None when it has no readable one
        (nothing of it to keep: an unreadable file is reported by its own runtime)."""
        other = next(p for p in ExportPlatform if p is not platform)
        path = outputs_dir / CONFIG_FILENAMES[other.value]
        if not path.is_file():
            return None
        try:
            entry = load_config(path).models.get(model_name)
        except SkProtectError:
            return None
        if entry is None:
            return None
        return cls(
            other,
            {f.file: f.sha256 for f in entry.formats.values()},
            frozenset(k for f in entry.formats.values() for k in f.key_files),
            entry.key_epoch,
        )

    def refuse_key_clash(
        self, outputs_dir: Path, model_name: str, groups: list[str], static: bool
    ) -> None:
        """Refuse to write TXT key files (``static``: a test key, else key shares) where the
        other platform's configuration lists TXT key files of the other kind: a LINUX test
        key written over a TXT deployment's shares would silently turn its key into the plain
        key, and TXT shares over a LINUX test key would break that test. The same kind is the
        same key (it depends on the application, model and group only)."""
        key, params = plain_key_names(model_name)
        clash = sorted(
            f"{model_name}/{group}/{key}"
            for group in groups
            if f"{model_name}/{group}/{params}" in self.key_files
            and holds_test_key(outputs_dir / model_name / group, model_name) != static
        )
        if not clash:
            return
        theirs = "key shares" if static else "static test key"
        ours = "the static test key" if static else "key shares"
        raise InvalidArgumentError(
            f"This protection writes {ours} as {', '.join(clash)}, where the "
            f"{self.platform.value} configuration of this application keeps the {theirs} of "
            f"model '{model_name}': that deployment would silently get the other kind of key. "
            "Protect one of the two into another application_name, or both with the same "
            "test_key."
        )

    def shipped_digest(self, relative: str, final: Path) -> str | None:
        """The SHA-256 of ``final`` when it is the other platform's model file as its
        configuration records it (so that replacing it would break that deployment), else
        None; a version-0 configuration records no SHA-256, so there presence is enough."""
        if relative not in self.model_files or not final.is_file():
            return None
        digest = sha256_file(final)
        return digest if self.model_files[relative] in (None, digest) else None

    @property
    def files(self) -> set[str]:
        """Every file the other platform lists for the model: an update never retires them."""
        return set(self.model_files) | set(self.key_files)

    def hashes_beside(self, model_name: str, group: str) -> list[str]:
        """The recorded SHA-256 of the other platform's model files in ``group`` when it
        shares this group's TXT key files, which must then unlock those files too."""
        params = f"{model_name}/{group}/{plain_key_names(model_name)[1]}"
        if params not in self.key_files:
            return []
        return [
            digest
            for file, digest in self.model_files.items()
            if digest is not None and file.startswith(f"{model_name}/{group}/")
        ]

    def warn_replaced(self, model_name: str) -> None:
        """Say which of the other platform's model files this protection replaced (noted in
        :attr:`replaced` as each was exported): said once the files are in place, since a
        protection that fails later leaves the other deployment's files as they were."""
        for relative in self.replaced:
            self._warn_replaced(relative, model_name)

    def _warn_replaced(self, relative: str, model_name: str) -> None:
        message = (
            f"{relative} was the {self.platform.value} deployment's file and now holds this "
            f"protection's (it does not compute this version of '{model_name}' with this key: "
            "a new version, new keys from rotate_keys, or another lock_preset or "
            "quantize_compatibility than that deployment's; or it records other dynamic ranges "
            "than this protection's dynamic_shapes, records no key commitment (written by an "
            "skprotect before 2026-12-07) where this protection writes TXT key files, or is a GPU "
            f"file with dynamic axes, which cannot be checked at other sizes): the "
            f"{self.platform.value} configuration refuses it (IntegrityError) until "
            f"'{model_name}' is protected for {self.platform.value} again. Protect both "
            "platforms with the same lock_preset, quantize_compatibility and dynamic_shapes, so "
            "that they share the file: with other settings each protection replaces the other's."
        )
        get_logger().warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=6)  # the protector's caller


def warn_plain_keys_beside_linux(outputs_dir: Path, model_name: str) -> None:
    """Warn when TXT key files of ``model_name`` (TXT platform or ``test_key=True``) sit in a
    group folder of its LINUX deployment: the key is the same for both platforms, so shipping the
    folder as is gives anyone the key and the model without a licence."""
    path = outputs_dir / CONFIG_FILENAMES[ExportPlatform.LINUX.value]
    if not path.is_file():
        return
    try:
        entry = load_config(path).models.get(model_name)
    except SkProtectError:
        return
    if entry is None:
        return
    groups = sorted({f.group for f in entry.formats.values()})
    plain = [
        f"{model_name}/{group}/{name}"
        for group in groups
        for name in plain_key_names(model_name)
        if (outputs_dir / model_name / group / name).is_file()
    ]
    if not plain:
        return
    message = (
        f"{outputs_dir} holds the key of model '{model_name}' in plain files ({', '.join(plain)}: "
        "TXT platform or test_key=True), and that key also unlocks the LINUX files beside "
        "them: whoever gets these files runs the model without a licence. Ship a LINUX "
        f"deployment without them (only {path.name}, the model files and mev_*.bin), or "
        "protect the TXT or test build into another application_name."
    )
    get_logger().warning(message)
    warnings.warn(message, UserWarning, stacklevel=5)


def warn_untracked_files(outputs_dir: Path, model_name: str) -> None:
    """Warn about files in the model's folder that no configuration of the application lists
    (``original/`` aside, warned about on its own): locked models and keys of an earlier
    protection whose configuration entry is gone (a configuration deleted to start again, or
    the other platform's dropped). No runtime loads them, but they ship with the folder, and
    their keys still unlock their models."""
    listed: set[str] = set()
    for platform in ExportPlatform:
        path = outputs_dir / CONFIG_FILENAMES[platform.value]
        if not path.is_file():
            continue
        try:
            entry = load_config(path).models.get(model_name)
        except SkProtectError:
            return  # which files an unreadable configuration lists cannot be told
        if entry is not None:
            for fmt in entry.formats.values():
                listed |= {fmt.file, *fmt.key_files}
    folder = outputs_dir / model_name
    untracked = sorted(
        relative
        for relative in (p.relative_to(outputs_dir).as_posix() for p in folder.rglob("*"))
        if relative not in listed
        and not relative.startswith(f"{model_name}/original/")
        and (outputs_dir / relative).is_file()
    )
    if not untracked:
        return
    message = (
        f"{outputs_dir} holds files of model '{model_name}' that no configuration lists "
        f"({', '.join(untracked)}): left by an earlier protection whose configuration entry is "
        "gone (a configuration file deleted or replaced). No runtime loads them, but they ship "
        f"with the folder and their keys still unlock their models: delete them before shipping."
    )
    get_logger().warning(message)
    warnings.warn(message, UserWarning, stacklevel=5)
