"""Sorting rows that fit in memory, and rows that do not.

A *row* is one projection direction evaluated on a population of ``b`` samples.  The Solve step
of Run-Sort-ReRun needs, per row, the rank of every sample and later puts values given in rank
order back in sample order.

* In memory, :func:`argsort`: for float32 it sorts packed ``(order_key << 32) | index`` int64
  keys with ``np.sort`` (4.7x ``np.argsort`` on one core, measured in ``benchmarks/``); other
  dtypes, and rows of more than 2**32 elements, use ``np.argsort(kind="stable")``.
* Out of core, :func:`external_argsort` (the stand-alone ``ootrain sort`` of a zarr array's
  rows): a sample sort (distribution sort) in one process through spill files in a scratch
  directory.  A sampling pass picks splitters, one distribution pass writes every element once
  into its bucket's runs, then buckets come back in order, each sorted in memory.  Memory is
  set by the caller's bucket size and spill buffer, never by the row length; disk traffic is
  linear (each element written and read once per pass).  The engine's Solve sorts through
  :mod:`ootrain.engine.samplesort` instead: the same algorithm as Dask tasks, its buckets in
  the store where every worker reads them.

Ties sort by index everywhere, so every path gives the same permutation.  NaN has no place in a
sort order: every entry point raises ``ValueError`` on it.

Why not Dask's shuffle: ``dask.dataframe``'s disk shuffle buffers up to 1 GB in partd whatever
the partition size and keeps pandas copies of each partition; its peak RSS grew from 1.2 to
4.5 GiB for rows of 10^7 to 10^8 elements at a 256 MiB budget (``benchmarks/RESULTS.md``),
which breaks the engine's flat-memory contract.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import zarr
from numba import njit
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["argsort", "external_argsort", "row_fits", "sort_rows", "sort_with_permutation",
           "sort_zarr", "sum_squares"]

KEY_BYTES = 8  # one int64 sort key per element
PERM_BYTES = 8  # one int64 permutation entry per element
_INDEX_BITS = 32  # low bits of a packed key hold the element index
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_SAMPLES_PER_BUCKET = 64  # splitter sample per bucket (bucket sizes then vary by ~1/8)
_MAX_PARTS = 65535  # part ids are uint16 (numpy's stable sort of uint16 is a radix sort)


# --------------------------------------------------------------------------- kernels
@njit(parallel=False, cache=True, nogil=True)   # releases the GIL: Dask threads run it at once
def _pack_f32(bits: np.ndarray, start: int, out: np.ndarray) -> bool:
    """Write ``(order_key(x[i]) << 32) | (start + i)`` into ``out`` (int64, shape [n]).

    ``bits`` is the float32 row viewed as int32, shape [n].  The signed order key
    keeps non-negative floats as they are and flips the 31 low bits of negative
    ones, so integer order equals float order (``-0.0`` sorts just before
    ``+0.0``).  Returns True, leaving ``out`` incomplete, as soon as a NaN is seen.
    """
    for i in range(bits.size):
        b = np.int64(bits[i])
        if (b & 0x7FFFFFFF) > 0x7F800000:
            return True
        if b < 0:
            b ^= 0x7FFFFFFF
        out[i] = (b << 32) | (start + i)
    return False


@njit(parallel=False, cache=True, nogil=True)   # releases the GIL: Dask threads run it at once
def _unpack_f32(keys: np.ndarray, out_bits: np.ndarray) -> None:
    """Inverse of :func:`_pack_f32` for the value part: float32 bits (int32, [n]) of ``keys`` ([n])."""
    for i in range(keys.size):
        b = keys[i] >> 32
        if b < 0:
            b ^= 0x7FFFFFFF
        out_bits[i] = b


def _packable(dtype: np.dtype, n: int) -> bool:
    """Whether a row of ``n`` elements of ``dtype`` can use packed 64-bit keys."""
    return dtype == np.float32 and n <= 1 << _INDEX_BITS


def _pack(x: np.ndarray, start: int = 0) -> np.ndarray:
    """Packed int64 keys, shape [n], of a 1-D float32 array whose first element has index ``start``."""
    keys = np.empty(x.shape[0], dtype=np.int64)
    if _pack_f32(np.ascontiguousarray(x).view(np.int32), start, keys):
        raise ValueError("cannot sort: input contains NaN")
    return keys


def _check_no_nan(x: np.ndarray) -> None:
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError("cannot sort: input contains NaN")


def _check_sortable(dtype: np.dtype) -> None:
    if dtype.kind not in "fiu":
        raise ValueError(f"cannot sort dtype {dtype}: only real floats and integers are supported")


# --------------------------------------------------------------------------- in memory
def argsort(x: np.ndarray) -> np.ndarray:
    """Sorting permutation of a 1-D array.

    Parameters
    ----------
    x : np.ndarray, shape [n], real float or integer dtype, no NaN.

    Returns
    -------
    np.ndarray, shape [n], int64: ``x[perm]`` is sorted ascending.  Ties come out
    in a deterministic order (by index; ``-0.0`` before ``+0.0`` for float32).
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"argsort expects a 1-D array, got shape {x.shape}")
    _check_sortable(x.dtype)
    if _packable(x.dtype, x.shape[0]):
        keys = _pack(x)
        keys.sort()
        return np.bitwise_and(keys, _INDEX_MASK, out=keys)
    _check_no_nan(x)
    return np.argsort(x, kind="stable").astype(np.int64, copy=False)


def sort_with_permutation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x[perm], perm)`` with ``perm = argsort(x)`` (same tie order), shape [n] each.

    For float32 the sorted values are decoded from the sorted packed keys, so no random-access
    gather over ``x`` is needed; peak extra memory is the int64 keys (reused as ``perm``) and
    the sorted copy.
    """
    x = np.asarray(x)
    if x.ndim == 1 and _packable(x.dtype, x.shape[0]):
        keys = _pack(x)
        keys.sort()
        values = np.empty(x.shape[0], dtype=np.float32)
        _unpack_f32(keys, values.view(np.int32))
        return values, np.bitwise_and(keys, _INDEX_MASK, out=keys)
    perm = argsort(x)
    return x[perm], perm


def sum_squares(v: np.ndarray, step: int = 1 << 16) -> float:
    """``Σ v²`` of a 1-D array, accumulated in float64 (``math.fsum`` over blocks of ``step``
    elements, each converted to float64 on its own: no float64 copy of the whole row)."""
    return math.fsum(float(np.dot(b, b)) for b in
                     (v[lo:lo + step].astype(np.float64) for lo in range(0, v.shape[0], step)))


def row_fits(n_elements: int, itemsize: int, memory_budget: int) -> bool:
    """The one rule deciding whether a row is sorted in memory or out of core.

    An in-memory row holds its values (``itemsize`` bytes per element), one
    int64 sort key and one int64 permutation entry per element, i.e.
    ``n_elements * (8 + 8 + itemsize)`` bytes (20 B/element for float32), which
    must not exceed ``memory_budget`` bytes.
    """
    return _row_bytes(n_elements, itemsize) <= memory_budget


def _row_bytes(n_elements: int, itemsize: int) -> int:
    """In-memory footprint of a row as counted by :func:`row_fits`."""
    return n_elements * (KEY_BYTES + PERM_BYTES + itemsize)


# --------------------------------------------------------------------------- out of core
Blocks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""A re-iterable source of ``(values [l], index [l] int64)`` blocks, in index order."""


def row_blocks(read: Callable[[int, int], np.ndarray], n: int, block: int) -> Blocks:
    """:data:`Blocks` over positions ``[0, n)`` read ``block`` at a time by ``read(lo, hi)``."""
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            yield np.asarray(read(lo, hi)), np.arange(lo, hi, dtype=np.int64)

    return blocks


class _Runs:
    """Records ``(array_0[i], array_1[i], ...)`` partitioned into ``nparts`` parts on disk.

    ``add(part, *arrays)`` buffers records; when the buffer exceeds ``buffer_bytes`` it is
    flushed as one *run*: every array stably reordered by part id and written contiguously to its
    own file, with the per-part counts kept in memory (``nparts`` int64 per run).  ``read(p)``
    returns part ``p``'s records in insertion order (runs in order, stable within a run).
    Peak memory: about twice ``buffer_bytes`` during a flush.
    """

    def __init__(self, directory: str, nparts: int, dtypes: tuple[np.dtype, ...],
                 buffer_bytes: int) -> None:
        if not 1 <= nparts <= _MAX_PARTS:
            raise ValueError(f"nparts must be in [1, {_MAX_PARTS}], got {nparts}")
        self.dir, self.nparts, self.dtypes = directory, nparts, tuple(map(np.dtype, dtypes))
        self.buffer_bytes = max(1, buffer_bytes)
        self._buffer: list[tuple[np.ndarray, ...]] = []
        self._buffered = 0
        self._offsets: list[np.ndarray] = []  # per run: [nparts + 1] record offsets

    def add(self, part: np.ndarray, *arrays: np.ndarray) -> None:
        self._buffer.append((part.astype(np.uint16), *arrays))
        self._buffered += part.shape[0] * (2 + sum(d.itemsize for d in self.dtypes))
        if self._buffered >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        part = np.concatenate([b[0] for b in self._buffer])
        order = np.argsort(part, kind="stable")
        counts = np.bincount(part, minlength=self.nparts)
        del part
        r = len(self._offsets)
        for a, dtype in enumerate(self.dtypes):
            values = np.concatenate([b[a + 1] for b in self._buffer]).astype(dtype, copy=False)
            values[order].tofile(self._path(r, a))
            del values
        self._offsets.append(np.concatenate([[0], np.cumsum(counts)]))
        self._buffer, self._buffered = [], 0

    def counts(self) -> np.ndarray:
        """Records per part, shape [nparts] int64 (call after :meth:`flush`)."""
        return sum((np.diff(o) for o in self._offsets), np.zeros(self.nparts, dtype=np.int64))

    def pieces(self, p: int) -> Iterator[tuple[np.ndarray, ...]]:
        """Part ``p`` one run at a time: tuples of arrays, in insertion order."""
        for r, off in enumerate(self._offsets):
            lo, count = int(off[p]), int(off[p + 1] - off[p])
            if count:
                yield tuple(np.fromfile(self._path(r, a), dtype=d, count=count,
                                        offset=lo * d.itemsize)
                            for a, d in enumerate(self.dtypes))

    def read(self, p: int) -> tuple[np.ndarray, ...]:
        """All of part ``p``, concatenated, in insertion order."""
        got = list(self.pieces(p))
        if not got:
            return tuple(np.empty(0, dtype=d) for d in self.dtypes)
        return tuple(np.concatenate(cols) for cols in zip(*got))

    def _path(self, run: int, array: int) -> str:
        return os.path.join(self.dir, f"run{run}.{array}")


def _sort_bucket(values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort a bucket by (value, insertion order): the values and their indices, reordered."""
    sorted_values, pos = sort_with_permutation(values)
    return sorted_values, index[pos]


def _splitters(blocks: Blocks, n: int, nbuckets: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct splitter values, ascending: quantiles of a random sample of the blocks."""
    rate = min(1.0, nbuckets * _SAMPLES_PER_BUCKET / max(n, 1))
    sample = []
    for values, _ in blocks():
        _check_no_nan(values)
        take = rng.random(values.shape[0]) < rate
        sample.append(values[take])
    sample = np.sort(np.concatenate(sample)) if sample else np.empty(0)
    if sample.size == 0:
        return sample
    q = sample[(np.arange(1, nbuckets) * sample.shape[0]) // nbuckets]
    return np.unique(q)[: (_MAX_PARTS - 1) // 2]


def _part_of(values: np.ndarray, splitters: np.ndarray) -> np.ndarray:
    """Part ids isolating every splitter value: ``2i`` for values strictly between splitters
    ``i−1`` and ``i``, ``2i+1`` for values equal to splitter ``i`` (a tie part)."""
    i = np.searchsorted(splitters, values, side="left")
    hit = np.zeros(values.shape[0], dtype=bool)
    inside = i < splitters.shape[0]
    hit[inside] = splitters[i[inside]] == values[inside]
    return 2 * i + hit


def external_argsort(blocks: Blocks, n: int, dtype: np.dtype, max_bucket: int,
                     buffer_bytes: int, scratch: str, seed: int = 0
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Sort ``n`` values given as :data:`Blocks`, out of core; yield them in order, bucket-wise.

    Yields ``(r0, values, index)``: ``values`` [l] ascending, the values of ranks
    ``r0 … r0+l−1``, and ``index`` [l] int64 their indices (from the blocks).  Ties come out by
    index, exactly as :func:`argsort` orders them.  At most ``max_bucket`` values are held at
    a time (a bucket of one repeated value is streamed in runs, whatever its size), plus the
    spill buffer of ``buffer_bytes``; spill files go under ``scratch`` and are removed at the
    end.  Disk traffic: two reading passes over the blocks (sample, distribute), one write and
    one read of ``n`` (value, index) records.
    """
    dtype = np.dtype(dtype)
    _check_sortable(dtype)
    if max_bucket < 1:
        raise ValueError(f"max_bucket must be positive, got {max_bucket}")
    if n <= max_bucket:
        got = [(np.asarray(v, dtype=dtype), i) for v, i in blocks()]
        values = np.concatenate([v for v, _ in got]) if got else np.empty(0, dtype)
        index = np.concatenate([i for _, i in got]) if got else np.empty(0, np.int64)
        del got
        if values.shape[0] != n:
            raise ValueError(f"blocks gave {values.shape[0]} values, expected {n}")
        yield (0, *_sort_bucket(values, index))
        return
    rng = np.random.default_rng(seed)
    nbuckets = min(-(-2 * n // max_bucket), (_MAX_PARTS - 1) // 2)  # buckets half full on average
    splitters = _splitters(blocks, n, nbuckets, rng).astype(dtype)
    with tempfile.TemporaryDirectory(prefix="ootrain-sort-", dir=scratch) as tmp:
        runs = _Runs(tmp, 2 * splitters.shape[0] + 1, (dtype, np.dtype(np.int64)), buffer_bytes)
        total = 0
        for values, index in blocks():
            values = np.asarray(values, dtype=dtype)
            runs.add(_part_of(values, splitters), values, index)
            total += values.shape[0]
        runs.flush()
        if total != n:
            raise ValueError(f"blocks gave {total} values, expected {n}")
        r0 = 0
        for p, count in enumerate(runs.counts()):
            if count == 0:
                continue
            if count <= max_bucket:
                yield (r0, *_sort_bucket(*runs.read(p)))
            elif p % 2:  # one repeated value: already in index order, stream it run by run
                r = r0
                for values, index in runs.pieces(p):
                    yield r, values, index
                    r += values.shape[0]
            else:  # an unlucky bucket: sort it out of core in turn (its own splitters)
                for r, values, index in external_argsort(
                        lambda p=p: runs.pieces(p), int(count), dtype, max_bucket,
                        buffer_bytes, tmp, seed + 1):
                    yield r0 + r, values, index
            r0 += int(count)


def plan_external(memory_budget: int, bytes_per_element: int) -> tuple[int, int]:
    """``(max_bucket, buffer_bytes)`` for :func:`external_argsort` under ``memory_budget``.

    Half the budget holds one bucket at ``bytes_per_element`` (what the caller keeps per element
    of a bucket, the sort's own copies included); an eighth is the spill buffer (twice that
    during a flush); the rest is headroom for the caller's reading blocks.
    """
    if memory_budget < 1 or bytes_per_element < 1:
        raise ValueError("memory_budget and bytes_per_element must be positive")
    return max(1, memory_budget // (2 * bytes_per_element)), max(1, memory_budget // 8)


# Bytes held per element of a bucket by external_argsort itself: values and index as read,
# packed keys (reused as positions), and the reordered values and index it yields.
SORT_BYTES_PER_ELEMENT = 2 * 8 + KEY_BYTES  # + 2 * itemsize


# --------------------------------------------------------------------------- zarr rows
def sort_rows(src: zarr.Array, dst: zarr.Array, memory_budget: int, progress: bool = True,
              scratch: str | None = None) -> None:
    """Sort every row of a 2-D zarr array [rows, n] ascending into ``dst`` (same shape and dtype).

    Rows that satisfy :func:`row_fits` are read several at a time (as many as the budget
    allows, aligned to ``src``'s row chunks) and sorted with ``np.sort``; longer rows go through
    :func:`external_argsort` (spill files under ``scratch``, default the system's temporary
    directory) and are written back in whole ``dst`` chunks (or shards).  Raises ``ValueError``
    on mismatched shapes or dtypes, NaN, or when one ``src`` chunk alone exceeds the budget on
    the out-of-core path.
    """
    if src.ndim != 2:
        raise ValueError(f"src must be 2-D [rows, n], got shape {src.shape}")
    if dst.shape != src.shape:
        raise ValueError(f"dst shape {dst.shape} != src shape {src.shape}")
    if dst.dtype != src.dtype:
        raise ValueError(f"dst dtype {dst.dtype} != src dtype {src.dtype}")
    _check_sortable(src.dtype)
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be positive, got {memory_budget}")
    rows, n = src.shape
    itemsize = src.dtype.itemsize
    columns = [TextColumn("sorting rows"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("rows", total=rows)
        if row_fits(n, itemsize, memory_budget):
            step = max(1, memory_budget // max(1, _row_bytes(n, itemsize)))
            step = step - step % src.chunks[0] if step >= src.chunks[0] else step
            for r0 in range(0, rows, step):
                block = src[r0 : r0 + step]
                _check_no_nan(block)
                block.sort(axis=1)
                dst[r0 : r0 + step] = block
                bar.advance(task, block.shape[0])
            return
        chunk_bytes = math.prod(src.chunks) * itemsize
        write = (dst.shards or dst.chunks)[1]
        if chunk_bytes > memory_budget // 4 or write * itemsize > memory_budget // 4:
            raise ValueError(f"one src chunk ({chunk_bytes} B) or dst row chunk "
                             f"({write * itemsize} B) is more than memory_budget/4="
                             f"{memory_budget // 4} B")
        max_bucket, buffer = plan_external(memory_budget, SORT_BYTES_PER_ELEMENT + 2 * itemsize)
        for r in range(rows):
            blocks = row_blocks(lambda lo, hi, r=r: src[r, lo:hi], n, src.chunks[1])
            pending, lo = [], 0
            for _, values, _ in external_argsort(blocks, n, src.dtype, max_bucket, buffer,
                                                 scratch, seed=r):
                pending.append(values)
                have = sum(v.shape[0] for v in pending)
                if have >= write or lo + have == n:
                    flat = np.concatenate(pending)
                    cut = n - lo if lo + have == n else have - have % write
                    dst[r, lo:lo + cut] = flat[:cut]
                    pending, lo = [flat[cut:]], lo + cut
            bar.advance(task)


def sort_zarr(
    src_path: str, dst_path: str, memory_budget: int, array: str | None = None, progress: bool = True
) -> None:
    """Sort the rows of the 2-D zarr array at ``src_path`` into a new array at ``dst_path``.

    ``src_path``/``dst_path`` are local paths or fsspec URLs; ``array`` is the
    array's path inside the store (None: the store root), used for both.  ``dst``
    is created (never overwritten) with ``src``'s shape, dtype, zarr format,
    chunks and shards.  See :func:`sort_rows`.
    """
    src = zarr.open_array(src_path, mode="r", path=array or "")
    dst = zarr.create_array(
        store=dst_path,
        name=array,
        shape=src.shape,
        dtype=src.dtype,
        chunks=src.chunks,
        shards=src.shards,
        zarr_format=src.metadata.zarr_format,
    )
    sort_rows(src, dst, memory_budget, progress=progress)
