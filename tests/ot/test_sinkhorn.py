"""Tests of ootrain.ot.sinkhorn: POT's log-domain Sinkhorn and exact OT as references, the
envelope gradients (finite differences, autograd, and the unrolled gradient they are not),
dense == KeOps, O(n + m) memory, warm starts, the OT-GAN energy distance, and bad input."""

from __future__ import annotations

import math
import resource
from types import SimpleNamespace

import numpy as np
import ot
import pytest
import torch

import ootrain.ot.sinkhorn as sk
from ootrain.ot.sinkhorn import (
    ENERGY_TERMS,
    cost_gradients,
    energy_distance,
    energy_distance_gradients,
    sinkhorn,
)

F64 = torch.float64
COSTS = ["sqeuclidean", "cosine"]
# KeOps compiles one module per formula, dtype and d (~5 s each on a cold cache): every
# fast KeOps test uses float64 and d = 3, i.e. 2 formulas per cost.
D = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def problem(seed: int = 0, n: int = 60, m: int = 45, d: int = D, weighted: bool = True,
            dtype=F64):
    g = gen(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(m, d, generator=g, dtype=F64) * 0.7 + 0.8
    a = b = None
    if weighted:
        a = torch.rand(n, generator=g, dtype=F64) + 0.2
        b = torch.rand(m, generator=g, dtype=F64) + 0.2
        a, b = a / a.sum(), b / b.sum()
    return x.to(dtype), y.to(dtype), a, b


def cost_matrix(x: torch.Tensor, y: torch.Tensor, cost: str) -> torch.Tensor:
    """Reference cost matrix in plain torch (differentiable); POT's conventions."""
    if cost == "sqeuclidean":
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return 1 - (x / x.norm(dim=1, keepdim=True)) @ (y / y.norm(dim=1, keepdim=True)).T


# ----------------------------------------------------------------------------------
# against POT and exact OT
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cost", COSTS)
def test_matches_pot_log_sinkhorn(cost):
    x, y, a, b = problem()
    M = cost_matrix(x, y, cost)
    M_pot = ot.dist(x.numpy(), y.numpy(), metric=cost)
    np.testing.assert_allclose(M.numpy(), M_pot, atol=1e-12)   # same conventions as POT
    eps = 0.05 * float(M.max())
    P_pot = ot.sinkhorn(a.numpy(), b.numpy(), M_pot, eps, method="sinkhorn_log",
                        stopThr=1e-10, numItermax=100000)
    r = sinkhorn(x, y, eps, cost, a, b, tol=1e-10, max_iter=100000)
    assert r.converged and r.marginal_error <= 1e-10 and r.backend == "torch"
    ref = float((P_pot * M_pot).sum())
    assert abs(float(r.cost) - ref) <= 1e-6 * ref
    P = r.plan()
    np.testing.assert_allclose(P.numpy(), P_pot, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(P.sum(1), a, rtol=0, atol=1e-10)
    torch.testing.assert_close(P.sum(0), b, rtol=0, atol=1e-12)
    # the dual equals the primal entropic objective <P, C> + eps KL(P | a b^T)
    kl = (P * (P / (a[:, None] * b[None, :])).log()).sum() - P.sum() + 1
    assert float(r.dual) == pytest.approx(float(r.cost + eps * kl), rel=1e-9)
    assert float(r.cost) == pytest.approx(float((P * M).sum()), rel=1e-12)


@pytest.mark.parametrize("cost", COSTS)
def test_small_eps_approaches_exact_ot(cost):
    x, y, a, b = problem(1)
    M = cost_matrix(x, y, cost)
    exact = ot.emd2(a.numpy(), b.numpy(), M.numpy())
    scale = float(M.max())
    gaps = []
    for rel in (1e-1, 1e-2, 1e-3):
        r = sinkhorn(x, y, rel * scale, cost, a, b, tol=1e-8, max_iter=100000)
        assert r.converged
        gaps.append((float(r.cost) - exact) / exact)
    assert gaps[0] > gaps[1] > gaps[2] > -1e-6
    assert gaps[2] < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("cost", COSTS)
def test_tiny_eps_stays_finite(cost, dtype):
    x, y, a, b = problem(2, dtype=dtype)
    eps = 1e-4 * float(cost_matrix(x.double(), y.double(), cost).max())
    with pytest.warns(RuntimeWarning, match="sinkhorn did not converge"):   # 300 is too few
        r = sinkhorn(x, y, eps, cost, a, b, max_iter=300)
    for t in (r.f, r.g, r.cost, r.dual):
        assert t.dtype == dtype and bool(torch.isfinite(t).all())
    assert math.isfinite(r.marginal_error) and r.iterations > 300   # the stages come on top


def test_zero_weights_drop_points():
    x, y, a, b = problem(3)
    a = a.clone()
    a[::3] = 0
    keep = a > 0
    full = sinkhorn(x, y, 0.5, "sqeuclidean", a, b, tol=1e-11, max_iter=10000)
    sub = sinkhorn(x[keep], y, 0.5, "sqeuclidean", a[keep], b, tol=1e-11, max_iter=10000)
    assert full.converged and sub.converged
    assert float(full.cost) == pytest.approx(float(sub.cost), rel=1e-9)
    # potentials are defined up to (f + c, g - c): compare the plans
    P = full.plan()
    torch.testing.assert_close(P[keep], sub.plan(), rtol=1e-8, atol=1e-14)
    assert float(P[~keep].abs().max()) == 0.0 and bool(torch.isfinite(full.f).all())


# ----------------------------------------------------------------------------------
# envelope gradients
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cost", COSTS)
def test_gradient_is_frozen_plan_derivative(cost):
    x, y, a, b = problem(4, n=7, m=5)
    x.requires_grad_(True)
    y.requires_grad_(True)
    r = sinkhorn(x, y, 0.3, cost, a, b, tol=1e-12, max_iter=10000)
    r.cost.backward()
    gx, gy = cost_gradients(x, y, r)
    torch.testing.assert_close(x.grad, gx, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(y.grad, gy, rtol=1e-12, atol=1e-13)
    P = r.plan()
    xd, yd = x.detach(), y.detach()

    # autograd of <P, C(x, y)> with P detached, in plain torch
    xr, yr = xd.clone().requires_grad_(True), yd.clone().requires_grad_(True)
    (P * cost_matrix(xr, yr, cost)).sum().backward()
    torch.testing.assert_close(gx, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gy, yr.grad, rtol=1e-10, atol=1e-12)

    # central finite differences of <P, C> with P frozen
    def frozen(xx, yy):
        return float((P * cost_matrix(xx, yy, cost)).sum())

    h = 1e-6
    for t, g in ((xd, gx), (yd, gy)):
        fd = torch.zeros_like(t)
        for idx in np.ndindex(*t.shape):
            tp, tm = t.clone(), t.clone()
            tp[idx] += h
            tm[idx] -= h
            args_p = (tp, yd) if t is xd else (xd, tp)
            args_m = (tm, yd) if t is xd else (xd, tm)
            fd[idx] = (frozen(*args_p) - frozen(*args_m)) / (2 * h)
        torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def unrolled_cost(x, y, a, b, eps, cost, iters):
    """<P, C> with autograd through every log-domain Sinkhorn iteration."""
    C = cost_matrix(x, y, cost)
    la, lb = a.log(), b.log()
    f, g = torch.zeros_like(la), torch.zeros_like(lb)
    for _ in range(iters):
        f = -eps * torch.logsumexp(lb[None, :] + (g[None, :] - C) / eps, dim=1)
        g = -eps * torch.logsumexp(la[:, None] + (f[:, None] - C) / eps, dim=0)
    P = torch.exp(la[:, None] + lb[None, :] + (f[:, None] + g[None, :] - C) / eps)
    return (P * C).sum()


@pytest.mark.parametrize("cost", COSTS)
def test_unrolled_gradient_differs(cost):
    """Differentiating through the iterations adds the dP/dx term the envelope rule drops:
    the gradient tests above would catch an implementation that kept it."""
    x, y, a, b = problem(5, n=12, m=10)
    eps = 0.5 if cost == "sqeuclidean" else 0.05
    r = sinkhorn(x, y, eps, cost, a, b, tol=1e-12, max_iter=10000)
    xr = x.clone().requires_grad_(True)
    value = unrolled_cost(xr, y, a, b, eps, cost, r.iterations + 50)
    assert float(value.detach()) == pytest.approx(float(r.cost), rel=1e-9)   # same plan
    (g_unrolled,) = torch.autograd.grad(value, xr)
    g_env = cost_gradients(x, y, r)[0]
    assert float((g_unrolled - g_env).norm()) > 0.05 * float(g_env.norm())


# ----------------------------------------------------------------------------------
# backends
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cost", COSTS)
def test_dense_equals_keops(cost):
    x, y, a, b = problem(6, n=300, m=200)
    eps = 0.05 if cost == "cosine" else 0.2
    rd = sinkhorn(x, y, eps, cost, a, b, tol=1e-9, backend="torch")
    rk = sinkhorn(x, y, eps, cost, a, b, tol=1e-9, backend="keops")
    assert rd.backend == "torch" and rk.backend == "keops"
    assert rd.iterations == rk.iterations and rk.converged
    torch.testing.assert_close(rk.f, rd.f, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(rk.g, rd.g, rtol=1e-5, atol=1e-10)
    torch.testing.assert_close(rk.cost, rd.cost, rtol=1e-10, atol=0)
    torch.testing.assert_close(rk.dual, rd.dual, rtol=1e-10, atol=0)
    for gk, gd in zip(cost_gradients(x, y, rk), cost_gradients(x, y, rd)):
        torch.testing.assert_close(gk, gd, rtol=1e-8, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    yr = y.clone().requires_grad_(True)
    sinkhorn(xr, yr, eps, cost, a, b, tol=1e-9, backend="keops").cost.backward()
    torch.testing.assert_close(xr.grad, cost_gradients(x, y, rd)[0], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(yr.grad, cost_gradients(x, y, rd)[1], rtol=1e-8, atol=1e-12)


def test_auto_backend_threshold(monkeypatch):
    x, y, _, _ = problem(7, n=300, m=200)
    with pytest.warns(RuntimeWarning, match="sinkhorn did not converge"):   # 1 iteration
        assert sinkhorn(x, y, 1.0, max_iter=1).backend == "torch"
        monkeypatch.setattr(sk, "DENSE_MAX_ENTRIES", 300 * 200 - 1)
        assert sinkhorn(x, y, 1.0, max_iter=1).backend == "keops"


@pytest.mark.parametrize("n, dtype, limit_mb", [
    pytest.param(4000, F64, 64, id="4000-float64"),
    pytest.param(20000, torch.float32, 256, id="20000-float32", marks=pytest.mark.slow),
])
def test_keops_without_dense_matrix(n, dtype, limit_mb):
    """``auto`` takes KeOps above the threshold and keeps memory O(n + m): one dense cost
    matrix alone would take 128 MB (4000, float64) or 1.6 GB (20000, float32).  About 1 s
    and 13 s (plus 10 s of float32 compilation on a cold cache) on one core."""
    g = gen(8)
    x = torch.randn(n, D, generator=g, dtype=dtype)
    y = torch.randn(n, D, generator=g, dtype=dtype) + 0.5
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB
    with pytest.warns(RuntimeWarning, match="sinkhorn did not converge"):   # 1 iteration
        r = sinkhorn(x, y, 0.5, scaling=None, max_iter=1)
    grads = cost_gradients(x, y, r)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.backend == "keops" and r.iterations == 1
    assert bool(torch.isfinite(r.cost)) and all(bool(torch.isfinite(t).all()) for t in grads)
    assert grown_mb < limit_mb, f"peak RSS grew by {grown_mb:.0f} MB"


# ----------------------------------------------------------------------------------
# warm start
# ----------------------------------------------------------------------------------
def test_warm_start_needs_fewer_iterations():
    x, y, a, b = problem(9, n=80, m=70)
    r0 = sinkhorn(x, y, 0.1, "sqeuclidean", a, b)
    assert r0.converged
    again = sinkhorn(x, y, 0.1, "sqeuclidean", a, b, init=r0)
    assert again.iterations == 1 and again.converged
    # the next training step: slightly moved points (measured: 139 cold, 42 warm)
    x1 = x + 0.01 * torch.randn(x.shape, generator=gen(10), dtype=F64)
    cold = sinkhorn(x1, y, 0.1, "sqeuclidean", a, b)
    warm = sinkhorn(x1, y, 0.1, "sqeuclidean", a, b, init=(r0.f, r0.g))
    assert cold.converged and warm.converged
    assert warm.iterations < cold.iterations / 2
    assert float(warm.cost) == pytest.approx(float(cold.cost), rel=1e-4)


# ----------------------------------------------------------------------------------
# the OT-GAN energy distance
# ----------------------------------------------------------------------------------
def four(seed: int, n: int = 48, shift: float = 0.0, d: int = 5):
    g = gen(seed)
    x, x2 = (torch.randn(n, d, generator=g, dtype=F64) + 1.0 for _ in range(2))
    y, y2 = (torch.randn(n, d, generator=g, dtype=F64) + 1.0 for _ in range(2))
    y[:, 0] += shift
    y2[:, 0] += shift
    return x, x2, y, y2


def test_energy_distance_zero_in_expectation_positive_otherwise():
    # measured: same 0.005 +- 0.04 (one draw), different 0.48
    same = [float(energy_distance(*four(s), eps=0.05).value) for s in range(12)]
    diff = [float(energy_distance(*four(s, shift=2.0), eps=0.05).value) for s in range(12)]
    mean_diff = float(np.mean(diff))
    assert min(diff) > 0 and mean_diff > 0.2
    assert abs(float(np.mean(same))) < 0.1 * mean_diff
    assert float(np.std(same)) < 0.2 * mean_diff


@pytest.mark.parametrize("cost", COSTS)
def test_energy_distance_gradients_equal_autograd(cost):
    pops = [t.requires_grad_(True) for t in four(11, n=20, shift=1.0)]
    res = energy_distance(*pops, eps=0.1 if cost == "cosine" else 2.0, cost=cost, tol=1e-10)
    assert res.converged and res.marginal_error <= 1e-10
    assert set(res.results) == {key for key, *_ in ENERGY_TERMS}
    total = sum(c * res.results[key].cost for key, _, _, c in ENERGY_TERMS)
    torch.testing.assert_close(res.value, total)
    auto = torch.autograd.grad(res.value, pops)
    direct = energy_distance_gradients(*pops, res)
    for ga, gd in zip(auto, direct):
        assert not gd.requires_grad
        torch.testing.assert_close(gd, ga, rtol=1e-10, atol=1e-13)


def test_energy_distance_symmetric_roles_and_warm_start():
    x, x2, y, y2 = four(12, n=30, shift=1.0)
    kw = dict(eps=0.05, tol=1e-10)
    d0 = energy_distance(x, x2, y, y2, **kw)
    for perm in ((y, y2, x, x2), (x2, x, y, y2), (x, x2, y2, y)):
        assert float(energy_distance(*perm, **kw).value) == pytest.approx(
            float(d0.value), rel=1e-7)
    warm = energy_distance(x, x2, y, y2, init=d0, **kw)
    assert all(r.iterations == 1 for r in warm.results.values())
    assert float(warm.value) == pytest.approx(float(d0.value), rel=1e-9)


# ----------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------
def _bad_input():
    x, y, a, b = problem(13, n=6, m=5)
    nan, zero = x.clone(), x.clone()
    nan[2, 1] = float("nan")
    zero[1] = 0
    return SimpleNamespace(x=x, y=y, a=a, b=b, nan=nan, zero=zero, r=sinkhorn(x, y, 1.0))


BAD = [
    ("1-D x", lambda p: sinkhorn(p.x[0], p.y, 1.0), "x must be a non-empty 2-D"),
    ("empty y", lambda p: sinkhorn(p.x, p.y[:0], 1.0), "y must be a non-empty 2-D"),
    ("int x", lambda p: sinkhorn(p.x.long(), p.y, 1.0), "x must have dtype float32 or float64"),
    ("not a tensor", lambda p: sinkhorn(p.x.numpy(), p.y, 1.0), "x must be a torch.Tensor"),
    ("dtypes", lambda p: sinkhorn(p.x, p.y.float(), 1.0), "same dtype"),
    ("dims", lambda p: sinkhorn(p.x, p.y[:, :2], 1.0), "same dimension d"),
    ("nan x", lambda p: sinkhorn(p.nan, p.y, 1.0), "x contains non-finite"),
    ("inf y", lambda p: sinkhorn(p.x, p.y / 0, 1.0), "y contains non-finite"),
    ("eps 0", lambda p: sinkhorn(p.x, p.y, 0.0), "eps must be"),
    ("eps nan", lambda p: sinkhorn(p.x, p.y, float("nan")), "eps must be"),
    ("negative a", lambda p: sinkhorn(p.x, p.y, 1.0, a=-p.a), "weights a must be non-negative"),
    ("zero b", lambda p: sinkhorn(p.x, p.y, 1.0, b=0 * p.b), "weights b must have a positive sum"),
    ("shape a", lambda p: sinkhorn(p.x, p.y, 1.0, a=p.b), r"weights a must have shape \[6\]"),
    ("nan b", lambda p: sinkhorn(p.x, p.y, 1.0, b=p.b / 0 * 0), "weights b contain non-finite"),
    ("cost", lambda p: sinkhorn(p.x, p.y, 1.0, "l7"), "unknown cost 'l7'"),
    ("dense", lambda p: sinkhorn(p.x, p.y, 1.0, backend="dense"), "renamed 'torch'"),
    ("backend", lambda p: sinkhorn(p.x, p.y, 1.0, backend="gpu"), "unknown Sinkhorn backend"),
    ("scaling", lambda p: sinkhorn(p.x, p.y, 1.0, scaling=1.5), "scaling must be in"),
    ("tol", lambda p: sinkhorn(p.x, p.y, 1.0, tol=-1), "tol must be"),
    ("max_iter", lambda p: sinkhorn(p.x, p.y, 1.0, max_iter=0), "max_iter must be"),
    ("init shapes", lambda p: sinkhorn(p.x, p.y, 1.0, init=(p.r.g, p.r.f)),
     "init potentials must have"),
    ("init type", lambda p: sinkhorn(p.x, p.y, 1.0, init=3), "init must be"),
    ("cosine zero row", lambda p: sinkhorn(p.zero, p.y, 1.0, "cosine"), "x has a zero row"),
    ("gradient rows", lambda p: cost_gradients(p.x[:5], p.y, p.r), "rows but the result"),
    ("ed weights", lambda p: energy_distance(p.x, p.x, p.y, p.y, 1.0, a=p.a), "uniform weights"),
    ("ed dims", lambda p: energy_distance(p.x, p.x, p.y, p.y[:, :2], 1.0), "x and y2 must have"),
    ("ed init", lambda p: energy_distance(p.x, p.x, p.y, p.y, 1.0, init=p.r),
     "init must be an EnergyDistanceResult"),
]


@pytest.mark.parametrize("call, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(_bad_input())
