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
- out of core only, while Solve runs: ``sort/real/…`` and ``sort/generated/…``, the buckets of
  the sample sorts (:mod:`ootrain.engine.samplesort`), deleted once the targets and the
  distances are stored.

:func:`plan_pass` decides from the memory budget.  When whole rows fit, Solve aligns ``g``
directions per pass in memory: it projects both populations chunk by chunk (nothing but the
targets is written), sorts (:func:`ootrain.ot.sort.argsort`), and overwrites each generated row in
place with its targets.  Otherwise all ``k`` directions go through two sample sorts whose
buckets live in the store (:class:`ootrain.engine.samplesort.SampleSort`, Dask tasks over the
stored chunks): the real rows are sorted, and the generated rows are mapped bucket by bucket,
in rank order, to their quantile targets, which are put back in sample order.  Peak memory is
set by the budget, not by ``b`` or ``n``.  The targets are written through the store's
manifest, so a killed Solve resumes per pass in memory, per task out of core.

Solve overlaps Run (:meth:`SlicedSolver.observe`): while Run streams the generated
population, a background thread projects and sorts the real rows (out of core: runs the real
sample sort), and in memory each generated chunk is projected as Run stores it; Solve is
left with the generated sort, the targets and their writes.  The stored results are those
of a Solve without the overlap.
"""

from __future__ import annotations

import functools
import operator
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numba import njit
from torch import Tensor, nn

from ootrain.ot import sliced

from ootrain.ot import sort
from ootrain.engine.compute import Compute, StoreArray
from ootrain.engine.core import GeneratorMethod, Sampler, SolveContext
from ootrain.engine.samplesort import SampleSort, SortedRows
from ootrain.store import Store

__all__ = ["RSR", "SlicedSolver", "SlicedReRunLoss", "plan_pass"]


@dataclass
class SlicedSolver:
    """Sliced W2 over the whole stored population.

    n_directions: k, directions per step.  directions: ``"gaussian"`` (fresh random unit
    directions each step) or ``"algorithm2"`` (RSR Algorithm 2: keep the ``keep`` directions of
    the previous step with the largest 1-D distance, fill the rest with normalised real − fake
    differences of ``pair_samples`` random pairs, the generated rows drawn from the first
    stored chunk).  mode: ``"target"`` or ``"cotangent"`` (what ReRun reads).
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
            # generated rows are i.i.d.: those of the first stored chunk are a sample like
            # any other, and known as soon as Run has stored it (see :meth:`observe`)
            fake = _sample_rows(ctx.embeddings, self.pair_samples, rng,
                                rows=ctx.embeddings.chunks[0])
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
    def observe(self, ctx: SolveContext) -> "_RunOverlap | None":
        """The work done while Run streams the generated population (an
        :class:`~ootrain.engine.core.RunObserver`): the real side of Solve in a background
        thread, and, in memory, each generated chunk's projections as Run stores it.

        In memory (one pass of all ``k`` directions, a local scheduler) the real rows are
        projected and sorted; out of core the real sample sort (splitters, partition, sorted
        buckets in the store) runs whole.  The directions must be known: at once for
        ``"gaussian"``, after the first generated chunk for ``"algorithm2"``.  None when Solve
        is already under way (its targets exist) or its passes would not keep the rows."""
        _check_widths(ctx)
        b, n, k = ctx.embeddings.shape[0], ctx.real.shape[0], self.n_directions
        if ctx.store.has(f"{ctx.prefix}/targets"):
            return None
        group = _plan(ctx, k)
        if group and (group < k or ctx.compute.distributed):
            return None   # several passes, or rows a cluster would have to receive
        first_chunk = self.directions == "algorithm2" and ctx.previous is not None and not \
            (ctx.store.has(f"{ctx.prefix}/directions")
             and ctx.store.is_complete(f"{ctx.prefix}/directions"))
        return _RunOverlap(self, ctx, in_memory=bool(group), wait_first_chunk=first_chunk,
                           b=b, n=n)

    def solve(self, ctx: SolveContext) -> dict[str, float]:
        """Project, sort, align quantiles and write targets (and cotangents); see module doc."""
        store, emb = ctx.store, ctx.embeddings
        b, d = emb.shape
        _check_widths(ctx)
        k, dtype = self.n_directions, emb.dtype
        observed = ctx.observed if isinstance(ctx.observed, _RunOverlap) and \
            ctx.observed.started else None
        omega = self._directions(ctx)
        tpath, dpath = f"{ctx.prefix}/targets", f"{ctx.prefix}/distances"
        group = _plan(ctx, k)
        if store.has(tpath):
            # resuming: the targets' layout fixes a pass of several directions; one direction
            # per chunk is the out-of-core layout too, which the budget decides again
            stored = store.array(tpath).chunks[0]
            group = stored if stored > 1 or group else 0
        if not store.has(tpath):
            isz, rows = dtype.itemsize, emb.chunks[0]
            outs = store.array_bytes((k, b), (max(group, 1), rows), isz) + (
                store.array_bytes((b, d), (rows, d), isz) if self.mode == "cotangent" else 0) + (
                0 if group else sum(s.bytes_needed(mapped) for s, mapped in
                                    zip(_sample_sorts(ctx, k, ctx.compute.task_budget(ctx.memory_budget)),
                                        (False, True))))
            store.check_space(outs, f"step {ctx.step}: Solve")
        elif observed is not None and observed.in_memory:
            observed = None   # rows projected for a Solve that has begun since
        store.require_array(tpath, (k, b), (max(group, 1), emb.chunks[0]), dtype)
        store.require_array(dpath, (k,), (1,), np.float64)
        done = np.repeat(store.done(tpath).reshape(-(-k // max(group, 1)), -1).all(axis=1),
                         max(group, 1))[:k] & store.done(dpath)
        task = ctx.progress.add_task(f"step {ctx.step}: Sort", total=k) if ctx.progress else None
        if task is not None:
            ctx.progress.advance(task, int(done.sum()))
        compute = ctx.compute
        compute.check_store(store)
        emb_ref, real_ref = ctx.ref(emb), ctx.ref(ctx.real)
        if group and observed is not None and observed.in_memory:   # real rows sorted already
            dist = _align_observed(compute, observed, emb_ref, ctx.ref(tpath),
                                   ctx.memory_budget)
            store.write_region(dpath, (slice(0, k),), dist)
            if task is not None:
                ctx.progress.advance(task, k)
        elif group:  # whole rows in memory, ``group`` directions per pass
            for j0 in range(0, k, group):
                j1 = min(k, j0 + group)
                if done[j0:j1].all():
                    continue
                dist = _align_in_memory(compute, emb_ref, real_ref, omega[:, j0:j1],
                                        ctx.ref(tpath), j0, ctx.memory_budget)
                store.write_region(dpath, (slice(j0, j1),), dist)
                if task is not None:
                    ctx.progress.advance(task, j1 - j0)
        elif not done.all():  # rows out of core: two sample sorts, buckets in the store
            if task is not None:   # out of core the bar counts the sample sorts' tasks
                ctx.progress.remove_task(task)
                task = ctx.progress.add_task(f"step {ctx.step}: Sort (tasks)", total=None)
            dist = _align_sample_sort(ctx, omega, tpath, ctx.compute.task_budget(ctx.memory_budget), task)
            store.write_region(dpath, (slice(0, k),), dist)
        # the sample sorts' buckets go once targets and distances are stored (not before: a
        # Solve resumed after the generated sort's ``mapped_stats`` was deleted would take its
        # distances from an empty one); also those left by a Solve killed while deleting them
        if store.has(f"{ctx.prefix}/sort"):
            store.delete_arrays(f"{ctx.prefix}/sort")
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
            if self.omega.device != e.device:   # once: the directions follow the model
                self.omega = self.omega.to(e.device)
            k = self.omega.shape[1]
            return ((e @ self.omega - batch["t"]) ** 2).sum() / (self.b * k)
        return (e * batch["g"]).sum()


# --------------------------------------------------------------------------- out-of-core pieces
def _sample_rows(arr: Any, s: int, rng: np.random.Generator, rows: int | None = None
                 ) -> np.ndarray:
    """``s`` distinct random rows (at most all) among the first ``rows`` of ``arr``."""
    top = arr.shape[0] if rows is None else min(rows, arr.shape[0])
    idx = np.sort(rng.choice(top, size=min(s, top), replace=False))
    return arr.get_orthogonal_selection((idx, slice(None)))


def _project_block(src: StoreArray, lo: int, hi: int, om: np.ndarray) -> np.ndarray:
    """``(src[lo:hi] @ om)ᵀ`` [g, hi − lo] in the array's dtype (a contiguous product)."""
    return _project(src.array()[lo:hi], om)


def _project(rows: np.ndarray, om: np.ndarray) -> np.ndarray:
    """``(rows @ om)ᵀ`` [g, len(rows)] in the rows' dtype: the one product of Solve's
    projection tasks and of the overlap's Run hook (so both give the same bits)."""
    return om.astype(rows.dtype).T @ rows.T


# Bytes per target of the exact quantile-target computation (sliced._merged_pieces: three int64
# piece arrays and a float64 contribution per piece, ≤ 1 + ⌈n/b⌉ pieces per target) plus the
# float64 target and the gathered generated value.
def _target_bytes(b: int, n: int) -> int:
    return 32 * (1 + -(-n // b)) + 16


def _rank_block(b: int, n: int, budget: int) -> int:
    """Ranks whose targets are computed at a time: 1/16 of the budget."""
    return max(1, min(b, budget // (16 * _target_bytes(b, n))))


def _check_widths(ctx: SolveContext) -> None:
    if ctx.real.shape[1] != ctx.embeddings.shape[1]:
        raise ValueError(f"real embeddings have width {ctx.real.shape[1]}, generated "
                         f"{ctx.embeddings.shape[1]}")


def _plan(ctx: SolveContext, k: int) -> int:
    """:func:`plan_pass` of a step's Solve."""
    emb = ctx.embeddings
    b, d = emb.shape
    return plan_pass(b, ctx.real.shape[0], k, emb.dtype.itemsize,
                     emb.chunks[0] * d * emb.dtype.itemsize, ctx.memory_budget)


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


def _align_observed(compute: Compute, observed: "_RunOverlap", emb: StoreArray,
                    targets: StoreArray, budget: int) -> np.ndarray:
    """:func:`_align_in_memory` of all ``k`` directions after a :class:`_RunOverlap`: the
    real rows come sorted, the generated rows projected but for the chunks Run stored
    unseen (other ranks', a resumed Run's), which are projected here; returns the W2² [k].

    Local scheduler only: tasks share the observer's arrays in this process."""
    x, om = observed.generated, observed.omega.astype(observed.generated.dtype)
    real = observed.real_rows()
    (k, b), n = x.shape, observed.n
    rows, tcols = emb.array().chunks[0], targets.array().chunks[1]
    r_step = _rank_block(b, n, budget)
    tok = uuid.uuid4().hex
    ts = range(0, b, tcols)
    dsk: dict[Any, Any] = {}
    missing = [lo for lo in range(0, b, rows) if lo not in observed.seen]
    for c, lo in enumerate(missing):
        dsk[(f"project-x-{tok}", c)] = (_project_into, x, emb, lo, min(b, lo + rows), om)
    projected = [(f"project-x-{tok}", c) for c in range(len(missing))]
    for i in range(k):
        dsk[(f"align-{tok}", i)] = (_align_sorted_after, projected, x[i], real[i][0],
                                    real[i][1], b, n, r_step)
        dsk[(f"w2-{tok}", i)] = (operator.getitem, (f"align-{tok}", i), 1)
        for c, lo in enumerate(ts):
            dsk[(f"piece-{tok}", i, c)] = (_piece, (f"align-{tok}", i), lo, lo + tcols)
    for c, lo in enumerate(ts):
        dsk[(f"write-{tok}", c)] = (_write_block, targets,
                                    (slice(0, k), slice(lo, min(b, lo + tcols))),
                                    [(f"piece-{tok}", i, c) for i in range(k)])
    keys = [(f"write-{tok}", c) for c in range(len(ts))] + [(f"w2-{tok}", i) for i in range(k)]
    got = compute.get(dsk, keys)
    return np.asarray(got[len(ts):], dtype=np.float64)


def _project_into(out: np.ndarray, src: StoreArray, lo: int, hi: int, om: np.ndarray) -> None:
    out[:, lo:hi] = _project_block(src, lo, hi, om)


def _align_sorted_after(_: list[Any], x: np.ndarray, y: np.ndarray, y_sq: float, b: int,
                        n: int, r_step: int) -> tuple[np.ndarray, float]:
    """:func:`_align_sorted` once the tasks named first (projections into ``x``) are done."""
    return _align_sorted(x, y, y_sq, b, n, r_step)


def _piece(aligned: tuple[np.ndarray, float], lo: int, hi: int) -> np.ndarray:
    """Targets [lo, hi) of an aligned direction (a view)."""
    return aligned[0][lo:hi]


def _align_row(x_parts: list[np.ndarray], y_parts: list[np.ndarray], b: int, n: int,
               r_step: int) -> tuple[np.ndarray, float]:
    """One direction in memory: the generated row's targets in sample order, and its W2²."""
    y, y_sq = _sorted_real(y_parts)
    return _align_sorted(np.concatenate(x_parts), y, y_sq, b, n, r_step)


def _sorted_real(y_parts: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """A direction's real projections sorted, and their mean square."""
    y = np.concatenate(y_parts)
    y.sort()
    _check_finite(y, "real projections")
    return y, sort.sum_squares(y) / y.shape[0]


def _align_sorted(x: np.ndarray, y: np.ndarray, y_sq: float, b: int, n: int, r_step: int
                  ) -> tuple[np.ndarray, float]:
    """The generated row ``x`` [b] of a direction turned, in place, into its quantile targets
    against the sorted real row ``y`` [n] (mean square ``y_sq``); with its W2²."""
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


def _check_finite(v: np.ndarray, what: str) -> None:
    if v.size and not (np.isfinite(v[0]) and np.isfinite(v[-1])):  # sorted: ends suffice
        raise ValueError(f"{what} contain NaN or Inf")


def _sample_sorts(ctx: SolveContext, k: int, budget: int) -> tuple[SampleSort, SampleSort]:
    """The sample sorts of the real and the generated projections of a Solve out of core.

    A partition or gather task covers as many stored chunks as ``budget`` holds at
    ``_BLOCK_BYTES`` per projected value (at least one chunk): the segments that bucket
    tasks read grow with it, and so does what a store read fetches for its fixed cost."""
    isz = ctx.embeddings.dtype.itemsize
    sorts = []
    for name, arr in (("real", ctx.real), ("generated", ctx.embeddings)):
        rows = arr.chunks[0]
        block = rows * max(1, budget // (k * (_BLOCK_BYTES + 2 * isz) * rows))
        sorts.append(SampleSort(ctx.store, f"{ctx.prefix}/sort/{name}", k=k, n=arr.shape[0],
                                rows=min(block, arr.shape[0]), dtype=ctx.embeddings.dtype,
                                budget=budget))
    return sorts[0], sorts[1]


# Bytes per projected value in a partition or gather task, beyond twice its itemsize: bucket
# keys, order, records (twice while written) and positions.
_BLOCK_BYTES = 40


def _align_sample_sort(ctx: SolveContext, omega: np.ndarray, tpath: str, budget: int,
                       task: Any = None) -> np.ndarray:
    """Targets of all directions (``omega`` [d, k]) when rows do not fit in memory, written
    to ``tpath``; their W2² [k].  The sample sorts' arrays stay in the store (the caller
    deletes them once it has stored the W2²).

    Both populations are projected and partitioned into buckets chunk by chunk (splitters from
    a random sample of each), the real buckets sorted, and the generated buckets mapped in
    rank order to their exact quantile targets (:class:`_QuantileTargets`, which reads the
    sorted real ranks it needs), then gathered back in sample order, a chunk of every
    direction's targets per task (:class:`ootrain.engine.samplesort.SampleSort`)."""
    store, compute, k = ctx.store, ctx.compute, omega.shape[1]
    b, n = ctx.embeddings.shape[0], ctx.real.shape[0]
    om = omega.astype(ctx.embeddings.dtype)
    real, gen = _sample_sorts(ctx, k, budget)
    if task is not None:   # ``task``: a progress bar's task, counting finished Dask tasks
        ctx.progress.update(task, total=real.n_chunks + real.n_buckets
                            + 2 * gen.n_chunks + gen.n_buckets)

    def advance(_: int) -> None:
        if task is not None:
            ctx.progress.advance(task, 1)
    _sort_rows(ctx, real, ctx.real, om, _REAL_TAG, compute, advance)
    _sort_rows(ctx, gen, ctx.embeddings, om, _GENERATED_TAG, compute, advance, sort=False)
    y_sq = real.stats() / n
    gathered = store.done(tpath).reshape(k, -1).all(axis=0)
    gen.map_ranks(compute, _QuantileTargets(real.sorted_rows(), n, b, _rank_block(b, n, budget)),
                  2, _TargetWriter(ctx.ref(tpath), k), om.dtype, done=advance,
                  gathered=gathered)
    st = gen.mapped_stats(2)
    return np.array([_w2(st[j, 0] / b, y_sq[j], st[j, 1] / b) for j in range(k)])


# Seed tags of the sample sorts' splitter draws: the real sort started during Run and the one
# Solve resumes must draw the same splitters.
_REAL_TAG, _GENERATED_TAG = 0x7EA1, 0x6E4


def _sort_rows(ctx: SolveContext, ss: SampleSort, arr: Any, om: np.ndarray, tag: int,
               compute: Compute, advance: Any = None, sort: bool = True) -> None:
    """The projections ``arr @ om`` through sample sort ``ss``: splitters, partition, and
    (``sort``) the sorted buckets; tasks already done are skipped."""
    ss.choose_splitters(lambda idx: (arr.get_orthogonal_selection((idx, slice(None))) @ om).T,
                        np.random.default_rng([ctx.seed, ctx.step, tag]))
    ss.partition(compute, _Projection(ctx.ref(arr), om), done=advance)
    if sort:
        ss.sort(compute, done=advance)


class _RunOverlap:
    """:meth:`SlicedSolver.observe`'s :class:`~ootrain.engine.core.RunObserver`.

    Once the directions are known it starts the real side of Solve in a background thread,
    a Dask graph on the synchronous scheduler (one core; Run's threads keep the others; a
    cluster's client when Solve runs on one): in memory the real rows projected and sorted
    (``real_rows()``, kept here), out of core the real sample sort in the store, which
    Solve then finds done.  In memory it also projects each generated chunk Run stores
    into ``generated`` [k, b] (``seen``: the chunks' first rows), with the same product as
    Solve's projection tasks, so the targets are those of a Solve without it."""

    def __init__(self, solver: SlicedSolver, ctx: SolveContext, *, in_memory: bool,
                 wait_first_chunk: bool, b: int, n: int) -> None:
        self.solver, self.ctx, self.in_memory, self.b, self.n = solver, ctx, in_memory, b, n
        self.omega: np.ndarray | None = None
        self.generated: np.ndarray | None = None
        self.seen: set[int] = set()
        self.seconds = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._future: Any = None
        if not wait_first_chunk:
            self._start()

    @property
    def started(self) -> bool:
        return self.omega is not None

    def _start(self) -> None:
        ctx = self.ctx
        self.omega = self.solver._directions(ctx)
        om = self.omega.astype(ctx.embeddings.dtype)
        compute = ctx.compute if ctx.compute.distributed else Compute(workers=1)
        if self.in_memory:
            self.generated = np.empty((om.shape[1], self.b), om.dtype)
            work = functools.partial(_real_rows, compute, ctx.ref(ctx.real), om)
        else:
            real, _ = _sample_sorts(ctx, om.shape[1], ctx.compute.task_budget(ctx.memory_budget))
            work = functools.partial(_sort_rows, ctx, real, ctx.real, om, _REAL_TAG, compute)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ootrain-rsr-overlap")
        self._future = self._pool.submit(_timed, work)

    def chunk(self, population: str, lo: int, rows: np.ndarray) -> None:
        if population != "embeddings":
            return
        if not self.started:
            if lo != 0:
                return
            self._start()
        if self.generated is not None:
            self.generated[:, lo:lo + rows.shape[0]] = _project(rows, self.omega)
            self.seen.add(lo)

    def join(self) -> None:
        if self._future is None:
            return
        try:
            self.seconds, self._result = self._future.result()
        finally:
            self._pool.shutdown()

    def abandon(self) -> None:
        if self._future is not None:
            self._pool.shutdown(wait=True)
            self._future = None

    def real_rows(self) -> list[tuple[np.ndarray, float]]:
        """In memory: each direction's sorted real row [n] and its mean square."""
        return self._result


def _timed(work: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = work()
    return time.perf_counter() - t, out


def _real_rows(compute: Compute, real: StoreArray, om: np.ndarray
               ) -> list[tuple[np.ndarray, float]]:
    """The real rows of all directions ``om`` [d, k], projected chunk by chunk and sorted
    (:func:`_sorted_real`): one Dask graph."""
    arr = real.array()
    n, rows, k = arr.shape[0], arr.chunks[0], om.shape[1]
    tok = uuid.uuid4().hex
    starts = range(0, n, rows)
    dsk: dict[Any, Any] = {}
    for c, lo in enumerate(starts):
        dsk[(f"project-y-{tok}", c)] = (_project_block, real, lo, min(n, lo + rows), om)
        for i in range(k):
            dsk[(f"row-y-{tok}", i, c)] = (operator.getitem, (f"project-y-{tok}", c), i)
    for i in range(k):
        dsk[(f"sorted-{tok}", i)] = (_sorted_real,
                                     [(f"row-y-{tok}", i, c) for c in range(len(starts))])
    return compute.get(dsk, [(f"sorted-{tok}", i) for i in range(k)])


class _Projection:
    """``produce(lo, hi)`` of a sample sort: ``(src[lo:hi] @ om)ᵀ`` [k, hi − lo]."""

    def __init__(self, src: StoreArray, om: np.ndarray) -> None:
        self.src, self.om = src, om

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        return _project_block(self.src, lo, hi, self.om)


class _QuantileTargets:
    """The rank map of RSR: the exact quantile targets of generated ranks ``r0 … r0+l−1`` of
    a direction (from the sorted real ranks they integrate, ``r_step`` ranks at a time), with
    ``(Σ (x_(r) − t_r)², Σ t_r²)``."""

    def __init__(self, real: SortedRows, n: int, b: int, r_step: int) -> None:
        self.real, self.n, self.b, self.r_step = real, n, b, r_step

    def __call__(self, j: int, r0: int, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, b = self.n, self.b
        out = np.empty_like(xs)
        sq = tt = 0.0
        for a in range(0, xs.shape[0], self.r_step):
            e = min(xs.shape[0], a + self.r_step)
            lo, hi = sliced.real_slice_bounds(n, b, r0 + a, r0 + e)
            y = self.real.read(j, lo, hi)
            t = sliced.quantile_targets_range(y, lo, n, b, r0 + a, r0 + e, check=False)
            diff = xs[a:e] - t
            sq += float(np.dot(diff, diff))
            tt += float(np.dot(t, t))
            out[a:e] = t
        return out, np.array([sq, tt])


class _TargetWriter:
    """``consume(lo, hi, t)`` of the generated sample sort: targets [k, hi − lo] of a chunk."""

    def __init__(self, targets: StoreArray, k: int) -> None:
        self.targets, self.k = targets, k

    def __call__(self, lo: int, hi: int, t: np.ndarray) -> None:
        self.targets.write_region((slice(0, self.k), slice(lo, hi)), t)


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
