"""Latent Transformation Forest (ootrain.models.forest)."""

from __future__ import annotations

import math

import pytest
import torch

from ootrain.models.forest import MAX_DEPTH, LatentTransformForest

pytestmark = pytest.mark.usefixtures("one_thread")


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _hard_leaf(forest: LatentTransformForest, z: torch.Tensor, t: int) -> int:
    """Brute-force hard descent of tree ``t`` in heap order: node ``n`` goes left (``2n + 1``)
    when ``z[k] > theta`` (``d > 1/2``), else right (``2n + 2``)."""
    node, theta = 0, forest.threshold.detach()
    for _ in range(forest.depth):
        k = int(forest.feature[t, node])
        left = float(z[k]) > float(theta[t, node])
        node = 2 * node + 1 if left else 2 * node + 2
    return node - forest.n_nodes


# --------------------------------------------------------------------------- routing
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_routing_is_a_distribution_over_leaves(depth):
    forest = LatentTransformForest(4, n_trees=5, depth=depth, seed=depth).double()
    z = 2 * _randn(64, 4, seed=depth)
    with torch.no_grad():   # per-node sharpness, so a node mix-up would show
        forest.log_sharpness.copy_(torch.log(0.5 + 4 * torch.rand(
            forest.log_sharpness.shape, generator=torch.Generator().manual_seed(depth),
            dtype=torch.float64)))
    pi = forest.routing(z).detach()
    assert pi.shape == (64, 5, 2**depth) and pi.dtype == torch.float64
    # brute force: pi_{t,l} = prod over the root-to-leaf path of d (left) or 1 - d (right),
    # d = sigmoid(beta (z_k - theta)), the leaf's bits (most significant first) 0 = left
    theta, beta = forest.threshold.detach(), forest.log_sharpness.detach().exp()
    for i in range(0, 64, 7):
        for t in range(forest.n_trees):
            for leaf in range(2**depth):
                node, p = 0, 1.0
                for level in range(depth):
                    k = int(forest.feature[t, node])
                    d = 1 / (1 + math.exp(-float(beta[t, node]) * (float(z[i, k])
                                                                  - float(theta[t, node]))))
                    right = (leaf >> (depth - 1 - level)) & 1
                    p *= (1 - d) if right else d
                    node = 2 * node + 1 + right
                assert float(pi[i, t, leaf]) == pytest.approx(p, rel=1e-12, abs=1e-300)
    torch.testing.assert_close(pi.sum(-1), torch.ones(64, 5, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert pi.max(-1).values.min() < 1 - 1e-3        # soft at sharpness 4: really mixed


def test_hard_split_limit_matches_brute_force_descent():
    forest = LatentTransformForest(5, n_trees=4, depth=4, residual=False, sharpness=1e8,
                                   seed=3).double()
    z = _randn(12, 5, seed=7)
    pi = forest.routing(z)
    out = forest(z)
    for i in range(z.shape[0]):
        for t in range(forest.n_trees):
            leaf = _hard_leaf(forest, z[i], t)
            expected = torch.zeros(forest.n_leaves, dtype=torch.float64)
            expected[leaf] = 1.0
            torch.testing.assert_close(pi[i, t], expected, rtol=0, atol=1e-12)
        hard = sum(forest.leaves[t, _hard_leaf(forest, z[i], t)] for t in range(forest.n_trees))
        torch.testing.assert_close(out[i], hard / forest.n_trees, rtol=1e-12, atol=1e-12)
    # the samples do not all land in one leaf: the check exercises several paths
    assert len({_hard_leaf(forest, z[i], 0) for i in range(z.shape[0])}) > 2


# --------------------------------------------------------------------------- gradients
def test_gradients_reach_every_parameter_and_match_finite_differences():
    forest = LatentTransformForest(3, n_trees=3, depth=3, residual=False, seed=1).double()
    z = _randn(40, 3, seed=2)
    forest(z).pow(2).sum().backward()
    for name, p in forest.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert (p.grad != 0).all(), name

    theta = forest.threshold
    h = 1e-6
    for t, n in [(0, 0), (1, 4), (2, 6)]:
        with torch.no_grad():
            base = float(theta[t, n])
            theta[t, n] = base + h
            plus = forest(z).pow(2).sum().item()
            theta[t, n] = base - h
            minus = forest(z).pow(2).sum().item()
            theta[t, n] = base
        fd = (plus - minus) / (2 * h)
        assert theta.grad[t, n].item() == pytest.approx(fd, rel=1e-5, abs=1e-10)


# --------------------------------------------------------------------------- init
def test_residual_forest_starts_as_the_identity():
    forest = LatentTransformForest(6, n_trees=4, depth=3, seed=5)
    z = _randn(32, 6, seed=1, dtype=torch.float32)
    assert torch.equal(forest(z), z)
    assert torch.equal(forest.double()(z.double()), z.double())


def test_non_residual_maps_to_out_dim():
    forest = LatentTransformForest(3, n_trees=2, depth=2, out_dim=5, residual=False)
    out = forest(_randn(7, 3, dtype=torch.float32))
    assert out.shape == (7, 5) and out.dtype == torch.float32
    assert forest.leaves.std().item() == pytest.approx(0.1, rel=0.5)


def test_seed_determinism_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a = LatentTransformForest(8, n_trees=6, depth=4, residual=False, seed=11)
    b = LatentTransformForest(8, n_trees=6, depth=4, residual=False, seed=11)
    c = LatentTransformForest(8, n_trees=6, depth=4, residual=False, seed=12)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == {"feature", "threshold", "log_sharpness", "leaves"}
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["feature"], sc["feature"])
    assert not torch.equal(sa["threshold"], sc["threshold"])
    # 90 draws over 8 coordinates hit all, and only those
    assert sa["feature"].unique().tolist() == list(range(8))


def test_init_from_data_thresholds_are_data_values():
    forest = LatentTransformForest(3, n_trees=4, depth=3, seed=2)
    z = 5 + _randn(50, 3, seed=4, dtype=torch.float32)   # far from the N(0, 1) default
    state = torch.random.get_rng_state()
    forest.init_from_data(z)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert forest.threshold.grad is None and forest.threshold.requires_grad
    for t in range(forest.n_trees):
        for n in range(forest.n_nodes):
            k = int(forest.feature[t, n])
            assert (z[:, k] == forest.threshold[t, n]).any()
    again = LatentTransformForest(3, n_trees=4, depth=3, seed=2)
    again.init_from_data(z)
    assert torch.equal(again.threshold, forest.threshold)
    # every node now splits the data: no decision is the same side for all rows
    d = forest.decisions(z) > 0.5
    assert (d.any(0) & ~d.all(0)).float().mean() > 0.8


# --------------------------------------------------------------------------- fitting
def test_forest_learns_a_piecewise_displacement():
    z = _randn(256, 2, seed=1, dtype=torch.float32)

    def target(x):
        return x + torch.stack((torch.sign(x[:, 0]), torch.zeros(len(x))), 1)

    forest = LatentTransformForest(2, n_trees=8, depth=3, seed=0)
    opt = torch.optim.Adam(forest.parameters(), lr=0.05)
    with torch.no_grad():
        initial = (forest(z) - target(z)).pow(2).mean().item()
    for _ in range(300):
        opt.zero_grad()
        loss = (forest(z) - target(z)).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = (forest(z) - target(z)).pow(2).mean().item()
        test = _randn(500, 2, seed=9, dtype=torch.float32)
        test = test[test[:, 0].abs() > 0.3]               # away from the jump
        held_out = (forest(test) - target(test)).pow(2).mean().item()
    assert initial == pytest.approx(0.5)
    assert final < 0.05 * initial
    assert held_out < 0.05 * initial


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=0), "dim"),
    (dict(dim=2.0), "dim"),
    (dict(dim=2, n_trees=0), "n_trees"),
    (dict(dim=2, depth=0), "depth"),
    (dict(dim=2, depth=MAX_DEPTH + 1), "depth"),
    (dict(dim=2, out_dim=0, residual=False), "out_dim"),
    (dict(dim=2, out_dim=3), "residual"),
    (dict(dim=2, sharpness=0.0), "sharpness"),
    (dict(dim=2, sharpness=float("inf")), "sharpness"),
    (dict(dim=2, seed=-1), "seed"),
    (dict(dim=2, n_trees=True), "n_trees"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatentTransformForest(**kwargs)


@pytest.mark.parametrize("z, match", [
    (torch.zeros(4), "2-D"),
    (torch.zeros(2, 3, 3), "2-D"),
    (torch.zeros(4, 2), "width"),
    (torch.zeros(4, 3, dtype=torch.int64), "floating"),
    (torch.zeros(4, 3, dtype=torch.float64), "float64"),
    ([[0.0, 0.0, 0.0]], "Tensor"),
])
def test_bad_inputs(z, match):
    forest = LatentTransformForest(3)
    with pytest.raises(ValueError, match=match):
        forest(z)
    with pytest.raises(ValueError, match=match):
        forest.init_from_data(z)


def test_init_from_data_needs_a_row():
    with pytest.raises(ValueError, match="at least one row"):
        LatentTransformForest(3).init_from_data(torch.zeros(0, 3))
