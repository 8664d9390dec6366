"""The Sort step of Run-Sort-ReRun (Lezama et al., ICML 2021): out-of-core sliced W2.

Given the stored generated embeddings ``X`` [b, d] and real embeddings ``Y`` [n, d], and ``k``
unit directions ``Ω`` [d, k], the loss is

    L = (1/k) Σ_j W2²(Xω_j, Yω_j),

the mean over directions of the exact 1-D squared W2 between the projected empirical measures.
With monotone coupling, the generated sample of rank ``r`` in direction ``j`` has the exact target
``t_rj = b ∫_{r/b}^{(r+1)/b} F_{Yω_j}^{-1}(u) du`` (:func:`ootrain.sliced.quantile_targets`), and

    ∂L/∂e_i = (2 / (b k)) Ω (Ωᵀ e_i − t_i).

Solve writes, under the step's group (all plain zarr arrays):

- ``directions`` [d, k]; ``distances`` [k] (per-direction W2², for Algorithm 2 next step);
- ``projections`` [k, b] and ``real_projections`` [k, n] (chunks of one direction row);
- ``targets`` [k, b]  (target mode: ReRun minimises Σ_i ‖Ωᵀe_i − t_i‖² / (b k));
- ``cotangents`` [b, d] (cotangent mode: ReRun back-propagates ``e_i · g_i``).

Rows that fit the memory budget are sorted in memory (:func:`ootrain.sort.argsort`), larger rows
through Dask's partitioned on-disk sort (:func:`ootrain.sort.argsort_dask`), so peak memory is set by
the budget, not by ``b``.  Every array is written chunk by chunk through the store's manifest, so a
killed Solve resumes per chunk (per direction for the Dask path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import torch
from torch import Tensor

from ootrain import sliced, sort
from ootrain.engine import SolveContext
from ootrain.store import Store


@dataclass
class SlicedSolver:
    """Sliced W2 over the whole stored population.

    n_directions: k, directions per step.  directions: ``"gaussian"`` (fresh random unit
    directions each step) or ``"algorithm2"`` (RSR Algorithm 2: keep the ``keep`` directions of
    the previous step with the largest 1-D distance, fill the rest with normalised real − fake
    differences).  mode: ``"target"`` or ``"cotangent"`` (what ReRun reads).
    """

    n_directions: int
    directions: str = "gaussian"
    keep: int = 0
    mode: str = "target"
    pair_samples: int = 4096

    def __post_init__(self) -> None:
        if self.n_directions <= 0:
            raise ValueError(f"n_directions must be positive, got {self.n_directions}")
        if self.directions not in ("gaussian", "algorithm2"):
            raise ValueError(f"directions must be 'gaussian' or 'algorithm2', "
                             f"got {self.directions!r}")
        if not 0 <= self.keep <= self.n_directions:
            raise ValueError(f"keep r={self.keep} must be in [0, k={self.n_directions}]")
        if self.mode not in ("target", "cotangent"):
            raise ValueError(f"mode must be 'target' or 'cotangent', got {self.mode!r}")

    def config(self) -> dict[str, Any]:
        return {"method": "sliced-w2", **self.__dict__}

    # ------------------------------------------------------------------ directions
    def _directions(self, ctx: SolveContext) -> np.ndarray:
        store, path = ctx.store, f"{ctx.prefix}/directions"
        d = ctx.embeddings.shape[1]
        if store.has(path) and store.is_complete(path):
            return store.array(path)[:]
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(
            [ctx.seed, ctx.step, 0x51CED]).generate_state(1)[0]))
        tdtype = torch.float64 if ctx.embeddings.dtype == np.float64 else torch.float32
        if self.directions == "algorithm2" and ctx.previous is not None:
            rng = np.random.default_rng([ctx.seed, ctx.step, 0xA162])
            real = _sample_rows(ctx.real, self.pair_samples, rng)
            fake = _sample_rows(ctx.embeddings, self.pair_samples, rng)
            omega = sliced.algorithm2_directions(
                torch.as_tensor(store.array(f"{ctx.previous}/directions")[:], dtype=tdtype),
                torch.as_tensor(store.array(f"{ctx.previous}/distances")[:], dtype=tdtype),
                self.keep, torch.as_tensor(real, dtype=tdtype),
                torch.as_tensor(fake, dtype=tdtype), generator=gen)
        else:
            omega = sliced.random_directions(d, self.n_directions, generator=gen, dtype=tdtype)
        omega = omega.numpy().astype(ctx.embeddings.dtype)
        store.require_array(path, omega.shape, omega.shape, omega.dtype)
        store.write_chunk(path, (0, 0), omega)
        return omega

    # ------------------------------------------------------------------ Solve
    def solve(self, ctx: SolveContext) -> dict[str, float]:
        """Project, sort, align quantiles and write targets (and cotangents); see module doc."""
        store, emb, real = ctx.store, ctx.embeddings, ctx.real
        b, d = emb.shape
        n = real.shape[0]
        if real.shape[1] != d:
            raise ValueError(f"real embeddings have width {real.shape[1]}, generated {d}")
        k, dtype = self.n_directions, emb.dtype
        omega = self._directions(ctx)
        proj = _project(store, emb, omega, f"{ctx.prefix}/projections")
        rproj = _project(store, real, omega, f"{ctx.prefix}/real_projections")
        cols = proj.chunks[1]
        tpath = f"{ctx.prefix}/targets"
        store.require_array(tpath, (k, b), (1, cols), dtype)
        dpath = f"{ctx.prefix}/distances"
        store.require_array(dpath, (k,), (1,), np.float64)
        done = store.done(tpath).reshape(k, -1).all(axis=1) & store.done(dpath)
        todo = np.flatnonzero(~done)
        group = _rows_per_pass(b, n, emb.dtype.itemsize, ctx.memory_budget)
        task = ctx.progress.add_task(f"step {ctx.step}: Sort", total=k) if ctx.progress else None
        if task is not None:
            ctx.progress.advance(task, k - todo.size)
        # runs of consecutive unfinished directions, ``group`` at a time (one read, one write)
        runs = np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1) if todo.size else []
        for run in runs:
            for j0 in range(int(run[0]), int(run[-1]) + 1, max(group, 1)):
                j1 = min(int(run[-1]) + 1, j0 + max(group, 1))
                if group:
                    dist = _align_rows(store, proj, rproj, tpath, j0, j1)
                else:
                    dist = np.array([_align_row_dask(store, proj, rproj, tpath, j0,
                                                     ctx.memory_budget)])
                store.write_region(dpath, (slice(j0, j1),), dist)
                if task is not None:
                    ctx.progress.advance(task, j1 - j0)
        if task is not None:
            ctx.progress.remove_task(task)
        distances = store.array(dpath)[:]
        if self.mode == "cotangent":
            _write_cotangents(store, emb, store.array(tpath), omega, f"{ctx.prefix}/cotangents")
        return {"loss": float(distances.mean()), "max_distance": float(distances.max())}

    def rerun_loss(self, ctx: SolveContext, dtype: torch.dtype) -> "SlicedReRunLoss":
        omega = torch.as_tensor(ctx.store.array(f"{ctx.prefix}/directions")[:], dtype=dtype)
        b = ctx.embeddings.shape[0]
        name = "targets" if self.mode == "target" else "cotangents"
        return SlicedReRunLoss(ctx.store.array(f"{ctx.prefix}/{name}"), omega, b, self.mode,
                               dtype)


@dataclass
class SlicedReRunLoss:
    """ReRun loss of sliced W2: ``Σ_i ‖Ωᵀe_i − t_i‖² / (b k)`` (target mode) or ``Σ_i e_i·g_i``
    (cotangent mode); both have gradient ``(2/(b k)) Ω(Ωᵀe_i − t_i)`` in ``e_i``."""

    array: Any
    omega: Tensor
    b: int
    mode: str
    dtype: torch.dtype

    def load(self, lo: int, hi: int) -> dict[str, Tensor]:
        if self.mode == "target":
            return {"t": torch.as_tensor(np.ascontiguousarray(self.array[:, lo:hi].T),
                                         dtype=self.dtype)}
        return {"g": torch.as_tensor(self.array[lo:hi], dtype=self.dtype)}

    def __call__(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor:
        if self.mode == "target":
            k = self.omega.shape[1]
            return ((e @ self.omega - batch["t"]) ** 2).sum() / (self.b * k)
        return (e * batch["g"]).sum()


# --------------------------------------------------------------------------- out-of-core pieces
def _sample_rows(arr: Any, s: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.sort(rng.choice(arr.shape[0], size=min(s, arr.shape[0]), replace=False))
    return arr.get_orthogonal_selection((idx, slice(None)))


def _project(store: Store, emb: Any, omega: np.ndarray, path: str) -> Any:
    """``emb`` [N, d] @ ``omega`` [d, k] → ``path`` [k, N], chunks (1, rows), resumable."""
    N, rows, k = emb.shape[0], emb.chunks[0], omega.shape[1]
    out = store.require_array(path, (k, N), (1, rows), emb.dtype)
    done = store.done(path).reshape(k, -1)
    for c in range(done.shape[1]):
        if done[:, c].all():
            continue
        lo, hi = c * rows, min(N, (c + 1) * rows)
        p = (np.asarray(emb[lo:hi], dtype=np.float64) @ omega.astype(np.float64)).T
        store.write_region(path, (slice(0, k), slice(lo, hi)), p.astype(emb.dtype))
    return out


def _rows_per_pass(b: int, n: int, itemsize: int, budget: int) -> int:
    """Directions aligned together in memory (0: a row does not fit, use Dask)."""
    if not (sort.row_fits(b, itemsize, budget) and sort.row_fits(n, 8, budget)):
        return 0
    g = 1
    while sort.row_fits(2 * g * b, itemsize, budget) and sort.row_fits(2 * g * n, 8, budget):
        g *= 2
    return g


def _align_rows(store: Store, proj: Any, rproj: Any, tpath: str, j0: int, j1: int) -> np.ndarray:
    """In memory: targets of directions ``[j0, j1)`` written to ``tpath``; their W2² [j1−j0]."""
    b = proj.shape[1]
    x, y = np.asarray(proj[j0:j1]), np.sort(np.asarray(rproj[j0:j1], dtype=np.float64), axis=1)
    t = np.empty(x.shape, dtype=store.array(tpath).dtype)
    dist = np.empty(j1 - j0)
    for i in range(j1 - j0):
        t_sorted = sliced.quantile_targets(y[i], b)
        perm = sort.argsort(x[i])
        dist[i] = _w2(np.mean((x[i, perm] - t_sorted) ** 2), np.mean(y[i] ** 2),
                      np.mean(t_sorted ** 2))
        t[i, perm] = t_sorted
    store.write_region(tpath, (slice(j0, j1), slice(0, b)), t)
    return dist


def _align_row_dask(store: Store, proj: Any, rproj: Any, tpath: str, j: int,
                    budget: int) -> float:
    """Out-of-core alignment of one direction through Dask's partitioned sort."""
    targets = store.array(tpath)
    b, n = proj.shape[1], rproj.shape[1]
    part = max(1024, budget // 64)
    x = da.from_zarr(proj)[j]
    xs, perm = sort.argsort_dask(x, partition_size=part)
    y = da.from_zarr(rproj)[j].astype(np.float64)
    if sort.row_fits(n, 8, budget):
        ys = np.sort(y.compute())
        y_sq = float(np.mean(ys ** 2))
        real_slice = ys.__getitem__
    else:  # the sorted real row goes through Dask into the store, and is read back by slices
        ys_d, _ = sort.argsort_dask(y, partition_size=part)
        spath = tpath.rsplit("/", 1)[0] + "/real_sorted"
        ys = store.require_array(spath, (rproj.shape[0], n), (1, rproj.chunks[1]), np.float64)
        da.to_zarr(ys_d.rechunk(rproj.chunks[1])[None, :], ys,
                   region=(slice(j, j + 1), slice(0, n)))
        y_sq = float((da.from_zarr(ys)[j] ** 2).mean().compute())

        def real_slice(sl: slice) -> np.ndarray:
            return ys[j, sl]

    def block_targets(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        r0, r1 = block_info[0]["array-location"][0]
        lo, hi = sliced.real_slice_bounds(n, b, r0, r1)
        return sliced.quantile_targets_range(real_slice(slice(lo, hi)), lo, n, b, r0, r1)

    t_sorted = xs.map_blocks(block_targets, dtype=np.float64)
    t = sort.scatter_dask(perm, t_sorted.astype(targets.dtype), chunks=targets.chunks[1])
    write = da.to_zarr(t[None, :], targets, region=(slice(j, j + 1), slice(0, b)), compute=False)
    _, sq_diff, t_sq = da.compute(write, ((xs - t_sorted) ** 2).mean(), (t_sorted ** 2).mean())
    n_col = targets.cdata_shape[1]
    store.mark_done(tpath, np.arange(j * n_col, (j + 1) * n_col))
    return _w2(sq_diff, y_sq, t_sq)


def _w2(sq_diff: float, y_sq: float, t_sq: float) -> float:
    """W2² of one direction from its quantile targets (:func:`ootrain.sliced.w2_from_targets`):
    ``mean((x_(r) − t_r)²) + mean(y²) − mean(t²)``, the within-interval variance of the real
    quantile function added to the regression residual; clamped at 0 against rounding."""
    return max(0.0, float(sq_diff) + float(y_sq) - float(t_sq))


def _write_cotangents(store: Store, emb: Any, targets: Any, omega: np.ndarray,
                      path: str) -> None:
    """g_i = (2/(b k)) Ω (Ωᵀ e_i − t_i) for every row, chunk by chunk."""
    b, d = emb.shape
    k = omega.shape[1]
    store.require_array(path, (b, d), emb.chunks, emb.dtype)
    done = store.done(path)
    rows = emb.chunks[0]
    om = omega.astype(np.float64)
    for c in np.flatnonzero(~done):
        lo, hi = c * rows, min(b, (c + 1) * rows)
        e = np.asarray(emb[lo:hi], dtype=np.float64)
        t = np.asarray(targets[:, lo:hi], dtype=np.float64).T
        g = (2.0 / (b * k)) * (e @ om - t) @ om.T
        store.write_chunk(path, (int(c), 0), g.astype(emb.dtype))
