"""The exported module: the locked model plus the key vector as its last input."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..export.base import dataclass_fields
from .context import KeySlots
from .coverage import PlaintextWeight
from .key_layout import KeyDecoder


@contextlib.contextmanager
def _mha_fastpath_disabled():
    """Transformer layers' fused fast path reads weights directly; locked layers must be called."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def plain_outputs(value: Any) -> Any:
    """``value`` (a model's outputs) with every ``NamedTuple`` (or other tuple subclass, such as
    ``torch.return_types``) and every dataclass instance a plain tuple (of its fields, in their
    order), through nested tuples, lists and dicts: the exports flatten outputs to tensors in
    the same order either way, but AOTInductor cannot serialise a NamedTuple class of the
    user's ("Can't serialize TreeSpec of namedtuple class"), which failed after the lock and
    the other exports, and no export returns a dataclass of the user's (``torch.jit.trace``
    and ``torch.export`` refuse it). A dict (a dataclass that is one too, as Hugging Face's
    ``ModelOutput``) stays a dict."""
    if isinstance(value, tuple):
        return tuple(plain_outputs(v) for v in value)
    if isinstance(value, list):
        return [plain_outputs(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_outputs(v) for k, v in value.items()}
    fields = dataclass_fields(value)
    return value if fields is None else tuple(plain_outputs(v) for v in fields.values())


class KeyedModel(nn.Module):
    """``forward(*inputs, key)``: decodes the key once, then runs the locked model.

    ``plaintext`` lists the weight tensors it stores unlocked: those the lock left
    (:mod:`.coverage`), then those its first checked run saw ``forward`` read from outside the
    model (:func:`.outside.run_keyed_checked`).
    """

    def __init__(
        self,
        model: nn.Module,
        decoder: KeyDecoder,
        slots: KeySlots,
        plaintext: list[PlaintextWeight],
    ) -> None:
        super().__init__()
        self.model = model
        self.decoder = decoder
        self._slots = slots
        self.plaintext = plaintext

    @property
    def key_length(self) -> int:
        return self.decoder.length

    def forward(self, *inputs: torch.Tensor):
        *model_inputs, key = inputs
        perms, scales = self.decoder(key)
        self._slots.perms, self._slots.scales = perms, scales
        try:
            with _mha_fastpath_disabled():
                return plain_outputs(self.model(*model_inputs))
        finally:
            self._slots.perms = self._slots.scales = None
