"""Exact discrete OT between two point clouds of equal size with uniform weights.

With ``n`` points on each side and weights ``1/n``, the optimal plan can be taken to be a
permutation (Birkhoff–von Neumann), so the exact OT cost is that of an optimal assignment:
``scipy.optimize.linear_sum_assignment`` on the ``[n, n]`` cost matrix (``O(n^3)``; a few
thousand points per side).  It is the value of the transport linear program itself (what
POT's ``ot.emd2`` returns for these inputs), not an approximation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["exact_wasserstein"]


def exact_wasserstein(x: Any, y: Any, p: float = 2) -> float:
    """Exact ``W_p`` (not raised to ``p``) between the uniform empirical measures of ``x``
    ``[n, d]`` and ``y`` ``[n, d]``, with the ground cost ``|x - y|_2^p`` (``p = 2``: the
    squared Euclidean cost).  Computed in float64.

    Raises ``ValueError`` for other shapes (unequal sizes or widths) or ``p < 1``.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    x, y = (np.asarray(a, dtype=np.float64) for a in (x, y))
    if x.ndim != 2 or y.ndim != 2 or x.shape != y.shape or 0 in x.shape:
        raise ValueError(f"exact_wasserstein needs two non-empty [n, d] arrays of the same "
                         f"shape, got {x.shape} and {y.shape}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p}")
    cost = cdist(x, y, "sqeuclidean") if p == 2 else cdist(x, y) ** p
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean()) ** (1 / p)
