"""Checks shared by the training configurations (``OTGANConfig``, ``WGANConfig``,
``VAEConfig``, ``POTConfig``): each raises ``ValueError`` naming the field and what it got."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

__all__ = ["is_int", "is_num", "check_int", "check_num", "check_betas", "check_micro_batch",
           "check_bool", "NonFiniteError", "DIVERGED"]

#: The remedy of a training that became non-finite.
DIVERGED = ("training diverged: start again with a smaller learning rate (--lr) in a new "
            "--store (or with --overwrite)")


class NonFiniteError(ValueError, FloatingPointError):
    """NaN or Inf in a model's output or loss (so nothing of it is stored)."""


def is_int(v: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite real number (Python or numpy), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def check_int(name: str, v: Any, low: int) -> None:
    """``v`` is an integer ``>= low``."""
    if not is_int(v) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")


def check_num(name: str, v: Any, low: float = 0.0, strict: bool = True) -> None:
    """``v`` is a finite number ``> low`` (``>= low`` when not ``strict``)."""
    if not is_num(v) or v < low or (strict and v == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, "
                         f"got {v!r}")


def check_betas(v: Any) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``, both in ``[0, 1)``; returned as floats."""
    b = tuple(v) if isinstance(v, (tuple, list)) else None
    if b is None or len(b) != 2 or not all(is_num(x) and 0 <= x < 1 for x in b):
        raise ValueError(f"betas must be two numbers in [0, 1), got {v!r}")
    return float(b[0]), float(b[1])


def check_micro_batch(v: Optional[Any]) -> None:
    """None (in memory) or rows per forward pass ``>= 1``."""
    if v is not None and (not is_int(v) or v < 1):
        raise ValueError(f"micro_batch must be None (in memory) or an integer >= 1, got {v!r}")


def check_bool(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be a bool, got {v!r}")
