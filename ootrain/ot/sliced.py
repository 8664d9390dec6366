"""In-memory sliced-Wasserstein math for Run-Sort-ReRun (Lezama et al., ICML 2021).

Notation: ``x`` holds ``b`` (or ``n``) generated samples, ``y`` holds ``n`` (or ``m``)
real samples, both seen as *uniform* empirical measures.  For a 1-D uniform measure on
the sorted values ``z_(0) <= ... <= z_(n-1)`` the quantile function is the step function

    F_z^{-1}(u) = z_(i)    for u in (i/n, (i+1)/n].

Every exact 1-D quantity here is an integral of products of such step functions, so it
is evaluated *exactly* (up to floating-point rounding of the summands) by merging the
breakpoint grids ``{i/n}`` and ``{j/m}``: both step functions are constant on each
merged piece.  Breakpoints are handled as integers in units of ``1/lcm(n, m)``, never
as floats, so sizes up to ~1e9 are safe.

Public API
----------
random_directions      Gaussian directions normalised to unit columns.
wasserstein_1d         exact W_p^p per column between two 1-D empirical measures.
sliced_wasserstein     mean over directions of W_p^p of the projected measures.
quantile_targets       exact 1-D regression targets t_r for unequal sizes (float64).
real_slice_bounds      which slice of sorted real data the targets r0..r1-1 need.
quantile_targets_range streaming (out-of-core) variant of ``quantile_targets``.
w2_from_targets        per-direction W_2^2 from sorted x and its targets.
algorithm2_directions  direction update of the RSR paper's Algorithm 2.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "random_directions",
    "wasserstein_1d",
    "sliced_wasserstein",
    "quantile_targets",
    "real_slice_bounds",
    "quantile_targets_range",
    "w2_from_targets",
    "algorithm2_directions",
]

_INT64_MAX = 2**63 - 1
_MAX_REDRAW_ROUNDS = 100


# ----------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------
def _check_samples(name: str, t: Tensor, what: str = "[n, d]") -> None:
    """Require a non-empty, finite, floating 2-D tensor."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor {what}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} must contain at least one sample, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def _check_pair(x: Tensor, y: Tensor, what: str) -> None:
    _check_samples("x", x, what)
    _check_samples("y", y, what)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have the same number of columns, got {x.shape[1]} and {y.shape[1]}"
        )
    if x.dtype != y.dtype:
        raise ValueError(f"x and y must have the same dtype, got {x.dtype} and {y.dtype}")


def _check_p(p: float) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")


def _unit_tolerance(dtype: torch.dtype) -> float:
    """Allowed | ||omega|| - 1 | for directions of the given dtype."""
    return max(1e-4, 8 * torch.finfo(dtype).eps)


def _check_directions(directions: Tensor, d: int | None = None) -> None:
    _check_samples("directions", directions, "[d, k]")
    if d is not None and directions.shape[0] != d:
        raise ValueError(
            f"directions must have shape [d, k] with d = {d} (the sample dimension), "
            f"got {tuple(directions.shape)}"
        )
    tol = _unit_tolerance(directions.dtype)
    err = float((torch.linalg.vector_norm(directions, dim=0) - 1).abs().max())
    if err > tol:
        raise ValueError(
            f"directions must have unit-norm columns (tolerance {tol:.1e}), "
            f"but max | ||omega_k|| - 1 | = {err:.3e}"
        )


def _check_int(name: str, v: int, lo: int, hi: int | None = None) -> int:
    """Require an integer in ``[lo, hi]``; return it as a Python int (no int64 overflow)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bound}, got {v}")
    return int(v)


# ----------------------------------------------------------------------------------
# exact merging of two uniform quantile grids
# ----------------------------------------------------------------------------------
def _merged_pieces(
    n: int, m: int, j_start: int, j_stop: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_pieces` of the last few rank ranges, reused: a Solve aligns every direction on
    the same ranks (the integer pieces cost ~1.5 ms per direction at n = 32768, b = 1024).
    The tensors are shared: callers must not modify them."""
    return _pieces_cached(int(n), int(m), int(j_start), int(j_stop), str(device))


@functools.lru_cache(maxsize=4)
def _pieces_cached(n: int, m: int, j_start: int, j_stop: int, device: str
                   ) -> tuple[Tensor, Tensor, Tensor]:
    return _pieces(n, m, j_start, j_stop, torch.device(device))


def _pieces(
    n: int, m: int, j_start: int, j_stop: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Partition of ``[j_start/m, j_stop/m]`` by the grids ``{i/n}`` and ``{j/m}``.

    Returns int64 tensors ``(i, j, w)`` with one entry per (non-empty) piece: on that
    piece the quantile function of an ``n``-point uniform measure takes its value of
    rank ``i``, the one of an ``m``-point measure its value of rank ``j``, and the piece
    has length ``w / lcm(n, m)``.  Pieces are in increasing order of ``u``.
    """
    g = math.gcd(n, m)
    step_n, step_m = m // g, n // g  # lcm(n, m)/n and lcm(n, m)/m
    a, c = j_start * step_m, j_stop * step_m
    first = a // step_n + 1
    inner_n = torch.arange(first, max(first, (c - 1) // step_n + 1), device=device) * step_n
    grid_m = torch.arange(j_start, j_stop + 1, device=device) * step_m
    if step_m == 1:  # n divides m: {j/m} already holds every breakpoint
        bp = grid_m
    elif step_n == 1:  # m divides n: {i/n} is the finer grid
        bp = torch.arange(a, c + 1, device=device)
    else:
        # Both grids are sorted arithmetic progressions: merge them in O(len) by computing each
        # element's rank in the union analytically (no sort), then drop the common multiples.
        # inner_n lies strictly inside (a, c); on a tie the grid_m element goes first.
        n_inner = inner_n.shape[0]
        below_m = (torch.div(grid_m + step_n - 1, step_n, rounding_mode="floor") - first
                   ).clamp_(0, n_inner)  # inner_n elements < grid_m[q]
        below_n = (torch.div(inner_n, step_m, rounding_mode="floor") - j_start + 1
                   ).clamp_(0, grid_m.shape[0])  # grid_m elements <= inner_n[p]
        merged = torch.empty(n_inner + grid_m.shape[0], dtype=grid_m.dtype, device=device)
        merged[torch.arange(grid_m.shape[0], device=device) + below_m] = grid_m
        merged[torch.arange(n_inner, device=device) + below_n] = inner_n
        bp = torch.unique_consecutive(merged)
    starts = bp[:-1]
    return starts // step_n, starts // step_m, bp[1:] - starts


def _lcm_checked(n: int, m: int) -> int:
    lcm = n // math.gcd(n, m) * m
    if lcm > _INT64_MAX:
        raise ValueError(f"lcm(n, m) = lcm({n}, {m}) does not fit in int64")
    return lcm


# ----------------------------------------------------------------------------------
# directions and distances
# ----------------------------------------------------------------------------------
def random_directions(
    d: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``k`` directions uniformly on the unit sphere of R^d.

    Columns of a standard Gaussian ``[d, k]`` matrix divided by their Euclidean norm
    (the normalised Gaussian is uniform on S^{d-1}).  ``generator`` must live on
    ``device``.

    Returns:
        Tensor ``[d, k]`` of ``dtype`` with unit-norm columns.
    """
    d = _check_int("d", d, 1)
    k = _check_int("k", k, 1)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    g = torch.randn(d, k, generator=generator, dtype=dtype, device=device)
    return g / torch.linalg.vector_norm(g, dim=0, keepdim=True)


def _wasserstein_1d(xt: Tensor, yt: Tensor, p: float) -> Tensor:
    """W_p^p per row of ``xt [k, n]`` and ``yt [k, m]`` (rows: sorting along the
    contiguous dimension is several times faster than along dim 0 of ``[n, k]``)."""
    n, m = xt.shape[1], yt.shape[1]
    lcm = _lcm_checked(n, m)
    i, j, w = _merged_pieces(n, m, 0, m, xt.device)
    xs = torch.sort(xt.contiguous(), dim=1).values
    ys = torch.sort(yt.contiguous(), dim=1).values
    weight = (w.to(torch.float64) / lcm).to(xt.dtype)
    return ((xs[:, i] - ys[:, j]).abs().pow(p) * weight).sum(dim=1)


def wasserstein_1d(x: Tensor, y: Tensor, p: float = 2) -> Tensor:
    """Exact W_p^p between the uniform empirical measures of each column.

    For column ``c``::

        W_p^p(x[:, c], y[:, c]) = int_0^1 |F_x^{-1}(u) - F_y^{-1}(u)|^p du,

    with ``F^{-1}`` the step quantile functions of the ``n`` (resp. ``m``) values,
    ``n != m`` allowed.  The integral is a finite sum over the merged breakpoints
    ``{i/n} U {j/m}`` (at most ``n + m - 1`` pieces).  For p >= 1 this is the exact
    optimal-transport cost (monotone coupling).  Differentiable in ``x`` and ``y``
    (through ``torch.sort`` and gathers); the gradient w.r.t. the value of rank ``r``
    is the subgradient of the sorted expression.

    Args:
        x: ``[n, k]`` floating tensor.
        y: ``[m, k]`` tensor of the same dtype.
        p: exponent, ``p >= 1``.

    Returns:
        Tensor ``[k]``: W_p^p per column.
    """
    _check_pair(x, y, "[n, k]")
    _check_p(p)
    return _wasserstein_1d(x.T, y.T, p)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    directions: Tensor | int,
    p: float = 2,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sliced Wasserstein cost: mean over directions of W_p^p of the projections.

        SW_p^p(x, y) = (1/k) sum_k W_p^p(<omega_k, x>, <omega_k, y>)

    (no ``1/p`` power: ``sliced_wasserstein(...) ** (1/p)`` is POT's
    ``sliced_wasserstein_distance`` for the same projections).

    Args:
        x: ``[n, d]`` floating tensor of samples.
        y: ``[m, d]`` tensor of the same dtype.
        directions: ``[d, k]`` unit-norm columns (cast to ``x.dtype``), or an int ``k``
            to draw ``k`` directions with :func:`random_directions` and ``generator``.
        p: exponent, ``p >= 1``.
        generator: used only when ``directions`` is an int.

    Returns:
        0-d tensor.

    Raises:
        ValueError: non-2-D, empty, non-floating or non-finite inputs, mismatched ``d``
            or dtype, directions of wrong shape or not unit-norm, ``p < 1``, a cost that
            overflows the dtype.
    """
    _check_pair(x, y, "[n, d]")
    _check_p(p)
    if isinstance(directions, Tensor):
        _check_directions(directions, x.shape[1])
        directions = directions.to(x.dtype)
    elif isinstance(directions, (int, np.integer)) and not isinstance(directions, bool):
        k = _check_int("directions (number of directions k)", directions, 1)
        directions = random_directions(
            x.shape[1], k, generator=generator, dtype=x.dtype, device=x.device
        )
    else:
        raise ValueError(
            f"directions must be a [d, k] tensor or an int k, got {type(directions).__name__}"
        )
    dt = directions.T
    out = _wasserstein_1d(dt @ x.T, dt @ y.T, p).mean()
    if not bool(torch.isfinite(out)):
        raise ValueError(f"sliced_wasserstein overflows {x.dtype}: |x|, |y| up to "
                         f"{float(torch.maximum(x.abs().max(), y.abs().max())):.3g} to the "
                         f"power p = {p:g}; rescale the data (or use float64)")
    return out


# ----------------------------------------------------------------------------------
# exact regression targets for the monotone coupling
# ----------------------------------------------------------------------------------
def _as_float64(name: str, y: Tensor | np.ndarray) -> Tensor:
    """View ``y`` as a float64 tensor ``[n]`` or ``[n, k]``; check it is sorted and finite."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(y).__name__}")
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape [n] or [n, k], got {tuple(y.shape)}")
    if y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got {y.dtype}")
    y = y.to(torch.float64)
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    if not bool((y[1:] >= y[:-1]).all()):
        raise ValueError(f"{name} must be sorted in ascending order along dim 0")
    return y


def _targets(y: Tensor, slice_start: int, n: int, b: int, r0: int, r1: int) -> Tensor:
    """Targets ``t_r``, ``r in [r0, r1)``, from float64 ``y`` = sorted ranks ``slice_start...``."""
    if n == b:  # one piece of weight 1 per rank: t_r = y_(r), exactly what the general sum gives
        return y[r0 - slice_start:r1 - slice_start].clone()
    lcm = _lcm_checked(n, b)
    i, r, w = _merged_pieces(n, b, r0, r1, y.device)
    contrib = y[i - slice_start] * w.to(torch.float64).reshape(-1, *([1] * (y.ndim - 1)))
    out = torch.zeros((r1 - r0, *y.shape[1:]), dtype=torch.float64, device=y.device)
    return out.index_add_(0, r - r0, contrib).div_(lcm // b)


def real_slice_bounds(n: int, b: int, r0: int, r1: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of the sorted real values needed for targets ``r0..r1-1``.

    Target ``t_r`` integrates ``F_y^{-1}`` over ``[r/b, (r+1)/b]``, so ranks ``r0..r1-1``
    involve exactly the real values of rank ``i`` whose interval ``(i/n, (i+1)/n)``
    meets ``(r0/b, r1/b)``: ``lo = floor(r0 n / b)``, ``hi = ceil(r1 n / b)``
    (``lo == hi`` when ``r0 == r1``).  Pure integer arithmetic, exact for any size.
    """
    n = _check_int("n", n, 1)
    b = _check_int("b", b, 1)
    r0 = _check_int("r0", r0, 0, b)
    r1 = _check_int("r1", r1, r0, b)
    lo = r0 * n // b
    return (lo, lo) if r0 == r1 else (lo, -(-r1 * n // b))


def quantile_targets_range(
    y_slice: Tensor | np.ndarray, slice_start: int, n: int, b: int, r0: int, r1: int,
    check: bool = True,
) -> Tensor | np.ndarray:
    """Streaming :func:`quantile_targets`: targets ``t_r`` for ``r in [r0, r1)`` only.

    ``y_slice`` holds the sorted real values of ranks ``slice_start, slice_start + 1,
    ...`` (column-wise if 2-D) out of ``n`` in total; it must cover
    ``real_slice_bounds(n, b, r0, r1)`` (a longer slice is fine).  Each target is an
    exact combination, with positive integer weights, of the values it integrates::

        t_r = (b / L) * sum_i w_{r,i} y_(i),
        w_{r,i} = L * |(i/n, (i+1)/n) ∩ (r/b, (r+1)/b)|,   L = lcm(n, b),

    accumulated in float64.  No global prefix sum is needed: it cancels exactly in
    ``t_r``, and differencing prefix sums would cost ~``b * eps`` relative accuracy
    instead of ~``(n/b) * eps``.  Results equal the corresponding rows of the one-shot
    function (same pieces, same accumulation order).

    ``check=False`` skips the sortedness and finiteness scan of ``y_slice`` (for callers that
    sorted and checked it already, e.g. the Solve loop over rank blocks).

    Returns:
        float64 ``[r1 - r0]`` (or ``[r1 - r0, k]``); numpy in, numpy out, else a tensor
        on ``y_slice``'s device.
    """
    if check:
        y = _as_float64("y_slice", y_slice)
    else:  # the caller guarantees a sorted, finite [n] or [n, k] slice
        y = torch.as_tensor(y_slice).to(torch.float64)
    lo, hi = real_slice_bounds(n, b, r0, r1)
    slice_start = _check_int("slice_start", slice_start, 0)
    if slice_start > lo or slice_start + y.shape[0] < hi:
        raise ValueError(
            f"y_slice covers sorted positions [{slice_start}, {slice_start + y.shape[0]}) "
            f"but targets [{r0}, {r1}) with n={n}, b={b} need [{lo}, {hi})"
        )
    out = _targets(y, slice_start, int(n), int(b), int(r0), int(r1))
    return out.numpy() if isinstance(y_slice, np.ndarray) else out


def quantile_targets(y_sorted: Tensor | np.ndarray, b: int) -> Tensor | np.ndarray:
    """Exact 1-D regression targets of ``b`` generated samples against sorted real data.

    Under the monotone (optimal) coupling between ``b`` generated values and the ``n``
    real values ``y_sorted``, the generated value of rank ``r`` (0-based) is transported
    to the real quantiles on ``[r/b, (r+1)/b]``; its target is their mean::

        t_r = b * int_{r/b}^{(r+1)/b} F_y^{-1}(u) du.

    ``n == b`` gives ``t = y_sorted``; ``n = q b`` gives block means; ``b = q n``
    repeats each value ``q`` times.  For ``x_sorted`` of length ``b``::

        W_2^2(x, y) = mean(x^2) - 2 mean(x_sorted * t) + mean(y^2)
        d W_2^2 / d x_(r) = (2/b) (x_(r) - t_r)

    (see :func:`w2_from_targets`).  Computed exactly in float64 with integer
    breakpoints (see :func:`quantile_targets_range`).

    Args:
        y_sorted: ``[n]`` or ``[n, k]`` (column-wise) ascending real values.
        b: number of generated samples, ``b >= 1``.

    Returns:
        float64 ``[b]`` or ``[b, k]``; numpy in, numpy out.
    """
    y = _as_float64("y_sorted", y_sorted)
    _check_int("len(y_sorted)", y.shape[0], 1)
    b = _check_int("b", b, 1)
    out = _targets(y, 0, y.shape[0], b, 0, b)
    return out.numpy() if isinstance(y_sorted, np.ndarray) else out


def w2_from_targets(x_sorted: Tensor, t: Tensor, y_sq_mean: Tensor) -> Tensor:
    """Per-direction W_2^2 from sorted generated values and their targets.

    Uses the identity (``b`` generated values, ``t`` from :func:`quantile_targets`)::

        W_2^2 = mean_r (x_(r) - t_r)^2 + (mean(y^2) - mean_r t_r^2),

    whose first term carries all the dependence on ``x`` (gradient
    ``(2/b)(x_(r) - t_r)``) and whose second term, the within-block variance of the
    real quantiles, is >= 0 and vanishes when ``n == b``.  This form avoids the
    cancellation of ``mean(x^2) - 2 mean(x t) + mean(y^2)`` when ``x`` is close to ``y``.

    Args:
        x_sorted: ``[b, k]`` generated projections sorted along dim 0.
        t: ``[b, k]`` targets (any floating dtype; cast to ``x_sorted.dtype``).
        y_sq_mean: ``[k]`` mean of squared real projections, ``mean_i y_i^2``.

    Returns:
        ``[k]`` tensor, clamped at 0 against rounding.
    """
    t = torch.as_tensor(t, device=x_sorted.device).to(x_sorted.dtype)
    y_sq_mean = torch.as_tensor(y_sq_mean, device=x_sorted.device).to(x_sorted.dtype)
    if x_sorted.ndim != 2 or t.shape != x_sorted.shape or y_sq_mean.shape != x_sorted.shape[1:]:
        raise ValueError(
            f"expected x_sorted [b, k], t [b, k], y_sq_mean [k]; got {tuple(x_sorted.shape)}, "
            f"{tuple(t.shape)}, {tuple(y_sq_mean.shape)}"
        )
    within = y_sq_mean - t.square().mean(dim=0)
    return ((x_sorted - t).square().mean(dim=0) + within).clamp_min(0)


# ----------------------------------------------------------------------------------
# RSR Algorithm 2: direction update
# ----------------------------------------------------------------------------------
def algorithm2_directions(
    prev_directions: Tensor,
    prev_distances: Tensor,
    r: int,
    real: Tensor,
    fake: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Direction update of Run-Sort-ReRun's Algorithm 2.

    Keeps the ``r`` previous directions with the largest 1-D distance
    ``prev_distances`` (ties broken towards the lower column index) *at their column
    positions*, so per-column state of the caller (e.g. sorted real projections) stays
    aligned, and replaces every other column by a normalised difference
    ``(real_i - fake_j) / ||real_i - fake_j||`` for a pair ``(i, j)`` drawn uniformly
    with ``generator`` (independently per column).  Pairs with a zero difference are
    redrawn.  ``r = 0`` replaces all columns; ``r = k`` returns a copy.

    Args:
        prev_directions: ``[d, k]`` unit-norm columns.
        prev_distances: ``[k]`` 1-D distances of those directions (e.g. W_2^2).
        r: number of directions kept, ``0 <= r <= k``.
        real: ``[s, d]`` real samples.
        fake: ``[s2, d]`` generated samples.
        generator: source of the random pairs (on the samples' device, or CPU).

    Returns:
        ``[d, k]`` tensor of ``prev_directions``' dtype and device.

    Raises:
        ValueError: invalid shapes/values, or no nonzero difference found after
            repeated redraws (e.g. real and fake all equal to one point).
    """
    _check_directions(prev_directions)
    d, k = prev_directions.shape
    if not isinstance(prev_distances, Tensor) or prev_distances.shape != (k,):
        shape = tuple(prev_distances.shape) if isinstance(prev_distances, Tensor) else None
        raise ValueError(f"prev_distances must be a tensor of shape [k] = [{k}], got {shape}")
    if not bool(torch.isfinite(prev_distances).all()):
        raise ValueError("prev_distances contains non-finite values (NaN or Inf)")
    r = _check_int("r", r, 0, k)
    _check_samples("real", real, "[s, d]")
    _check_samples("fake", fake, "[s2, d]")
    if real.shape[1] != d or fake.shape[1] != d:
        raise ValueError(
            f"real and fake must have d = {d} columns like prev_directions, "
            f"got {real.shape[1]} and {fake.shape[1]}"
        )

    order = torch.sort(prev_distances, descending=True, stable=True).indices
    replace = order[r:].to(prev_directions.device)
    new = torch.empty(k - r, d, dtype=prev_directions.dtype, device=prev_directions.device)
    todo = torch.arange(k - r, device=prev_directions.device)
    idx_device = generator.device if generator is not None else real.device
    for _ in range(_MAX_REDRAW_ROUNDS):
        if todo.numel() == 0:
            break
        i = torch.randint(real.shape[0], (todo.numel(),), generator=generator, device=idx_device)
        j = torch.randint(fake.shape[0], (todo.numel(),), generator=generator, device=idx_device)
        diff = (real[i.to(real.device)] - fake[j.to(fake.device)].to(real.dtype)).to(new)
        norm = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
        ok = norm.squeeze(1) > 0
        new[todo[ok]] = diff[ok] / norm[ok]
        todo = todo[~ok]
    if todo.numel():
        raise ValueError(
            f"could not draw {k - r} nonzero real - fake differences in "
            f"{_MAX_REDRAW_ROUNDS} rounds: real and fake samples (nearly) coincide"
        )
    out = prev_directions.clone()
    out[:, replace] = new.T
    return out
