"""The one ground-cost registry of the OT kernels (c-transform, Sinkhorn, semi-discrete OT).

A :class:`Cost` is a cost ``c(x, y)`` between rows of ``x [B, d]`` and ``y [N, d]``:

    sqeuclidean   c(x, y) = ||x - y||_2^2                     (no 1/2: POT's ``ot.dist``)
    euclidean     c(x, y) = ||x - y||_2
    l1            c(x, y) = sum_k |x_k - y_k|
    lp            c(x, y) = sum_k |x_k - y_k|^p                (p >= 1, *no* p-th root)
    cosine        c(x, y) = 1 - <x, y> / (|x| |y|)             (in [0, 2]; rows must be != 0)

All are symmetric (``c(x, y) = c(y, x)``), so a gradient in the second argument is the
gradient in the first with the roles swapped.  Every cost has the same three forms:

- :meth:`Cost.matrix` ``[B, N]`` and :meth:`Cost.pairwise` ``[B]``, in torch, differentiable
  (the reference; backends ``torch``);
- :meth:`Cost.keops`, the KeOps LazyTensor formula between rows *prepared* by
  :meth:`Cost.prepare` (the identity, or unit rows for ``cosine``), for backends ``keops``;
- :meth:`Cost.bound`, an upper bound on ``max_ij c(x_i, y_j)`` from the radii of the two
  point sets about a common centre, in the norm :attr:`Cost.norm_p` (the start of Sinkhorn's
  eps-scaling).

Names: ``parse_cost("lp:3")`` is ``Cost("lp", 3.0)``; ``str(cost)`` gives the name back.

Example::

    >>> import torch
    >>> from ootrain.ot.costs import parse_cost
    >>> c = parse_cost("cosine")
    >>> x = torch.tensor([[1.0, 0.0]]); y = torch.tensor([[0.0, 2.0], [-3.0, 0.0]])
    >>> c.matrix(x, y)
    tensor([[1., 2.]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["COSTS", "Cost", "parse_cost"]

#: The cost names of the registry (``lp`` takes an exponent: ``"lp:<p>"``).
COSTS = ("sqeuclidean", "euclidean", "l1", "lp", "cosine")


def _unit(t: Tensor) -> Tensor:
    """Rows of ``t`` divided by their Euclidean norms (ValueError on a zero row)."""
    nrm = t.norm(dim=1, keepdim=True)
    zero = nrm[:, 0] == 0
    if bool(zero.any()):
        i = int(torch.nonzero(zero)[0, 0])
        raise ValueError(f"the cosine cost needs non-zero rows; got a zero row (index {i})")
    return t / nrm


@dataclass(frozen=True)
class Cost:
    """A ground cost ``c(x, y)`` between rows; see the module docstring for the formulas.

    ``p`` is the exponent of ``lp`` (``p >= 1``); it is filled in for the norm-based costs
    (2 for ``sqeuclidean`` / ``euclidean``, 1 for ``l1``), None for ``cosine``, and must not
    be given for any cost but ``lp``.
    """

    name: str
    p: float | None = None

    def __post_init__(self) -> None:
        if self.name not in COSTS:
            raise ValueError(f"unknown cost {self.name!r}; expected one of {', '.join(COSTS)}")
        if self.name == "lp":
            p = self.p
            if (isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)
                    or p < 1):
                raise ValueError(f"cost 'lp' needs a finite exponent p >= 1, got p={p!r}")
            object.__setattr__(self, "p", float(p))
        elif self.p is not None:
            raise ValueError(f"cost {self.name!r} takes no exponent p (got p={self.p!r}); "
                             "use Cost('lp', p)")
        elif self.name != "cosine":
            object.__setattr__(self, "p", 1.0 if self.name == "l1" else 2.0)

    def __str__(self) -> str:
        return f"lp:{self.p:g}" if self.name == "lp" else self.name

    # ------------------------------------------------------------------ torch forms
    @property
    def norm_p(self) -> float:
        """The ``p`` of the norm of ``x - y`` the cost is a function of (2 for ``cosine``:
        the norm in which :meth:`bound` takes its radii)."""
        return 2.0 if self.name in ("sqeuclidean", "euclidean", "cosine") else float(self.p)

    def _finish(self, r: Tensor) -> Tensor:
        """Cost from the p-norm ``r`` of ``x - y``."""
        if self.name == "sqeuclidean":
            return r * r
        if self.name == "lp" and self.p != 1.0:
            return r.pow(self.p)
        return r

    def prepare(self, t: Tensor) -> Tensor:
        """Rows as :meth:`keops` (and FAISS) take them: unit rows for ``cosine``
        (ValueError on a zero row), ``t`` itself otherwise."""
        return _unit(t) if self.name == "cosine" else t

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """Dense cost matrix ``C[i, j] = c(x_i, y_j)``: ``x [B, d]``, ``y [N, d]`` -> ``[B, N]``.

        Norm costs are evaluated directly (``torch.cdist`` without the ``||x||^2 - 2<x, y>
        + ||y||^2`` expansion), so they are accurate to rounding; ``cosine`` is ``1 - x^
        y^T`` of the unit rows (a GEMM).  Differentiable.  Memory ``O(B N)``: chunk large
        inputs (the torch backends do).
        """
        if self.name == "cosine":
            return 1 - _unit(x) @ _unit(y).T
        return self._finish(torch.cdist(x, y, p=self.norm_p,
                                        compute_mode="donot_use_mm_for_euclid_dist"))

    def pairwise(self, x: Tensor, y: Tensor) -> Tensor:
        """Row-aligned costs ``c(x_i, y_i)``: ``x, y [B, d]`` -> ``[B]``.

        Norm costs use the same kernel as :meth:`matrix`, so ``pairwise(x, y[idx])`` equals
        the corresponding entries of ``matrix(x, y)`` bit for bit; for ``cosine`` the two
        agree to rounding (a dot product against a GEMM entry).
        """
        if self.name == "cosine":
            return 1 - (_unit(x) * _unit(y)).sum(1)
        r = torch.cdist(x[:, None, :], y[:, None, :], p=self.norm_p,
                        compute_mode="donot_use_mm_for_euclid_dist")
        return self._finish(r.reshape(x.shape[0]))

    # ------------------------------------------------------------------ KeOps form
    def keops(self, X: Any, Y: Any) -> Any:
        """The KeOps formula ``c(X_i, Y_j)`` of LazyTensors ``X [B, 1, d]``, ``Y [1, N, d]``
        of rows passed through :meth:`prepare`."""
        if self.name == "sqeuclidean":
            return X.sqdist(Y)
        if self.name == "euclidean":
            return X.sqdist(Y).sqrt()
        if self.name == "l1":
            return (X - Y).abs().sum(-1)
        if self.name == "cosine":
            return 1 - (X | Y)
        p = self.p
        return ((X - Y).abs() ** (int(p) if float(p).is_integer() else p)).sum(-1)

    # ------------------------------------------------------------------ scale
    def bound(self, rx: float, ry: float) -> float:
        """An upper bound on ``max_ij c(x_i, y_j)`` when every ``|x_i - z|`` is at most
        ``rx`` and every ``|y_j - z|`` at most ``ry`` in the :attr:`norm_p` norm (any
        common ``z``; triangle inequality): ``(rx + ry)^q`` with ``q`` = 2 for
        ``sqeuclidean``, ``p`` for ``lp``, 1 for ``euclidean`` / ``l1``; 2 for ``cosine``."""
        if self.name == "cosine":
            return 2.0
        r = float(rx) + float(ry)
        if self.name == "sqeuclidean":
            return r * r
        if self.name == "lp":
            return r ** float(self.p)
        return r


def parse_cost(cost: str | Cost, p: float | None = None) -> Cost:
    """A :class:`Cost` from a ``Cost``, a name (``"sqeuclidean"``, ``"euclidean"``,
    ``"l1"``, ``"cosine"``, ``"lp"`` with ``p``) or ``"lp:<p>"`` (e.g. ``"lp:3"``)."""
    if isinstance(cost, Cost):
        if p is not None and p != cost.p:
            raise ValueError(f"p={p!r} conflicts with the cost {cost}")
        return cost
    if not isinstance(cost, str):
        raise ValueError(f"cost must be a str or Cost, got {type(cost).__name__}")
    name = cost.strip().lower()
    if name.startswith("lp:"):
        try:
            p_str = float(name[3:])
        except ValueError:
            raise ValueError(f"cannot read the exponent of cost {cost!r} (expected 'lp:<p>')") \
                from None
        if p is not None and p != p_str:
            raise ValueError(f"p={p!r} conflicts with the cost {cost!r}")
        return Cost("lp", p_str)
    return Cost(name, p)
