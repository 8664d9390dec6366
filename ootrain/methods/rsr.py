"""The Sort step of Run-Sort-ReRun (Lezama et al., ICML 2021): out-of-core sliced W2.

Given the stored generated embeddings ``X`` [b, d] and real embeddings ``Y`` [n, d], and ``k``
unit directions ``Ω`` [d, k], the loss is

    L = (1/k) Σ_j W2²(Xω_j, Yω_j),

the mean over directions of the exact 1-D squared W2 between the projected empirical measures.
With monotone coupling, the generated sample of rank ``r`` in direction ``j`` has the exact target
``t_rj = b ∫_{r/b}^{(r+1)/b} F_{Yω_j}^{-1}(u) du`` (:func:`ootrain.ot.sliced.quantile_targets`), and

    ∂L/∂e_i = (2 / (b k)) Ω (Ωᵀ e_i − t_i).

Solve writes, under the step's group (all plain zarr arrays):

- ``directions`` [d, k]; ``distances`` [k] (per-direction W2², for Algorithm 2 next step);
- ``targets`` [k, b], chunks (g, rows) (target mode: ReRun minimises Σ_i ‖Ωᵀe_i − t_i‖² / (b k));
- ``cotangents`` [b, d] (cotangent mode: ReRun back-propagates ``e_i · g_i``);
- out of core only: ``projections`` [k, b] and ``real_projections`` [k, n] (chunks (1, rows)).

:func:`plan_pass` decides from the memory budget.  When whole rows fit, Solve aligns ``g``
directions per pass in memory: it projects both populations chunk by chunk (nothing but the
targets is written), sorts (:func:`ootrain.ot.sort.argsort`), and overwrites each generated row in
place with its targets.  Otherwise the projections are stored and each direction goes through
the external sample sort (:func:`ootrain.ot.sort.external_argsort`, spill files in ``$TMPDIR``):
targets are computed bucket by bucket in rank order and put back in sample order by
:class:`ootrain.ot.sort.ExternalScatter`.  Peak memory is set by the budget, not by ``b`` or ``n``.
The targets are written through the store's manifest, so a killed Solve resumes per pass (per
direction out of core).
"""

from __future__ import annotations

import errno
import operator
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import torch
from numba import njit
from torch import Tensor, nn

from ootrain.ot import sliced

from ootrain.ot import sort
from ootrain.engine.compute import Compute, StoreArray
from ootrain.engine.core import GeneratorMethod, Sampler, SolveContext
from ootrain.store import DiskFullError, Store

__all__ = ["RSR", "SlicedSolver", "SlicedReRunLoss", "plan_pass"]


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
        tpath, dpath = f"{ctx.prefix}/targets", f"{ctx.prefix}/distances"
        group = plan_pass(b, n, k, dtype.itemsize, emb.chunks[0] * d * dtype.itemsize,
                          ctx.memory_budget)
        if store.has(tpath):
            # resuming: the targets' layout fixes a pass of several directions; one direction
            # per chunk is the out-of-core layout too, which the budget decides again
            stored = store.array(tpath).chunks[0]
            group = stored if stored > 1 or group else 0
        if not store.has(tpath):
            isz, rows = dtype.itemsize, emb.chunks[0]
            outs = store.array_bytes((k, b), (max(group, 1), rows), isz) + (
                store.array_bytes((b, d), (rows, d), isz) if self.mode == "cotangent" else 0) + (
                0 if group else store.array_bytes((k, b + n), (1, rows), isz))
            store.check_space(outs, f"step {ctx.step}: Solve")
            if not group:  # spill files: the sort's runs and the scatter's runs of one row
                _check_scratch(2 * b * (8 + dtype.itemsize) + n * dtype.itemsize)
        store.require_array(tpath, (k, b), (max(group, 1), emb.chunks[0]), dtype)
        store.require_array(dpath, (k,), (1,), np.float64)
        done = np.repeat(store.done(tpath).reshape(-(-k // max(group, 1)), -1).all(axis=1),
                         max(group, 1))[:k] & store.done(dpath)
        task = ctx.progress.add_task(f"step {ctx.step}: Sort", total=k) if ctx.progress else None
        if task is not None:
            ctx.progress.advance(task, int(done.sum()))
        compute = ctx.compute
        compute.check_store(store)
        emb_ref, real_ref = ctx.ref(emb), ctx.ref(real)
        if group:  # whole rows in memory, ``group`` directions per pass
            for j0 in range(0, k, group):
                j1 = min(k, j0 + group)
                if done[j0:j1].all():
                    continue
                dist = _align_in_memory(compute, emb_ref, real_ref, omega[:, j0:j1],
                                        ctx.ref(tpath), j0, ctx.memory_budget)
                store.write_region(dpath, (slice(j0, j1),), dist)
                if task is not None:
                    ctx.progress.advance(task, j1 - j0)
        else:  # rows out of core: stored projections, external sort per direction
            ppath, rpath = f"{ctx.prefix}/projections", f"{ctx.prefix}/real_projections"
            todo = [int(j) for j in np.flatnonzero(~done)]
            projected = _project(store, emb_ref, omega, ppath) + \
                _project(store, real_ref, omega, rpath)
            # concurrent directions share the budget on the local scheduler; a cluster's
            # workers each have their own
            budget = ctx.memory_budget if compute.distributed else \
                max(1, ctx.memory_budget // min(compute.workers, max(1, len(todo))))
            tasks = [dask.delayed(_align_external)(ctx.ref(ppath), ctx.ref(rpath),
                                                    ctx.ref(tpath), j, budget,
                                                    ctx.seed + ctx.step, projected)
                     for j in todo]

            def direction_done(i: int) -> None:
                if task is not None:
                    ctx.progress.advance(task, 1)

            for j, dist in zip(todo, compute.run(tasks, done=direction_done)):
                store.write_region(dpath, (slice(j, j + 1),), np.array([dist]))
        if task is not None:
            ctx.progress.remove_task(task)
        distances = store.array(dpath)[:]
        if self.mode == "cotangent":
            _write_cotangents(store, emb, store.array(tpath), omega, f"{ctx.prefix}/cotangents")
        return {"loss": float(distances.mean()), "max_distance": float(distances.max())}

    def rerun_loss(self, ctx: SolveContext, population: str, dtype: torch.dtype
                   ) -> "SlicedReRunLoss":
        omega = torch.as_tensor(ctx.store.array(f"{ctx.prefix}/directions")[:], dtype=dtype)
        b = ctx.embeddings.shape[0]
        name = "targets" if self.mode == "target" else "cotangents"
        return SlicedReRunLoss(ctx.store.array(f"{ctx.prefix}/{name}"), omega, b, self.mode,
                               dtype)


class SlicedReRunLoss:
    """ReRun loss of sliced W2: ``Σ_i ‖Ωᵀe_i − t_i‖² / (b k)`` (target mode) or ``Σ_i e_i·g_i``
    (cotangent mode); both have gradient ``(2/(b k)) Ω(Ωᵀe_i − t_i)`` in ``e_i``.

    ``load`` reads whole stored chunk columns once and serves the micro-batches inside them
    from that block (a zarr chunk is decoded whole, so reading it per micro-batch would decode
    it ``rows / m`` times)."""

    def __init__(self, array: Any, omega: Tensor, b: int, mode: str, dtype: torch.dtype) -> None:
        self.array, self.omega, self.b, self.mode, self.dtype = array, omega, b, mode, dtype
        self._axis = 1 if mode == "target" else 0
        self._cols = array.chunks[self._axis]
        self._block: tuple[int, int, np.ndarray] | None = None

    def _rows(self, lo: int, hi: int) -> np.ndarray:
        blk = self._block
        if blk is None or not (blk[0] <= lo and hi <= blk[1]):
            c0 = lo - lo % self._cols
            c1 = min(self.array.shape[self._axis], -(-hi // self._cols) * self._cols)
            data = self.array[:, c0:c1].T if self._axis == 1 else self.array[c0:c1]
            blk = self._block = (c0, c1, np.ascontiguousarray(data))
        return blk[2][lo - blk[0]:hi - blk[0]]

    def load(self, lo: int, hi: int) -> dict[str, Tensor]:
        key = "t" if self.mode == "target" else "g"
        return {key: torch.as_tensor(self._rows(lo, hi), dtype=self.dtype)}

    def __call__(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor:
        if self.mode == "target":
            k = self.omega.shape[1]
            return ((e @ self.omega - batch["t"]) ** 2).sum() / (self.b * k)
        return (e * batch["g"]).sum()


# --------------------------------------------------------------------------- out-of-core pieces
def _sample_rows(arr: Any, s: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.sort(rng.choice(arr.shape[0], size=min(s, arr.shape[0]), replace=False))
    return arr.get_orthogonal_selection((idx, slice(None)))


def _project(store: Store, src: StoreArray, omega: np.ndarray, path: str) -> list[Any]:
    """Tasks writing ``src`` [N, d] @ ``omega`` [d, k] → ``path`` [k, N], chunks (1, rows), one
    task per stored chunk of ``src`` not yet projected (resumable)."""
    emb = src.array()
    N, rows, k = emb.shape[0], emb.chunks[0], omega.shape[1]
    store.require_array(path, (k, N), (1, rows), emb.dtype)
    done = store.done(path).reshape(k, -1)
    om = omega.astype(emb.dtype)
    out = StoreArray(store, path)
    return [dask.delayed(_project_chunk)(src, out, c * rows, min(N, (c + 1) * rows), om)
            for c in range(done.shape[1]) if not done[:, c].all()]


def _project_chunk(src: StoreArray, out: StoreArray, lo: int, hi: int, om: np.ndarray) -> None:
    out.write_region((slice(0, om.shape[1]), slice(lo, hi)), _project_block(src, lo, hi, om))


def _project_block(src: StoreArray, lo: int, hi: int, om: np.ndarray) -> np.ndarray:
    """``(src[lo:hi] @ om)ᵀ`` [g, hi − lo] in the array's dtype (a contiguous product)."""
    arr = src.array()
    return om.astype(arr.dtype).T @ arr[lo:hi].T


# Bytes per target of the exact quantile-target computation (sliced._merged_pieces: three int64
# piece arrays and a float64 contribution per piece, ≤ 1 + ⌈n/b⌉ pieces per target) plus the
# float64 target and the gathered generated value.
def _target_bytes(b: int, n: int) -> int:
    return 32 * (1 + -(-n // b)) + 16


def _rank_block(b: int, n: int, budget: int) -> int:
    """Ranks whose targets are computed at a time: 1/16 of the budget."""
    return max(1, min(b, budget // (16 * _target_bytes(b, n))))


def plan_pass(b: int, n: int, k: int, itemsize: int, chunk_bytes: int, budget: int) -> int:
    """Directions aligned per in-memory pass under ``budget`` bytes (0: out of core).

    A pass of ``g`` directions holds ``g`` generated rows (overwritten in place by their
    targets), their encoded copy while zarr writes them, and ``g`` real rows (sorted in place):
    ``g (2b + n) itemsize``; one direction's permutation and sorted values
    ``(8 + itemsize) b`` (:func:`ootrain.ot.sort.sort_with_permutation`); the target blocks (1/16
    of the budget); and two stored chunks being read.
    """
    fixed = (8 + itemsize) * b + budget // 16 + 2 * chunk_bytes
    per_direction = (2 * b + n) * itemsize
    return int(max(0, min(k, (budget - fixed) // per_direction))) if budget > fixed else 0


def _align_in_memory(compute: Compute, emb: StoreArray, real: StoreArray, omega: np.ndarray,
                     targets: StoreArray, j0: int, budget: int) -> np.ndarray:
    """Targets of directions ``j0 … j0+g−1`` (``omega`` [d, g]) with whole rows in memory,
    written to ``targets``; returns their W2² [g].

    One task graph: a projection task per stored chunk of each population ([g, rows]
    blocks), an alignment task per direction (its row gathered from the blocks: sort, quantile
    targets, the targets in sample order), and a write task per chunk of the targets (its
    piece of every direction)."""
    e, r = emb.array(), real.array()
    (b, rows), (n, rrows) = (e.shape[0], e.chunks[0]), (r.shape[0], r.chunks[0])
    g, tcols = omega.shape[1], targets.array().chunks[1]
    om = omega.astype(e.dtype)
    r_step = _rank_block(b, n, budget)
    tok = uuid.uuid4().hex   # keys unique to this pass (a cluster keeps results by key)
    xs, ys, ts = range(0, b, rows), range(0, n, rrows), range(0, b, tcols)
    dsk: dict[Any, Any] = {}
    for name, src, starts, size, step in (("x", emb, xs, b, rows), ("y", real, ys, n, rrows)):
        for c, lo in enumerate(starts):
            dsk[(f"project-{name}-{tok}", c)] = (_project_block, src, lo, min(size, lo + step),
                                                  om)
            for i in range(g):   # row i of the block (a view; alone sent to another worker)
                dsk[(f"row-{name}-{tok}", i, c)] = (operator.getitem,
                                                    (f"project-{name}-{tok}", c), i)
    for i in range(g):
        dsk[(f"align-{tok}", i)] = (_align_row,
                                    [(f"row-x-{tok}", i, c) for c in range(len(xs))],
                                    [(f"row-y-{tok}", i, c) for c in range(len(ys))],
                                    b, n, r_step)
        dsk[(f"w2-{tok}", i)] = (operator.getitem, (f"align-{tok}", i), 1)
        for c, lo in enumerate(ts):
            dsk[(f"piece-{tok}", i, c)] = (_piece, (f"align-{tok}", i), lo, lo + tcols)
    for c, lo in enumerate(ts):
        dsk[(f"write-{tok}", c)] = (_write_block, targets,
                                    (slice(j0, j0 + g), slice(lo, min(b, lo + tcols))),
                                    [(f"piece-{tok}", i, c) for i in range(g)])
    keys = [(f"write-{tok}", c) for c in range(len(ts))] + [(f"w2-{tok}", i) for i in range(g)]
    got = compute.get(dsk, keys)
    return np.asarray(got[len(ts):], dtype=np.float64)


def _piece(aligned: tuple[np.ndarray, float], lo: int, hi: int) -> np.ndarray:
    """Targets [lo, hi) of an aligned direction (a view)."""
    return aligned[0][lo:hi]


def _align_row(x_parts: list[np.ndarray], y_parts: list[np.ndarray], b: int, n: int,
               r_step: int) -> tuple[np.ndarray, float]:
    """One direction in memory: the generated row's targets in sample order, and its W2²."""
    y = np.concatenate(y_parts)
    y.sort()
    _check_finite(y, "real projections")
    y_sq = _sum_sq(y, 1 << 16) / n
    x = np.concatenate(x_parts)   # becomes the targets in place
    xs, perm = sort.sort_with_permutation(x)
    sq_diff = t_sq = 0.0
    for r0 in range(0, b, r_step):
        r1 = min(b, r0 + r_step)
        lo, hi = sliced.real_slice_bounds(n, b, r0, r1)
        t = sliced.quantile_targets_range(y[lo:hi], lo, n, b, r0, r1, check=False)
        sq, tt = _place_targets(xs[r0:r1], t, perm[r0:r1], x)
        sq_diff += sq
        t_sq += tt
    return x, _w2(sq_diff / b, y_sq, t_sq / b)


@njit(cache=True, nogil=True)
def _place_targets(xs: np.ndarray, t: np.ndarray, perm: np.ndarray, out: np.ndarray
                   ) -> tuple[float, float]:
    """``out[perm[i]] = t[i]`` for a block of ranks, with ``Σ (xs_i − t_i)²`` and ``Σ t_i²``
    (float64) in the same pass: the sorted values ``xs`` [l], float64 targets ``t`` [l], their
    samples' positions ``perm`` [l] in the row ``out``."""
    sq = 0.0
    tt = 0.0
    for i in range(t.shape[0]):
        d = xs[i] - t[i]
        sq += d * d
        tt += t[i] * t[i]
        out[perm[i]] = t[i]
    return sq, tt


def _write_block(out: StoreArray, region: tuple[slice, ...], rows: list[np.ndarray]) -> None:
    out.write_region(region, np.stack(rows))


def _sum_sq(v: np.ndarray, step: int) -> float:
    """``Σ v²`` accumulated in float64, ``step`` elements converted at a time."""
    return sum(float(np.dot(blk, blk)) for blk in
               (v[lo:lo + step].astype(np.float64) for lo in range(0, v.shape[0], step)))


def _check_scratch(needed: int) -> None:
    """Refuse an out-of-core Solve whose spill files cannot fit in ``$TMPDIR``."""
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free
    if needed > free:
        raise DiskFullError(errno.ENOSPC, f"the out-of-core sort needs {needed / 2**30:.2f} GiB "
                            f"of spill files in {tmp} ($TMPDIR) but only {free / 2**30:.2f} GiB "
                            "are free; set TMPDIR to a larger disk or raise --memory-budget, "
                            "then rerun the same command to resume")


def _check_finite(v: np.ndarray, what: str) -> None:
    if v.size and not (np.isfinite(v[0]) and np.isfinite(v[-1])):  # sorted: ends suffice
        raise ValueError(f"{what} contain NaN or Inf")


def _align_external(proj_ref: StoreArray, rproj_ref: StoreArray, targets_ref: StoreArray,
                    j: int, budget: int, seed: int, after: Any = None) -> float:
    """Targets of direction ``j`` when its rows do not fit: the generated row through
    :func:`ootrain.ot.sort.external_argsort`, targets computed bucket by bucket in rank order and
    put back in sample order through :class:`ootrain.ot.sort.ExternalScatter`; the real row sorted
    in memory if it fits a quarter of the budget, else externally into a spill file that is
    then read in rank order.  Spill files go to the system temporary directory (``$TMPDIR``)
    of the process running it.  A Dask task; ``after``: the tasks it waits for."""
    proj, rproj, targets = proj_ref.array(), rproj_ref.array(), targets_ref.array()
    b, n = proj.shape[1], rproj.shape[1]
    dtype = proj.dtype
    per_elem = sort.SORT_BYTES_PER_ELEMENT + 2 * dtype.itemsize + _target_bytes(b, n)
    max_bucket, buffer = sort.plan_external(budget, per_elem)
    cols = targets.chunks[1]
    block = cols * max(1, buffer // (4 * cols * (8 + dtype.itemsize)))
    with tempfile.TemporaryDirectory(prefix="ootrain-solve-") as tmp:
        real_blocks = sort.row_blocks(lambda lo, hi: rproj[j, lo:hi], n, rproj.chunks[1])
        step = rproj.chunks[1]
        if n * (8 + dtype.itemsize) <= budget // 4:
            ys = np.sort(np.concatenate([v for v, _ in real_blocks()]))
            _check_finite(ys, "real projections")
            y_sq = _sum_sq(ys, step) / n

            def real_slice(lo: int, hi: int) -> np.ndarray:
                return ys[lo:hi]
        else:  # the sorted row goes to a spill file; Σ y² is taken as it is written
            path = os.path.join(tmp, "real_sorted")
            rmax, rbuf = sort.plan_external(budget // 2, sort.SORT_BYTES_PER_ELEMENT
                                            + 2 * dtype.itemsize)
            y_sq = 0.0
            with open(path, "wb") as f:
                for _, v, _ in sort.external_argsort(real_blocks, n, dtype, rmax, rbuf, tmp,
                                                     seed):
                    _check_finite(v, "real projections")
                    y_sq += _sum_sq(v, step)
                    v.tofile(f)
            y_sq /= n

            def real_slice(lo: int, hi: int) -> np.ndarray:
                return np.fromfile(path, dtype=dtype, count=hi - lo, offset=lo * dtype.itemsize)
        scatter = sort.ExternalScatter(b, block, dtype, buffer, tmp)
        sq_diff = t_sq = 0.0
        gen_blocks = sort.row_blocks(lambda lo, hi: proj[j, lo:hi], b, proj.chunks[1])
        for r0, xs, idx in sort.external_argsort(gen_blocks, b, dtype, max_bucket, buffer, tmp,
                                                 seed):
            r1 = r0 + xs.shape[0]
            lo, hi = sliced.real_slice_bounds(n, b, r0, r1)
            t = sliced.quantile_targets_range(real_slice(lo, hi), lo, n, b, r0, r1,
                                               check=False)
            sq_diff += float(np.sum((xs - t) ** 2))
            t_sq += float(np.dot(t, t))
            scatter.add(idx, t.astype(dtype))
        for lo, hi, out in scatter.blocks():
            targets_ref.write_region((slice(j, j + 1), slice(lo, hi)), out[None])
    return _w2(sq_diff / b, y_sq, t_sq / b)


def _w2(sq_diff: float, y_sq: float, t_sq: float) -> float:
    """W2² of one direction from its quantile targets (:func:`ootrain.ot.sliced.w2_from_targets`):
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


class RSR(GeneratorMethod):
    """Run-Sort-ReRun (Lezama et al.): ``generator`` trained so that ``embedding(G(z))`` matches
    ``embedding(real)`` in sliced W2 over whole populations (:class:`SlicedSolver`).

    Args:
        generator: ``z [m, latent_dim] -> [m, D]``.
        real: real data [n, D] (numpy or zarr array; a zarr array stays on disk).
        optimizer: over the generator's parameters.
        embedding: fixed features (default: identity).
        solver: a :class:`SlicedSolver`, or its keyword arguments (``n_directions``, …).
    """

    def __init__(self, generator: nn.Module, real: Any, optimizer: torch.optim.Optimizer, *,
                 embedding: nn.Module | None = None, solver: SlicedSolver | None = None,
                 latent_sampler: Sampler | None = None, generator_spec: str = "custom",
                 embedding_spec: str = "identity", **solver_kwargs: Any) -> None:
        if solver is None:
            solver = SlicedSolver(**solver_kwargs)
        elif solver_kwargs:
            raise ValueError("pass either solver= or its keyword arguments, not both")
        super().__init__(generator, embedding if embedding is not None else nn.Identity(),
                         solver, real, optimizer, latent_sampler,
                         generator_spec=generator_spec, embedding_spec=embedding_spec)
