"""Sample sort of ``k`` rows as Dask task graphs over the store's chunks.

The rows are ``k`` functions of one stored population of ``n`` samples (for Run-Sort-ReRun,
the projections ``Ωᵀx_i`` on ``k`` directions), produced chunk by chunk: chunk ``c`` covers
samples ``[c·rows, (c+1)·rows)``.  Every row is sorted by ``(value, sample index)`` — ties by
index, as :func:`ootrain.ot.sort.argsort` orders them — in three stages of independent tasks,
each a Dask graph that :class:`~ootrain.engine.compute.Compute` runs on local threads or on a
``dask.distributed`` cluster:

1. **partition**, a task per source chunk: produce the chunk's ``[k, rows]`` values, give each
   value its bucket ``p`` (the number of the row's ``B − 1`` splitters below ``(value,
   index)``, splitters drawn from a random sample of the population), and write the chunk's
   records grouped by ``(p, row)``;
2. **bucket**, a task per bucket ``p``: read bucket ``p``'s segment of every chunk (all rows),
   sort each row's part, and either keep the sorted values (:meth:`SampleSort.sort`) or map
   them, in rank order, to one output value per sample, grouped by destination chunk
   (:meth:`SampleSort.map_ranks`);
3. **gather** (:meth:`SampleSort.map_ranks` only), a task per source chunk: read the chunk's
   segment of every bucket and hand the chunk's outputs, in sample order, to the caller.

Everything a later stage reads lives in the store, under ``<prefix>/``, in plain arrays of
whole chunks written by one task each (so a killed Solve resumes at task granularity and a
worker on another machine reads them by the store's URL)::

    splitters        [k, B−1]  dtype   splitter values per row
    splitter_index   [k, B−1]  int64   their sample indices (the tie-break)
    records          [C, R]    uint8   per chunk: (value, index in chunk) records by (p, row)
    counts           [C, B·k]  int64   records per (p, row) in each chunk
    sorted           [B, S]    dtype   per bucket: its sorted values, row after row (sort)
    mapped           [B, M]    uint8   per bucket: (output, index in chunk) records by
                                       (destination chunk, row) (map_ranks)
    mapped_counts    [B, C·k]  int64   records per (destination chunk, row) of each bucket
    stats            [B, k]    float64 per bucket and row: Σ v² of its values (sort)
    mapped_stats     [B, k·s]  float64 per bucket and row: the statistics ``fn`` returned

Records are ``(value, uint32 position in its chunk)`` pairs (:func:`record_dtype`), stored as
bytes; chunks of the byte arrays are sized near one segment, so a segment read decodes about
what it needs.  Memory per task is bounded by the budget the plan divides among the buckets,
never by ``n``; the number of buckets grows with ``k·n``.

Example
-------
>>> import numpy as np
>>> from ootrain.engine.compute import Compute
>>> from ootrain.engine.samplesort import SampleSort
>>> from ootrain.store import Store
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(2, 1000)).astype(np.float32)       # two rows, 1000 samples
>>> store = Store(None, {"example": 1})
>>> ss = SampleSort(store, "sort", k=2, n=1000, rows=250, dtype=np.float32, budget=2**16)
>>> ss.choose_splitters(lambda idx: x[:, idx], rng)
>>> ss.partition(Compute(workers=1), lambda lo, hi: x[:, lo:hi])
>>> ss.sort(Compute(workers=1))
>>> bool(np.array_equal(ss.sorted_row(1, 0, 1000), np.sort(x[1])))
True
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from ootrain.engine.compute import Compute, StoreArray
from ootrain.ot.sort import sort_with_permutation, sum_squares
from ootrain.store import Store

__all__ = ["SampleSort", "SortedRows", "record_dtype", "MIN_BUCKET", "SAMPLES_PER_BUCKET"]

#: Splitter sample per bucket: bucket sizes then vary by about ±1/8.
SAMPLES_PER_BUCKET = 64
_MAX_BUCKETS = 1 << 15
#: Default least values per row and bucket (see :class:`SampleSort`).
MIN_BUCKET = 1 << 12
#: Bytes a bucket task holds per element (records as read and as written, the row's values,
#: indices, sort keys and outputs), beyond ``4 × itemsize``.
_BUCKET_BYTES = 64


def record_dtype(dtype: Any) -> np.dtype:
    """``(v, i)``: a value and its sample's position in its chunk (uint32)."""
    return np.dtype([("v", np.dtype(dtype)), ("i", "<u4")])


Produce = Callable[[int, int], np.ndarray]
"""``produce(lo, hi)`` → the ``[k, hi − lo]`` values of samples ``[lo, hi)`` (a Dask task
calls it, possibly in another process: it must pickle)."""

RankMap = Callable[[int, int, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``fn(row, r0, xs)`` → ``(out, stats)``: the outputs of the samples of ranks ``r0 … r0+l−1``
of ``row`` (``xs`` [l], their sorted values), and a float64 vector of statistics [s], summed
over buckets by the caller."""


class SampleSort:
    """One sample sort of ``k`` rows of ``n`` values in ``store`` under ``prefix``.

    Args:
        store: the run's store (its URL, when tasks run on a cluster).
        prefix: the group of this sort's arrays.
        k: rows; n: samples per row; rows: samples per source chunk (the last one shorter).
        dtype: the values' dtype.
        budget: bytes one task may hold; the number of buckets ``B`` is planned from it.
            A sort found in the store (its group's ``samplesort`` attribute, written with
            the splitters) keeps its stored ``rows`` and ``B``.
        min_bucket: values per row a bucket holds at least (on average; default
            :data:`MIN_BUCKET`), which bounds the tasks and stored objects (``B·C``
            segments) that a tiny budget would ask for.
    """

    def __init__(self, store: Store, prefix: str, *, k: int, n: int, rows: int, dtype: Any,
                 budget: int, min_bucket: int | None = None) -> None:
        if min(k, n, rows, budget) < 1:
            raise ValueError(f"k, n, rows and budget must be positive, got {k}, {n}, {rows}, "
                             f"{budget}")
        if rows >= 1 << 32:
            raise ValueError(f"chunks of {rows} samples: positions in a chunk are uint32")
        self.store, self.prefix, self.k, self.n, self.rows = store, prefix, k, n, rows
        self.dtype = np.dtype(dtype)
        self.rec = record_dtype(self.dtype)
        self.n_chunks = -(-n // rows)
        per_elem = _BUCKET_BYTES + 4 * self.dtype.itemsize
        self.n_buckets = int(min(_MAX_BUCKETS, max(1, -(-2 * k * n * per_elem // budget)),
                                 max(1, n // max(1, min_bucket or MIN_BUCKET))))
        stored = store.group[prefix].attrs.get("samplesort") if store.has(prefix) else None
        if stored:   # a resumed sort keeps its plan, whatever the budget is now
            self.rows, self.n_buckets = int(stored["rows"]), int(stored["n_buckets"])
            self.n_chunks = -(-n // self.rows)

    # ----------------------------------------------------------------- paths
    def _path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _ref(self, name: str) -> StoreArray:
        return StoreArray(self.store, self._path(name))

    def _done(self, *names: str) -> np.ndarray:
        """Rows (a task's output each) of the 2-D arrays ``names`` complete in all of them."""
        flags = [self.store.done(self._path(n)) for n in names]
        rows = [self.store.array(self._path(n)).shape[0] for n in names]
        return np.logical_and.reduce([f.reshape(r, -1).all(axis=1) for f, r in zip(flags, rows)])

    def _byte_array(self, name: str, n_rows: int, items: int, segments: int,
                    rec: np.dtype) -> int:
        """Create (or reopen) ``[n_rows, items·rec]`` bytes, chunks near one segment; the
        row length in bytes."""
        width = max(1, items) * rec.itemsize
        chunk = rec.itemsize * max(1, -(-max(1, items) // max(1, segments)))
        self.store.require_array(self._path(name), (n_rows, width), (1, min(width, chunk)),
                                 np.uint8)
        return width

    def bytes_needed(self, mapped: bool) -> int:
        """Store bytes this sort writes (records, and the mapped records or sorted values)."""
        kn = self.k * self.n
        return 2 * kn * self.rec.itemsize if mapped else kn * (self.rec.itemsize
                                                               + self.dtype.itemsize)

    # ----------------------------------------------------------------- splitters
    def choose_splitters(self, values_of: Callable[[np.ndarray], np.ndarray],
                         rng: np.random.Generator) -> None:
        """Splitters of every row: the ``B − 1`` quantiles, in ``(value, index)`` order, of
        a uniform random sample of the population (``SAMPLES_PER_BUCKET`` per bucket, drawn
        with ``rng``); ``values_of(index)`` gives the ``[k, s]`` values of the sorted
        sample indices ``index`` [s].  Kept if already stored (a resumed sort keeps its
        buckets)."""
        vpath, ipath = self._path("splitters"), self._path("splitter_index")
        if self.store.has(vpath) and self.store.has(ipath) and \
                self.store.is_complete(vpath) and self.store.is_complete(ipath):
            return   # (one chunk each: not a task's row per row, as ``_done`` reads arrays)
        nb = self.n_buckets
        self.store.group.require_group(self.prefix)
        self.store.update_attrs(self.prefix, {"samplesort": {"rows": self.rows,
                                                             "n_buckets": nb}})
        shape = (self.k, max(1, nb - 1))
        sv = np.zeros(shape, self.dtype)
        si = np.zeros(shape, np.int64)
        if nb > 1:
            index = np.sort(rng.choice(self.n, min(self.n, SAMPLES_PER_BUCKET * nb),
                                       replace=False)).astype(np.int64)
            sample = np.asarray(values_of(index), dtype=self.dtype)
            if sample.shape != (self.k, index.shape[0]):
                raise ValueError(f"values_of gave shape {sample.shape}, expected "
                                 f"[k={self.k}, {index.shape[0]}]")
            _check_finite(sample)
            sample = sample + self.dtype.type(0)   # -0.0 → +0.0: ties compare as equal
            at = (np.arange(1, nb) * index.shape[0]) // nb
            for j in range(self.k):
                order = np.lexsort((index, sample[j]))[at]
                sv[j], si[j] = sample[j, order], index[order]
        for path, value in ((vpath, sv), (ipath, si)):
            self.store.require_array(path, shape, shape, value.dtype)
            self.store.write_region(path, (slice(0, shape[0]), slice(0, shape[1])), value)

    # ----------------------------------------------------------------- stage 1
    def partition(self, compute: Compute, produce: Produce,
                  done: Callable[[int], None] | None = None) -> None:
        """Stage 1: a task per source chunk not yet partitioned (resumable)."""
        width = self._byte_array("records", self.n_chunks, self.k * self.rows, self.n_buckets,
                                 self.rec)
        nbk = self.n_buckets * self.k
        self.store.require_array(self._path("counts"), (self.n_chunks, nbk), (1, nbk),
                                 np.int64)
        todo = np.flatnonzero(~self._done("records", "counts"))
        nb = self.n_buckets
        split = None if nb == 1 else (self.store.array(self._path("splitters"))[:],
                                      self.store.array(self._path("splitter_index"))[:])
        tok = uuid.uuid4().hex
        dsk = {(f"partition-{tok}", int(c)): (
            _partition_task, produce, int(c), self.rows, self.n, split, nb, width,
            self._ref("records"), self._ref("counts")) for c in todo}
        compute.get(dsk, list(dsk), done=done)

    def _counts(self) -> np.ndarray:
        """Records per (chunk, bucket, row), [C, B, k]."""
        return self.store.array(self._path("counts"))[:].reshape(self.n_chunks,
                                                                 self.n_buckets, self.k)

    def _segments(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start [C, B], per_row [C, B, k])``: where bucket ``p``'s segment of chunk ``c``
        starts (in records) and its records per row."""
        per_bucket = counts.sum(axis=2)
        start = np.zeros_like(per_bucket)
        np.cumsum(per_bucket[:, :-1], axis=1, out=start[:, 1:])
        return start, counts

    def rank_offsets(self) -> np.ndarray:
        """``[k, B + 1]``: the first rank of each bucket in each row (after stage 1)."""
        per = self._counts().sum(axis=0).T                  # [k, B]
        out = np.zeros((self.k, self.n_buckets + 1), np.int64)
        np.cumsum(per, axis=1, out=out[:, 1:])
        return out

    def _bucket_args(self, p: int, start: np.ndarray, per_row: np.ndarray) -> tuple[Any, ...]:
        return (self._ref("records"), start[:, p], per_row[:, p, :], self.rows, self.rec)

    # ----------------------------------------------------------------- stage 2, sorted
    def sort(self, compute: Compute, done: Callable[[int], None] | None = None) -> None:
        """Stage 2, sorted values kept: bucket ``p``'s part of each row, sorted, in
        ``sorted[p]`` (row after row); ``stats[p, j]`` = the part's ``Σ v²`` (float64)."""
        counts = self._counts()
        start, per_row = self._segments(counts)
        width = max(1, int(counts.sum(axis=(0, 2)).max()))
        self.store.require_array(self._path("sorted"), (self.n_buckets, width), (1, width),
                                 self.dtype)
        self.store.require_array(self._path("stats"), (self.n_buckets, self.k), (1, self.k),
                                 np.float64)
        todo = np.flatnonzero(~self._done("sorted", "stats"))
        tok = uuid.uuid4().hex
        dsk = {(f"sort-bucket-{tok}", int(p)): (
            _sort_task, self._bucket_args(int(p), start, per_row), int(p), width,
            self._ref("sorted"), self._ref("stats")) for p in todo}
        compute.get(dsk, list(dsk), done=done)

    def stats(self) -> np.ndarray:
        """``Σ v²`` of each sorted row, [k] (float64; after :meth:`sort`)."""
        return self.store.array(self._path("stats"))[:].sum(axis=0)

    def mapped_stats(self, s: int) -> np.ndarray:
        """The ``s`` statistics of :meth:`map_ranks` summed over the buckets, [k, s]."""
        return self.store.array(self._path("mapped_stats"))[:].reshape(
            self.n_buckets, self.k, s).sum(axis=0)

    def sorted_rows(self) -> "SortedRows":
        """A picklable reader of the sorted rows (after :meth:`sort`)."""
        counts = self._counts().sum(axis=0)                  # [B, k]
        within = np.zeros_like(counts)
        np.cumsum(counts[:, :-1], axis=1, out=within[:, 1:])
        return SortedRows(self._ref("sorted"), self.rank_offsets(), within)

    def sorted_row(self, row: int, lo: int, hi: int) -> np.ndarray:
        """Ranks ``[lo, hi)`` of the sorted ``row``."""
        return self.sorted_rows().read(row, lo, hi)

    # ----------------------------------------------------------------- stages 2-3, mapped
    def map_ranks(self, compute: Compute, fn: RankMap, s: int,
                  consume: Callable[[int, int, np.ndarray], Any], out_dtype: Any,
                  done: Callable[[int], None] | None = None,
                  gathered: np.ndarray | None = None) -> None:
        """Stages 2 and 3: ``fn`` maps each bucket's sorted part of each row, in rank order,
        to one output per sample (see :data:`RankMap`); the outputs are put back in sample
        order and ``consume(lo, hi, out)`` receives each chunk's ``[k, hi − lo]`` outputs (a
        gather task calls it: it must pickle).  The ``s`` statistics per row of each bucket
        are summed by :meth:`mapped_stats`.  ``gathered`` [C]: chunks already consumed
        (skipped; resumable)."""
        out_rec = record_dtype(out_dtype)
        counts = self._counts()
        start, per_row = self._segments(counts)
        width = self._byte_array("mapped", self.n_buckets,
                                 int(counts.sum(axis=(0, 2)).max()), self.n_chunks, out_rec)
        nck = self.n_chunks * self.k
        self.store.require_array(self._path("mapped_counts"), (self.n_buckets, nck),
                                 (1, nck), np.int64)
        self.store.require_array(self._path("mapped_stats"), (self.n_buckets, self.k * s),
                                 (1, self.k * s), np.float64)
        gathered = np.zeros(self.n_chunks, bool) if gathered is None else gathered
        if gathered.all():
            return
        ranks = self.rank_offsets()
        todo = np.flatnonzero(~self._done("mapped", "mapped_counts", "mapped_stats"))
        tok = uuid.uuid4().hex
        dsk: dict[Any, Any] = {(f"map-bucket-{tok}", int(p)): (
            _map_task, self._bucket_args(int(p), start, per_row), ranks[:, p], fn, s,
            self.n_chunks, int(p), width, self._ref("mapped"), self._ref("mapped_counts"),
            self._ref("mapped_stats")) for p in todo}
        compute.get(dsk, list(dsk), done=done)
        mc = self.store.array(self._path("mapped_counts"))[:].reshape(
            self.n_buckets, self.n_chunks, self.k)
        mstart = np.zeros((self.n_buckets, self.n_chunks), np.int64)
        np.cumsum(mc.sum(axis=2)[:, :-1], axis=1, out=mstart[:, 1:])
        tok = uuid.uuid4().hex
        dsk = {(f"gather-{tok}", int(c)): (
            _gather_task, self._ref("mapped"), mstart[:, c], mc[:, c, :], out_rec,
            int(c) * self.rows, min(self.n, (int(c) + 1) * self.rows), consume)
            for c in np.flatnonzero(~gathered)}
        compute.get(dsk, list(dsk), done=done)

    def delete(self) -> None:
        """Delete this sort's arrays (after their results are stored)."""
        if self.store.has(self.prefix):
            self.store.delete_arrays(self.prefix)


class SortedRows:
    """Ranks of the sorted rows of a :class:`SampleSort`, read from its ``sorted`` array.

    ``ranks`` [k, B + 1]: first rank of each bucket per row; ``within`` [B, k]: where each
    row's part starts in a bucket's row of ``sorted``.  Whole bucket rows (every row's part)
    are read and the last ``keep`` kept, so the ranks that neighbouring reads need come
    from one read (safe for the threads of one process)."""

    def __init__(self, ref: StoreArray, ranks: np.ndarray, within: np.ndarray,
                 keep: int = 8) -> None:
        self.ref, self.ranks, self.within, self.keep = ref, ranks, within, keep
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"ref": self.ref, "ranks": self.ranks, "within": self.within, "keep": self.keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def _bucket(self, p: int) -> np.ndarray:
        with self._lock:
            got = self._cache.get(p)
        if got is None:
            got = np.asarray(self.ref.array()[p])
            with self._lock:
                self._cache[p] = got
                while len(self._cache) > self.keep:
                    self._cache.pop(next(iter(self._cache)))
        return got

    def read(self, row: int, lo: int, hi: int) -> np.ndarray:
        """Sorted values of ranks ``[lo, hi)`` of ``row``."""
        r = self.ranks[row]
        parts = []
        p = max(0, int(np.searchsorted(r, lo, side="right")) - 1)
        while lo < hi:
            while r[p + 1] <= lo:
                p += 1
            take = min(hi, int(r[p + 1])) - lo
            a = int(self.within[p, row]) + lo - int(r[p])
            parts.append(self._bucket(p)[a:a + take])
            lo += take
        return np.concatenate(parts) if parts else np.empty(0, self.ref.array().dtype)


# --------------------------------------------------------------------------- kernels
@njit(cache=True, nogil=True)
def _bucket_keys(values: np.ndarray, lo: int, split_v: np.ndarray, split_i: np.ndarray,
                 out: np.ndarray) -> None:
    """``out[j, i] = p·k + j`` with ``p`` the number of row ``j``'s splitters below
    ``(values[j, i], lo + i)`` in (value, index) order (binary search)."""
    k, m = values.shape
    s = split_v.shape[1]
    for j in range(k):
        for i in range(m):
            v = values[j, i]
            g = lo + i
            a, b = 0, s
            while a < b:
                h = (a + b) >> 1
                sv = split_v[j, h]
                if sv < v or (sv == v and split_i[j, h] < g):
                    a = h + 1
                else:
                    b = h
            out[j, i] = a * k + j


@njit(cache=True, nogil=True)
def _counting_order(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """The stable order of ``keys`` [n] (values in ``[0, n_keys)``) and each key's count."""
    counts = np.zeros(n_keys, np.int64)
    for i in range(keys.shape[0]):
        counts[keys[i]] += 1
    start = np.empty(n_keys, np.int64)
    acc = 0
    for q in range(n_keys):
        start[q] = acc
        acc += counts[q]
    order = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        q = keys[i]
        order[start[q]] = i
        start[q] += 1
    return order, counts


def _check_finite(v: np.ndarray) -> None:
    if not np.isfinite(v).all():
        raise ValueError("cannot sort: the values contain NaN or Inf")


def _write_row(ref: StoreArray, row: int, data: np.ndarray, width: int) -> None:
    """Write ``data`` (bytes or values) as row ``row`` of ``ref``, zero-padded to ``width``."""
    out = np.zeros(width, data.dtype)
    out[:data.shape[0]] = data
    ref.write_region((slice(row, row + 1), slice(0, width)), out[None])


# --------------------------------------------------------------------------- tasks
def _partition_task(produce: Produce, c: int, rows: int, n: int,
                    split: tuple[np.ndarray, np.ndarray] | None, nb: int, width: int,
                    records: StoreArray, counts_ref: StoreArray) -> None:
    lo, hi = c * rows, min(n, (c + 1) * rows)
    values = np.asarray(produce(lo, hi))
    k, m = values.shape
    if m != hi - lo:
        raise ValueError(f"produce({lo}, {hi}) gave {m} columns, expected {hi - lo}")
    _check_finite(values)
    values = values + values.dtype.type(0)     # -0.0 → +0.0, as the splitters
    keys = np.empty((k, m), np.int64)
    if split is None:
        keys[:] = np.arange(k)[:, None]
    else:
        _bucket_keys(values, lo, split[0], split[1], keys)
    order, counts = _counting_order(keys.ravel(), nb * k)
    rec = np.empty(k * m, record_dtype(values.dtype))
    rec["v"] = values.ravel()[order]
    rec["i"] = order % m
    _write_row(records, c, rec.view(np.uint8), width)
    counts_ref.write_region((slice(c, c + 1), slice(0, nb * k)), counts[None])


def _read_segments(ref: StoreArray, start: np.ndarray, length: np.ndarray, size: int
                   ) -> dict[int, np.ndarray]:
    """Segment ``[start[r], start[r] + length[r])`` (in records of ``size`` bytes) of each
    row ``r`` with a non-empty one, as bytes, by row.  Rows whose segments sit at similar
    places are read together, one rectangular read over their rows and common column span,
    as long as that reads at most a few times their segments (a read has a fixed cost of
    several store round trips; zarr's orthogonal selection by a row list is ~10× slower per
    byte than a slice)."""
    arr = ref.array()
    rows = np.flatnonzero(length)
    lo_b, hi_b = start * size, (start + length) * size
    slack = arr.chunks[1]
    out: dict[int, np.ndarray] = {}
    group: list[int] = []
    box = [0, 0, 0, 0, 0]   # first row, last row, first byte, end byte, bytes wanted

    def flush() -> None:
        r0, r1, lo, hi, _ = box
        block = np.asarray(arr[r0:r1 + 1, lo:hi])
        for r in group:
            out[r] = block[r - r0, lo_b[r] - lo:hi_b[r] - lo]

    for r in rows[np.argsort(lo_b[rows], kind="stable")]:
        r = int(r)
        lo, hi = int(lo_b[r]), int(hi_b[r])
        if group:
            grown = [min(box[0], r), max(box[1], r), box[2], max(box[3], hi),
                     box[4] + hi - lo]
            n_rows = grown[1] - grown[0] + 1
            if n_rows * (grown[3] - grown[2]) <= 4 * grown[4] + n_rows * slack:
                box = grown
                group.append(r)
                continue
            flush()
        box, group = [r, r, lo, hi, hi - lo], [r]
    if group:
        flush()
    return dict(sorted(out.items()))


def _read_bucket(records: StoreArray, start: np.ndarray, per_row: np.ndarray, rows: int,
                 rec: np.dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bucket ``p``'s part of each row: ``(values, sample indices)``, in index order."""
    k = per_row.shape[1]
    vals: list[list[np.ndarray]] = [[] for _ in range(k)]
    idx: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c, raw in _read_segments(records, start, per_row.sum(axis=1), rec.itemsize).items():
        got = raw.view(rec)
        pos = 0
        for j in range(k):
            m = int(per_row[c, j])
            if m:
                vals[j].append(got["v"][pos:pos + m])
                idx[j].append(got["i"][pos:pos + m].astype(np.int64) + c * rows)
                pos += m
    return [(np.concatenate(v) if v else np.empty(0, rec["v"]),
             np.concatenate(i) if i else np.empty(0, np.int64)) for v, i in zip(vals, idx)]


def _sort_task(bucket: tuple[Any, ...], p: int, width: int, out: StoreArray,
               stats: StoreArray) -> None:
    parts = _read_bucket(*bucket)
    values = np.concatenate([np.sort(v) for v, _ in parts])
    sq = np.array([sum_squares(np.asarray(v)) for v, _ in parts])
    _write_row(out, p, values, width)
    stats.write_region((slice(p, p + 1), slice(0, sq.shape[0])), sq[None])


def _map_task(bucket: tuple[Any, ...], r0: np.ndarray, fn: RankMap, s: int, n_chunks: int,
              p: int, width: int, out: StoreArray, out_counts: StoreArray,
              stats: StoreArray) -> None:
    rows = bucket[3]
    parts = _read_bucket(*bucket)
    k = len(parts)
    outs, keys, local, st = [], [], [], np.zeros((k, s))
    for j, (v, idx) in enumerate(parts):
        xs, perm = sort_with_permutation(v)
        y, st[j] = fn(j, int(r0[j]), xs)
        gidx = idx[perm]
        outs.append(np.asarray(y))
        keys.append((gidx // rows) * k + j)
        local.append(gidx % rows)
    order, counts = _counting_order(np.concatenate(keys), n_chunks * k)
    y = np.concatenate(outs)
    rec = np.empty(y.shape[0], record_dtype(y.dtype))
    rec["v"] = y[order]
    rec["i"] = np.concatenate(local)[order]
    _write_row(out, p, rec.view(np.uint8), width)
    out_counts.write_region((slice(p, p + 1), slice(0, n_chunks * k)), counts[None])
    stats.write_region((slice(p, p + 1), slice(0, k * s)), st.reshape(1, -1))


def _gather_task(mapped: StoreArray, start: np.ndarray, per_row: np.ndarray, rec: np.dtype,
                 lo: int, hi: int, consume: Callable[[int, int, np.ndarray], Any]) -> None:
    k = per_row.shape[1]
    out = np.empty((k, hi - lo), rec["v"])
    filled = np.zeros((k, hi - lo), bool)
    for p, raw in _read_segments(mapped, start, per_row.sum(axis=1), rec.itemsize).items():
        got = raw.view(rec)
        pos = 0
        for j in range(k):
            m = int(per_row[p, j])
            seg = got[pos:pos + m]
            out[j, seg["i"]] = seg["v"]
            filled[j, seg["i"]] = True
            pos += m
    if not filled.all():
        raise RuntimeError(f"samples [{lo}, {hi}): {int((~filled).sum())} outputs missing "
                           "after the sample sort (its stored buckets are inconsistent)")
    consume(lo, hi, out)
