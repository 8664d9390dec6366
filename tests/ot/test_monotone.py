"""Tests of ootrain.ot.monotone and SemiDiscreteOT's 1-D quantile method: potentials that
realise given boundaries (checked by the generic argmin), streamed quantiles against the
exact empirical ones, the mismatch bound against its realised value over seeds, weights
and duplicate targets, fixed samples, budgets and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ootrain.ot.costs import parse_cost
from ootrain.ot.ctransform import c_transform
from ootrain.ot.monotone import (expected_mismatch, is_monotone_cost, monotone_potentials,
                                 streamed_quantiles)
from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.ot.targets import as_source

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def uniform(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random((n, 1))


@pytest.mark.parametrize("cost", ["sqeuclidean", "lp:3", "lp:1.5"])
def test_potentials_realise_the_boundaries(cost):
    """The generic argmin of c(x, y_j) - psi_j with the closed-form psi puts every x between
    b_(g-1) and b_g in cell g, for random targets and boundaries anywhere (also outside
    their two targets)."""
    g = torch.Generator().manual_seed(0)
    y = torch.sort(torch.randn(40, generator=g, dtype=F64)).values
    b = torch.sort(torch.randn(39, generator=g, dtype=F64) * 2).values
    c = parse_cost(cost)
    psi = monotone_potentials(y, b, c)
    x = torch.linspace(-8, 8, 20001, dtype=F64)
    x = x[((x[:, None] - b[None, :]).abs() > 1e-9).all(1)]        # off the boundaries
    idx = c_transform(x[:, None], as_source(y[:, None]), psi, c, "torch")[0]
    assert torch.equal(idx, torch.searchsorted(b, x))


def test_monotone_costs():
    assert is_monotone_cost(parse_cost("sqeuclidean")) and is_monotone_cost(parse_cost("lp:2.5"))
    assert not any(is_monotone_cost(parse_cost(n)) for n in ("l1", "euclidean", "lp:1"))


@pytest.mark.parametrize("batch, bins", [(1 << 17, 1 << 10), (1 << 20, 1 << 16)])
def test_streamed_quantiles_match_the_exact_empirical_ones(batch, bins):
    """Streamed over batches with a pilot-quantile histogram, the quantiles of 10^6 normal
    draws sit where the draws' own empirical CDF is the asked probability, to a fraction
    of a bin."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal(1_000_000)
    pos = [0]

    def draw(k: int) -> torch.Tensor:
        pos[0] += k
        return torch.from_numpy(data[pos[0] - k:pos[0], None])

    probs = np.array([1e-4, 0.01, 0.2, 0.5, 0.77, 0.999])
    q = streamed_quantiles(draw, probs, data.size, batch=batch, bins=bins)
    ecdf = np.searchsorted(np.sort(data), q, side="right") / data.size
    assert np.abs(ecdf - probs).max() < 0.25 / bins + 2e-6, ecdf - probs
    assert np.all(np.diff(q) > 0)


def test_streamed_quantiles_refuse_nan():
    x = torch.rand(1000, 1, dtype=F64)
    x[500] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        streamed_quantiles(lambda k: x[:k], np.array([0.5]), 1000)


def test_mismatch_bound_against_the_realised_mismatch():
    """Over 20 seeds, the realised mismatch (mass sent elsewhere than by the exact quantile
    map of U[0, 1], sum_g |b_hat_g - W_g|) averages the predicted mean (its spread is 43 %
    per fit, 10 % over 20) and never exceeds the recorded 99 % bound."""
    n, y = 20, torch.linspace(0, 1, 20, dtype=F64)[:, None]
    w = np.arange(1, n) / n
    realised, expected = [], None
    for seed in range(20):
        sd = SemiDiscreteOT(y).fit(uniform, rng=seed, mismatch_tol=0.05)
        rec = sd.history[-1]
        # boundaries of the fitted map, read off the generic argmin on a fine grid
        xs = torch.linspace(0, 1, 400_001, dtype=F64)[:, None]
        cell = sd.assign(xs)
        b = xs[1:, 0][cell.diff() > 0].numpy()
        assert b.size == n - 1
        realised.append(np.abs(b - w).sum())
        expected = expected_mismatch(w, rec["quantile_samples"])
        assert realised[-1] <= rec["mismatch"]
    assert abs(np.mean(realised) / expected - 1) < 0.3, (np.mean(realised), expected)


def test_weights_and_duplicate_targets():
    """Weighted targets with a duplicate: every distinct target receives its (summed)
    weight, the duplicate's mass going to its first index; chi^2 and imbalance recorded."""
    y = torch.tensor([[0.3], [0.1], [0.7], [0.3], [0.9]], dtype=F64)
    w = torch.tensor([1.0, 2.0, 3.0, 1.0, 3.0], dtype=F64)
    sd = SemiDiscreteOT(y, weights=w).fit(uniform, rng=0, mismatch_tol=0.01)
    x = torch.rand(1_000_000, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    p = torch.bincount(sd.assign(x), minlength=5).double() / x.shape[0]
    want = torch.tensor([0.2, 0.2, 0.3, 0.0, 0.3], dtype=F64)
    assert torch.allclose(p, want, atol=3e-3), p
    assert abs(float(sd.nu @ sd.potentials)) < 1e-12


def test_fixed_sample_uses_its_own_quantiles_and_warns_when_short():
    """A fixed sample tensor: the boundaries are its own quantiles (one sample of 4 000 is
    too few for the default mismatch, so the fit warns and is not certified)."""
    data = torch.rand(4000, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    y = ((torch.arange(10, dtype=F64) + 0.5) / 10)[:, None]
    with pytest.warns(UserWarning, match="not certified"):
        sd = SemiDiscreteOT(y).fit(data)
    assert not sd.history[-1]["certified"]
    counts = torch.bincount(sd.assign(data), minlength=10)
    assert int((counts - 400).abs().max()) <= 1          # the sample itself is balanced


def test_budget_and_bad_arguments():
    y = torch.linspace(0, 1, 50, dtype=F64)[:, None]
    with pytest.warns(UserWarning, match="mismatch needs"):
        sd = SemiDiscreteOT(y).fit(uniform, rng=0, max_samples=10**5)
    assert not sd.history[-1]["certified"] and sd.history[-1]["quantile_samples"] == 10**5
    with pytest.raises(ValueError, match="method 'quantile' needs 1-D"):
        SemiDiscreteOT(torch.rand(5, 2, dtype=F64)).fit(uniform, method="quantile")
    with pytest.raises(ValueError, match="method 'quantile' needs"):
        SemiDiscreteOT(y, cost="l1", eps=0).fit(uniform, method="quantile")
    with pytest.raises(ValueError, match="mismatch_tol is the stop"):
        SemiDiscreteOT(y).fit(uniform, method="ascent", mismatch_tol=0.01)
    with pytest.raises(ValueError, match="unknown method"):
        SemiDiscreteOT(y).fit(uniform, method="newton")
    with pytest.raises(ValueError, match="max_samples"):
        SemiDiscreteOT(y).fit(uniform, max_samples=0)
    # l1 in 1-D (soft by default) and sqeuclidean with eps keep the ascent under "auto"
    assert not SemiDiscreteOT(y, cost="l1").monotone and not SemiDiscreteOT(y, eps=0.1).monotone
