"""What a protect call produced: files per format, key length, layer decisions, verification."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .lock import LayerDecision
from .lock.coverage import PlaintextWeight


@dataclass(frozen=True)
class FormatResult:
    """One exported, verified artifact."""

    format: str
    group: str
    path: Path
    key_length: int
    max_rel_error: float
    """Largest relative error of the artifact run with its key, versus the original model."""
    no_key_rel_diff: float
    """Relative difference of the artifact run with a zero key versus the original model."""
    seconds: float
    exporter: str


@dataclass
class ProtectionResult:
    """Summary of ``protect_new_model`` / ``protect_updated_model``; ``print()`` it to read it."""

    model_name: str
    application_name: str
    output_dir: Path
    platform: str
    platform_version: int
    config_path: Path
    key_epoch: int = 0
    """The key epoch the keys were drawn for (recorded in the configuration entry): 0 at first,
    one more with each ``protect_updated_model(..., rotate_keys=True)``."""
    formats: dict[str, FormatResult] = field(default_factory=dict)
    skipped_formats: dict[str, str] = field(default_factory=dict)
    key_files: list[Path] = field(default_factory=list)
    original_files: list[Path] = field(default_factory=list)
    layers: list[LayerDecision] = field(default_factory=list)
    folded_batchnorms: list[tuple[str, str]] = field(default_factory=list)
    plaintext_weights: list[PlaintextWeight] = field(default_factory=list)
    """Weight tensors outside every locked layer: written to the artifacts as they are."""
    plaintext_buffers: list[PlaintextWeight] = field(default_factory=list)
    """Floating-point buffers of two or more dimensions outside every locked layer, written to
    the artifacts as they are: public tables (masks, position encodings) or trained values."""
    seconds: float = 0.0

    @property
    def locked_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.locked]

    @property
    def skipped_layers(self) -> list[LayerDecision]:
        return [d for d in self.layers if not d.locked]

    @property
    def key_lengths(self) -> dict[str, int]:
        return {name: r.key_length for name, r in self.formats.items()}

    @property
    def files(self) -> list[Path]:
        return [r.path for r in self.formats.values()] + self.key_files + self.original_files

    def __str__(self) -> str:
        lines = [
            f"Protected model '{self.model_name}' of application '{self.application_name}' "
            f"in {self.seconds:.1f} s",
            f"  output folder : {self.output_dir}",
            f"  configuration : {self.config_path} (platform {self.platform}, "
            f"version {self.platform_version})",
            f"  key epoch     : {self.key_epoch}",
            f"  layers locked : {len(self.locked_layers)}, skipped: {len(self.skipped_layers)}",
        ]
        lines += [f"    - {d.name} ({d.layer_type}): {d.reason}" for d in self.skipped_layers]
        if self.plaintext_weights:
            lines.append(
                f"  weights stored in plaintext: {len(self.plaintext_weights)} (readable without "
                "the key)"
            )
            lines += [
                f"    - {w.name} {tuple(w.shape)}: {w.reason}" for w in self.plaintext_weights
            ]
        if self.plaintext_buffers:
            lines.append(
                f"  buffers stored as they are: {len(self.plaintext_buffers)} (readable without "
                "the key: fine for masks or position tables, not for trained values)"
            )
            lines += [f"    - {b.name} {tuple(b.shape)}" for b in self.plaintext_buffers]
        if self.folded_batchnorms:
            folded = ", ".join(f"{bn}→{conv}" for conv, bn in self.folded_batchnorms)
            lines.append(f"  BatchNorms folded: {folded}")
        lines.append("  formats:")
        for name, r in self.formats.items():
            lines.append(
                f"    - {name:<16} key length {r.key_length:>6}  max rel. error with key "
                f"{r.max_rel_error:.2e}  without key {r.no_key_rel_diff:.2f}  "
                f"{r.seconds:.1f} s  {r.path}"
            )
        for name, reason in self.skipped_formats.items():
            lines.append(f"    - {name:<16} SKIPPED: {reason}")
        lines.append("  key files:")
        lines += [f"    - {p}" for p in self.key_files]
        if self.original_files:
            lines.append("  original (unlocked) files:")
            lines += [f"    - {p}" for p in self.original_files]
        return "\n".join(lines)
