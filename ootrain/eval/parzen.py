"""Parzen-window (Gaussian kernel density) estimate of the reverse KL ``KL(P_g || P_r)``.

POT-GAN (Avraham et al., CVPR 2019) scores generators on toy problems (the 2-D ``ring8`` and a
3-D standard Gaussian) by the reverse KL between the generated distribution ``P_g`` and the
real one ``P_r``, with both densities replaced by Parzen-window estimates

    p̂(x) = (1/m) Σ_j N(x; y_j, h² I)        (data y_1..y_m in R^d, bandwidth h)

and the expectation over ``P_g`` by a mean over generated samples:

    KL(P_g || P_r) ≈ mean_{x ∈ E} [log p̂_g(x) − log p̂_r(x)].

The reverse direction is small when the generated samples sit where the data is, even if they
cover only some of its modes (dropping half of two equal modes costs ``log 2``), and large when
they put mass where the data has none.

Everything is computed in float64 with a blocked ``logsumexp``, so no ``[n, m]`` matrix is
formed: memory is ``O(block)``.  :func:`gaussian_kl` is the closed form for two Gaussians, the
reference the estimator is tested against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["parzen_log_density", "parzen_reverse_kl", "scott_bandwidth", "gaussian_kl"]

F64 = torch.float64


def _as_2d(name: str, a: Any) -> torch.Tensor:
    """``a`` (numpy / torch / nested lists) as a finite, non-empty ``[n, d]`` float64 CPU
    tensor, or ValueError."""
    if isinstance(a, torch.Tensor):
        t = a.detach().to(device="cpu", dtype=F64)
    else:
        t = torch.as_tensor(np.asarray(a, dtype=np.float64))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [n, d] array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return t


def _check_bandwidth(bandwidth: Any) -> float:
    if isinstance(bandwidth, bool):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
    try:
        h = float(bandwidth)
    except (TypeError, ValueError):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}") from None
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
    return h


def _log_kde(x: torch.Tensor, y: torch.Tensor, h: float, exclude: torch.Tensor | None,
             block: int) -> np.ndarray:
    """Blocked ``log p̂(x_i)`` of the KDE of ``y [m, d]`` at ``x [n, d]`` (validated float64);
    ``exclude[i]`` (if given) is a column of ``y`` left out of row ``i``'s sum, which is then
    normalised by ``m - 1``."""
    n, d = x.shape
    m = y.shape[0]
    centre = y.mean(0)                      # translation invariant: centre for accurate |x-y|²
    x, y = x - centre, y - centre
    cols = min(m, block)
    rows = max(1, min(n, block // cols))
    scale = -0.5 / (h * h)
    y2 = (y * y).sum(1)
    out = torch.empty(n, dtype=F64)
    for r0 in range(0, n, rows):
        xr = x[r0:r0 + rows]
        x2 = (xr * xr).sum(1, keepdim=True)
        acc = None
        for c0 in range(0, m, cols):
            yc = y[c0:c0 + cols]
            # -|x - y|² / (2 h²) via |x|² + |y|² - 2 x·y, one [rows, cols] tile
            t = torch.addmm(y2[c0:c0 + cols], xr, yc.T, alpha=-2.0).add_(x2)
            t.clamp_(min=0.0).mul_(scale)
            if exclude is not None:
                local = exclude[r0:r0 + rows] - c0
                hit = ((local >= 0) & (local < yc.shape[0])).nonzero().squeeze(1)
                t[hit, local[hit]] = -math.inf
            lse = torch.logsumexp(t, dim=1)
            acc = lse if acc is None else torch.logaddexp(acc, lse)
        out[r0:r0 + rows] = acc
    count = m - 1 if exclude is not None else m
    return (out - math.log(count) - 0.5 * d * math.log(2 * math.pi * h * h)).numpy()


def parzen_log_density(points: Any, data: Any, bandwidth: float, *, leave_one_out: bool = False,
                       block: int = 2 ** 22) -> np.ndarray:
    """Log of the Gaussian kernel density estimate of ``data [m, d]`` at ``points [n, d]``:

        log p̂(x_i) = log( (1/m) Σ_j N(x_i; y_j, h² I) )
                   = logsumexp_j( -|x_i - y_j|² / (2 h²) ) - log m - (d/2) log(2 π h²),

    ``h = bandwidth``.  Returns a float64 array ``[n]``.

    ``leave_one_out=True`` (``points`` must be ``data``: same shape and values) drops the
    ``j == i`` term and divides by ``m - 1`` instead, so a sample does not see its own kernel
    (whose height ``(2 π h²)^(-d/2) / m`` would otherwise bias ``log p̂`` upwards); needs
    ``m >= 2``.

    Computed in float64 over ``[rows, cols]`` tiles of at most ``block`` entries (``cols <=
    block`` columns at a time, running ``logaddexp`` across column blocks), so memory is
    ``O(block + n + m)`` whatever ``n * m``.
    """
    x = _as_2d("points", points)
    y = x if points is data else _as_2d("data", data)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"points and data must have the same width, got {x.shape[1]} and "
                         f"{y.shape[1]}")
    h = _check_bandwidth(bandwidth)
    if isinstance(block, bool) or int(block) != block or block < 1:
        raise ValueError(f"block must be an integer >= 1, got {block!r}")
    exclude = None
    if leave_one_out:
        if x.shape != y.shape or not torch.equal(x, y):
            raise ValueError("leave_one_out=True needs points to be data (same shape and values)")
        if y.shape[0] < 2:
            raise ValueError("leave_one_out=True needs at least 2 data rows")
        exclude = torch.arange(y.shape[0])
    return _log_kde(x, y, h, exclude, int(block))


def parzen_reverse_kl(generated: Any, real: Any, bandwidth: float, *, n_eval: int | None = None,
                      seed: int = 0) -> float:
    """Parzen-window estimate of the reverse KL ``KL(P_g || P_r)`` from ``generated [n, d]``
    (samples of ``P_g``) and ``real [m, d]`` (samples of ``P_r``):

        KL̂ = mean_{x_i ∈ E} [ log p̂_g^(-i)(x_i) - log p̂_r(x_i) ],

    ``E`` = ``n_eval`` rows of ``generated`` (all by default; else the first ``n_eval`` of a
    permutation seeded by ``seed``), ``p̂_g^(-i)`` the KDE of all ``n`` generated samples but
    ``x_i`` itself (leave-one-out, ``n - 1`` kernels), ``p̂_r`` the KDE of the ``m`` real
    samples, both with bandwidth ``h`` (:func:`parzen_log_density`).  Returns a float.

    **Bias.**  With ``h`` fixed and ``n, m -> ∞`` the KDEs tend to the smoothed densities
    ``p_g * φ_h`` and ``p_r * φ_h`` (``φ_h`` the ``N(0, h² I)`` density), while the points
    ``x`` stay unsmoothed samples of ``P_g``, so the estimate converges to

        E_{x ~ P_g}[ log (p_g * φ_h)(x) - log (p_r * φ_h)(x) ]
            = KL(P_g || P_r * φ_h) - KL(P_g || P_g * φ_h),

    not to ``KL(P_g || P_r)``.  For Gaussians ``N(μ1, Σ1)``, ``N(μ2, Σ2)``, with ``S_k = Σ_k
    + h² I``, that is ``gaussian_kl(μ1, Σ1, μ2, S2) - gaussian_kl(μ1, Σ1, μ1, S1)``; it is
    close to the KL of the two *smoothed* distributions, ``gaussian_kl(μ1, S1, μ2, S2)``, which
    exceeds it by ``(h²/2) [tr S2⁻¹ - tr S1⁻¹]`` (both are ``O(h²)`` away from the true KL).
    On top of that, ``log`` of a KDE is biased low (Jensen) by about ``Var p̂ / (2 p²) ~
    1 / (2 m (4 π h²)^(d/2) p(x))``, largest where the estimated density ``p`` is small (for
    ``p̂_r``: where ``P_g`` has mass that ``P_r`` lacks).  Smaller ``h``: less smoothing bias,
    more variance and Jensen bias.  Compare generators at the same ``h``, ``n``, ``m``.
    """
    g = _as_2d("generated", generated)
    r = _as_2d("real", real)
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"generated and real must have the same width, got {g.shape[1]} and "
                         f"{r.shape[1]}")
    h = _check_bandwidth(bandwidth)
    n = g.shape[0]
    if n_eval is None:
        n_eval = n
    if isinstance(n_eval, bool) or int(n_eval) != n_eval or not 2 <= n_eval <= n:
        raise ValueError(f"n_eval must be an integer in [2, {n}] (generated rows), "
                         f"got {n_eval!r}")
    n_eval = int(n_eval)
    if n_eval == n:
        idx = torch.arange(n)
    else:
        idx = torch.from_numpy(np.random.default_rng(seed).permutation(n)[:n_eval])
    x = g[idx]
    block = 2 ** 22
    log_pg = _log_kde(x, g, h, idx, block)
    log_pr = _log_kde(x, r, h, None, block)
    return float(np.mean(log_pg - log_pr))


def scott_bandwidth(x: Any) -> float:
    """Scott's rule of thumb ``h = n^(-1/(d+4)) * mean_k std(x[:, k])`` for ``x [n, d]``
    (per-coordinate sample std, ``ddof=1``).

    Near-optimal for estimating a single Gaussian density, and only a default / reference
    here: it over-smooths multi-modal data such as ``ring8``, and the reverse KL depends on
    ``h`` (:func:`parzen_reverse_kl`), so report and fix the bandwidth when comparing runs.
    """
    t = _as_2d("x", x)
    n, d = t.shape
    if n < 2:
        raise ValueError(f"x needs at least 2 rows, got {n}")
    s = float(t.std(0, unbiased=True).mean())
    if not s > 0:
        raise ValueError("x has zero spread (all rows equal): no Scott bandwidth")
    return n ** (-1.0 / (d + 4)) * s


def gaussian_kl(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Closed-form ``KL(N(μ1, Σ1) || N(μ2, Σ2))`` for means ``[d]`` and covariances ``[d, d]``
    (symmetric positive definite):

        ½ [ tr(Σ2⁻¹ Σ1) + (μ2 - μ1)ᵀ Σ2⁻¹ (μ2 - μ1) - d + ln det Σ2 - ln det Σ1 ].
    """
    m1, m2 = (np.asarray(m, dtype=np.float64) for m in (mu1, mu2))
    c1, c2 = (np.asarray(c, dtype=np.float64) for c in (cov1, cov2))
    if m1.ndim != 1 or m1.shape[0] == 0 or m2.shape != m1.shape:
        raise ValueError(f"mu1 and mu2 must be [d] vectors, got shapes {m1.shape}, {m2.shape}")
    d = m1.shape[0]
    if c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"cov1 and cov2 must be [{d}, {d}], got shapes {c1.shape}, {c2.shape}")
    for name, a in (("mu1", m1), ("mu2", m2), ("cov1", c1), ("cov2", c2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    chol = []
    for name, c in (("cov1", c1), ("cov2", c2)):
        if not np.allclose(c, c.T, rtol=1e-10, atol=1e-12 * np.abs(c).max()):
            raise ValueError(f"{name} must be symmetric")
        try:
            chol.append(np.linalg.cholesky(c))
        except np.linalg.LinAlgError:
            raise ValueError(f"{name} must be positive definite") from None
    l1, l2 = chol
    logdet1, logdet2 = (2.0 * np.log(np.diag(low)).sum() for low in (l1, l2))
    a = np.linalg.solve(l2, l1)             # tr(Σ2⁻¹ Σ1) = |L2⁻¹ L1|_F²
    b = np.linalg.solve(l2, m2 - m1)        # Mahalanobis term = |L2⁻¹ (μ2 - μ1)|²
    return float(0.5 * ((a * a).sum() + (b * b).sum() - d + logdet2 - logdet1))
