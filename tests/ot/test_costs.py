"""Tests of ootrain.ot.costs (the one registry) and Sinkhorn on every registry cost."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from ootrain.ot.costs import COSTS, Cost, parse_cost
from ootrain.ot.sinkhorn import cost_gradients, sinkhorn

F64 = torch.float64
ALL = ["sqeuclidean", "euclidean", "l1", "lp:3", "cosine"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def reference(x, y, name):
    """Plain broadcast formulas (independent of the registry's kernels)."""
    diff = x[:, None, :] - y[None, :, :]
    if name == "cosine":
        return 1 - (x[:, None, :] * y[None, :, :]).sum(-1) / (
            x.norm(dim=1)[:, None] * y.norm(dim=1)[None, :])
    return {"sqeuclidean": (diff ** 2).sum(-1), "euclidean": (diff ** 2).sum(-1).sqrt(),
            "l1": diff.abs().sum(-1), "lp:3": diff.abs().pow(3).sum(-1)}[name]


@pytest.mark.parametrize("name", ALL)
def test_matrix_pairwise_bound(name):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g, dtype=F64), torch.randn(20, 4, generator=g, dtype=F64)
    c = parse_cost(name)
    C = c.matrix(x, y)
    torch.testing.assert_close(C, reference(x, y, name), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c.pairwise(x[:20], y), C[torch.arange(20), torch.arange(20)],
                               rtol=0, atol=1e-14)
    z = (x.mean(0) + y.mean(0)) / 2
    p = c.norm_p
    assert float(C.max()) <= c.bound(float((x - z).norm(p=p, dim=1).max()),
                                     float((y - z).norm(p=p, dim=1).max())) + 1e-12
    assert str(c) == name and name.split(":")[0] in COSTS


def test_cosine_zero_row():
    with pytest.raises(ValueError, match="non-zero rows"):
        Cost("cosine").matrix(torch.zeros(2, 3), torch.ones(2, 3))


@pytest.mark.parametrize("name", ["euclidean", "l1", "lp:3"])
def test_sinkhorn_any_cost(name):
    """Sinkhorn on a cost without a closed-form gradient: POT's plan and the autograd
    gradient of <P, C> with P frozen."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, generator=g, dtype=F64), torch.randn(30, 3, generator=g, dtype=F64)
    C = reference(x, y, name)
    eps = 0.05 * float(C.max())
    r = sinkhorn(x, y, eps, name, tol=1e-11)
    assert r.converged and r.ground_cost == name
    a, b = np.full(40, 1 / 40), np.full(30, 1 / 30)
    P_ot = ot.sinkhorn(a, b, C.numpy(), eps, method="sinkhorn_log", stopThr=1e-13,
                       numItermax=100000)
    np.testing.assert_allclose(r.plan().numpy(), P_ot, atol=1e-10)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    P = r.plan().detach()
    (P * reference(xg, yg, name)).sum().backward()
    gx, gy = cost_gradients(x, y, r)
    torch.testing.assert_close(gx, xg.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(gy, yg.grad, rtol=1e-9, atol=1e-11)
    xg2 = x.clone().requires_grad_()
    sinkhorn(xg2, y, eps, name, tol=1e-11).cost.backward()
    torch.testing.assert_close(xg2.grad, xg.grad, rtol=1e-9, atol=1e-11)
