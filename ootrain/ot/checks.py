"""Input checks shared by the OT kernels; each raises ``ValueError`` naming what it got.

Example::

    >>> from ootrain.ot.checks import check_eps
    >>> check_eps(0.5)
    0.5
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_eps", "check_query", "check_psi", "HALF"]

#: Floating dtypes the kernels refuse: their range (6.5e4 for float16) is exceeded by the
#: squared distances of ordinary data.
HALF = (torch.float16, torch.bfloat16)


def check_eps(eps: Any) -> float:
    """A temperature: a finite number ``> 0`` (in cost units), as a float."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def check_query(x: Any, d: int) -> None:
    """``x`` is a finite floating ``[B, d]`` tensor (``d`` the targets' dimension)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape [B, d] with d = {d} (the targets' dimension), "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    if x.dtype in HALF:
        raise ValueError(f"x has dtype {x.dtype}: half precision is not supported (squared "
                         "distances overflow it); use float32 or float64")
    # a finite sum proves every entry finite (one NaN or Inf makes it NaN or Inf) and costs
    # a 30th of the elementwise test, which is needed only when the sum overflowed
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values (NaN or Inf)")


def check_psi(psi: Any, n: int, x: Tensor) -> Tensor:
    """A finite dual potential ``[N]`` (``n`` targets), returned in ``x``'s dtype and device."""
    psi = torch.as_tensor(psi)
    if psi.shape != (n,):
        raise ValueError(f"psi must have shape [N] = [{n}], got {tuple(psi.shape)}")
    psi = psi.to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(psi).all()):
        raise ValueError("psi contains non-finite values (NaN or Inf)")
    return psi
