"""Semi-discrete optimal transport by stochastic dual ascent (Chen et al., ICML 2019).

A continuous source ``mu`` (known through a sampler) is transported onto ``N`` target
points ``y_j`` with weights ``nu_j`` (uniform by default).  The semi-discrete dual is

    h(psi) = E_{x~mu}[ min_j c(x, y_j) - psi_j ] + sum_j nu_j psi_j,

concave in ``psi``, maximal at the optimal potential, where the map
``T(x) = y_sigma(x)``, ``sigma(x) = argmin_j c(x, y_j) - psi_j``, pushes ``mu`` exactly
onto ``nu`` and ``max h = W_c(mu, nu)``.  Its (super)gradient is

    dh/dpsi_j = nu_j - P(sigma(x) = j),

estimated on a batch of samples.  The ``+ nu_j`` term is kept (the paper's official code
drops it, so its potentials drift).

Costs that are not strictly convex (``l1``) tie on sets of positive measure, so a hard
argmin cannot split masses there; for them the default is the entropic dual with the
soft c-transform (:func:`ootrain.ot.ctransform.soft_c_transform`) of temperature ``eps``:

    h_eps(psi) = E_x[ -eps log sum_j nu_j exp((psi_j - c(x, y_j)) / eps) ] + sum_j nu_j psi_j,
    dh_eps/dpsi_j = nu_j - E_x[P_j(x)],   P_j(x) = softmax_j(log nu_j + (psi_j - c)/eps),

and the map is the random assignment ``j ~ P(x)``.  Its transport cost exceeds the exact
one by ``O(eps)``; ``eps`` is given relative to ``scale`` (below), so the default
``0.05`` blurs cell boundaries over 5 % of a cell.

Optimisation (:meth:`SemiDiscreteOT.fit`): Adam directions with a decaying step and
iterate averaging.  With ``B`` samples per step, ``g_t = nu - P_hat_t`` and Adam's moment
estimates ``m_t, v_t`` of it (``beta = (0.9, 0.99)``, bias-corrected),

    psi_{t+1} = psi_t + gamma_t m_t / sqrt(v_t),     gamma_t = kappa w t^-a,   a = 2/3,

and what is returned is the polynomial-decay average (``eta = 3``)
``psi_bar_t = psi_bar_{t-1} + (eta + 1) / (t + eta) (psi_t - psi_bar_{t-1})``, which forgets
the large early steps.  ``w`` is a cell's width *in potential units*: the median over
targets ``j`` of ``mean_x |c(x, y_j) - c(x, y_k)|`` (``k`` the nearest other target, ``x``
the first batch), the change of ``psi_j`` that moves a typical source point across the
boundary of the two cells; it makes ``kappa`` (``lr``, default 3) dimensionless (the
targets' nearest-neighbour cost alone is wrong by 100x for a Gaussian source in d = 2, and
the source's cost spread diverged on a concentrated one).  The ``t^-a`` decay and the
averaging are those of the averaged SGD analysed by Genans et al. (NeurIPS 2025; POT's
``solve_semidiscrete``); Adam's per-target normalisation is kept because plain SGD's single
step cannot suit cells whose widths differ by orders of magnitude (1-D, N = 50, targets
``((j + 1/2) / N)^2``: imbalance still 0.05 after 20 000 steps, against 0.017 after 2 900
with Adam).

Stopping: at iterations growing by 1.25 (or every ``check_every``), ``psi_bar`` is assigned on
fresh samples.  Two measures are taken on the same samples: the marginal chi^2 error
``chi2 = sum_j (p_j - nu_j)^2 / nu_j`` (the SD-FM paper's and OTT-JAX's measure; ``p`` the
mass each target receives, for the soft map the target marginal of the soft plan), by the
unbiased estimator of :func:`chi2_estimate` with its standard error, and the L1 imbalance
``||nu - P_hat||_1``.  The default stop (``chi2_tol = DEFAULT_CHI2_TOL = 1e-3``) certifies
``chi2 + 2 s.e. <= chi2_tol`` on ``m`` samples with a balanced map's standard error
``sqrt(2 (N - 1)) / m = 0.25 chi2_tol`` (``m ~ 5.7 sqrt(N) / chi2_tol``, far fewer than an
L1 certificate's ``~N / tol^2``: chi^2 <= 1e-3 implies ``||nu - p||_1 <= sqrt(chi2) = 0.032``
by Cauchy-Schwarz), and abandons a check once the estimate exceeds ``chi2_tol`` by 2
standard errors.  With ``tol``, the imbalance is certified below ``tol`` (``m``
samples with noise floor ``sum_j sqrt(2 nu_j (1 - nu_j) / (pi m)) = 0.7 tol``, about
``4 N / (pi tol^2)`` for uniform weights: certification needs ``~N / tol^2`` samples
whatever the optimiser) or is clearly above it (measured at ``B, 2B, 4B, …`` samples and
abandoned once it exceeds ``tol`` by 2 noise floors, so far from the optimum a check costs
a batch or two).  The next check is at least as many iterations away as the last one cost,
so checking never costs more than fitting.  Every check is recorded in :attr:`history`.

Accuracy notes.  The transport cost is first-order sensitive to the imbalance: in 1-D
the cell boundaries are cumulative sums of the cell masses, so low-frequency errors of
``psi`` (the slow modes of this ill-conditioned problem, condition number ``~N^2`` in
1-D) shift many boundaries at once, and a chi^2 certificate does not bound how many
points are mapped elsewhere than by the exact map.  In 1-D with a strictly convex cost
``fit`` therefore uses the closed form instead (``method="quantile"``,
:mod:`ootrain.ot.monotone`): cell boundaries at the source's empirical quantiles, with a
default stop on that mismatch (``DEFAULT_MISMATCH_TOL``, 99 % agreement with 99 %
probability).  The soft dual ``h_eps`` is that of the entropic problem and may exceed
``W_c`` by up to ``eps log N``.

``grow=True`` is the paper's schedule: fit on a random subset of ``n0`` targets, double
it until all ``N``; each new target starts with the potential of the current cell that
contains it (``psi_new = psi_{sigma(y_new)}``, so it takes over part of that cell).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from ootrain.ot.backends import BACKENDS, TORCH_BLOCK
from ootrain.ot.checks import HALF, check_query
from ootrain.ot.costs import Cost, parse_cost
from ootrain.ot.ctransform import c_transform, soft_assign, soft_stats
from ootrain.ot.monotone import (MISMATCH_Q99, expected_mismatch, is_monotone_cost,
                                 mismatch_samples, monotone_potentials, streamed_quantiles)
from ootrain.ot.sharded import sharded_c_transform
from ootrain.ot.targets import TargetLike, TargetSource, as_source
from ootrain.progress import make_progress

__all__ = ["SemiDiscreteOT", "chi2_estimate", "chi2_floor"]

#: What :meth:`SemiDiscreteOT.fit` and :meth:`SemiDiscreteOT.dual` sample from: the project's
#: sampler convention ``draw(n, rng) -> [n, d]`` (numpy array or tensor; ``rng`` a
#: ``numpy.random.Generator``, see :data:`ootrain.engine.core.Sampler`), or a fixed sample
#: tensor ``[M, d]``.
Sampler = Union[Callable[[int, np.random.Generator], Any], Tensor]
#: ``rng`` arguments: a numpy ``Generator``, an int seed or None (``numpy.random.default_rng``).
RngLike = Union[np.random.Generator, int, None]

#: Default relative temperature per cost (0 = hard argmin).
DEFAULT_EPS = {"sqeuclidean": 0.0, "euclidean": 0.0, "l1": 0.05, "lp": 0.0, "cosine": 0.0}
#: ``eta`` of the polynomial-decay average ``psi_bar += (eta + 1) / (t + eta) (psi - psi_bar)``.
AVERAGING = 3
#: A certifying check measures the imbalance with a noise floor of this fraction of ``tol``.
CHECK_NOISE = 0.7
#: A check gives up once the measured imbalance exceeds ``tol`` by this many noise floors.
REJECT_FLOORS = 2.0
#: Default stop of :meth:`SemiDiscreteOT.fit`: the marginal chi^2 error certified below this.
DEFAULT_CHI2_TOL = 1e-3
#: Default stop of the 1-D quantile method: at most this fraction of the source mass is sent
#: to another target than by the exact map, with 99 % probability.
DEFAULT_MISMATCH_TOL = 0.01
#: Default sample budget of the 1-D quantile method.
DEFAULT_MAX_SAMPLES = 2**34
#: Fit methods: ``quantile`` (1-D, :mod:`ootrain.ot.monotone`), ``ascent`` (any dimension).
METHODS = ("auto", "quantile", "ascent")
#: Default checks happen at iterations growing by this factor.
CHECK_GROWTH = 1.25
#: A certifying chi^2 check measures on enough samples that a balanced map's estimate has a
#: standard error of this fraction of ``chi2_tol``.
CHI2_NOISE = 0.25
#: A chi^2 check certifies when the estimate plus this many standard errors is <= chi2_tol.
CHI2_Z = 2.0


def chi2_estimate(mass: Tensor, mass2: Tensor, m: int, nu: Tensor) -> tuple[float, float]:
    """Unbiased estimate of the marginal chi^2 error ``sum_j (p_j - nu_j)^2 / nu_j`` and its
    standard error, from ``m`` i.i.d. source samples.

    ``p_j = E_x[Z_j(x)]`` is the mass the map sends to target ``j``: ``Z_j(x) = 1[sigma(x)
    = j]`` for the hard map, ``Z_j(x) = P_j(x)`` (the soft assignment probabilities) for
    the entropic one, whose ``p`` is then the target marginal of the soft *plan* (the same as
    that of the random map ``j ~ P(x)``).  ``mass_j = sum_i Z_j(x_i)`` and ``mass2_j =
    sum_i Z_j(x_i)^2`` (equal to ``mass`` for the hard map's counts).

    Estimator.  ``p_hat_j = mass_j / m`` has ``E[p_hat_j] = p_j`` and ``Var p_hat_j =
    Var Z_j / m``, so ``E[(p_hat_j - nu_j)^2] = (p_j - nu_j)^2 + Var Z_j / m``: the plug-in
    ``sum_j (p_hat_j - nu_j)^2 / nu_j`` is biased up by ``sum_j Var Z_j / (m nu_j)``, about
    ``(N - 1) / m`` at the optimum of the hard problem.  The sample variance
    ``s_j^2 = (mass2_j - m p_hat_j^2) / (m - 1)`` is unbiased for ``Var Z_j``, hence

        chi2 = sum_j [(p_hat_j - nu_j)^2 - s_j^2 / m] / nu_j

    is unbiased.  For counts ``s_j^2 / m = p_hat_j (1 - p_hat_j) / (m - 1)`` (the unbiased
    estimate of the multinomial ``p_j (1 - p_j) / m``).  It can be negative near the optimum.

    Standard error (delta method around ``p``, ``g_j = 2 (p_j - nu_j) / nu_j``, ``C`` the
    covariance of ``Z``): ``Var chi2 ~ g' C g / m + 2 ||D^-1/2 C D^-1/2||_F^2 / m^2 +
    sum_j p_j / (m^3 nu_j^2)`` (``D = diag(nu)``; the last term bounds the fourth-cumulant
    part, which matters when ``m`` is not much larger than ``N``).  It is evaluated with the
    multinomial covariance ``C = diag(p) - p p'``, exact for the hard map and an upper bound
    (in the PSD order, ``E[Z Z'] <= diag(E Z)`` for probability vectors) for the soft one, at
    ``p = p_hat``, with ``(p_j - nu_j)^2`` in ``g' C g = 4 [sum_j (p_j - nu_j)^2 p_j /
    nu_j^2 - chi2^2]`` replaced by its unbiased estimate (the plug-in would add the noise
    ``~ 4 (N - 1) / m^2`` again); the Frobenius term is also bounded by the squared trace
    ``(sum_j s_j^2 / nu_j)^2``.  At the optimum of the hard problem it is ``~ sqrt(2 (N - 1)) / m``
    (:func:`chi2_floor`).  Only targets with ``nu_j > 0`` enter (chi^2 is undefined
    elsewhere; the L1 imbalance sees mass sent to zero-weight targets).

    Returns:
        ``(chi2, standard error)`` as floats.
    """
    if m < 2:
        return math.inf, math.inf
    keep = nu > 0
    nu = nu[keep].double()
    p = mass[keep].double() / m
    s2 = ((mass2[keep].double() - m * p * p) / (m - 1)).clamp_min(0)
    chi2 = float((((p - nu) ** 2 - s2 / m) / nu).sum())
    pc = p.clamp(0, 1)
    d2 = (p - nu) ** 2 - s2 / m                # unbiased for (p_j - nu_j)^2
    lin = 4 * (float((d2 * pc / (nu * nu)).sum()) - max(chi2, 0.0) ** 2)
    frob = float((pc * pc / (nu * nu)).sum() - 2 * (pc ** 3 / (nu * nu)).sum()
                 + (pc * pc / nu).sum() ** 2)
    frob = min(frob, float((s2 / nu).sum()) ** 2)   # ||A||_F <= trace A for A >= 0
    var = max(lin, 0.0) / m + 2 * max(frob, 0.0) / m**2 + float((pc / (nu * nu)).sum()) / m**3
    return chi2, math.sqrt(var)


def _chi2_samples(nu: Tensor, target: float) -> int:
    """Fewest samples (to 1 %) with ``chi2_floor(nu, m) <= target``."""
    k = int((nu > 0).sum())
    m = max(2, math.ceil(math.sqrt(2 * max(k - 1, 1)) / target))
    while chi2_floor(nu, m) > target:
        m = math.ceil(m * 1.01)
    return m


def chi2_floor(nu: Tensor, m: int) -> float:
    """Standard error of :func:`chi2_estimate` on ``m`` samples of a perfectly balanced hard
    map: ``sqrt(2 (N_+ - 1) / m^2 + N_+-sum 1 / (m^3 nu_j))`` (``N_+`` targets with
    ``nu_j > 0``), about ``sqrt(2 N) / m``."""
    nu = nu[nu > 0].double()
    k = nu.numel()
    return math.sqrt(2 * max(k - 1, 0) / m**2 + float((1 / nu).sum()) / m**3)


def default_batch(n: int) -> int:
    """Samples per iteration for ``n`` targets: ``n / 4`` rounded to a power of two, clipped
    to ``[256, 4096]`` (a few samples per cell per step; large enough for GEMM efficiency)."""
    return int(min(4096, max(256, 2 ** round(math.log2(max(1, n) / 4)))))


def _as_rng(rng: Any) -> np.random.Generator:
    """``numpy.random.default_rng(rng)`` (a ``Generator`` is returned as is), with a clear
    error for anything else (a ``torch.Generator`` belongs in ``generator=``)."""
    if isinstance(rng, bool) or not (rng is None or isinstance(rng, (np.random.Generator,
                                                                     int, np.integer))):
        raise ValueError("rng must be a numpy.random.Generator, an int seed or None, got "
                         f"{type(rng).__name__}" + (" (pass a torch.Generator as generator=)"
                                                    if isinstance(rng, torch.Generator) else ""))
    return np.random.default_rng(rng)


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _check_pos(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


class SemiDiscreteOT:
    """Semi-discrete OT from a sampled source to ``N`` weighted target points.

    Args:
        targets: ``[N, d]`` tensor, numpy array, zarr array or path, or
            :class:`~ootrain.ot.ctransform.TargetSource` (large sources are streamed in blocks).
        cost: ``"sqeuclidean"``, ``"euclidean"``, ``"l1"``, ``"lp:<p>"`` or a ``Cost``.
        backend: argmin backend (:func:`ootrain.ot.ctransform.c_transform`); soft transforms use
            torch for ``"auto"``/``"torch"`` and KeOps for ``"keops"``.
        eps: temperature relative to :attr:`scale`; 0 = hard argmin.  Default: 0.05 for
            ``l1``, 0 otherwise.
        weights: ``[N]`` non-negative target weights (normalised); uniform by default.
        dtype, device: where and in which precision to compute (default: the targets'
            floating dtype, CPU).
        block_rows: rows per target block when streaming.

    Attributes:
        potentials: ``psi`` ``[N]`` (gauge: ``sum_j nu_j psi_j = 0`` after :meth:`fit`).
        history: one dict per check of :meth:`fit`: ``iteration``, ``n_targets`` (the
            growth stage), ``imbalance``, ``chi2`` (:func:`chi2_estimate`, unbiased),
            ``chi2_noise`` (its standard error) and ``dual`` of the averaged potential,
            all measured on the same ``samples`` fresh samples, ``noise`` (the imbalance a
            perfectly balanced map would show on as many), ``early`` (the check stopped as
            soon as the imbalance or chi^2 was clearly above its tolerance), ``certified``
            (the check met the stop), ``lr`` (the absolute step ``gamma_t``),
            ``averaged`` (always true).
    """

    def __init__(self, targets: TargetLike, cost: str | Cost = "sqeuclidean",
                 backend: str = "auto", eps: float | None = None,
                 weights: Tensor | np.ndarray | None = None, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 block_rows: int | None = None) -> None:
        self.ground_cost = parse_cost(cost)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.source: TargetSource = as_source(targets, block_rows)
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or self.source.dtype
        if not self.dtype.is_floating_point or self.dtype in HALF:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}"
                             + (" (half precision: squared distances overflow it; pass "
                                "dtype=torch.float32)" if self.dtype in HALF else ""))
        if self.source.in_memory:
            self.source = TargetSource(self.source.data.to(self.device, self.dtype),
                                       block_rows or self.source.block_rows)
        self.eps_rel = DEFAULT_EPS[self.ground_cost.name] if eps is None else float(eps)
        if not math.isfinite(self.eps_rel) or self.eps_rel < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if self.soft and backend == "faiss":
            raise ValueError("backend 'faiss' has no soft c-transform; use eps=0 (hard argmin) "
                             "or backend 'torch' / 'keops'")
        self.backend = backend
        n = self.source.n
        if weights is None:
            self.weights = None
            self.nu = torch.full((n,), 1.0 / n, dtype=self.dtype, device=self.device)
        else:
            w = torch.as_tensor(weights).to(self.device, torch.float64)
            if w.shape != (n,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
                    or float(w.sum()) <= 0:
                raise ValueError(f"weights must be a finite, non-negative [N] = [{n}] tensor "
                                 "with a positive sum")
            self.weights = self.nu = (w / w.sum()).to(self.dtype)
        self.potentials = torch.zeros(n, dtype=self.dtype, device=self.device)
        self.history: list[dict[str, float]] = []
        self._scale: float | None = None

    # ------------------------------------------------------------------ basic properties
    @property
    def n_targets(self) -> int:
        return self.source.n

    @property
    def soft(self) -> bool:
        """Whether the entropic (soft) c-transform is used."""
        return self.eps_rel > 0

    @property
    def scale(self) -> float:
        """Median over (up to 512 random) targets of the cost to the nearest other target."""
        if self._scale is None:
            self._scale = _nn_cost_scale(self.source, self.ground_cost, self.dtype, self.device)
        return self._scale

    @property
    def eps(self) -> float:
        """Absolute temperature ``eps_rel * scale`` (0 when hard)."""
        return self.eps_rel * self.scale if self.soft else 0.0

    def _x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        x = x.to(self.device, self.dtype) if x.is_floating_point() else x
        check_query(x, self.source.d)
        return x

    def _soft_backend(self) -> str:
        return "keops" if self.backend == "keops" else "torch"

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, x: Tensor, src: TargetSource, psi: Tensor, nu: Tensor,
                  want_cost: bool = False, want_mass2: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(c-transform value [B], mass per target [N] (sums to B), cost [B] or None,
        ``sum_i P_ij^2`` [N] or None (the counts again for the hard map))."""
        if self.soft:
            w = None if self.weights is None else nu
            return soft_stats(x, src, psi, self.ground_cost, self.eps, weights=w,
                              backend=self._soft_backend(), want_mass=True,
                              want_cost=want_cost, want_mass2=want_mass2)
        idx, value = c_transform(x, src, psi, self.ground_cost, self.backend)
        mass = torch.bincount(idx, minlength=src.n).to(x.dtype)
        mass2 = mass if want_mass2 else None
        if not want_cost:
            return value, mass, None, mass2
        y = src.take(idx, dtype=x.dtype, device=x.device)
        return value, mass, self.ground_cost.pairwise(x, y), mass2

    def assign(self, x: Tensor, generator: torch.Generator | None = None, *,
               budget: int | None = None, compute: Any = None) -> Tensor:
        """Target index per row of ``x [B, d]``: the argmin, or a draw of the soft plan.

        Hard: ``sigma(x_i) = argmin_j c(x_i, y_j) - psi_j`` (ties: the smallest ``j``).
        Soft (``eps > 0``): ``sigma(x_i) ~ P_i.``, ``P_ij ∝ nu_j exp((psi_j - c(x_i, y_j)) /
        eps)``, drawn with ``generator``.

        With ``budget`` (bytes of target rows one task holds), the hard argmin runs
        sharded (:func:`ootrain.ot.sharded.sharded_c_transform`): one Dask task per target
        shard, run by ``compute`` (an :class:`ootrain.engine.compute.Compute`, e.g. on a
        ``dask.distributed`` cluster, whose workers must be able to open the targets' zarr
        array; None: this thread), with the same result.  The soft draw is not sharded.

        Returns:
            int64 ``[B]``.

        Raises:
            ValueError: ``budget`` with the soft plan, or as ``sharded_c_transform``.

        Example::

            >>> import torch
            >>> ot = SemiDiscreteOT(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
            >>> x = torch.tensor([[0.9, 0.1], [0.1, 0.8]])
            >>> ot.assign(x, budget=16).tolist()   # 2 targets per shard
            [1, 2]
        """
        x = self._x(x)
        if budget is not None:
            if self.soft:
                raise ValueError("a sharded assignment is the hard argmin only: the soft "
                                 "plan's draws follow the target blocks; use eps=0 or drop "
                                 "budget")
            return sharded_c_transform(x, self.source, self.potentials, self.ground_cost,
                                       self.backend, budget=budget, compute=compute)[0]
        if self.soft:
            w = None if self.weights is None else self.nu
            return soft_assign(x, self.source, self.potentials, self.ground_cost, self.eps,
                               weights=w, generator=generator)
        return c_transform(x, self.source, self.potentials, self.ground_cost, self.backend)[0]

    def transport(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``T(x) = y[assign(x)]`` ``[B, d]``."""
        x = self._x(x)
        return self.source.take(self.assign(x, generator), dtype=x.dtype, device=x.device)

    def cost_per_sample(self, x: Tensor) -> Tensor:
        """``c(x_i, T(x_i))`` ``[B]``; for the soft map its expectation ``sum_j P_ij c_ij``."""
        x = self._x(x)
        return self._evaluate(x, self.source, self.potentials, self.nu, want_cost=True)[2]

    def cost(self, x: Tensor) -> float:
        """Mean transport cost of ``x`` under the map (expected cost for the soft map)."""
        if isinstance(x, Tensor) and x.ndim == 2 and x.shape[0] == 0:
            raise ValueError("x has no rows: the mean transport cost of an empty batch is "
                             "undefined")
        return float(self.cost_per_sample(x).mean())

    def dual(self, sampler: Sampler, n: int = 65536, batch: int = 8192,
             rng: RngLike = None) -> float:
        """Estimate of the dual objective ``h(psi)`` (``h_eps`` when soft) on the samples
        ``x [B, d]`` (a tensor), or on ``n`` draws ``sampler(k, rng)`` of a sampler, ``batch``
        at a time (``rng``: a numpy ``Generator``, an int seed or None)."""
        total, count = 0.0, 0
        if isinstance(sampler, Tensor):
            draws: Any = [self._x(sampler)]
        else:
            draw = self._as_sampler(sampler, _as_rng(rng), None)
            draws = (draw(min(batch, n - k)) for k in range(0, n, batch))
        for x in draws:
            total += float(self._evaluate(x, self.source, self.potentials, self.nu)[0].sum())
            count += x.shape[0]
        return total / count + float(self.nu @ self.potentials)

    # ------------------------------------------------------------------ fitting
    def fit(self, sampler: Sampler, *, batch: int | None = None, max_iter: int = 20000,
            tol: float | None = None, chi2_tol: float | None = None, lr: float = 3.0,
            decay: float = 2 / 3,
            check_every: int | None = None, grow: bool = False, n0: int = 1024,
            rng: RngLike = None, generator: torch.Generator | None = None,
            progress: bool | None = None, method: str = "auto",
            mismatch_tol: float | None = None,
            max_samples: int = DEFAULT_MAX_SAMPLES) -> "SemiDiscreteOT":
        """Fit the potentials: averaged stochastic ascent of the (entropic) semi-discrete
        dual (module docstring), or in 1-D the monotone map from streamed source quantiles
        (:mod:`ootrain.ot.monotone`).

        Args:
            sampler: ``sampler(n, rng) -> [n, d]`` (numpy array or tensor, converted to the
                solver's dtype and device) i.i.d. source samples drawn with the numpy
                ``Generator`` ``rng``, or a fixed sample tensor ``[M, d]`` drawn from with
                replacement (``generator``).
            batch: samples per iteration (default: ``N / 4`` rounded to a power of two,
                clipped to ``[256, 4096]``).
            max_iter: iteration budget (per stage when growing; checks not counted).
            tol: stop when the imbalance ``||nu - P_hat||_1`` of the averaged potential,
                measured on fresh samples, is at most ``tol``.
            chi2_tol: stop when the marginal chi^2 error ``sum_j (p_j - nu_j)^2 / nu_j``
                of the averaged potential is certified at most ``chi2_tol``: its unbiased
                estimate (:func:`chi2_estimate`) on fresh samples plus ``CHI2_Z`` (2) of its
                standard errors.  With both ``tol`` and ``chi2_tol``, both must hold; with
                none of ``tol``, ``chi2_tol`` and ``mismatch_tol``, ``chi2_tol =
                DEFAULT_CHI2_TOL`` (and for the quantile method also ``mismatch_tol =
                DEFAULT_MISMATCH_TOL``).
            lr: ``kappa``, the first step in cell widths (module docstring); lower it
                (e.g. 0.3) to refine potentials that are already close (warm starts).
            decay: the step decays as ``t^-decay``, ``0.5 <= decay <= 1``.
            check_every: check every this many iterations (default: at geometrically
                growing iterations, so that checking costs at most about as much as fitting).
            grow: fit on ``n0`` random targets first, doubling until all (warm starts).
            rng: the sampler's randomness: a numpy ``Generator`` (used as is, so its stream
                continues), an int seed or None (fresh entropy), as
                ``numpy.random.default_rng(rng)``.
            generator: ``torch.Generator`` of the solver's own randomness (the fixed-sample
                draws and the growth subsets).  Default: seeded from one draw of ``rng``,
                taken before any sampler call and only when needed (a fixed sample or
                ``grow`` with several stages), so a callable sampler without growth sees
                ``rng``'s stream untouched.  The fit is deterministic for a given ``rng``
                (and ``generator``) on a deterministic backend.
            progress: show a progress bar (default: when stderr is a terminal).
            method: ``"quantile"``: 1-D targets with a hard, strictly convex cost
                (``sqeuclidean``, ``lp`` with ``p > 1``): boundaries at the empirical source
                quantiles of enough draws to meet every stop, potentials in closed form
                (:mod:`ootrain.ot.monotone`; ``max_iter``, ``lr``, ``decay``, ``check_every``
                and ``grow`` do not apply; a fixed sample tensor is used whole, its own
                quantiles).  ``"ascent"``: the stochastic ascent.  ``"auto"``: ``quantile``
                where it applies.
            mismatch_tol: quantile method: draw enough samples that the mass sent to another
                target than by the exact map is ``<= mismatch_tol`` with 99 % probability
                (:func:`ootrain.ot.monotone.mismatch_samples`; ``~ (0.78 N / mismatch_tol)^2``
                draws for uniform weights).
            max_samples: the quantile method's budget of draws; a stop that needs more is
                not certified (a warning says what was reached).

        Returns:
            ``self``, with :attr:`potentials` and :attr:`history` filled (the quantile
            method: one check, ``iteration = 0``, with ``quantile_samples`` and
            ``mismatch``, the bound on the mismatch that holds with 99 % probability).

        Example::

            >>> import numpy as np, torch
            >>> y = (torch.arange(4, dtype=torch.float64)[:, None] + 0.5) / 4
            >>> ot = SemiDiscreteOT(y).fit(lambda n, rng: rng.random((n, 1)), rng=0)
            >>> ot.history[-1]["certified"], ot.history[-1]["mismatch"] <= 0.01
            (True, True)
            >>> ot.assign(torch.tensor([[0.1], [0.3], [0.6], [0.9]], dtype=torch.float64)).tolist()
            [0, 1, 2, 3]
        """
        max_iter = _check_int("max_iter", max_iter, 1)
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        if method == "auto":
            method = "quantile" if self.monotone else "ascent"
        if method == "quantile" and not self.monotone:
            raise ValueError("method 'quantile' needs 1-D targets and a hard (eps=0), strictly "
                             f"convex cost (sqeuclidean, lp with p > 1); this solver has d = "
                             f"{self.source.d}, cost {self.ground_cost}, eps {self.eps_rel:g}")
        if mismatch_tol is not None and method != "quantile":
            raise ValueError("mismatch_tol is the stop of the 1-D quantile method; use tol or "
                             "chi2_tol with the ascent")
        if tol is None and chi2_tol is None and mismatch_tol is None:
            chi2_tol = DEFAULT_CHI2_TOL
            if method == "quantile":
                mismatch_tol = DEFAULT_MISMATCH_TOL
        mismatch_tol = None if mismatch_tol is None else _check_pos("mismatch_tol", mismatch_tol)
        max_samples = _check_int("max_samples", max_samples, 1)
        tol = None if tol is None else _check_pos("tol", tol)
        chi2_tol = None if chi2_tol is None else _check_pos("chi2_tol", chi2_tol)
        lr = _check_pos("lr", lr)
        decay = _check_pos("decay", decay)
        if not 0.5 <= decay <= 1:
            raise ValueError(f"decay must be in [0.5, 1], got {decay!r}")
        if check_every is not None:
            check_every = _check_int("check_every", check_every, 1)
        n = self.n_targets
        batch = default_batch(n) if batch is None else _check_int("batch", batch, 1)
        sizes = [n]
        if grow:
            n0 = _check_int("n0", n0, 1)
            sizes = []
            while n0 < n:
                sizes.append(n0)
                n0 *= 2
            sizes.append(n)
        rng = _as_rng(rng)
        grows = method == "ascent" and len(sizes) > 1
        if generator is None and (isinstance(sampler, Tensor) or grows):
            generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        draw = self._as_sampler(sampler, rng, generator)
        if method == "quantile":
            with make_progress(progress) as bar:
                psi = self._fit_quantile(sampler, draw, batch, tol, chi2_tol, mismatch_tol,
                                         max_samples, bar)
            self.potentials = psi - (self.nu @ psi)
            return self
        perm = None if len(sizes) == 1 else \
            torch.randperm(n, generator=generator).numpy()
        prev_rows: np.ndarray | None = None
        psi = self.potentials
        with make_progress(progress) as bar:
            for size in sizes:
                if size == n:
                    rows, src, nu = None, self.source, self.nu
                else:
                    rows = np.sort(perm[:size])
                    src = self.source.subset(rows)
                    nu = self.nu[torch.from_numpy(rows).to(self.device)]
                    nu = nu / nu.sum()
                if prev_rows is not None:
                    psi = self._grow_potentials(src, rows, prev_rows, psi)
                elif rows is not None:   # first stage: start from the current potentials
                    psi = psi[torch.from_numpy(rows).to(self.device)]
                task = bar.add_task(f"semi-discrete OT N={size}", total=max_iter)
                psi = self._ascend(draw, src, nu, psi, batch, max_iter, tol, chi2_tol, lr,
                                   decay, check_every, size, bar, task)
                prev_rows = rows if rows is not None else np.arange(n)
        self.potentials = psi - (self.nu @ psi)
        return self

    @property
    def monotone(self) -> bool:
        """Whether the 1-D quantile method applies: ``d = 1``, hard argmin, a strictly
        convex cost (:func:`ootrain.ot.monotone.is_monotone_cost`)."""
        return self.source.d == 1 and not self.soft and is_monotone_cost(self.ground_cost)

    def _fit_quantile(self, sampler: Sampler, draw: Callable[[int], Tensor], batch: int,
                      tol: float | None, chi2_tol: float | None, mismatch_tol: float | None,
                      max_samples: int, bar: Any) -> Tensor:
        """The monotone map's potentials from the empirical source quantiles of enough
        draws for every stop (a fixed sample: all of its rows); one check on fresh draws."""
        n = self.n_targets
        y = torch.cat([b[:, 0] for _, b in self.source.blocks(dtype=torch.float64)])
        order = torch.argsort(y, stable=True)
        ys = y[order]
        first = torch.ones(n, dtype=torch.bool)
        first[1:] = ys[1:] != ys[:-1]               # equal targets: one group, first index
        group = torch.cumsum(first.long(), 0) - 1
        heads = order[first]                          # the argmin's tie rule: smallest j
        w = torch.zeros(int(first.sum()), dtype=torch.float64)
        w.index_add_(0, group, self.nu.cpu().double()[order])
        cum = torch.cumsum(w, 0)[:-1].clamp(0, 1).numpy()
        m_cert, floor_sum = self._cert_samples(self.nu, batch, tol, chi2_tol)
        m_cert *= 4      # the one check of a cheap map: half the noise, no unlucky rejection
        need = {"the mismatch": mismatch_samples(cum, mismatch_tol) if mismatch_tol else 0,
                "χ²": math.ceil(4 * max(cum.size, 1) / chi2_tol) if chi2_tol else 0,
                "the imbalance": math.ceil((2 * floor_sum / tol) ** 2) if tol else 0}
        if isinstance(sampler, Tensor):
            data = self._x(sampler)
            samples = data.shape[0]
            b = streamed_quantiles(lambda k: data, cum, samples, batch=samples, bins=samples)
        else:
            samples = min(max(max(need.values()), 2**20), max_samples)
            task = bar.add_task(f"semi-discrete OT N={n} (1-D quantiles)", total=samples)
            b = streamed_quantiles(draw, cum, samples,
                                   advance=lambda k: bar.update(task, advance=k))
        short = [f"{what} needs {k:,} draws" for what, k in need.items() if k > samples]
        if short:
            warnings.warn("semi-discrete OT, quantile method: " + "; ".join(short)
                          + f", {samples:,} were used (max_samples or the fixed sample); "
                          "the fit is not certified", stacklevel=3)
        psi_g = monotone_potentials(ys[first], torch.from_numpy(b), self.ground_cost)
        psi = torch.empty(n, dtype=torch.float64)
        psi[order] = psi_g[group]
        psi = psi.to(self.device, self.dtype)
        bounds = torch.from_numpy(b).to(self.device, self.dtype)
        heads, ys_dev = heads.to(self.device), ys.to(self.device, self.dtype)[first.to(self.device)]

        def evaluate(x: Tensor, src: TargetSource, psi: Tensor, nu: Tensor, **_: Any
                     ) -> tuple[Tensor, Tensor, None, Tensor]:
            g = torch.searchsorted(bounds, x[:, 0].contiguous())
            idx = heads[g]
            value = self.ground_cost.pairwise(x, ys_dev[g][:, None]) - psi[idx]
            mass = torch.bincount(idx, minlength=n).to(x.dtype)
            return value, mass, None, mass

        rec = self._check(draw, self.source, self.nu, psi, batch, tol, chi2_tol, m_cert,
                          floor_sum, evaluate)
        mismatch = MISMATCH_Q99 * expected_mismatch(cum, samples)
        rec.update({"iteration": 0, "n_targets": n, "lr": 0.0, "averaged": False,
                    "quantile_samples": samples, "mismatch": mismatch})
        rec["certified"] = rec["certified"] and not short
        self.history.append(rec)
        return psi

    def _cert_samples(self, nu: Tensor, batch: int, tol: float | None,
                      chi2_tol: float | None) -> tuple[int, float]:
        """``(m_cert, floor_sum)``: the samples of a certifying check (:meth:`_check`) and
        the imbalance noise floor times ``sqrt(m)``."""
        floor_sum = float(torch.sqrt(2 * nu * (1 - nu) / math.pi).sum())
        m_cert = batch
        if tol is not None:
            m_cert = max(m_cert, math.ceil((floor_sum / (CHECK_NOISE * tol)) ** 2))
        if chi2_tol is not None:
            m_cert = max(m_cert, _chi2_samples(nu, CHI2_NOISE * chi2_tol))
        return m_cert, floor_sum

    def _as_sampler(self, sampler: Sampler, rng: np.random.Generator,
                    generator: torch.Generator | None) -> Callable[[int], Tensor]:
        """``draw(k) -> Tensor [k, d]`` of the solver's dtype and device, checked: rows of a
        fixed sample tensor (``generator``) or ``sampler(k, rng)`` (array or tensor)."""
        if isinstance(sampler, Tensor):
            data = self._x(sampler)

            def draw(k: int) -> Tensor:
                i = torch.randint(data.shape[0], (k,), generator=generator)
                return data[i.to(data.device)]
            return draw
        if not callable(sampler):
            raise ValueError("sampler must be a callable (n, rng) -> [n, d] array or Tensor, "
                             f"or a Tensor [M, d], got {type(sampler).__name__}")
        d = self.source.d

        def checked(k: int) -> Tensor:
            x = sampler(k, rng)
            if isinstance(x, np.ndarray):
                if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
                    raise ValueError(f"sampler({k}, rng) must return a numeric array or Tensor "
                                     f"[{k}, {d}], got an array of dtype {x.dtype}")
                x = torch.from_numpy(np.ascontiguousarray(x)).to(self.dtype)
            if not isinstance(x, Tensor):
                raise ValueError(f"sampler({k}, rng) must return a numpy array or Tensor of "
                                 f"shape [{k}, {d}], got {type(x).__name__}")
            if x.ndim != 2 or x.shape[0] != k:
                raise ValueError(f"sampler({k}, rng) must return shape [{k}, {d}], got "
                                 f"{tuple(x.shape)}")
            if not x.is_floating_point():
                x = x.to(self.dtype)
            try:
                return self._x(x)
            except ValueError as e:
                raise ValueError(f"sampler({k}, rng): {e}") from None
        return checked

    def _grow_potentials(self, src: TargetSource, rows: np.ndarray | None,
                         prev_rows: np.ndarray, prev_psi: Tensor) -> Tensor:
        """Potentials on the targets ``rows`` (None = all) from those fitted on
        ``prev_rows`` (a subset): new targets inherit the potential of their cell."""
        cur = np.arange(self.n_targets) if rows is None else rows
        pos = np.searchsorted(cur, prev_rows)
        psi = torch.empty(cur.size, dtype=self.dtype, device=self.device)
        psi[torch.from_numpy(pos).to(self.device)] = prev_psi
        new = np.setdiff1d(np.arange(cur.size), pos)
        prev_src = self.source.subset(prev_rows)
        for k0 in range(0, new.size, 65536):
            part = torch.from_numpy(new[k0:k0 + 65536])
            y_new = src.take(part, dtype=self.dtype, device=self.device)
            cell = c_transform(y_new, prev_src, prev_psi, self.ground_cost, self.backend)[0]
            psi[part.to(self.device)] = prev_psi[cell]
        return psi

    def _ascend(self, draw: Callable[[int], Tensor], src: TargetSource, nu: Tensor,
                psi: Tensor, batch: int, max_iter: int, tol: float | None,
                chi2_tol: float | None, lr: float, decay: float, check_every: int | None,
                size: int, bar: Any, task: Any) -> Tensor:
        """Adam with a decaying step on ``h`` from ``psi``; returns the certified (or last)
        polynomial-decay average of the iterates."""
        step0 = None
        psi, psi_bar = psi.clone(), psi.clone()
        m_cert, floor_sum = self._cert_samples(nu, batch, tol, chi2_tol)
        want = " ".join(([f"imbalance ≤ {tol:g}"] if tol is not None else [])
                        + ([f"χ² ≤ {chi2_tol:g}"] if chi2_tol is not None else []))
        next_check = check_every or 1
        step, b1, b2 = 0.0, 0.9, 0.99
        m1, v1 = torch.zeros_like(psi), torch.zeros_like(psi)
        for it in range(1, max_iter + 1):
            x = draw(batch)
            if step0 is None:
                step0 = lr * _cell_width(x[:512], src, self.ground_cost, self.dtype,
                                         self.device)
            _, mass, _, _ = self._evaluate(x, src, psi, nu)
            g = nu - mass / batch                      # ascent direction of h
            m1.mul_(b1).add_(g, alpha=1 - b1)
            v1.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = step0 * it ** -decay
            psi.add_((m1 / (1 - b1**it)) / ((v1 / (1 - b2**it)).sqrt() + 1e-30), alpha=step)
            psi_bar.add_(psi - psi_bar, alpha=(AVERAGING + 1) / (it + AVERAGING))
            bar.update(task, advance=1)
            if it < next_check and it < max_iter:
                continue
            rec = self._check(draw, src, nu, psi_bar, batch, tol, chi2_tol, m_cert, floor_sum)
            rec.update({"iteration": it, "n_targets": size, "lr": step, "averaged": True})
            self.history.append(rec)
            bar.update(task, description=f"semi-discrete OT N={size} imbalance "
                                         f"{rec['imbalance']:.3f} χ² {rec['chi2']:.2g}"
                                         f"±{rec['chi2_noise']:.1g} (want {want})")
            if rec["certified"]:
                bar.update(task, total=it, completed=it)
                break
            next_check = it + check_every if check_every else \
                max(math.ceil(CHECK_GROWTH * it), it + math.ceil(rec["samples"] / batch))
        return psi_bar

    def _check(self, draw: Callable[[int], Tensor], src: TargetSource, nu: Tensor,
               psi: Tensor, batch: int, tol: float | None, chi2_tol: float | None,
               m_cert: int, floor_sum: float, evaluate: Callable[..., Any] | None = None
               ) -> dict[str, Any]:
        """Imbalance ``||nu - P_hat||_1``, chi^2 (:func:`chi2_estimate`) and dual value of
        ``psi`` on the same fresh samples (``evaluate``: as :meth:`_evaluate`, the default).

        Draws up to ``m_cert`` samples (noise floor ``CHECK_NOISE * tol`` for the imbalance,
        standard error ``CHI2_NOISE * chi2_tol`` for a balanced map's chi^2), testing at
        ``batch``, ``2 batch``, ``4 batch`` … and giving up early (``early=True``) as soon as
        the measured imbalance exceeds ``tol`` by more than ``REJECT_FLOORS`` noise floors
        (the true imbalance is then above ``tol``: a balanced map's measured imbalance has
        mean ``floor`` and a spread well below it) or the chi^2 estimate exceeds
        ``chi2_tol`` by more than ``REJECT_FLOORS`` of its standard errors.  ``certified``:
        all ``m_cert`` samples drawn, imbalance ``<= tol`` and ``chi2 + CHI2_Z * chi2_noise
        <= chi2_tol`` (for those of the two that are set).
        """
        counts = torch.zeros_like(nu)
        counts2 = torch.zeros_like(nu)
        value_sum, m, test_at = 0.0, 0, batch
        early = False
        evaluate = evaluate or self._evaluate
        while m < m_cert:
            x = draw(min(batch, m_cert - m))
            value, mass, _, mass2 = evaluate(x, src, psi, nu, want_mass2=True)
            counts += mass
            counts2 += mass2
            value_sum += float(value.sum())
            m += x.shape[0]
            if test_at <= m < m_cert:
                test_at *= 2
                e = float((counts / m - nu).abs().sum())
                if tol is not None and e > tol + REJECT_FLOORS * floor_sum / math.sqrt(m):
                    early = True
                    break
                if chi2_tol is not None:
                    c2, se = chi2_estimate(counts, counts2, m, nu)
                    if c2 - REJECT_FLOORS * se > chi2_tol:
                        early = True
                        break
        imbalance = float((counts / m - nu).abs().sum())
        chi2, chi2_se = chi2_estimate(counts, counts2, m, nu)
        certified = not early and (tol is None or imbalance <= tol) and \
            (chi2_tol is None or chi2 + CHI2_Z * chi2_se <= chi2_tol)
        return {"imbalance": imbalance, "chi2": chi2, "chi2_noise": chi2_se, "samples": m,
                "noise": floor_sum / math.sqrt(m), "early": early, "certified": certified,
                "dual": value_sum / m + float(nu @ psi)}

    # ------------------------------------------------------------------ persistence
    def save(self, where: Any, path: str = "potentials") -> None:
        """Write ``psi`` as a plain zarr array ``path`` of ``where``: an
        :class:`ootrain.store.Store` (through ``require_array`` / ``write_region``, so its
        manifest records it), a zarr group, or a group path.  Attributes record the cost,
        ``N``, ``d`` and ``eps``."""
        psi = self.potentials.detach().cpu().numpy()
        n = psi.shape[0]
        meta = {"semidiscrete": {"cost": str(self.ground_cost), "n_targets": n,
                                 "d": self.source.d, "eps_rel": self.eps_rel, "eps": self.eps}}
        from ootrain.store import Store
        if isinstance(where, Store):   # the attributes before the flags: a flagged array
            where.require_array(path, (n,), (min(n, 2**20),), psi.dtype)   # is a whole one
            where.update_attrs(path, meta)
            where.write_region(path, (slice(0, n),), psi)
        else:
            group = self._group(where, "a")
            arr = group.create_array(path, shape=(n,), chunks=(min(n, 2**20),),
                                     dtype=psi.dtype, overwrite=True, attributes=meta)
            arr[:] = psi

    def load(self, where: Any, path: str = "potentials") -> "SemiDiscreteOT":
        """Read ``psi`` written by :meth:`save`; the cost, ``N`` and ``d`` must match."""
        from ootrain.store import Store
        try:
            arr = where.array(path) if isinstance(where, Store) else self._group(where, "r")[path]
        except KeyError:
            raise ValueError(f"no potentials array {path!r} in {where!r}") from None
        meta = dict(arr.attrs).get("semidiscrete")
        if meta is None:
            raise ValueError(f"array {path!r} was not written by SemiDiscreteOT.save")
        mine = {"cost": str(self.ground_cost), "n_targets": self.n_targets, "d": self.source.d}
        diff = [f"{k}: stored {meta.get(k)!r}, this solver {v!r}" for k, v in mine.items()
                if meta.get(k) != v]
        if diff:
            raise ValueError("stored potentials do not match this solver: " + "; ".join(diff))
        if meta.get("eps_rel") != self.eps_rel:
            raise ValueError(f"stored potentials were fitted with eps={meta.get('eps_rel')}, "
                             f"this solver has eps={self.eps_rel}")
        self.potentials = torch.from_numpy(np.asarray(arr[:])).to(self.device, self.dtype)
        return self

    @staticmethod
    def _group(where: Any, mode: str) -> Any:
        import zarr
        if isinstance(where, (str, os.PathLike)):
            return zarr.open_group(os.fspath(where), mode=mode)
        if isinstance(where, zarr.Group):
            return where
        raise ValueError("where must be an ootrain Store, a zarr group or a group path, got "
                         f"{type(where).__name__}")


def _cell_width(x: Tensor, src: TargetSource, cost: Cost, dtype: torch.dtype,
                device: torch.device, m: int = 512) -> float:
    """A cell's width in potential units: the median over ``m`` random targets ``j`` of
    ``mean_x |c(x, y_j) - c(x, y_k)|`` with ``k`` the nearest other target of ``j`` and
    ``x`` the source sample: the change of ``psi_j`` that moves a typical source point across
    the boundary between the two cells (for sqeuclidean ``~ 2 |x - y| |y_j - y_k| |cos|``)."""
    pick, nearest = _nearest_others(src, cost, dtype, device, m)
    if pick.numel() == 0:
        return 1.0
    x = x.to(device, dtype)
    gap = (cost.matrix(x, src.take(pick, dtype=dtype, device=device))
           - cost.matrix(x, src.take(nearest, dtype=dtype, device=device))).abs().mean(0)
    gap = gap[torch.isfinite(gap) & (gap > 0)]
    return float(gap.median()) if gap.numel() else 1.0


def _nearest_others(src: TargetSource, cost: Cost, dtype: torch.dtype, device: torch.device,
                    m: int = 512) -> tuple[Tensor, Tensor]:
    """``(pick, nearest)``: up to ``m`` random target indices (seeded) and the index of each
    one's nearest *other* target by cost, exactly (dense torch blocks, streamed over the
    source).  Targets with no distinct other target (duplicates only) are dropped."""
    n = src.n
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(n, generator=g)[:m].sort().values
    q = src.take(pick, dtype=dtype, device=device)
    best = torch.full((q.shape[0],), math.inf, dtype=dtype, device=device)
    arg = torch.zeros(q.shape[0], dtype=torch.long, device=device)
    rows = max(1, TORCH_BLOCK // q.shape[0])
    for off, yb in src.blocks(dtype=dtype, device=device):
        for t0 in range(0, yb.shape[0], rows):
            c = cost.matrix(q, yb[t0:t0 + rows])
            c = torch.where(c > 0, c, math.inf)
            v, i = c.min(dim=1)
            better = v < best
            best = torch.where(better, v, best)
            arg = torch.where(better, i + off + t0, arg)
    ok = torch.isfinite(best)
    return pick[ok.cpu()], arg[ok].cpu()


def _nn_cost_scale(src: TargetSource, cost: Cost, dtype: torch.dtype,
                   device: torch.device, m: int = 512) -> float:
    """Median over ``m`` random targets of the cost to their nearest *other* target
    (duplicates skipped; 1 with a single distinct point)."""
    pick, nearest = _nearest_others(src, cost, dtype, device, m)
    if pick.numel() == 0:
        return 1.0
    c = cost.pairwise(src.take(pick, dtype=dtype, device=device),
                      src.take(nearest, dtype=dtype, device=device))
    return float(c.median())
