"""Export formats, their format groups (one key each), and deployment platforms."""

from __future__ import annotations

import enum


class _ExportFormatType(enum.EnumType):
    """Names the replacement when a pre-0.2 format value such as ``TORCHSCRIPT`` is used."""

    def __getattr__(cls, name: str):
        from .legacy import LEGACY_FORMAT_NAMES

        if name in LEGACY_FORMAT_NAMES:
            from .errors import RemovedFormatError

            raise RemovedFormatError(
                f"ExportFormat.{name} was removed in v0.2.0: use ExportFormat."
                f"{LEGACY_FORMAT_NAMES[name]}."
            )
        raise AttributeError(name)


class ExportFormat(enum.Flag, metaclass=_ExportFormatType):
    """Formats to save the protected model in; combine them with ``|``."""

    ONNX = enum.auto()
    TORCHSCRIPT_CPU = enum.auto()
    TORCHSCRIPT_GPU = enum.auto()
    INDUCTOR_CPU = enum.auto()
    INDUCTOR_GPU = enum.auto()

    @property
    def members(self) -> list[ExportFormat]:
        """The single formats contained in this combination, in declaration order."""
        return [f for f in ExportFormat if f in self and f.value]

    @property
    def slug(self) -> str:
        """File-system and configuration name of a single format, e.g. ``inductor_cpu``."""
        return self.name.lower()

    @property
    def group(self) -> FormatGroup:
        """The format group (and so the key) a single format belongs to."""
        return _GROUP_OF[self]

    @property
    def needs_cuda(self) -> bool:
        return self.group is FormatGroup.GPU


class FormatGroup(enum.Enum):
    """A model is locked once per group, each group with its own key."""

    ONNX = "onnx"
    CPU = "cpu"
    GPU = "gpu"


_GROUP_OF = {
    ExportFormat.ONNX: FormatGroup.ONNX,
    ExportFormat.TORCHSCRIPT_CPU: FormatGroup.CPU,
    ExportFormat.INDUCTOR_CPU: FormatGroup.CPU,
    ExportFormat.TORCHSCRIPT_GPU: FormatGroup.GPU,
    ExportFormat.INDUCTOR_GPU: FormatGroup.GPU,
}


class ExportPlatform(enum.Enum):
    """Where the keys are deployed: plaintext files, or the Linux keystore (encrypted)."""

    TXT = "TXT"
    LINUX = "LINUX"
