"""Two locked layers that share one weight tensor (tied weights, ``self.b.weight = self.a.weight``)
are stored as two locked copies of the same matrix under independent keys. What a thief learns
from the pair (docs/security.md, "Tied locked weights"):

- under the ``strong`` preset (with or without ``quantize_compatibility``) and ``balanced``, the
  audit's matcher and a direct graph matching of the two copies find the relation between their
  keys at chance, like for two independently trained layers;
- under ``balanced`` with ``quantize_compatibility=True`` (orthogonal mixing on one side, scales
  of magnitude 1 on both) the unmixed side's relative key is recovered whole, for a tie and for
  a copy cloned before protecting alike: the key of one copy on that side gives the other's.

Run as a script for the table in docs/security.md:
``.venv/bin/python -m tests.lock.test_tied_locked_weights``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import skprotect_pytorch.lock.linear as linear_lock
from skprotect_pytorch.audit.matching import (
    KeyedLayer,
    balanced,
    hungarian,
    keyed_layers,
    match_two_sided,
)
from skprotect_pytorch.lock import LockedModel, LockSettings, lock_model
from skprotect_pytorch.lock.channel_lock import ChannelPlan
from skprotect_pytorch.protect import SkProtectorPyTorch

KINDS = ("tied", "cloned", "untied")
"""``tied``: one ``nn.Parameter`` in both layers; ``cloned``: the tied model untied by cloning
the trained weight before protecting; ``untied``: two independently trained weights (control)."""

LOCKS = {
    "strong": ("strong", False),
    "strong+quant": ("strong", True),
    "balanced": ("balanced", False),
    "balanced+quant": ("balanced", True),
}
"""The four lock constructions a user can choose: ``lock_preset`` × ``quantize_compatibility``."""


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the CI cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TwoLayers(nn.Module):
    """``b(relu(a(x)))`` with two ``n → n`` Linears (or 3×3 Conv2ds), tied when ``tied``."""

    def __init__(self, n: int, tied: bool, conv: bool = False) -> None:
        super().__init__()
        self.a, self.b = (
            (nn.Conv2d(n, n, 3, padding=1), nn.Conv2d(n, n, 3, padding=1))
            if conv
            else (nn.Linear(n, n), nn.Linear(n, n))
        )
        if tied:
            self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def example(n: int, conv: bool = False, batch: int = 128) -> torch.Tensor:
    return torch.randn(batch // 2, n, 6, 6) if conv else torch.randn(batch, n)


def trained_pair(n: int, kind: str, seed: int, conv: bool = False, steps: int = 150) -> TwoLayers:
    """A :class:`TwoLayers` fitted for ``steps`` Adam steps to a random teacher, so that its
    weights carry the structure of trained ones; ``kind`` is one of :data:`KINDS`."""
    torch.manual_seed(seed)
    model = TwoLayers(n, tied=kind != "untied", conv=conv)
    teacher = TwoLayers(n, tied=False, conv=conv)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(steps):
        x = example(n, conv)
        with torch.no_grad():
            y = torch.tanh(teacher(x))
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if kind == "cloned":
        model.b.weight = nn.Parameter(model.a.weight.detach().clone())
    return model.eval()


def stored_pair(
    model: nn.Module, lock: str, seed: int
) -> tuple[LockedModel, KeyedLayer, KeyedLayer]:
    """Lock ``model`` with one of :data:`LOCKS`; the thief's view of its two keyed layers."""
    preset, quant = LOCKS[lock]
    locked = lock_model(
        model,
        layer_filter=lambda name, module: True,
        secret_rng=np.random.default_rng(100 + seed),
        settings=LockSettings.preset(preset, quantize_compatibility=quant),
    )
    first, second = keyed_layers(locked.keyed.model)
    return locked, first, second


def relative_truth(
    locked: LockedModel, a: KeyedLayer, b: KeyedLayer
) -> tuple[np.ndarray, np.ndarray]:
    """The relative key under the true keys: stored row ``r`` of ``a`` and row ``rows[r]`` of
    ``b`` hold the same (mixed) channel, and so do columns ``j`` and ``cols[j]``."""
    perms = locked.layout.perms
    rows = perms[b.ops.out_perm_slot][np.argsort(perms[a.ops.out_perm_slot])]
    cols = np.argsort(perms[b.ops.in_perm_slot])[perms[a.ops.in_perm_slot]]
    return rows, cols


def cos_graph(m: np.ndarray) -> np.ndarray:
    """``|cos|`` between the rows of ``m`` (its other axes flattened), zero diagonal: unchanged
    by a signed permutation of the columns and by any orthogonal map of the row space."""
    m = m.reshape(m.shape[0], -1)
    m = m / (np.linalg.norm(m, axis=1, keepdims=True) + 1e-12)
    graph = np.abs(m @ m.T)
    np.fill_diagonal(graph, 0.0)
    return graph


def graph_match(gx: np.ndarray, gy: np.ndarray, iters: int = 30) -> np.ndarray:
    """Node ``i`` of ``gx`` ↔ node ``p[i]`` of ``gy``: Hungarian on sorted-row descriptors,
    then Hungarian steps on the linearised quadratic assignment ``Σ gx[i, k] gy[p_i, p_k]``."""
    dx, dy = np.sort(gx, 1), np.sort(gy, 1)
    p = hungarian(-((dx[:, None, :] - dy[None, :, :]) ** 2).sum(-1))
    for _ in range(iters):
        q = hungarian(gx @ gy[:, p].T)
        if np.array_equal(q, p):
            break
        p = q
    return p


def recovery(model: nn.Module, lock: str, seed: int) -> dict[str, float]:
    """Share of the relative key's row and column entries found by the audit's two-sided
    matcher (:func:`match_two_sided`) and by :func:`graph_match` on the raw and on the balanced
    copies (the better of the two per side); chance is ``1/n``."""
    locked, a, b = stored_pair(model, lock, seed)
    rows, cols = relative_truth(locked, a, b)
    two_rows, two_cols = match_two_sided(a.weight, b.weight)
    graph_rows = max(
        (graph_match(cos_graph(x), cos_graph(y)) == rows).mean()
        for x, y in ((a.weight, b.weight), (balanced(a.weight), balanced(b.weight)))
    )
    graph_cols = max(
        (graph_match(cos_graph(x.swapaxes(0, 1)), cos_graph(y.swapaxes(0, 1))) == cols).mean()
        for x, y in ((a.weight, b.weight), (balanced(a.weight), balanced(b.weight)))
    )
    return {
        "two_sided_rows": float((two_rows == rows).mean()),
        "two_sided_cols": float((two_cols == cols).mean()),
        "graph_rows": float(graph_rows),
        "graph_cols": float(graph_cols),
    }


def output_relation(a: KeyedLayer, b: KeyedLayer) -> tuple[np.ndarray, np.ndarray]:
    """The thief's relative output key of two equal copies stored with an unmixed output side
    and signed scales: rows matched by :func:`graph_match` on ``|cos|``, then the relative
    signs from the signed Gram matrices (``t[0] = 1``; one global sign stays unknown)."""
    wa, wb = a.weight.reshape(a.n_out, -1), b.weight.reshape(b.n_out, -1)
    rows = graph_match(cos_graph(wa), cos_graph(wb))
    ga, gb = wa @ wa.T, (wb @ wb.T)[rows][:, rows]
    signs = np.sign(gb[0] / ga[0])
    signs[0] = 1.0
    return rows, signs


def input_side_recovery(a: KeyedLayer, b: KeyedLayer, locked: LockedModel) -> dict[str, float]:
    """Linear copies only: with the output relation found, ``R = A'⁻¹ L⁻¹ B'`` is exactly
    ``M_a · Q_a⁻¹ Q_b · M_b⁻¹`` (monomial, public, monomial); match ``R`` to the public
    ``Q_a⁻¹ Q_b`` for the two input keys. Returns the shares of their entries found, the
    shares whose public mixing block is right, and the relative error of ``R``'s form."""
    rows, signs = output_relation(a, b)
    wa, wb = a.weight[..., 0], b.weight[..., 0]
    r = np.linalg.solve(wa, signs[:, None] * wb[rows])
    public = a.t_in.T @ np.linalg.inv(b.t_in.T)
    perms, scales = locked.layout.perms, locked.layout.scales
    in_a, in_b = perms[a.ops.in_perm_slot], perms[b.ops.in_perm_slot]
    form = scales[a.ops.in_scale_slot][:, None] * public[in_a][:, in_b]
    form = form / scales[b.ops.in_scale_slot][None, :]
    error = min(np.abs(r - form).max(), np.abs(r + form).max()) / np.abs(form).max()
    found_a, found_b = match_two_sided(r[..., None], public[..., None])
    block = LockSettings().mix_block
    return {
        "input_a": float((found_a == in_a).mean()),
        "input_b": float((found_b == in_b).mean()),
        "block_a": float((found_a // block == in_a // block).mean()),
        "block_b": float((found_b // block == in_b // block).mean()),
        "form_error": float(error),
    }


# ---------------------------------------------------------------------------------------------
# What is stored
# ---------------------------------------------------------------------------------------------
def test_a_tied_weight_is_locked_twice_under_independent_keys() -> None:
    model = trained_pair(16, "tied", 0)
    locked, a, b = stored_pair(model, "strong", 0)
    x = example(16)
    with torch.no_grad():
        expected = model(x)
        got = locked.keyed(x, torch.from_numpy(locked.layout.static_key()))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not np.allclose(a.weight, b.weight)
    assert (
        len({a.ops.in_perm_slot, a.ops.out_perm_slot, b.ops.in_perm_slot, b.ops.out_perm_slot}) == 4
    )
    assert locked.layout.perm_sizes == [16, 16, 16, 16]
    assert locked.plaintext == []  # both uses are locked: nothing is listed


def test_the_protector_writes_two_locked_copies_and_lists_no_plaintext_weight(
    tmp_path, monkeypatch
) -> None:
    model = trained_pair(16, "tied", 0)
    weight = model.a.weight.detach().numpy()
    monkeypatch.chdir(tmp_path)
    result = SkProtectorPyTorch(application_name="app").protect_new_model(
        model,
        "net",
        [example(16)[:4]],
        model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
    )
    (path,) = [f for f in result.files if str(f).endswith(".onnx")]
    stored = {
        init.name: numpy_helper.to_array(init)
        for init in onnx.load(str(path)).graph.initializer
        if init.name in ("model.a.weight", "model.b.weight")
    }
    assert result.plaintext_weights == []
    assert sorted(stored) == ["model.a.weight", "model.b.weight"]
    assert not np.allclose(stored["model.a.weight"], stored["model.b.weight"])
    for copy in stored.values():
        assert not np.allclose(
            np.sort(np.abs(copy), None), np.sort(np.abs(weight), None), atol=1e-3
        )


@pytest.mark.parametrize(
    ("kind", "preset", "warned"),
    [("tied", "balanced", True), ("cloned", "balanced", True), ("tied", "strong", False)],
)
def test_the_protector_warns_about_copies_of_one_weight_under_a_lock_that_links_their_keys(
    kind: str, preset: str, warned: bool, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SkProtectorPyTorch(application_name="app").protect_new_model(
            trained_pair(16, kind, 0),
            "net",
            [example(16)[:4]],
            model_export_formats=SkProtectorPyTorch.ExportFormat.ONNX,
            lock_preset=preset,
            quantize_compatibility=True,
        )
    messages = [str(w.message) for w in caught if "copies of one weight" in str(w.message)]
    expected = (
        "Locked layers of 'net' store copies of one weight ('a', 'b'): with "
        "lock_preset='balanced' and quantize_compatibility=True a thief matches the copies' "
        "unmixed side and, from either copy's key there, reads the other's. Use "
        "lock_preset='strong' (docs/security.md, \"Tied locked weights\"); cloning the weight "
        "before protecting stores the same two copies."
    )
    assert messages == ([expected] if warned else [])


# ---------------------------------------------------------------------------------------------
# What a thief recovers
# ---------------------------------------------------------------------------------------------
def test_the_matchers_find_the_relative_key_of_copies_stored_without_mixing(monkeypatch) -> None:
    """Control: with the public mixing removed the copies are ``B' = L A' R`` with monomials
    ``L``, ``R``, and both matchers find every entry of the relative key of the tie (and stay
    at chance on the untied pair), so their chance results on the real lock mean something."""
    original = linear_lock.plan_channels

    def unmixed(*args: object, **kwargs: object) -> ChannelPlan:
        plan = original(*args, **kwargs)
        plan.mix_in = plan.mix_out = None
        return plan

    monkeypatch.setattr(linear_lock, "plan_channels", unmixed)
    assert set(recovery(trained_pair(64, "tied", 0), "strong", 0).values()) == {1.0}
    assert max(recovery(trained_pair(64, "untied", 0), "strong", 0).values()) <= 5 / 64


@pytest.mark.parametrize("lock", ["strong", "strong+quant", "balanced"])
@pytest.mark.parametrize("n", [16, 64])
def test_the_relative_key_of_tied_copies_stays_at_chance(lock: str, n: int) -> None:
    """Every matcher, on every side, finds at most 5× chance of the relative key (mean of two
    seeds), for the tie as for the untied control."""
    for kind in ("tied", "untied"):
        rates = [recovery(trained_pair(n, kind, seed), lock, seed) for seed in (0, 1)]
        for name in rates[0]:
            assert np.mean([r[name] for r in rates]) <= 5 / n, (kind, name, rates)


@pytest.mark.parametrize(
    ("kind", "n", "conv"),
    [("tied", 16, False), ("tied", 64, False), ("cloned", 64, False), ("tied", 16, True)],
)
def test_the_balanced_quantizable_lock_links_the_output_keys_of_equal_copies(
    kind: str, n: int, conv: bool
) -> None:
    """Under ``balanced`` + ``quantize_compatibility`` the copies' output sides are unmixed and
    their scales are signs: the thief finds the relative output key whole (permutation and
    signs), so either copy's output key gives the other's."""
    locked, a, b = stored_pair(trained_pair(n, kind, 0, conv=conv), "balanced+quant", 0)
    assert a.ops.mix_out is None and a.ops.out_perm_slot is not None
    rows, signs = output_relation(a, b)
    perms, scales = locked.layout.perms, locked.layout.scales
    true_rows, _ = relative_truth(locked, a, b)
    assert np.array_equal(rows, true_rows)
    key_a, key_b = perms[a.ops.out_perm_slot], perms[b.ops.out_perm_slot]
    assert np.array_equal(rows[key_a], key_b)  # b's output permutation from a's
    ratio = scales[b.ops.out_scale_slot] * signs[key_a] / scales[a.ops.out_scale_slot]
    assert np.allclose(np.abs(ratio), 1.0) and np.unique(np.sign(ratio)).size == 1


def test_the_balanced_quantizable_lock_keeps_untied_copies_apart() -> None:
    locked, a, b = stored_pair(trained_pair(64, "untied", 0), "balanced+quant", 0)
    rows, _ = output_relation(a, b)
    assert (rows == relative_truth(locked, a, b)[0]).mean() <= 5 / 64


def test_the_input_keys_of_equal_copies_stay_at_a_blocks_chance() -> None:
    """Under ``balanced`` + ``quantize_compatibility`` the input side relation ``R`` is exact,
    but its public factor (products of two flat 16×16 blocks) has few distinct magnitudes
    (4 at n = 16): matched to it, each input key is found no better than a 16-block's chance
    (mean of three seeds at n = 64 ≤ 2.5/16)."""
    rates = []
    for seed in (0, 1, 2):
        locked, a, b = stored_pair(trained_pair(64, "tied", seed), "balanced+quant", seed)
        rates.append(input_side_recovery(a, b, locked))
    # exact up to float32 storage, amplified by the condition of the stored matrix
    assert max(r["form_error"] for r in rates) < 1e-3
    for side in ("input_a", "input_b"):
        assert np.mean([r[side] for r in rates]) <= 2.5 / 16, rates


def _table() -> None:
    """The measurements of docs/security.md: mean and maximum over 3 seeds of each rate."""
    torch.set_num_threads(1)
    for lock in LOCKS:
        for n in (16, 64, 256):
            for kind in KINDS:
                rates = [recovery(trained_pair(n, kind, seed), lock, seed) for seed in range(3)]
                cells = "  ".join(
                    f"{k} {np.mean([r[k] for r in rates]):.3f}/{max(r[k] for r in rates):.3f}"
                    for k in rates[0]
                )
                print(f"{lock:15s} n={n:3d} {kind:7s} chance {1 / n:.4f}  {cells}", flush=True)
    for n in (16, 64, 256):
        rates = []
        for seed in range(3):
            locked, a, b = stored_pair(trained_pair(n, "tied", seed), "balanced+quant", seed)
            rates.append(input_side_recovery(a, b, locked))
        print(
            f"balanced+quant n={n:3d} tied input side: "
            + "  ".join(f"{k} {np.mean([r[k] for r in rates]):.3g}" for k in rates[0])
        )
    for kind in ("tied", "cloned"):
        locked, a, b = stored_pair(trained_pair(16, kind, 0, conv=True), "balanced+quant", 0)
        found = (output_relation(a, b)[0] == relative_truth(locked, a, b)[0]).mean()
        print(f"balanced+quant Conv2d 16 {kind}: output rows found {found:.3f}")


if __name__ == "__main__":
    _table()
