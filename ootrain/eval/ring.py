"""Sample-quality metrics shared by the GAN pipelines (OT-GAN, POT-GAN).

Mode metrics for a mixture of well-separated isotropic Gaussians (the ``ring8`` of
:mod:`ootrain.data`), in the convention of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et
al. 2018):

- a generated sample is **high-quality** when it lies within ``n_sigma * sigma`` (3 σ) of its
  nearest mode;
- a mode is **covered** when at least ``min_count`` high-quality samples (1 by default) have
  it as nearest mode;
- ``reverse_kl`` is ``KL(q || p)`` between ``q``, the histogram of *all* samples over their
  nearest modes, and ``p``, the true mode weights (uniform unless given): small when the samples
  spread over the modes like the data, large when mass piles on few modes (a mode with no
  sample contributes 0: this direction does not see dropped modes, ``modes_covered`` does).

PacGAN reports these on 2500 generated samples; the counts scale with the sample size, so
compare metrics at the same ``n``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ootrain.data import RING8_RADIUS, RING8_STD

__all__ = ["ring8_modes", "ring_metrics", "PACGAN_N_SAMPLES"]

#: Generated samples PacGAN / VEEGAN score on.
PACGAN_N_SAMPLES = 2500


def ring8_modes(k: int = 8, radius: float = RING8_RADIUS) -> np.ndarray:
    """The means ``[k, 2]`` of the ``ring8`` data set (:func:`ootrain.data.sample_ring8`):
    ``radius * (cos, sin)(2 pi j / k)``, ``j = 0..k-1`` (``k`` distinct angles: not
    ``linspace(0, 2 pi, k)``, whose first and last angle coincide)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    angles = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def ring_metrics(samples: Any, modes: Any | None = None, sigma: float = RING8_STD, *,
                 n_sigma: float = 3.0, min_count: int = 1,
                 weights: Any | None = None) -> dict[str, Any]:
    """Mode coverage and sample quality of ``samples [n, d]`` against mixture ``modes [k, d]``
    (default: :func:`ring8_modes`) of per-mode std ``sigma`` (module doc for the rules).

    Returns a dict of plain Python values:
        ``modes_covered`` (int), ``n_modes`` (k), ``covered`` (k bools),
        ``high_quality_fraction`` (in [0, 1]), ``counts`` (high-quality samples per mode, k
        ints), ``nearest_counts`` (all samples per nearest mode), ``reverse_kl``, ``n_samples``.

    Ties in the nearest mode (duplicate modes) go to the lowest index, so a mode that sits on
    top of another is never covered.
    """
    x = np.asarray(samples, dtype=np.float64)
    mu = ring8_modes() if modes is None else np.asarray(modes, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty [n, d] array, got shape {x.shape}")
    if mu.ndim != 2 or mu.shape[0] == 0 or mu.shape[1] != x.shape[1]:
        raise ValueError(f"modes must be [k, {x.shape[1]}] (k >= 1), got shape {mu.shape}")
    if not np.isfinite(x).all():
        raise ValueError("samples contain non-finite values (NaN or Inf)")
    if not (np.isfinite(sigma) and sigma > 0) or not (np.isfinite(n_sigma) and n_sigma > 0):
        raise ValueError(f"sigma and n_sigma must be finite and > 0, got {sigma}, {n_sigma}")
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    k = mu.shape[0]
    p = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if p.shape != (k,) or (p < 0).any() or not p.sum() > 0:
        raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
    p = p / p.sum()
    # a mode within rounding of an earlier one is a duplicate: it never gets samples
    tol = 1e-9 * (1.0 + np.abs(mu).max())
    dup = np.array([bool(j) and bool((np.linalg.norm(mu[:j] - mu[j], axis=1) <= tol).any())
                    for j in range(k)])
    nearest = np.empty(len(x), dtype=np.int64)
    dmin = np.empty(len(x))
    rows = max(1, (1 << 22) // k)
    for i in range(0, len(x), rows):
        blk = ((x[i:i + rows, None, :] - mu[None]) ** 2).sum(-1)
        blk[:, dup] = np.inf
        nearest[i:i + len(blk)] = blk.argmin(1)
        dmin[i:i + len(blk)] = blk.min(1)
    hq = np.sqrt(dmin) <= n_sigma * sigma
    counts = np.bincount(nearest[hq], minlength=k)
    allc = np.bincount(nearest, minlength=k)
    q = allc / len(x)
    nz = q > 0
    with np.errstate(divide="ignore"):
        rkl = float(np.sum(q[nz] * (np.log(q[nz]) - np.log(p[nz]))))
    covered = counts >= min_count
    return {"modes_covered": int(covered.sum()), "n_modes": int(k),
            "covered": [bool(c) for c in covered],
            "high_quality_fraction": float(hq.mean()),
            "counts": [int(c) for c in counts], "nearest_counts": [int(c) for c in allc],
            "reverse_kl": rkl, "n_samples": int(len(x)),
            "n_distinct_modes": int(k - dup.sum())}
