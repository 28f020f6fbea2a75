"""Shared state of one locking run and the per-call key slots that locked layers read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import SkProtectError
from .key_layout import KeyLayout


class KeySlots:
    """Holds the decoded key of the current forward call; every locked layer reads from it.

    Set by :class:`~skprotect_pytorch.lock.keyed_model.KeyedModel` around the wrapped model's
    forward, so the key only flows into activation ops of the traced graph.
    """

    def __init__(self) -> None:
        self.perms: list[torch.Tensor] | None = None
        self.scales: list[torch.Tensor] | None = None

    def _check(self) -> None:
        if self.perms is None or self.scales is None:
            raise SkProtectError(
                "A locked layer was called without a key. Call the locked model through its "
                "KeyedModel wrapper, passing the key vector as the last input."
            )

    def perm(self, slot: int) -> torch.Tensor:
        self._check()
        return self.perms[slot]

    def scale(self, slot: int) -> torch.Tensor:
        self._check()
        return self.scales[slot]


@dataclass
class LockSettings:
    """Tunable parameters of the lock construction (see docs/api.md)."""

    mix_block: int = 16
    """Size of the public orthogonal mixing blocks applied next to each weight."""
    min_group_channels: int = 16
    """Grouped/depthwise convs are regrouped until each group has this many input channels.
    16 is the mixing block, and a multiple of onnxruntime's NCHWc channel block (8 with AVX2,
    16 with AVX-512), so the regrouped convs keep its blocked kernels: with AVX-512 a 3×3 conv
    in groups of 8 fell back to a generic kernel and ran 1.6–2.1× slower than in groups of 16,
    twice the MACs (docs/benchmarks.md)."""
    quantize_compatibility: bool = False
    """Use unit-magnitude (sign) scales so the locked weights keep the original value ranges,
    and keep each linear's weight the second GEMM operand (``x W'ᵀ``), the only one onnxruntime's
    quantizers quantize; the default ``W' @ xᵀ`` saves a transpose per layer."""
    mix_sides: str = "both"
    """``"smaller"``: public mixing on the smaller channel side of each layer; ``"both"``: on
    both sides, so that a stored entry mixes ``mix_block²`` true entries instead of
    ``mix_block`` (aligned correlation ≈ 1/16 instead of ≈ 1/4 with blocks of 16)."""
    mix_condition: float = 16.0
    """Condition number of each public mixing block (1 = orthogonal). Above 1 the mixing also
    changes each locked matrix's singular values, which an orthogonal one leaves for a thief to
    start from: on the suite CNN at 1 %, A3 reached 20.9 % with orthogonal mixing, 19.0 % at 4
    and 13.5 % at 16, against 17.8 % from scratch. ``quantize_compatibility`` uses 1 (a
    conditioned mixing widens the stored value ranges)."""
    unfold_taps_max: int = 32
    """A one-group conv with fewer than ``min_group_channels`` input channels and at most this
    many ``channels × taps`` (a 3×3 stem on grey or RGB images) is locked as a public tap
    unfold (a one-hot grouped conv, exact) and a 1×1 conv over the unfolded channels, so that
    the mixing and the key reach its spatial taps too: channel mixing alone leaves every stored
    kernel a mixture of true kernels, and on the suite CNN's 1-channel stem that kept an
    aligned |cos| 0.18 above a twin network's.  The unfold costs about ``taps`` passes over
    the input: a 7×7 RGB stem (147) at 224 px added about 25 % to ResNet-18 in onnxruntime,
    hence the cap.  0 turns it off."""
    keyed_sides: str = "both"
    """``"both"``: keyed monomials on both channel sides of every layer; ``"mixed"``: only on
    the side(s) with the public mixing.  ``"mixed"`` halves the key ops but fails the audit
    (the null key already decodes the unkeyed side: docs/security.md); no preset uses it."""

    def __post_init__(self) -> None:
        if self.mix_block < 2:
            raise ValueError(f"mix_block must be >= 2, but got {self.mix_block}")
        if self.mix_sides not in ("smaller", "both"):
            raise ValueError(f"mix_sides must be 'smaller' or 'both', but got {self.mix_sides!r}")
        if self.keyed_sides not in ("both", "mixed"):
            raise ValueError(f"keyed_sides must be 'both' or 'mixed', but got {self.keyed_sides!r}")
        if not self.mix_condition >= 1.0:
            raise ValueError(f"mix_condition must be >= 1, but got {self.mix_condition}")
        if self.unfold_taps_max < 0:
            raise ValueError(f"unfold_taps_max must be >= 0, but got {self.unfold_taps_max}")
        if self.min_group_channels < 1:
            raise ValueError(f"min_group_channels must be >= 1, but got {self.min_group_channels}")

    @property
    def mixing_condition(self) -> float:
        """The condition number the lock uses: ``mix_condition``, or 1 for quantization."""
        return 1.0 if self.quantize_compatibility else self.mix_condition

    @classmethod
    def preset(cls, name: str, **overrides: object) -> LockSettings:
        """The named trade-off between strength and inference overhead (docs/security.md)."""
        if name not in LOCK_PRESETS:
            raise ValueError(
                f"Unknown lock preset {name!r}; choose one of {', '.join(LOCK_PRESETS)}."
            )
        return cls(**{**LOCK_PRESETS[name], **overrides})


LOCK_PRESETS: dict[str, dict[str, object]] = {
    "strong": {},  # the defaults of LockSettings
    "balanced": {"mix_sides": "smaller"},
}
"""Named lock constructions, strongest first.  ``strong`` passes the whole audit gate;
``balanced`` costs less but its stored weights keep a measurable correlation with the true ones
(gate 4); numbers in docs/security.md and docs/benchmarks.md."""
DEFAULT_PRESET = "strong"


@dataclass
class LockContext:
    """Everything a locker needs: the key being built, the secret randomness, the settings."""

    layout: KeyLayout
    secret_rng: np.random.Generator
    slots: KeySlots
    settings: LockSettings = field(default_factory=LockSettings)
    public_seed: str = ""

    def public_rng(self, name: str) -> np.random.Generator:
        """Randomness for public constants (mixing matrices): reproducible, not secret."""
        digest = hashlib.sha256(f"{self.public_seed}/{name}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def random_scales(self, n: int) -> np.ndarray:
        """Secret scales: random sign times a magnitude in [1/8, 8].

        With ``quantize_compatibility`` the magnitude is 1, so locked weights keep the value
        ranges of the originals.  Signs and a wide magnitude range make a wrong key's output
        decorrelate even on layers with few channels (a 3-channel head with scales in
        [0.35, 2.8] kept ~58% of its signal under another key when the permutation matched).
        """
        signs = self.secret_rng.choice(np.array([-1.0, 1.0]), size=n)
        if self.settings.quantize_compatibility:
            return signs.astype(np.float32)
        return (signs * np.exp2(self.secret_rng.uniform(-3.0, 3.0, size=n))).astype(np.float32)
