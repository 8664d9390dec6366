"""Tests of ootrain.ot.sliced against independent references (closed forms, POT, exact LP,
exact rational integration, autograd)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import ot
import pytest
import torch
from scipy.stats import norm

from ootrain.ot.sliced import (
    algorithm2_directions,
    quantile_targets,
    quantile_targets_range,
    random_directions,
    real_slice_bounds,
    sliced_wasserstein,
    w2_from_targets,
    wasserstein_1d,
)

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


# ----------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------
def overlap(i: int, n: int, r: int, b: int) -> Fraction:
    """Exact length of (i/n, (i+1)/n) ∩ (r/b, (r+1)/b)."""
    lo = max(Fraction(i, n), Fraction(r, b))
    hi = min(Fraction(i + 1, n), Fraction(r + 1, b))
    return max(hi - lo, Fraction(0))


def target_reference(y_of, n: int, b: int, r: int) -> float:
    """t_r = b * int_{r/b}^{(r+1)/b} F^{-1}, exact rational piecewise integration.

    ``y_of(i)`` gives the sorted value of rank ``i``; only ranks near the block are visited.
    """
    first = max(0, r * n // b - 2)
    last = min(n, (r + 1) * n // b + 3)
    total = sum(
        (overlap(i, n, r, b) * Fraction(float(y_of(i))) for i in range(first, last)),
        Fraction(0),
    )
    return float(b * total)


def gaussian_quantile_sample(mu: float, sigma: float, n: int) -> torch.Tensor:
    return torch.from_numpy(mu + sigma * norm.ppf((np.arange(n) + 0.5) / n))[:, None]


def whitened_gaussian(mu: np.ndarray, sigma: float, n: int, seed: int) -> torch.Tensor:
    """Gaussian sample whose empirical mean is exactly mu and covariance exactly sigma^2 I."""
    z = np.random.default_rng(seed).standard_normal((n, mu.size))
    z -= z.mean(0)
    evals, evecs = np.linalg.eigh(z.T @ z / n)
    z = z @ evecs @ np.diag(evals**-0.5) @ evecs.T
    return torch.from_numpy(mu + sigma * z)


# ----------------------------------------------------------------------------------
# wasserstein_1d
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, m", [(1000, 1000), (1000, 700), (333, 1000)])
def test_w1d_gaussian_closed_form_converges(n, m):
    mu1, s1, mu2, s2 = 0.3, 1.0, -0.5, 2.0
    exact = (mu1 - mu2) ** 2 + (s1 - s2) ** 2
    errors = []
    for scale in (1, 10, 100):
        x = gaussian_quantile_sample(mu1, s1, n * scale)
        y = gaussian_quantile_sample(mu2, s2, m * scale)
        errors.append(abs(float(wasserstein_1d(x, y)[0]) - exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3 * exact


def test_sliced_gaussian_closed_form():
    d, k = 4, 16
    mu1, mu2 = np.array([1.0, -0.5, 0.25, 2.0]), np.array([0.0, 0.5, -1.0, 1.5])
    s1, s2 = 1.0, 1.7
    x = whitened_gaussian(mu1, s1, 30000, seed=1)
    y = whitened_gaussian(mu2, s2, 20000, seed=2)
    dirs = random_directions(d, k, generator=gen(3), dtype=F64)
    proj_mean = torch.from_numpy(mu1 - mu2) @ dirs
    exact = float((proj_mean**2).mean()) + (s1 - s2) ** 2
    got = float(sliced_wasserstein(x, y, dirs))
    assert got == pytest.approx(exact, rel=2e-3)


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_matches_pot(p):
    x, y = randn(157, 5, seed=4), randn(93, 5, seed=5) * 1.5 + 0.3
    dirs = random_directions(5, 12, generator=gen(6), dtype=F64)
    res = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), p=p, projections=dirs.numpy())
    assert float(sliced_wasserstein(x, y, dirs, p=p)) == pytest.approx(res**p, rel=1e-10)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
def test_w1d_matches_pot_per_column(p):
    x, y = randn(40, 6, seed=7), randn(65, 6, seed=8) * 0.7 - 0.2
    ref = ot.wasserstein_1d(x.numpy(), y.numpy(), p=p)
    np.testing.assert_allclose(wasserstein_1d(x, y, p).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
@pytest.mark.parametrize("n, m", [(5, 5), (6, 9), (13, 4), (1, 7)])
def test_w1d_matches_exact_lp(p, n, m):
    x, y = randn(n, 3, seed=n), randn(m, 3, seed=100 + m) + 0.4
    got = wasserstein_1d(x, y, p)
    for c in range(3):
        cost = (x[:, c, None] - y[None, :, c]).abs().numpy() ** p
        ref = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), cost)
        assert float(got[c]) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_w1d_is_a_distance_on_identical_and_shifted_samples():
    x = randn(50, 2, seed=9)
    assert torch.all(wasserstein_1d(x, x[torch.randperm(50, generator=gen(0))]) == 0)
    np.testing.assert_allclose(wasserstein_1d(x, x + 0.25, p=3).numpy(), 0.25**3, rtol=1e-12)


# ----------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1.5, 2, 3])
def test_gradcheck_sliced(p):
    x = randn(5, 3, seed=10).requires_grad_()
    y = randn(7, 3, seed=11).requires_grad_()
    dirs = random_directions(3, 4, generator=gen(12), dtype=F64)
    assert torch.autograd.gradcheck(lambda a, c: sliced_wasserstein(a, c, dirs, p=p), (x, y))


@pytest.mark.parametrize("b, n", [(8, 8), (6, 15), (20, 7)])
def test_w2_gradient_equals_target_residual(b, n):
    x = randn(b, 1, seed=13).requires_grad_()
    y = randn(n, 1, seed=14) * 2 + 1
    wasserstein_1d(x, y).sum().backward()
    xs, order = torch.sort(x.detach()[:, 0])
    t = quantile_targets(torch.sort(y[:, 0]).values, b)
    torch.testing.assert_close(x.grad[order, 0], 2 / b * (xs - t), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("b, n", [(8, 8), (6, 15), (20, 7), (64, 1000)])
def test_w2_from_targets_identity(b, n):
    x, y = randn(b, 3, seed=15), randn(n, 3, seed=16) * 0.5 - 1
    xs, ys = torch.sort(x, dim=0).values, torch.sort(y, dim=0).values
    t = quantile_targets(ys, b)
    ref = wasserstein_1d(x, y)
    plain = (x**2).mean(0) - 2 * (xs * t).mean(0) + (y**2).mean(0)
    torch.testing.assert_close(plain, ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(w2_from_targets(xs, t, (y**2).mean(0)), ref, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------------
# quantile_targets
# ----------------------------------------------------------------------------------
def test_targets_equal_sizes_is_identity():
    y = torch.sort(randn(37, seed=17)).values
    torch.testing.assert_close(quantile_targets(y, 37), y, rtol=1e-15, atol=0)


def test_targets_block_means_and_repeats():
    y = torch.sort(randn(60, 2, seed=18), dim=0).values
    torch.testing.assert_close(quantile_targets(y, 12), y.reshape(12, 5, 2).mean(1))
    torch.testing.assert_close(quantile_targets(y, 240), y.repeat_interleave(4, dim=0))


def test_targets_numpy_in_numpy_out():
    y = np.sort(np.random.default_rng(0).standard_normal(10).astype(np.float32))
    t = quantile_targets(y, 4)
    assert isinstance(t, np.ndarray) and t.dtype == np.float64 and t.shape == (4,)


@pytest.mark.parametrize("seed", range(8))
def test_targets_vs_exact_rational_integration(seed):
    rng = np.random.default_rng(seed)
    n, b = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    y = np.sort(rng.standard_normal((n, 2)), axis=0)
    t = quantile_targets(y, b)
    for c in range(2):
        ref = [target_reference(lambda i: y[i, c], n, b, r) for r in range(b)]
        np.testing.assert_allclose(t[:, c], ref, rtol=1e-13, atol=1e-15)


def test_streaming_equals_one_shot_small():
    rng = np.random.default_rng(19)
    for _ in range(300):
        n, b = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        y = torch.sort(torch.from_numpy(rng.standard_normal((n, 2))), dim=0).values
        full = quantile_targets(y, b)
        r0 = int(rng.integers(0, b + 1))
        r1 = int(rng.integers(r0, b + 1))
        lo, hi = real_slice_bounds(n, b, r0, r1)
        assert 0 <= lo <= hi <= n
        got = quantile_targets_range(y[lo:hi], lo, n, b, r0, r1)
        torch.testing.assert_close(got, full[r0:r1], rtol=1e-12, atol=0)
        # a longer covering slice gives the same result
        start = int(rng.integers(0, lo + 1))
        got = quantile_targets_range(y[start:], start, n, b, r0, r1)
        torch.testing.assert_close(got, full[r0:r1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(6))
def test_streaming_huge_sizes_vs_exact(seed):
    """n, b up to ~2e9: only the slice bound logic and integer arithmetic matter."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10**6, 2 * 10**9))
    b = int(rng.integers(max(1, n // 20), 2 * 10**9))
    r0 = int(rng.integers(0, b - 50))
    r1 = r0 + int(rng.integers(1, 50))

    def y_of(i: int) -> float:  # increasing in the rank
        return math.log1p(i) + i / n

    lo, hi = real_slice_bounds(n, b, r0, r1)
    # bounds: exactly the ranks with positive overlap with (r0/b, r1/b)
    covered = lambda i: Fraction(i + 1, n) > Fraction(r0, b) and Fraction(i, n) < Fraction(r1, b)
    assert covered(lo) and covered(hi - 1)
    assert not covered(lo - 1) and not covered(hi)
    y_slice = torch.tensor([y_of(i) for i in range(lo, hi)], dtype=F64)
    got = quantile_targets_range(y_slice, lo, n, b, r0, r1)
    ref = [target_reference(y_of, n, b, r) for r in range(r0, r1)]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


def test_slice_bounds_edge_cases():
    assert real_slice_bounds(10, 10, 0, 10) == (0, 10)
    assert real_slice_bounds(10, 3, 1, 2) == (3, 7)
    assert real_slice_bounds(3, 10, 3, 4) == (0, 2)
    assert real_slice_bounds(3, 10, 5, 5) == (1, 1)
    n = b = 3 * 10**9
    assert real_slice_bounds(n, b, b - 1, b) == (n - 1, n)


# ----------------------------------------------------------------------------------
# directions
# ----------------------------------------------------------------------------------
def test_random_directions_unit_and_reproducible():
    a = random_directions(7, 11, generator=gen(20), dtype=F64)
    assert a.shape == (7, 11) and a.dtype == F64
    torch.testing.assert_close(torch.linalg.vector_norm(a, dim=0), torch.ones(11, dtype=F64))
    torch.testing.assert_close(a, random_directions(7, 11, generator=gen(20), dtype=F64))
    x, y = randn(9, 7, seed=21), randn(5, 7, seed=22)
    torch.testing.assert_close(sliced_wasserstein(x, y, 11, generator=gen(20)), sliced_wasserstein(x, y, a))


def assert_normalised_pair_difference(col, real, fake):
    diffs = (real[:, None, :] - fake[None, :, :]).reshape(-1, real.shape[1])
    norms = torch.linalg.vector_norm(diffs, dim=1, keepdim=True)
    diffs = diffs[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
    assert float(torch.linalg.vector_norm(diffs - col, dim=1).min()) < 1e-12


@pytest.mark.parametrize("r", [0, 3, 10])
def test_algorithm2_keeps_top_r_and_fills_with_differences(r):
    d, k = 4, 10
    prev = random_directions(d, k, generator=gen(23), dtype=F64)
    dist = torch.rand(k, generator=gen(24), dtype=F64)
    real, fake = randn(6, d, seed=25), randn(5, d, seed=26)
    out = algorithm2_directions(prev, dist, r, real, fake, generator=gen(27))
    assert out.shape == (d, k)
    kept = set(torch.argsort(dist, descending=True)[:r].tolist())
    for c in range(k):
        if c in kept:
            assert torch.equal(out[:, c], prev[:, c])
        else:
            assert not torch.equal(out[:, c], prev[:, c])
            assert_normalised_pair_difference(out[:, c], real, fake)
    again = algorithm2_directions(prev, dist, r, real, fake, generator=gen(27))
    assert torch.equal(out, again)


def test_algorithm2_redraws_zero_differences():
    real = randn(2, 3, seed=28)
    fake = real.clone()  # half of the pairs have a zero difference
    prev = random_directions(3, 40, generator=gen(29), dtype=F64)
    out = algorithm2_directions(prev, torch.zeros(40, dtype=F64), 0, real, fake, generator=gen(30))
    assert torch.isfinite(out).all()
    for c in range(40):
        assert_normalised_pair_difference(out[:, c], real, fake)


def test_algorithm2_degenerate_samples():
    pts = torch.ones(4, 3, dtype=F64)
    prev = random_directions(3, 5, dtype=F64)
    with pytest.raises(ValueError, match="nonzero real - fake differences"):
        algorithm2_directions(prev, torch.zeros(5, dtype=F64), 2, pts, pts)


# ----------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------
X, Y = randn(6, 3, seed=31), randn(4, 3, seed=32)
DIRS = random_directions(3, 5, generator=gen(33), dtype=F64)


@pytest.mark.parametrize(
    "args, match",
    [
        ((X[:, 0], Y, DIRS), r"x must be a 2-D tensor"),
        ((X, Y[None], DIRS), r"y must be a 2-D tensor"),
        ((X, randn(4, 2, seed=0), DIRS), r"same number of columns, got 3 and 2"),
        ((X.float(), Y, DIRS), r"same dtype"),
        ((X.long(), Y.long(), DIRS), r"x must have a floating dtype"),
        ((X, torch.full((4, 3), float("nan"), dtype=F64), DIRS), r"y contains non-finite"),
        ((X.index_fill(0, torch.tensor([2]), math.inf), Y, DIRS), r"x contains non-finite"),
        ((X[:0], Y, DIRS), r"x must contain at least one sample"),
        ((X, Y, 2 * DIRS), r"unit-norm columns"),
        ((X, Y, DIRS[:2]), r"directions must have shape \[d, k\] with d = 3"),
        ((X, Y, DIRS[:, 0]), r"directions must be a 2-D tensor"),
        ((X, Y, DIRS.masked_fill(DIRS > 0.5, math.nan)), r"directions contains non-finite"),
        ((X, Y, 0), r"directions \(number of directions k\) must be >= 1"),
        ((X, Y, [1.0, 0.0]), r"directions must be a \[d, k\] tensor or an int k"),
    ],
)
def test_sliced_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        sliced_wasserstein(*args)


def test_bad_p_and_1d_inputs():
    with pytest.raises(ValueError, match=r"p must be a finite number >= 1"):
        sliced_wasserstein(X, Y, DIRS, p=0.5)
    with pytest.raises(ValueError, match=r"p must be a finite number >= 1"):
        wasserstein_1d(X, Y, p=math.nan)
    with pytest.raises(ValueError, match=r"same number of columns"):
        wasserstein_1d(X, Y[:, :2])


def test_targets_bad_inputs():
    y = torch.sort(randn(10, seed=34)).values
    with pytest.raises(ValueError, match="sorted in ascending order"):
        quantile_targets(y.flip(0), 5)
    with pytest.raises(ValueError, match="non-finite"):
        quantile_targets(torch.cat([y, torch.tensor([math.inf], dtype=F64)]), 5)
    with pytest.raises(ValueError, match=r"shape \[n\] or \[n, k\]"):
        quantile_targets(y[None, None], 5)
    with pytest.raises(ValueError, match=r"len\(y_sorted\) must be >= 1"):
        quantile_targets(y[:0], 5)
    with pytest.raises(ValueError, match="b must be >= 1"):
        quantile_targets(y, 0)
    with pytest.raises(ValueError, match=r"need \[4, 8\)"):
        quantile_targets_range(y[5:8], 5, 10, 5, 2, 4)
    with pytest.raises(ValueError, match=r"r1 must be in \[3, 5\]"):
        real_slice_bounds(10, 5, 3, 2)
    with pytest.raises(ValueError, match="does not fit in int64"):
        quantile_targets_range(y[:2], 0, 2**62 + 1, 2**62 - 1, 0, 1)


def test_algorithm2_bad_inputs():
    real, fake = randn(6, 3, seed=35), randn(5, 3, seed=36)
    dist = torch.zeros(5, dtype=F64)
    with pytest.raises(ValueError, match=r"prev_distances must be a tensor of shape \[k\] = \[5\]"):
        algorithm2_directions(DIRS, dist[:4], 1, real, fake)
    with pytest.raises(ValueError, match=r"r must be in \[0, 5\]"):
        algorithm2_directions(DIRS, dist, 6, real, fake)
    with pytest.raises(ValueError, match="real and fake must have d = 3 columns"):
        algorithm2_directions(DIRS, dist, 1, real[:, :2], fake)
    with pytest.raises(ValueError, match="unit-norm columns"):
        algorithm2_directions(DIRS * 3, dist, 1, real, fake)
