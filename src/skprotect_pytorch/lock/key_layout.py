"""The flat key vector: where each layer's secret parts live, and its in-graph decoder.

Layout (float32, length ``P + 2*S``): every permutation slot's indices, then every scale slot's
first factor ``u``, then every scale slot's second factor ``v``; the graph uses ``u * v``.
A permutation entry ``i`` may be stored as ``i + n*t`` for any integer ``t`` (the graph reduces it
modulo the slot size ``n``), and a scale may be split as ``(u*2**a, v*2**-a)``: both give bitwise
identical outputs, which is how per-session keys differ in memory but not in results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KeyLayout:
    """Collects the secret key parts of every locked layer while the model is being locked."""

    perms: list[np.ndarray] = field(default_factory=list)
    scales: list[np.ndarray] = field(default_factory=list)

    def add_perm(self, perm: np.ndarray) -> int:
        """Register a permutation (int indices in ``[0, n)``); returns its slot id."""
        self.perms.append(np.asarray(perm, dtype=np.int64))
        return len(self.perms) - 1

    def add_scale(self, scale: np.ndarray) -> int:
        """Register a vector of non-zero scales; returns its slot id."""
        self.scales.append(np.asarray(scale, dtype=np.float32))
        return len(self.scales) - 1

    @property
    def perm_sizes(self) -> list[int]:
        return [len(p) for p in self.perms]

    @property
    def scale_sizes(self) -> list[int]:
        return [len(s) for s in self.scales]

    @property
    def length(self) -> int:
        return sum(self.perm_sizes) + 2 * sum(self.scale_sizes)

    def static_key(self) -> np.ndarray:
        """The canonical key: indices as floats, scales as ``u``, ones as ``v``."""
        parts = [p.astype(np.float32) for p in self.perms] + list(self.scales)
        parts += [np.ones_like(s) for s in self.scales]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32)

    def spec(self) -> dict:
        """What a runtime needs to re-randomise the key per session (no secret in it)."""
        return {
            "length": self.length,
            "perm_sizes": self.perm_sizes,
            "scale_sizes": self.scale_sizes,
        }

    def decoder(self) -> KeyDecoder:
        return KeyDecoder(self.perm_sizes, self.scale_sizes)


class KeyDecoder(nn.Module):
    """Turns the raw key input into per-slot index and scale tensors; no key indexes out of bounds.

    The key is flattened, cast to float32 and, in eager mode, padded/truncated to the expected
    length, so a key of the wrong length, dtype or shape decodes to garbage rather than reading
    out of bounds (an exported graph, traced with the right length, rejects other lengths);
    indices are cast to int32 and reduced modulo their slot size, so NaN or huge values cannot
    index outside.  Indices come out 1-D; scales as ``(n, 1)`` columns, the shape that channel-first
    rows broadcast against, so most slots need no per-slot Reshape in the exported graph.
    """

    def __init__(self, perm_sizes: list[int], scale_sizes: list[int]) -> None:
        super().__init__()
        self.perm_sizes = list(perm_sizes)
        self.scale_sizes = list(scale_sizes)
        self.n_perm = sum(perm_sizes)
        self.n_scale = sum(scale_sizes)
        self.length = self.n_perm + 2 * self.n_scale
        moduli = np.concatenate(
            [np.full(n, n, dtype=np.int32) for n in perm_sizes] or [np.zeros(0, np.int32)]
        )
        self.register_buffer("moduli", torch.from_numpy(moduli), persistent=False)

    def forward(self, key: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        flat = key.reshape(-1).to(torch.float32)
        if not torch.jit.is_tracing() and flat.shape[0] != self.length:
            # Only a key of the wrong length pays for the copies: exports are traced with the
            # right one and keep the key's length static, so the runtime, onnxruntime and the
            # packages' loaders reject any other length with an error before running.
            flat = F.pad(flat, (0, self.length))[: self.length]
        # Integer remainder by a positive modulus lies in [0, n) for every int32, including
        # what NaN or huge floats cast to: two graph ops, no out-of-bounds index possible.
        # int32, not int64: valid entries stay below 2**24 (exact in float32), and the cast,
        # the remainder and the Gathers are cheaper (the locked MLP, batch 1: 1.87 → 1.74).
        idx = torch.remainder(flat[: self.n_perm].to(torch.int32), self.moduli)
        u = flat[self.n_perm : self.n_perm + self.n_scale]
        v = flat[self.n_perm + self.n_scale :]
        scales = (u * v).reshape(-1, 1)  # columns: channel-first rows scale without a Reshape
        perms = list(torch.split(idx, self.perm_sizes)) if self.perm_sizes else []
        scale_list = list(torch.split(scales, self.scale_sizes)) if self.scale_sizes else []
        return perms, scale_list
