"""Inputs the OT kernels must refuse (or warn about) by name instead of hanging, returning
inf / nan, or failing deep inside torch."""

from __future__ import annotations

import pytest
import torch

from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.ot.sinkhorn import sinkhorn, sinkhorn_streamed
from ootrain.ot.sliced import sliced_wasserstein

g = torch.Generator().manual_seed(0)
X, Y = torch.randn(40, 3, generator=g), torch.randn(50, 3, generator=g)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("solve", [sinkhorn, sinkhorn_streamed])
def test_sinkhorn_refuses_a_cost_that_overflows(solve):
    """Finite points near 1e19: the squared distances overflow float32; the eps-scaling loop
    used to start at inf and never end."""
    with pytest.raises(ValueError, match="cost overflows torch.float32"):
        solve(X * 1e19, Y * 1e19, 0.1, "sqeuclidean")


def test_sinkhorn_warns_when_not_converged():
    with pytest.warns(RuntimeWarning, match="sinkhorn did not converge: marginal error"):
        r = sinkhorn(X, Y, 1e-3, max_iter=3)
    assert not r.converged


def test_sliced_wasserstein_refuses_overflow():
    with pytest.raises(ValueError, match="overflows torch.float32"):
        sliced_wasserstein(X * 1e20, Y * 1e20, 8, generator=torch.Generator().manual_seed(1))


def test_semidiscrete_refuses_half_targets_and_empty_cost():
    with pytest.raises(ValueError, match="half precision"):
        SemiDiscreteOT(Y.half())
    ot = SemiDiscreteOT(Y)
    with pytest.raises(ValueError, match="empty batch"):
        ot.cost(torch.zeros(0, 3))
