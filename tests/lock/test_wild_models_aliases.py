"""Models from the wild whose buffers or plain attributes hold a locked layer's weight under
another tensor object (``register_buffer("w", self.fc.weight.data)``, ``.detach().t()``): the
exports store those original values beside the locked weight, so they are reported as weights
stored in plaintext, not as harmless buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.assertions import assert_equivalent
from torch import nn

from skprotect_pytorch.lock import lock_model
from skprotect_pytorch.protect import SkProtectorPyTorch

EF = SkProtectorPyTorch.ExportFormat
X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))


class _WeightCopy(nn.Module):
    """A second path that reads ``a``'s weight through a tensor sharing its storage."""

    def __init__(self, view: str, holder: str) -> None:
        super().__init__()
        self.a = nn.Linear(16, 8)
        self.b = nn.Linear(8, 4)
        self.transposed = view == "detach_t"
        weight = self.a.weight.detach().t() if self.transposed else self.a.weight.data
        if holder == "buffer":
            self.register_buffer("w", weight, persistent=False)
        else:
            self.w = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w.t() if self.transposed else self.w
        return self.b(self.a(x)) + (x @ w.t()).sum(-1, keepdim=True)


CASES = [("data", "buffer"), ("detach_t", "buffer"), ("data", "attribute")]


@pytest.mark.parametrize(("view", "holder"), CASES)
def test_a_tensor_over_a_locked_weight_is_a_plaintext_weight(view: str, holder: str) -> None:
    """Was: listed among the buffers "fine for masks or position tables" (or not at all for
    a plain attribute); plaintext weights []."""
    model = _WeightCopy(view, holder).eval()
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    assert [(w.name, "locked layer 'a'" in w.reason) for w in locked.plaintext] == [("w", True)]
    assert locked.plaintext_buffers == []


def test_the_protector_reports_it_although_it_locks_a_copy(workdir: Path) -> None:
    """The protector locks a deep copy, which gives the weight its own storage: the alias is
    found on the user's model. Was: plaintext_weights [] and "buffers stored as they are: 1"."""
    torch.manual_seed(0)
    model = _WeightCopy("data", "buffer").eval()
    with torch.no_grad():
        expected = model(X)
    protector = SkProtectorPyTorch(application_name="app")
    result = protector.protect_new_model(
        model, "m", [X], model_export_formats=EF.ONNX, test_key=True
    )
    assert [w.name for w in result.plaintext_weights] == ["w"]
    assert "'a.weight' of locked layer 'a'" in result.plaintext_weights[0].reason
    assert result.plaintext_buffers == []
    from skruntime import SkRuntime

    with SkRuntime(protector.outputs_dir, platform="TXT").load("m", static_key=True) as loaded:
        assert_equivalent(loaded(X.numpy()), expected)


def test_a_kept_attention_bias_is_not_called_tied_to_its_own_layer() -> None:
    """``bias_k`` of a locked ``MultiheadAttention(add_bias_kv=True)`` is kept as it is. Was:
    "...; it is also the weight of locked layer 'att', whose key a thief can solve from the two:
    untie the weights", of a layer that stores no locked copy of it and ties nothing."""
    model = nn.Sequential()
    model.add_module("att", nn.MultiheadAttention(16, 4, add_bias_kv=True))
    locked = lock_model(model, layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0))
    assert [w.name for w in locked.plaintext] == ["att.bias_k", "att.bias_v"]
    assert not any("also the weight of locked layer" in w.reason for w in locked.plaintext)


def test_the_alias_of_a_compiled_model_is_named_as_the_lock_names_it() -> None:
    """The lock strips ``torch.compile`` wrappers, so ``_orig_mod`` leaves the names. Was,
    with the first version of this check: KeyError '_orig_mod.a' out of protect_new_model."""
    outer = nn.Module()
    outer.inner = torch.compile(_WeightCopy("data", "buffer"))
    locked = lock_model(
        torch.compile(outer), layer_filter=lambda n, m: True, secret_rng=np.random.default_rng(0)
    )
    assert [w.name for w in locked.plaintext] == ["inner.w"]
    assert "'inner.a.weight' of locked layer 'inner.a'" in locked.plaintext[0].reason
