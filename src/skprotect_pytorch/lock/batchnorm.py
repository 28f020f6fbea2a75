"""Fold eval-mode BatchNorm into the conv that feeds it, before locking.

Folding removes a plaintext per-channel affine that would otherwise sit next to the locked conv
and lets runtimes fuse conv+activation again.  Pairs are found in the traced graph (torch.fx);
a model fx cannot trace keeps its BatchNorms (still correct, just not folded): module order in
a container says nothing about data flow.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..logs import get_logger
from .conv import from_channel_matrix, to_channel_matrix

_CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` can be folded into ``conv`` exactly.  Only float32 pairs are: the fold
    writes float32 weights, and a float64/float16/bfloat16 pair reaches here only when
    layer_filter leaves its conv unlocked, with the dtype it has (docs/api.md).  Neither may
    have forward hooks: a conv's would then see the normalised output, and a BatchNorm's would
    be dropped with the BatchNorm."""
    return (
        type(conv) in _CONVS
        and type(bn) in _BNS
        and not _hooked(conv)
        and not _hooked(bn)
        and all(
            t.dtype == torch.float32
            for t in (*conv.parameters(), *bn.parameters(), *bn.buffers())
            if t.is_floating_point()
        )
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
    )


def _fold(conv: nn.Module, bn: nn.Module) -> None:
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(std)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    a = to_channel_matrix(conv, conv.weight.detach().double())
    g, o = a.shape[:2]
    a = a * factor.view(g, o, *([1] * (a.dim() - 2)))
    conv.weight = nn.Parameter(from_channel_matrix(conv, a).float(), requires_grad=False)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(std)
    conv.bias = nn.Parameter(
        ((bias - bn.running_mean.double()) * factor + beta).float(), requires_grad=False
    )


def traced_graph(model: nn.Module) -> fx.Graph:
    """``model``'s torch.fx graph, ``model`` left as it was: tracing stores each tensor that
    ``forward`` reads outside the model (a global, a closure variable) on the model as
    ``_tensor_constantN``, where the lock's copy kept it, and the coverage and the checked run
    took it for the model's own plain tensor attribute."""
    before = set(vars(model))
    try:
        return fx.symbolic_trace(model).graph
    finally:
        for attr in set(vars(model)) - before:
            delattr(model, attr)


def _pairs_from_fx(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, batchnorm)`` pairs where the BatchNorm is the only user of the conv's output
    and each is called once.  A module whose tensors ``forward`` also reads directly
    (``F.conv2d(x, self.conv.weight)``) is left out: folding would change what it reads."""
    graph = traced_graph(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    read = [node.target for node in graph.nodes if node.op == "get_attr"]

    def only_called_once(name: str) -> bool:
        return calls[name] == 1 and not any(t.startswith(f"{name}.") for t in read)

    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1:
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and len(src.users) == 1
            and only_called_once(src.target)
            and only_called_once(node.target)
        ):
            pairs.append((src.target, node.target))
    return pairs


def fold_batchnorms(
    model: nn.Module, removed: list[tuple[nn.Module, nn.Module]] | None = None
) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm fed only by a conv into it, in place; returns the pairs.

    Each folded BatchNorm is replaced by ``nn.Identity`` where it is registered; ``removed``
    (when given) receives ``(batchnorm, that Identity)``, for a caller that replaces it
    wherever else the model refers to it (a plain list or dict ``forward`` iterates, a config
    object): there it would still normalise the conv's output a second time."""
    try:
        pairs = _pairs_from_fx(model)
    except Exception as err:  # fx cannot trace data-dependent control flow
        get_logger().info("BatchNorm folding skipped: torch.fx cannot trace the model (%s)", err)
        return []
    modules = dict(model.named_modules(remove_duplicate=False))
    counts: dict[int, int] = {}
    for m in modules.values():
        counts[id(m)] = counts.get(id(m), 0) + 1
    folded = []
    for conv_name, bn_name in pairs:
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        if conv is None or bn is None or not _foldable(conv, bn):
            continue
        if counts[id(conv)] > 1 or counts[id(bn)] > 1:
            continue  # a shared module is used elsewhere without the BatchNorm
        _fold(conv, bn)
        parent_name, _, attr = bn_name.rpartition(".")
        identity = nn.Identity()
        setattr(model.get_submodule(parent_name), attr, identity)
        if removed is not None:
            removed.append((bn, identity))
        folded.append((conv_name, bn_name))
    return folded
