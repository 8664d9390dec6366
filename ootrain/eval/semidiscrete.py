"""Estimates of a fitted semi-discrete OT solution on fresh source samples."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["evaluate_semidiscrete"]


def evaluate_semidiscrete(ot: Any, sampler: Callable[[int, np.random.Generator], Any],
                          n_eval: int = 65536, batch: int = 8192, seed: int = 0,
                          rng: np.random.Generator | int | None = None) -> dict[str, float]:
    """Transport cost, dual and mass imbalance of the potentials of a fitted
    :class:`~ootrain.ot.semidiscrete.SemiDiscreteOT` ``ot``, on ``n_eval`` fresh draws of
    ``sampler(k, rng) -> [k, d]`` (numpy array or tensor) taken ``batch`` at a time.

    ``rng`` (a numpy ``Generator`` or an int seed; default ``seed``) drives the draws; give a
    seed other than the fit's so the samples are fresh.

    Returns ``transport_cost`` (mean cost of the map ``T(x) = y_σ(x)``; the expected cost
    for a soft map) and ``transport_cost_noise`` (its standard error, the per-sample costs'
    standard deviation over ``sqrt(n_eval)``), ``dual`` (the dual estimate, ≤ the OT cost
    and equal at the optimum; on a second ``n_eval`` draws), ``imbalance`` (``||ν - P̂||₁``
    of the assignment's empirical cell masses; soft assignments are drawn with a
    ``torch.Generator`` seeded with ``seed``), ``imbalance_noise`` (its expected value at
    the optimum from sampling alone, ``Σ_j sqrt(2 ν_j (1 - ν_j) / (π n_eval))``), ``chi2``
    (the unbiased estimate of the marginal χ² error ``Σ_j (p_j - ν_j)² / ν_j`` of the same
    assignment, :func:`ootrain.ot.semidiscrete.chi2_estimate`; for a soft map ``p`` is the
    soft plan's marginal, of which the drawn assignment is a multinomial sample), ``chi2_noise``
    (its standard error) and ``chi2_floor`` (the standard error a perfectly balanced map
    would show on ``n_eval`` samples, ``~ sqrt(2 N) / n_eval``).
    """
    from ootrain.ot.semidiscrete import chi2_estimate, chi2_floor
    if n_eval < 1:
        raise ValueError(f"n_eval must be >= 1, got {n_eval}")
    rng = np.random.default_rng(seed if rng is None else rng)
    gen = torch.Generator().manual_seed(seed)
    total, total2, done = 0.0, 0.0, 0
    counts = torch.zeros(ot.n_targets, dtype=torch.float64)
    while done < n_eval:
        k = min(batch, n_eval - done)
        x = sampler(k, rng)
        x = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        if x.ndim != 2 or x.shape[0] != k:
            raise ValueError(f"sampler({k}, rng) must return shape [{k}, d], got "
                             f"{tuple(x.shape)}")
        per = ot.cost_per_sample(x).double()
        total += float(per.sum())
        total2 += float((per * per).sum())
        counts += torch.bincount(ot.assign(x, generator=gen).cpu(),
                                 minlength=ot.n_targets).double()
        done += k
    nu = ot.nu.double().cpu()
    mean = total / n_eval
    var = max(total2 / n_eval - mean * mean, 0.0) * n_eval / max(n_eval - 1, 1)
    chi2, chi2_se = chi2_estimate(counts, counts, n_eval, nu)
    return {
        "transport_cost": mean,
        "transport_cost_noise": math.sqrt(var / n_eval),
        "dual": ot.dual(sampler, n=n_eval, batch=batch, rng=rng),
        "imbalance": float((counts / n_eval - nu).abs().sum()),
        "imbalance_noise": float(torch.sqrt(2 * nu * (1 - nu) / (math.pi * n_eval)).sum()),
        "chi2": chi2, "chi2_noise": chi2_se, "chi2_floor": chi2_floor(nu, n_eval),
    }
