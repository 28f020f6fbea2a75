"""Locker for ``nn.MultiheadAttention``: the q, k, v and output projections are locked linears.

:class:`LockedMultiheadAttention` recomputes what torch's ``MultiheadAttention`` computes in
eval mode (``F.multi_head_attention_forward`` of torch 2.13) with plain tensor ops, so that it
traces and exports (``torch.export``, ``torch.jit.trace``) with dynamic batch and sequence
lengths: no Python int taken from a tensor shape is ever baked into the graph.  Each projection
is a :class:`~skprotect_pytorch.lock.linear.LockedLinear` that takes and returns true-basis
activations; the key only touches activations inside it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .context import LockContext
from .linear import LockedLinear, lock_linear_weights
from .registry import register_locker


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype, name: str) -> torch.Tensor | None:
    """torch's ``_canonical_mask``: bool masks become 0/-inf float masks, float masks are kept."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise AssertionError(f"only bool and floating types of {name} are supported")
    return mask


def _pad_last(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Append one attendable (zero) key column to a float mask."""
    return None if mask is None else F.pad(mask, (0, 1))


class LockedMultiheadAttention(nn.Module):
    """Eval-mode ``nn.MultiheadAttention`` whose four projections are locked linears.

    Same call signature and return value as ``nn.MultiheadAttention.forward``.  Dropout is an
    eval-only no-op.  ``in_proj_weight``/``in_proj_bias`` are ``None`` (the projections are
    ``q_proj``/``k_proj``/``v_proj``), which also keeps transformer layers off their fused fast
    path that would read plaintext weights.
    """

    def __init__(
        self,
        source: nn.MultiheadAttention,
        q_proj: LockedLinear,
        k_proj: LockedLinear,
        v_proj: LockedLinear,
        out_proj: LockedLinear,
    ) -> None:
        super().__init__()
        self.embed_dim = source.embed_dim
        self.kdim = source.kdim
        self.vdim = source.vdim
        self._qkv_same_embed_dim = source._qkv_same_embed_dim
        self.num_heads = source.num_heads
        self.head_dim = source.head_dim
        self.dropout = source.dropout
        self.batch_first = source.batch_first
        self.add_zero_attn = source.add_zero_attn
        self.in_proj_weight = None
        self.in_proj_bias = None
        self.q_proj = q_proj
        self.k_proj = k_proj
        self.v_proj = v_proj
        self.out_proj = out_proj
        # bias_k/bias_v are appended key/value rows, not weight matrices: kept in plaintext,
        # and said so in the protection's plaintext weights (lock_model reads this).
        self.bias_k = None if source.bias_k is None else _frozen(source.bias_k)
        self.bias_v = None if source.bias_v is None else _frozen(source.bias_v)
        self.kept_in_plaintext = {
            attr: "MultiheadAttention(add_bias_kv=True) keeps its appended key/value row as it "
            "is: the lock covers its four projections only"
            for attr in ("bias_k", "bias_v")
            if getattr(self, attr) is not None
        }

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        is_batched = self._check_dims(query, key, value, key_padding_mask, attn_mask)
        if not is_batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        # From here on: (N, L, E) queries, (N, S, kdim/vdim) keys and values.

        dtype = query.dtype
        key_padding_mask = _float_mask(key_padding_mask, dtype, "key_padding_mask")
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                "module method `generate_square_subsequent_mask` to create this mask."
            )
        # torch hands the hint to scaled_dot_product_attention (which then ignores attn_mask)
        # only when there is no key padding mask and no weights are asked for.
        causal = is_causal and key_padding_mask is None and not need_weights
        attn_mask = None if causal else _float_mask(attn_mask, dtype, "attn_mask")
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unflatten(0, (-1, self.num_heads))  # (N, H, L, S)

        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)

        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.to(k.dtype).expand(k.size(0), -1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.to(v.dtype).expand(v.size(0), -1, -1)], dim=1)
            attn_mask, key_padding_mask = _pad_last(attn_mask), _pad_last(key_padding_mask)
        if self.add_zero_attn:
            k = torch.cat([k, torch.zeros_like(k[:, :1])], dim=1)
            v = torch.cat([v, torch.zeros_like(v[:, :1])], dim=1)
            attn_mask, key_padding_mask = _pad_last(attn_mask), _pad_last(key_padding_mask)

        # (N, H, L|S, D)
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

        scores = torch.matmul(q * math.sqrt(1.0 / self.head_dim), k.transpose(-2, -1))
        if key_padding_mask is not None:
            kpm = key_padding_mask.unsqueeze(1).unsqueeze(1)  # (N, 1, 1, S)
            attn_mask = kpm if attn_mask is None else attn_mask + kpm
        if causal:
            allowed = torch.ones_like(scores[0, 0], dtype=torch.bool).tril()
            scores = scores.masked_fill(allowed.logical_not(), float("-inf"))
        elif attn_mask is not None:
            scores = scores + attn_mask
        weights = torch.softmax(scores, dim=-1)
        if not need_weights and attn_mask is not None:
            # scaled_dot_product_attention gives 0, not NaN, for rows with every key masked.
            fully_masked = torch.all(scores == float("-inf"), dim=-1, keepdim=True)
            weights = weights.masked_fill(fully_masked, 0.0)

        out = torch.matmul(weights, v).transpose(1, 2).flatten(-2)  # (N, L, E)
        out = self.out_proj(out)
        if not is_batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not is_batched:
            weights = weights.squeeze(0)
        return out, weights

    def _check_dims(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
    ) -> bool:
        """torch's ``_mha_shape_check`` on ranks (static); returns whether the input is batched."""
        if query.dim() not in (2, 3):
            raise AssertionError(
                "query should be unbatched 2D or batched 3D tensor but received "
                f"{query.dim()}-D query tensor"
            )
        batched = query.dim() == 3
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise AssertionError(
                f"For {query.dim()}-D `query`, expected `key` and `value` to be {query.dim()}-D "
                f"but found {key.dim()}-D and {value.dim()}-D tensors respectively"
            )
        if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
            raise AssertionError(
                f"For {query.dim()}-D `query`, expected `key_padding_mask` to be `None` or "
                f"{query.dim() - 1}-D but found {key_padding_mask.dim()}-D tensor instead"
            )
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise AssertionError(
                f"For {query.dim()}-D `query`, expected `attn_mask` to be `None`, 2-D or 3-D "
                f"but found {attn_mask.dim()}-D tensor instead"
            )
        if not torch.jit.is_tracing() and query.size(-1) != self.embed_dim:
            raise AssertionError(
                f"was expecting embedding dimension of {self.embed_dim}, but got {query.size(-1)}"
            )
        return batched


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


@register_locker(nn.MultiheadAttention)
def lock_multihead_attention(
    name: str, module: nn.MultiheadAttention, ctx: LockContext
) -> LockedMultiheadAttention:
    if module._qkv_same_embed_dim:
        w_q, w_k, w_v = module.in_proj_weight.detach().chunk(3)
    else:
        w_q = module.q_proj_weight.detach()
        w_k = module.k_proj_weight.detach()
        w_v = module.v_proj_weight.detach()
    if module.in_proj_bias is None:
        b_q = b_k = b_v = None
    else:
        b_q, b_k, b_v = module.in_proj_bias.detach().chunk(3)
    out = module.out_proj
    return LockedMultiheadAttention(
        module,
        q_proj=lock_linear_weights(f"{name}.q_proj", w_q, b_q, ctx),
        k_proj=lock_linear_weights(f"{name}.k_proj", w_k, b_k, ctx),
        v_proj=lock_linear_weights(f"{name}.v_proj", w_v, b_v, ctx),
        out_proj=lock_linear_weights(f"{name}.out_proj", out.weight, out.bias, ctx),
    )
