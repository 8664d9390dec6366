"""Log-domain Sinkhorn for entropic OT, and OT-GAN's mini-batch energy distance.

Points ``x [n, d]`` with weights ``a [n]`` and ``y [m, d]`` with weights ``b [m]`` (both
normalised to sum 1; uniform by default), a ground cost ``C_ij = c(x_i, y_j)`` and a
temperature ``eps > 0`` (absolute, in cost units).  Costs: the registry of
:mod:`ootrain.ot.costs` (shared with the c-transform), among them

    sqeuclidean   c(x, y) = ||x - y||_2^2           (no 1/2: POT's ``ot.dist`` default)
    cosine        c(x, y) = 1 - <x, y> / (|x| |y|)  (OT-GAN's cost on critic features)

and ``euclidean``, ``l1``, ``lp:<p>``.

Entropic OT and its dual (potentials ``f [n]``, ``g [m]``):

    OT_eps = min_{P 1 = a, P^T 1 = b} <P, C> + eps KL(P | a b^T)
           = max_{f, g} <a, f> + <b, g> - eps <a b^T, exp((f + g^T - C) / eps) - 1>,
    P_ij   = a_i b_j exp((f_i + g_j - C_ij) / eps).

:func:`sinkhorn` runs the alternating (Gauss-Seidel) log-domain updates

    f_i = -eps log sum_j b_j exp((g_j - C_ij) / eps),
    g_j = -eps log sum_i a_i exp((f_i - C_ij) / eps),

every one a log-sum-exp (never an ``exp`` of a potential alone), so it stays finite for any
``eps``.  After a ``g`` update the column marginal ``P^T 1 = b`` holds exactly; the row
marginal is ``sum_j P_ij = a_i exp((f_i - f'_i) / eps)`` with ``f'`` the next ``f`` update,
so the stopping test ``||P 1 - a||_1 <= tol`` costs nothing extra.

eps-scaling (``scaling`` = q in (0, 1)): the updates first run at ``eps_0, eps_0 q,
eps_0 q^2, ...`` (while above ``eps``; :data:`STAGE_ITERS` = 2 iterations each), where
``eps_0`` bounds the largest cost (:meth:`~ootrain.ot.costs.Cost.bound`; sqeuclidean:
``(max_i |x_i - z| + max_j |y_j - z|)^2`` with ``z`` the centre of the two means,
O((n + m) d); cosine: 2), then at ``eps`` until
the tolerance or ``max_iter``.  (Measured on 200 points: the iterations to the tolerance
change by ~10 % with q in [0.3, 0.7] or 1-3 iterations per stage; the linear rate at the
final eps dominates.)  A warm start (``init``: the potentials of a previous result) skips
the stages: after a small move of the points, a solve from the previous potentials took
42 instead of 139 iterations (tests).

Two reductions back everything (both over ``j``, the roles of ``x`` and ``y`` swapped for
the other side; both costs are symmetric):

    lse_i   = log sum_j exp(h_i + k_j - C_ij / eps),
    sums_i  = sum_j exp(h_i + k_j - C_ij / eps) [w_j, C_ij],

by a dense ``[n, m]`` cost matrix in torch (backend ``torch``) or by KeOps LazyTensor
reductions in ``O((n + m) d)`` memory (``keops``, float32/float64, CPU or CUDA: KeOps
compiles one module per formula, dtype and ``d``, ~5 s each on a cold cache).  The
backend names are those of :mod:`ootrain.ot.backends` (:data:`SINKHORN_BACKENDS` =
``auto``, ``torch``, ``keops``).  ``auto`` picks ``torch`` while ``n m <=
DENSE_MAX_ENTRIES`` (2^22: on one CPU core the dense log-sum-exp is as fast as KeOps at 2000 x 2000, and its temporaries already take ~100 MB
in float64) or when pykeops is unavailable, else ``keops``.

Transport cost and gradients: ``SinkhornResult.cost = <P, C> = sum_ij P_ij C_ij`` (OT-GAN's
``W_c``) is differentiable in ``x`` and ``y`` by the envelope rule *with P held fixed*
(no back-propagation through the iterations):

    d<P, C>/dx_i = sum_j P_ij grad_x c(x_i, y_j),
    sqeuclidean:  = 2 (x_i r_i - sum_j P_ij y_j),                r_i = sum_j P_ij,
    cosine:       = -(s_i - <x^_i, s_i> x^_i) / |x_i|,           s_i = sum_j P_ij y^_j,

with ``x^ = x / |x|``; both are ``sums`` reductions with ``w = [y, 1]`` (the same
reduction also gives ``<P, C>``), never an ``[n, m, d]`` tensor.  The other costs
(euclidean, l1, lp) get theirs by torch autograd of ``sum_ij P_ij c(x_i, y_j)`` over row
blocks of ``TORCH_BLOCK`` entries with ``P`` frozen (whatever the backend).  :func:`cost_gradients`
returns them without autograd; the weights ``a``, ``b`` get no gradient.

:func:`energy_distance` is OT-GAN's mini-batch energy distance (Salimans et al. 2018,
eq. 8) between two independent halves ``X, X'`` of a real batch and ``Y, Y'`` of a
generated one:

    D^2 = W(X, Y) + W(X, Y') + W(X', Y) + W(X', Y') - 2 W(X, X') - 2 W(Y, Y'),

``W`` the ``cost`` of the entropic plan; zero in expectation when the two distributions
are equal.

Points that do not fit in memory: :func:`sinkhorn_streamed` takes ``x``, ``y`` as array-likes
(zarr array, numpy array or memmap, tensor) read in row blocks of ``block_rows`` at every
pass: the same updates, eps-scaling and stopping rule, the potentials ``f [n]``, ``g [m]``
in memory, every reduction a running log-sum-exp over ``[block_rows, block_rows]`` cost
blocks, so peak memory is ``O(n + m + block_rows^2 + block_rows d)`` whatever is stored.
Its result gives ``<P, C>`` and, for any rows ``[lo, hi)`` of either side, the envelope
gradient ``sum_j P_ij grad_1 c(x_i, y_j)`` (``sum_i P_ij grad_2 c(x_i, y_j)``) by streaming
the other side (autograd per block with ``P`` frozen: any registry cost).
:func:`energy_distance_streamed` is the energy distance on top of it, with each
population's cotangent rows ``sum_terms coef * gradient``.

Example::

    >>> import torch
    >>> from ootrain.ot.sinkhorn import sinkhorn, cost_gradients
    >>> x, y = torch.randn(50, 3, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)
    >>> r = sinkhorn(x, y, 0.1, "cosine", tol=1e-8)
    >>> r.converged, r.backend
    (True, 'torch')
    >>> gx, gy = cost_gradients(x, y, r)      # [50, 3], [40, 3]
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ootrain.ot.backends import SOFT_BACKENDS, TORCH_BLOCK, check_backend, keops_available
from ootrain.ot.checks import check_eps
from ootrain.ot.costs import Cost, parse_cost

__all__ = [
    "SINKHORN_BACKENDS",
    "DENSE_MAX_ENTRIES",
    "STAGE_ITERS",
    "SinkhornResult",
    "sinkhorn",
    "cost_gradients",
    "EnergyDistanceResult",
    "ENERGY_TERMS",
    "energy_distance",
    "energy_distance_gradients",
    "envelope_rows",
    "StreamedSinkhornResult",
    "sinkhorn_streamed",
    "StreamedEnergyDistance",
    "energy_distance_streamed",
]

#: Backends of :func:`sinkhorn` (:data:`ootrain.ot.backends.SOFT_BACKENDS`).
SINKHORN_BACKENDS = SOFT_BACKENDS
#: ``backend="auto"`` uses the dense torch path while ``n * m`` is at most this.
DENSE_MAX_ENTRIES = 2**22
#: Iterations per eps-scaling stage.
STAGE_ITERS = 2


# ----------------------------------------------------------------------------------
# points and the two reductions
# ----------------------------------------------------------------------------------
class _Dense:
    """The reductions over ``j`` with a dense cost matrix ``C [n, m]`` (contiguous, so every
    reduction runs along rows; ``s C`` is kept for the current ``s``: one eps stage)."""

    def __init__(self, C: Tensor) -> None:
        self.C = C.contiguous()
        self._s: float | None = None
        self._sC: Tensor | None = None

    @property
    def T(self) -> _Dense:
        return _Dense(self.C.T)

    def release(self) -> None:
        """Drop the cached ``s C``."""
        self._s = self._sC = None

    def _z(self, h: Tensor | None, k: Tensor, s: float) -> Tensor:
        if self._s != s:
            self._s, self._sC = s, s * self.C
        z = k[None, :] - self._sC
        return z if h is None else z.add_(h[:, None])

    def lse(self, h: Tensor | None, k: Tensor, s: float) -> Tensor:
        """``log sum_j exp(h_i + k_j - s C_ij)``: ``[n]`` (``h = None``: 0)."""
        return torch.logsumexp(self._z(h, k, s), dim=1)

    def sums(self, h: Tensor, k: Tensor, s: float, w: Tensor) -> Tensor:
        """``sum_j exp(h_i + k_j - s C_ij) [w_j, C_ij]``: ``w [m, p]`` -> ``[n, p + 1]``."""
        P = torch.exp(self._z(h, k, s))
        return torch.cat([P @ w, (P * self.C).sum(1, keepdim=True)], dim=1)

    def plan(self, h: Tensor, k: Tensor, s: float) -> Tensor:
        return torch.exp(self._z(h, k, s))


class _KeOps:
    """The reductions over ``j`` as KeOps LazyTensor formulas, ``O((n + m) d)`` memory."""

    def __init__(self, xf: Tensor, yf: Tensor, cost: Cost) -> None:
        from pykeops.torch import LazyTensor
        self.xf, self.yf, self.cost = xf, yf, cost
        X, Y = LazyTensor(xf[:, None, :]), LazyTensor(yf[None, :, :])
        self.C = cost.keops(X, Y)

    @property
    def T(self) -> _KeOps:
        return _KeOps(self.yf, self.xf, self.cost)

    def _z(self, h: Tensor | None, k: Tensor, s: float) -> Any:
        from pykeops.torch import LazyTensor
        if h is None:
            h = torch.zeros(self.xf.shape[0], dtype=k.dtype, device=k.device)
        S = LazyTensor(torch.tensor([s], dtype=h.dtype, device=h.device))  # a parameter:
        return (LazyTensor(h.contiguous()[:, None, None])                 # no recompile
                + LazyTensor(k.contiguous()[None, :, None]) - S * self.C)  # per eps

    def lse(self, h: Tensor | None, k: Tensor, s: float) -> Tensor:
        return self._z(h, k, s).logsumexp(dim=1).reshape(-1)

    def sums(self, h: Tensor, k: Tensor, s: float, w: Tensor) -> Tensor:
        from pykeops.torch import LazyTensor
        W = LazyTensor(w.contiguous()[None, :, :])
        return (self._z(h, k, s).exp() * W.concat(self.C)).sum(dim=1)


@dataclass(frozen=True)
class _Points:
    """Both point sets prepared for a cost: ``cosine`` normalised (the norms kept for the
    gradient), the norm costs (translation invariant) centred on ``z``, the centre of the
    two means (less cancellation in the gradient).  Detached; ``kind`` is ``torch`` or
    ``keops``."""

    cost: Cost
    kind: str
    xf: Tensor
    yf: Tensor
    xn: Tensor | None = None
    yn: Tensor | None = None

    @staticmethod
    def of(x: Tensor, y: Tensor, cost: Cost, kind: str) -> _Points:
        x, y = x.detach(), y.detach()
        if cost.name != "cosine":
            z = (x.mean(0) + y.mean(0)) / 2
            return _Points(cost, kind, (x - z).contiguous(), (y - z).contiguous())
        xn, yn = x.norm(dim=1), y.norm(dim=1)
        for name, nrm in (("x", xn), ("y", yn)):
            if bool((nrm == 0).any()):
                i = int(torch.nonzero(nrm == 0)[0, 0])
                raise ValueError(f"the cosine cost needs non-zero rows; {name} has a zero row "
                                 f"(index {i})")
        return _Points(cost, kind, (x / xn[:, None]).contiguous(),
                       (y / yn[:, None]).contiguous(), xn, yn)

    def scale(self) -> float:
        """An upper bound on the largest cost (eps_0 of the eps-scaling)."""
        p = self.cost.norm_p
        return self.cost.bound(float(self.xf.norm(p=p, dim=1).max()),
                               float(self.yf.norm(p=p, dim=1).max()))

    def matrix(self, xf: Tensor, yf: Tensor) -> Tensor:
        """Dense costs between prepared rows."""
        if self.cost.name == "cosine":
            return 1 - xf @ yf.T
        if self.cost.name == "sqeuclidean":
            C = torch.cdist(xf, yf, compute_mode="donot_use_mm_for_euclid_dist")
            return C * C
        return self.cost.matrix(xf, yf)

    def kernel(self) -> _Dense | _KeOps:
        if self.kind == "keops":
            return _KeOps(self.xf, self.yf, self.cost)
        return _Dense(self.matrix(self.xf, self.yf))

    def grad_side(self, K: _Dense | _KeOps, h: Tensor, k: Tensor, s: float,
                  transpose: bool = False) -> tuple[Tensor, Tensor]:
        """``(sum_j P_ij grad_x c(x_i, y_j) [n, d], sum_j P_ij C_ij [n])`` for ``K`` over
        ``(x, y)``; with ``transpose`` (``K`` over ``(y, x)``, ``h``/``k`` swapped) the
        same for ``y``."""
        xf, yf, xn = (self.yf, self.xf, self.yn) if transpose else (self.xf, self.yf, self.xn)
        if self.cost.name not in ("sqeuclidean", "cosine"):
            return envelope_rows(self.cost.matrix, xf, [(0, yf)], h, k, s)
        d = xf.shape[1]
        S = K.sums(h, k, s, torch.cat([yf, torch.ones_like(yf[:, :1])], dim=1))
        py, r, pc = S[:, :d], S[:, d], S[:, d + 1]
        if self.cost.name == "sqeuclidean":
            grad = 2 * (xf * r[:, None] - py)
        else:
            grad = -(py - (xf * py).sum(1, keepdim=True) * xf) / xn[:, None]
        return grad, pc


def envelope_rows(matrix: Any, xb: Tensor, y_blocks: Any, h: Tensor, k: Tensor, s: float
                  ) -> tuple[Tensor, Tensor]:
    """``(sum_j P_ij grad_1 c(x_i, y_j) [B, d], sum_j P_ij c(x_i, y_j) [B])`` for the rows
    ``xb [B, d]``, ``P_ij = exp(h_i + k_j - s c(x_i, y_j))`` frozen, by torch autograd of
    ``sum P * C`` on ``[rows, block]`` pieces (``TORCH_BLOCK`` entries at most).

    ``matrix(x, y)`` is the differentiable cost matrix; ``y_blocks`` yields ``(offset,
    y[offset:offset + rows])`` once; ``h [B]``, ``k [m]`` (all of ``y``'s rows).  Any registry cost: no closed-form gradient needed.
    """
    B = xb.shape[0]
    grad = torch.zeros_like(xb)
    pc = torch.zeros(B, dtype=xb.dtype, device=xb.device)
    for off, yb in y_blocks:
        m_rows = yb.shape[0]
        rows = max(1, TORCH_BLOCK // max(1, m_rows))
        for q0 in range(0, B, rows):
            q1 = min(B, q0 + rows)
            with torch.enable_grad():
                xq = xb[q0:q1].detach().requires_grad_(True)
                C = matrix(xq, yb)
                P = torch.exp(h[q0:q1, None] + k[None, off:off + m_rows] - s * C.detach())
                PC = P * C
                (gq,) = torch.autograd.grad(PC.sum(), xq)
            grad[q0:q1] += gq
            pc[q0:q1] += PC.detach().sum(1)
    return grad, pc


def _log(w: Tensor) -> Tensor:
    """``log w`` with ``log 0`` a large finite negative number (``-inf`` gives NaN in some
    KeOps log-sum-exp accumulators); ``exp`` of it is exactly 0."""
    return w.log().clamp_min(torch.finfo(w.dtype).min / 16)


# ----------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------
def _check_points(x: Any, y: Any, xname: str = "x", yname: str = "y") -> None:
    for name, t in ((xname, x), (yname, y)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D [points, d] tensor, got shape "
                             f"{tuple(t.shape)}")
        if t.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"{name} must have dtype float32 or float64, got {t.dtype}")
    if x.dtype != y.dtype:
        raise ValueError(f"{xname} and {yname} must have the same dtype, got {x.dtype} and "
                         f"{y.dtype}")
    if x.device != y.device:
        raise ValueError(f"{xname} and {yname} must be on the same device, got {x.device} "
                         f"and {y.device}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{xname} and {yname} must have the same dimension d, got "
                         f"{x.shape[1]} and {y.shape[1]}")
    for name, t in ((xname, x), (yname, y)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def _check_weights(w: Any, n: int, like: Tensor, name: str) -> Tensor:
    """Weights normalised to sum 1 (uniform when ``w`` is None), in ``like``'s dtype."""
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(w).detach().to(device=like.device, dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"weights {name} must have shape [{n}], got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights {name} contain non-finite values (NaN or Inf)")
    if bool((w < 0).any()):
        raise ValueError(f"weights {name} must be non-negative")
    if float(w.sum()) <= 0:
        raise ValueError(f"weights {name} must have a positive sum")
    return (w / w.sum()).to(like.dtype)


def _resolve_backend(backend: str, n: int, m: int) -> str:
    if backend == "dense":
        raise ValueError("unknown Sinkhorn backend 'dense' (renamed 'torch'); expected one of "
                         f"{', '.join(SINKHORN_BACKENDS)}")
    check_backend(backend, SINKHORN_BACKENDS, "Sinkhorn backend")
    if backend != "auto":
        return backend
    if n * m <= DENSE_MAX_ENTRIES:
        return "torch"
    if not keops_available():
        warnings.warn(f"pykeops is unavailable: Sinkhorn on {n} x {m} points builds a dense "
                      "cost matrix", stacklevel=3)
        return "torch"
    return "keops"


def _check_init(init: Any, n: int, m: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
    if init is None:
        return None
    if isinstance(init, (SinkhornResult, StreamedSinkhornResult)):
        init = (init.f, init.g)
    if not (isinstance(init, (tuple, list)) and len(init) == 2
            and all(isinstance(t, Tensor) for t in init)):
        raise ValueError("init must be a SinkhornResult, StreamedSinkhornResult or a pair "
                         "(f, g) of tensors")
    f, g = (t.detach().to(device=like.device, dtype=like.dtype) for t in init)
    if f.shape != (n,) or g.shape != (m,):
        raise ValueError(f"init potentials must have shapes [{n}] and [{m}], got "
                         f"{tuple(f.shape)} and {tuple(g.shape)}")
    if not (bool(torch.isfinite(f).all()) and bool(torch.isfinite(g).all())):
        raise ValueError("init potentials contain non-finite values (NaN or Inf)")
    return f, g


# ----------------------------------------------------------------------------------
# Sinkhorn
# ----------------------------------------------------------------------------------
@dataclass
class SinkhornResult:
    """Output of :func:`sinkhorn`; ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``.

    Attributes:
        f, g: potentials ``[n]``, ``[m]`` (detached).
        eps: the temperature.
        iterations: ``(f, g)`` update pairs run, eps-scaling stages included.
        marginal_error: ``||P 1 - a||_1`` of the returned potentials (``P^T 1 = b`` holds
            up to rounding).
        converged: ``marginal_error <= tol``.
        cost: ``<P, C>`` (scalar), differentiable in ``x`` and ``y`` with ``P`` held fixed.
        dual: the entropic dual value ``<a, f> + <b, g> - eps (sum P - 1)`` (detached;
            equals ``<P, C> + eps KL(P | a b^T)`` at convergence).
        ground_cost, backend: the cost name and the backend used (``torch`` / ``keops``).
        a, b: the normalised weights.
    """

    f: Tensor
    g: Tensor
    eps: float
    iterations: int
    marginal_error: float
    converged: bool
    cost: Tensor
    dual: Tensor
    ground_cost: str
    backend: str
    a: Tensor = field(repr=False)
    b: Tensor = field(repr=False)
    _points: _Points = field(repr=False)

    def plan(self) -> Tensor:
        """The dense plan ``P [n, m]`` (``O(n m)`` memory: small problems only)."""
        pts = _Points(self._points.cost, "torch", self._points.xf, self._points.yf)
        h, k, s = _hks(self)
        return pts.kernel().plan(h, k, s)


def _hks(res: SinkhornResult) -> tuple[Tensor, Tensor, float]:
    """The plan's ``(h, k, 1/eps)``: ``P_ij = exp(h_i + k_j - C_ij / eps)``."""
    return _log(res.a) + res.f / res.eps, _log(res.b) + res.g / res.eps, 1.0 / res.eps


class _EnvelopeCost(torch.autograd.Function):
    """``<P, C(x, y)>`` with the gradient ``sum_j P_ij grad c`` of ``P`` held fixed.

    The forward's reduction also yields the ``x`` gradient (kept, ``[n, d]``); the ``y``
    one is reduced in the backward only when asked for.  Only ``O((n + m) d)`` is kept."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, pts: _Points, K: Any, h: Tensor, k: Tensor,
                s: float) -> Tensor:
        gx, pc = pts.grad_side(K, h, k, s)
        ctx.pts, ctx.hks, ctx.gx = pts, (h, k, s), gx
        return pc.sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = grad * ctx.gx
        if ctx.needs_input_grad[1]:
            h, k, s = ctx.hks
            gy = grad * ctx.pts.grad_side(ctx.pts.kernel().T, k, h, s, transpose=True)[0]
        return gx, gy, None, None, None, None, None


def _eps_stages(scale: Any, eps: float, scaling: float | None, dtype: torch.dtype
                ) -> list[float]:
    """The eps-scaling stages ``scale(), scale() q, ...`` above ``eps`` (none without
    ``scaling``); a cost scale that overflows ``dtype`` is refused (the stages would never
    reach ``eps``)."""
    if scaling is None:
        return []
    e = float(scale())
    if not math.isfinite(e):
        raise ValueError(f"the cost overflows {dtype} (its scale is {e}): the points are too "
                         "large for this dtype; rescale x and y (or use float64)")
    stages = []
    while e > eps:
        stages.append(e)
        e *= scaling
    return stages


def _warn_unconverged(err: float, tol: float, iters: int) -> None:
    if not err <= tol:
        warnings.warn(f"sinkhorn did not converge: marginal error {err:.3g} > tol {tol:g} "
                      f"after {iters} iterations; raise max_iter, or eps", RuntimeWarning,
                      stacklevel=3)


def _iterate(f_of: Any, g_of: Any, f: Tensor, g: Tensor, stages: Any, eps: float,
             la: Tensor, a_w: Any, tol: float, max_iter: int
             ) -> tuple[Tensor, Tensor, Tensor, float, int]:
    """The Sinkhorn iterations shared by the in-memory and the streamed solver: ``STAGE_ITERS``
    updates per eps-scaling stage, then updates at ``eps`` until the marginal error
    ``||P 1 - a||_1 <= tol`` or ``max_iter``; returns ``f, g``, ``P 1``, the error and the
    number of iterations."""
    iters = 0
    for e in [e for e in stages for _ in range(STAGE_ITERS)] + [eps]:
        f = f_of(g, e)
        g = g_of(f, e)
        iters += 1
    target = 1
    while True:
        f_next = f_of(g, eps)
        row = torch.exp(la + (f - f_next) / eps)      # P 1 for the pair (f, g)
        err = float((row - a_w).abs().sum())
        if err <= tol or target >= max_iter:
            return f, g, row, err, iters
        f, g = f_next, g_of(f_next, eps)
        iters += 1
        target += 1


def sinkhorn(x: Tensor, y: Tensor, eps: float, cost: str | Cost = "sqeuclidean",
             a: Tensor | None = None, b: Tensor | None = None, *, tol: float = 1e-4,
             max_iter: int = 1000, scaling: float | None = 0.5, backend: str = "auto",
             init: SinkhornResult | tuple[Tensor, Tensor] | None = None) -> SinkhornResult:
    """Entropic OT between ``(x, a)`` and ``(y, b)`` by log-domain Sinkhorn (module doc).

    Args:
        x, y: ``[n, d]``, ``[m, d]`` points, float32 or float64, same dtype and device.
        eps: temperature ``> 0`` in cost units (e.g. ``1e-2 * max C``).
        cost: a registry cost (:func:`~ootrain.ot.costs.parse_cost`), e.g. ``"sqeuclidean"``
            (``||x - y||^2``) or ``"cosine"``.
        a, b: non-negative weights ``[n]``, ``[m]`` with positive sums (normalised);
            uniform when None.
        tol: stop when ``||P 1 - a||_1 <= tol``.
        max_iter: most iterations at the target ``eps`` (the eps-scaling stages come on
            top); at least 1.
        scaling: eps-scaling factor in ``(0, 1)``, None to start at ``eps`` directly.
        backend: ``"auto"``, ``"torch"`` or ``"keops"`` (module doc).
        init: warm start, the potentials ``(f, g)`` or a previous :class:`SinkhornResult`
            (of the same sizes); the eps-scaling stages are then skipped.

    Returns:
        A :class:`SinkhornResult`; its ``cost`` carries the envelope gradient to ``x``, ``y``.

    Raises:
        ValueError: bad shapes, dtypes, devices, NaN/Inf, weights, eps, tol, max_iter,
            scaling, cost, backend or init.
    """
    cost = parse_cost(cost)
    _check_points(x, y)
    eps = check_eps(eps)
    n, m = x.shape[0], y.shape[0]
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 \
            or not math.isfinite(tol):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if scaling is not None and (isinstance(scaling, bool) or not isinstance(scaling, (int, float))
                                or not 0 < scaling < 1):
        raise ValueError(f"scaling must be in (0, 1) or None, got {scaling!r}")
    a_w, b_w = _check_weights(a, n, x, "a"), _check_weights(b, m, x, "b")
    start = _check_init(init, n, m, x)
    kind = _resolve_backend(backend, n, m)
    pts = _Points.of(x, y, cost, kind)
    stages = _eps_stages(pts.scale, eps, scaling, x.dtype) if start is None else []
    la, lb = _log(a_w), _log(b_w)
    with torch.no_grad():
        K = pts.kernel()
        KT = K.T

        def f_of(g: Tensor, e: float) -> Tensor:
            return -e * K.lse(None, lb + g / e, 1.0 / e)

        def g_of(f: Tensor, e: float) -> Tensor:
            return -e * KT.lse(None, la + f / e, 1.0 / e)

        f, g = start if start is not None else (torch.zeros_like(la), torch.zeros_like(lb))
        f, g, row, err, iters = _iterate(f_of, g_of, f, g, stages, eps, la, a_w, tol, max_iter)
        _warn_unconverged(err, tol, iters)
        dual = (a_w * f).sum() + (b_w * g).sum() - eps * (row.sum() - 1)
        if isinstance(K, _Dense):
            K.release()   # the result keeps K for the gradient: drop the s C working copy
    value = _EnvelopeCost.apply(x, y, pts, K, la + f / eps, lb + g / eps, 1.0 / eps)
    return SinkhornResult(f=f, g=g, eps=eps, iterations=iters, marginal_error=err,
                          converged=err <= tol, cost=value, dual=dual, ground_cost=str(cost),
                          backend=kind, a=a_w, b=b_w, _points=pts)


def cost_gradients(x: Tensor, y: Tensor, result: SinkhornResult) -> tuple[Tensor, Tensor]:
    """Per-sample cotangents of ``<P, C>`` with ``P`` fixed, without autograd.

    ``gx_i = sum_j P_ij grad_x c(x_i, y_j)`` ``[n, d]`` and ``gy_j = sum_i P_ij grad_y
    c(x_i, y_j)`` ``[m, d]``, ``P`` from ``result``'s potentials, weights and ``eps`` and
    the cost between the given ``x``, ``y`` (those ``result`` was solved for).  Equal to
    the autograd gradients of ``result.cost``; two ``sums`` reductions on ``result``'s
    backend.
    """
    _check_points(x, y)
    if x.shape[0] != result.f.shape[0] or y.shape[0] != result.g.shape[0]:
        raise ValueError(f"x, y have {x.shape[0]}, {y.shape[0]} rows but the result's "
                         f"potentials have {result.f.shape[0]}, {result.g.shape[0]}")
    pts = _Points.of(x, y, result._points.cost, result.backend)
    h, k, s = _hks(result)
    with torch.no_grad():
        K = pts.kernel()
        gx = pts.grad_side(K, h, k, s)[0]
        gy = pts.grad_side(K.T, k, h, s, transpose=True)[0]
    return gx, gy


# ----------------------------------------------------------------------------------
# OT-GAN's mini-batch energy distance
# ----------------------------------------------------------------------------------
#: ``(key, first, second, coefficient)`` of the six terms of the energy distance.
ENERGY_TERMS: tuple[tuple[str, str, str, float], ...] = (
    ("xy", "x", "y", 1.0), ("xy2", "x", "y2", 1.0), ("x2y", "x2", "y", 1.0),
    ("x2y2", "x2", "y2", 1.0), ("xx2", "x", "x2", -2.0), ("yy2", "y", "y2", -2.0))


class _SixProblems:
    """What the energy distance's results derive from their six problems (``results``)."""

    results: dict[str, Any]

    @property
    def marginal_error(self) -> float:
        """The largest marginal error of the six problems."""
        return max(r.marginal_error for r in self.results.values())

    @property
    def converged(self) -> bool:
        """Whether all six problems reached the tolerance."""
        return all(r.converged for r in self.results.values())


@dataclass
class EnergyDistanceResult(_SixProblems):
    """Output of :func:`energy_distance`: ``value`` (``D^2``, differentiable in all four
    inputs) and the six :class:`SinkhornResult` by the keys of :data:`ENERGY_TERMS`
    (pass the whole result as ``init`` to warm-start the next call)."""

    value: Tensor
    results: dict[str, SinkhornResult]


def _populations(x: Tensor, x2: Tensor, y: Tensor, y2: Tensor) -> dict[str, Tensor]:
    pops = {"x": x, "x2": x2, "y": y, "y2": y2}
    for p, q in (("x", "x2"), ("x", "y"), ("x", "y2")):
        _check_points(pops[p], pops[q], p, q)
    return pops


def energy_distance(x: Tensor, x2: Tensor, y: Tensor, y2: Tensor, eps: float,
                    cost: str | Cost = "cosine", *,
                    init: EnergyDistanceResult | None = None,
                    **sinkhorn_kwargs: Any) -> EnergyDistanceResult:
    """OT-GAN's mini-batch energy distance ``D^2`` (module doc) between real halves ``x``,
    ``x2`` and generated halves ``y``, ``y2`` (``[*, d]``, uniform weights).

    ``sinkhorn_kwargs`` (``tol``, ``max_iter``, ``scaling``, ``backend``) go to each of
    the six :func:`sinkhorn` calls; ``init`` (a previous result) warm-starts them.
    """
    if "a" in sinkhorn_kwargs or "b" in sinkhorn_kwargs:
        raise ValueError("energy_distance uses uniform weights; do not pass a or b")
    if init is not None and not isinstance(init, EnergyDistanceResult):
        raise ValueError(f"init must be an EnergyDistanceResult, got {type(init).__name__}")
    pops = _populations(x, x2, y, y2)
    results = {key: sinkhorn(pops[p], pops[q], eps, cost, init=None if init is None
                             else init.results[key], **sinkhorn_kwargs)
               for key, p, q, _ in ENERGY_TERMS}
    value = sum(c * results[key].cost for key, _, _, c in ENERGY_TERMS)
    return EnergyDistanceResult(value=value, results=results)


def energy_distance_gradients(x: Tensor, x2: Tensor, y: Tensor, y2: Tensor,
                              result: EnergyDistanceResult
                              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample cotangents ``(gx, gx2, gy, gy2)`` of ``D^2`` without autograd: the
    :func:`cost_gradients` of the six terms times their coefficients, summed per input.
    Equal to the autograd gradients of ``result.value``."""
    pops = _populations(x, x2, y, y2)
    grads = {p: torch.zeros(t.shape, dtype=t.dtype, device=t.device) for p, t in pops.items()}
    for key, p, q, c in ENERGY_TERMS:
        gp, gq = cost_gradients(pops[p], pops[q], result.results[key])
        grads[p] += c * gp
        grads[q] += c * gq
    return grads["x"], grads["x2"], grads["y"], grads["y2"]



# ----------------------------------------------------------------------------------
# Sinkhorn on points that do not fit in memory
# ----------------------------------------------------------------------------------
class _Rows:
    """Rows of an ``[n, d]`` array-like (tensor, numpy array or memmap, zarr array or its
    path) read in row blocks, each checked for NaN/Inf when read."""

    def __init__(self, data: Any, name: str) -> None:
        if isinstance(data, (str, os.PathLike)):
            import zarr
            data = zarr.open_array(os.fspath(data), mode="r")
        if isinstance(data, Tensor):
            floating = data.is_floating_point()
        elif hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__"):
            try:
                floating = np.dtype(data.dtype).kind == "f"
            except TypeError:
                floating = False
        else:
            raise ValueError(f"{name} must be a torch.Tensor, numpy array, zarr array or zarr "
                             f"path, got {type(data).__name__}")
        shape = tuple(data.shape)
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D [points, d] array, got shape "
                             f"{shape}")
        if not floating:
            raise ValueError(f"{name} must have a floating dtype, got {data.dtype}")
        self.data, self.name, self.n, self.d = data, name, shape[0], shape[1]

    def read(self, lo: int, hi: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Rows ``[lo, hi)`` as a ``dtype`` tensor on ``device``."""
        if isinstance(self.data, Tensor):
            t = self.data[lo:hi].detach()
        else:
            b = np.ascontiguousarray(np.asarray(self.data[lo:hi]))
            t = torch.from_numpy(b if b.flags.writeable else b.copy())
        t = t.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{self.name} contains non-finite values (NaN or Inf) in rows "
                             f"[{lo}, {hi})")
        return t


class _Stream:
    """Both sides of a streamed problem: blocks read, checked and prepared like
    :class:`_Points` (cosine: unit rows; norm costs: centred on the centre ``z`` of the two
    means, one pass over each side)."""

    def __init__(self, x: Any, y: Any, cost: Cost, block_rows: int,
                 dtype: torch.dtype | None, device: Any) -> None:
        self.rows = {"x": _Rows(x, "x"), "y": _Rows(y, "y")}
        X, Y = self.rows["x"], self.rows["y"]
        if X.d != Y.d:
            raise ValueError(f"x and y must have the same dimension d, got {X.d} and {Y.d}")
        if dtype is None:
            dtype = torch.float64 if all(
                (r.data.dtype == torch.float64) if isinstance(r.data, Tensor)
                else np.dtype(r.data.dtype) == np.float64 for r in (X, Y)) else torch.float32
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if device is None:
            device = x.device if isinstance(x, Tensor) else torch.device("cpu")
        self.cost, self.B, self.dtype, self.device = cost, block_rows, dtype, torch.device(device)
        self.z: Tensor | None = None
        if cost.name != "cosine":
            means = []
            for side in ("x", "y"):
                acc = torch.zeros(X.d, dtype=dtype, device=self.device)
                for _, b in self.raw_blocks(side):
                    acc += b.sum(0)
                means.append(acc / self.rows[side].n)
            self.z = (means[0] + means[1]) / 2

    def raw_blocks(self, side: str, lo: int = 0, hi: int | None = None
                   ) -> Iterator[tuple[int, Tensor]]:
        r = self.rows[side]
        hi = r.n if hi is None else hi
        for a in range(lo, hi, self.B):
            yield a, r.read(a, min(hi, a + self.B), self.dtype, self.device)

    def prep(self, side: str, lo: int, b: Tensor, check: bool = True) -> Tensor:
        """Prepared rows (differentiable in ``b``)."""
        if self.z is not None:
            return b - self.z
        nrm = b.norm(dim=1, keepdim=True)
        if check and bool((nrm == 0).any()):
            i = lo + int(torch.nonzero(nrm[:, 0] == 0)[0, 0])
            raise ValueError(f"the cosine cost needs non-zero rows; {side} has a zero row "
                             f"(index {i})")
        return b / nrm

    def blocks(self, side: str) -> Iterator[tuple[int, Tensor]]:
        for lo, b in self.raw_blocks(side):
            yield lo, self.prep(side, lo, b)

    def matrix(self, a: Tensor, b: Tensor) -> Tensor:
        """Costs between prepared rows (the kernels of :meth:`_Points.matrix`)."""
        if self.cost.name == "cosine":
            return 1 - a @ b.T
        if self.cost.name == "sqeuclidean":
            C = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
            return C * C
        return self.cost.matrix(a, b)

    def scale(self) -> float:
        """:meth:`_Points.scale` by one pass over each side."""
        if self.cost.name == "cosine":
            return self.cost.bound(1.0, 1.0)
        p = self.cost.norm_p
        r = [max(float(b.norm(p=p, dim=1).max()) for _, b in self.blocks(side))
             for side in ("x", "y")]
        return self.cost.bound(r[0], r[1])

    def lse(self, side: str, k: Tensor, s: float) -> Tensor:
        """``log sum_j exp(k_j - s C_ij)`` for every row ``i`` of ``side``, ``j`` over the
        other side: a running log-sum-exp over ``[B, B]`` blocks."""
        other = "y" if side == "x" else "x"
        out = torch.empty(self.rows[side].n, dtype=self.dtype, device=self.device)
        for lo, a in self.blocks(side):
            acc = torch.full((a.shape[0],), -math.inf, dtype=self.dtype, device=self.device)
            for off, b in self.blocks(other):
                z = k[None, off:off + b.shape[0]] - s * self.matrix(a, b)
                acc = torch.logaddexp(acc, torch.logsumexp(z, dim=1))
            out[lo:lo + a.shape[0]] = acc
        return out

    def transport_cost(self, h: Tensor, k: Tensor, s: float) -> float:
        """``<P, C> = sum_ij exp(h_i + k_j - s C_ij) C_ij``, one pass over the blocks."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for lo, a in self.blocks("x"):
            hb = h[lo:lo + a.shape[0], None]
            for off, b in self.blocks("y"):
                C = self.matrix(a, b)
                total += (torch.exp(hb + k[None, off:off + b.shape[0]] - s * C) * C).sum()
        return float(total)


@dataclass
class StreamedSinkhornResult:
    """Output of :func:`sinkhorn_streamed`; ``P_ij = exp((f_i + g_j - C_ij) / eps) / (n m)``.

    Attributes:
        f, g: potentials ``[n]``, ``[m]`` (in memory, ``dtype``).
        eps: the temperature.
        iterations: ``(f, g)`` update pairs run, eps-scaling stages included.
        marginal_error: ``||P 1 - 1/n||_1`` (``P^T 1 = 1/m`` holds up to rounding).
        converged: ``marginal_error <= tol``.
        cost: ``<P, C>`` (a float; the gradients come from :meth:`gradient`).
        dual: ``<a, f> + <b, g> - eps (sum P - 1)``.
        ground_cost: the cost name.  block_rows: the rows of one block.
    """

    f: Tensor
    g: Tensor
    eps: float
    iterations: int
    marginal_error: float
    converged: bool
    cost: float
    dual: float
    ground_cost: str
    block_rows: int
    _stream: _Stream = field(repr=False)

    def gradient(self, side: str, lo: int = 0, hi: int | None = None) -> Tensor:
        """Envelope gradient rows ``[lo, hi)`` of ``<P, C>`` with ``P`` frozen.

        ``side="x"``: ``sum_j P_ij grad_1 c(x_i, y_j)`` for ``i`` in ``[lo, hi)``;
        ``side="y"``: ``sum_i P_ij grad_2 c(x_i, y_j)`` for ``j`` in ``[lo, hi)``.  The rows
        are read in blocks of ``block_rows`` and the other side is streamed once per block
        (autograd on ``[block, block]`` costs).  Returns a ``[hi - lo, d]`` detached tensor
        on the result's device.
        """
        st = self._stream
        if side not in ("x", "y"):
            raise ValueError(f"side must be 'x' or 'y', got {side!r}")
        n = st.rows[side].n
        hi = n if hi is None else hi
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                   for v in (lo, hi)) or not 0 <= lo <= hi <= n:
            raise ValueError(f"rows must satisfy 0 <= lo <= hi <= {n}, got [{lo!r}, {hi!r})")
        other = "y" if side == "x" else "x"
        la, lb = -math.log(st.rows["x"].n), -math.log(st.rows["y"].n)
        s = 1.0 / self.eps
        if side == "x":
            h_all, k = la + self.f * s, lb + self.g * s
        else:
            h_all, k = lb + self.g * s, la + self.f * s
        out = torch.empty(hi - lo, st.rows[side].d, dtype=st.dtype, device=st.device)
        for a0, raw in st.raw_blocks(side, lo, hi):
            st.prep(side, a0, raw)   # checks (zero rows under cosine)
            grad, _ = envelope_rows(
                lambda xq, yb: st.matrix(st.prep(side, a0, xq, check=False), yb),
                raw, st.blocks(other), h_all[a0:a0 + raw.shape[0]], k, s)
            out[a0 - lo:a0 - lo + raw.shape[0]] = grad
        return out


def sinkhorn_streamed(x: Any, y: Any, eps: float, cost: str | Cost = "cosine", *,
                      tol: float = 1e-3, max_iter: int = 1000, scaling: float | None = 0.5,
                      block_rows: int = 4096, dtype: torch.dtype | None = None,
                      device: Any = None,
                      init: StreamedSinkhornResult | SinkhornResult | tuple[Tensor, Tensor]
                      | None = None) -> StreamedSinkhornResult:
    """Entropic OT between uniform ``x [n, d]`` and ``y [m, d]`` stored out of memory.

    The updates, eps-scaling and stopping rule of :func:`sinkhorn` (module doc), with every
    log-sum-exp reduced over ``[block_rows, block_rows]`` cost blocks of rows read from
    ``x`` and ``y`` at every pass; only ``f [n]``, ``g [m]`` (and one block pair) are held.
    Each iteration reads the other side ``ceil(n / block_rows)`` (resp. ``ceil(m /
    block_rows)``) times: size ``block_rows`` to the memory budget.

    Args:
        x, y: array-likes ``[n, d]``, ``[m, d]``: zarr arrays (or their paths), numpy
            arrays or memmaps, tensors; floating, finite (checked block by block at every
            read).
        eps: temperature ``> 0`` in cost units.
        cost: a registry cost (:func:`~ootrain.ot.costs.parse_cost`).
        tol, max_iter, scaling: as for :func:`sinkhorn`.
        block_rows: rows per block (``>= 1``).
        dtype: compute dtype, float32 or float64 (None: float64 if both inputs are, else
            float32).
        device: compute device (None: ``x``'s if a tensor, else the CPU).
        init: warm start: a previous result or ``(f, g)``; skips the eps-scaling stages.

    Returns:
        A :class:`StreamedSinkhornResult` (``.cost``, ``.f``, ``.g``, ``.gradient(side, lo,
        hi)``).

    Raises:
        ValueError: bad arrays (shape, dtype, NaN/Inf rows, widths), eps, tol, max_iter,
            scaling, block_rows, dtype, cost or init.

    Example::

        >>> import numpy as np, torch
        >>> x, y = np.random.randn(300, 4), np.random.randn(200, 4)
        >>> r = sinkhorn_streamed(x, y, 0.05, "cosine", tol=1e-6, block_rows=64)
        >>> gx = r.gradient("x", 0, 100)         # [100, 4]
    """
    cost = parse_cost(cost)
    eps = check_eps(eps)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 \
            or not math.isfinite(tol):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if scaling is not None and (isinstance(scaling, bool) or not isinstance(scaling, (int, float))
                                or not 0 < scaling < 1):
        raise ValueError(f"scaling must be in (0, 1) or None, got {scaling!r}")
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) \
            or block_rows < 1:
        raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
    st = _Stream(x, y, cost, int(block_rows), dtype, device)
    n, m = st.rows["x"].n, st.rows["y"].n
    like = torch.empty(0, dtype=st.dtype, device=st.device)
    start = _check_init(init, n, m, like)
    stages = _eps_stages(st.scale, eps, scaling, st.dtype) if start is None else []
    la, lb = -math.log(n), -math.log(m)
    with torch.no_grad():
        def f_of(g: Tensor, e: float) -> Tensor:
            return -e * st.lse("x", lb + g / e, 1.0 / e)

        def g_of(f: Tensor, e: float) -> Tensor:
            return -e * st.lse("y", la + f / e, 1.0 / e)

        if start is not None:
            f, g = start
        else:
            f = torch.zeros(n, dtype=st.dtype, device=st.device)
            g = torch.zeros(m, dtype=st.dtype, device=st.device)
        f, g, row, err, iters = _iterate(f_of, g_of, f, g, stages, eps, la, 1.0 / n, tol,
                                         max_iter)
        _warn_unconverged(err, tol, iters)
        dual = float(f.mean() + g.mean() - eps * (row.sum() - 1))
        value = st.transport_cost(la + f / eps, lb + g / eps, 1.0 / eps)
    return StreamedSinkhornResult(f=f, g=g, eps=eps, iterations=iters, marginal_error=err,
                                  converged=err <= tol, cost=value, dual=dual,
                                  ground_cost=str(cost), block_rows=int(block_rows),
                                  _stream=st)


@dataclass
class StreamedEnergyDistance(_SixProblems):
    """Output of :func:`energy_distance_streamed`: ``value`` (``D^2``, a float) and the six
    :class:`StreamedSinkhornResult` by the keys of :data:`ENERGY_TERMS`."""

    value: float
    results: dict[str, StreamedSinkhornResult]

    def cotangent(self, name: str, lo: int, hi: int) -> Tensor:
        """Rows ``[lo, hi)`` of ``dD^2/d(name)`` (``name`` in ``x, x2, y, y2``): ``sum`` over
        the terms that involve ``name`` of ``coefficient * gradient``: ``[hi - lo, d]``."""
        if name not in ("x", "x2", "y", "y2"):
            raise ValueError(f"name must be one of x, x2, y, y2, got {name!r}")
        out: Tensor | None = None
        for key, p, q, c in ENERGY_TERMS:
            for side, own in (("x", p), ("y", q)):
                if own == name:
                    gr = c * self.results[key].gradient(side, lo, hi)
                    out = gr if out is None else out + gr
        assert out is not None
        return out

    @property
    def cotangents(self) -> dict[str, Callable[[int, int], Tensor]]:
        """``{name: (lo, hi) -> cotangent rows}`` for the four populations."""
        return {name: (lambda lo, hi, _n=name: self.cotangent(_n, lo, hi))
                for name in ("x", "x2", "y", "y2")}


def energy_distance_streamed(x: Any, x2: Any, y: Any, y2: Any, eps: float,
                             cost: str | Cost = "cosine", *,
                             init: StreamedEnergyDistance | None = None,
                             **kwargs: Any) -> StreamedEnergyDistance:
    """OT-GAN's energy distance ``D^2`` (module doc) of four stored populations: the six
    :func:`sinkhorn_streamed` problems of :data:`ENERGY_TERMS` (``kwargs``: ``tol``,
    ``max_iter``, ``scaling``, ``block_rows``, ``dtype``, ``device``); ``init`` warm-starts
    them from a previous result.

    Example::

        >>> import numpy as np
        >>> pops = [np.random.randn(100, 3) for _ in range(4)]
        >>> ed = energy_distance_streamed(*pops, eps=0.1, block_rows=32)
        >>> gy = ed.cotangent("y", 0, 100)       # [100, 3]
    """
    if init is not None and not isinstance(init, StreamedEnergyDistance):
        raise ValueError(f"init must be a StreamedEnergyDistance, got {type(init).__name__}")
    pops = {"x": x, "x2": x2, "y": y, "y2": y2}
    results = {key: sinkhorn_streamed(pops[p], pops[q], eps, cost,
                                      init=None if init is None else init.results[key],
                                      **kwargs)
               for key, p, q, _ in ENERGY_TERMS}
    value = float(sum(c * results[key].cost for key, _, _, c in ENERGY_TERMS))
    return StreamedEnergyDistance(value=value, results=results)
