"""Sort layer of the Run-Sort-ReRun sliced-Wasserstein engine.

A *row* is one projection direction evaluated on a population of ``b``
samples.  The Solve step needs, per row, the sorting permutation of the
projections (each sample's rank) and later scatters values given in rank order
back to sample order.

* Rows that fit :func:`row_fits` are sorted in memory by :func:`argsort`.
  For float32 it sorts packed ``(order_key << 32) | index`` 64-bit keys with
  ``np.sort`` (about 6x faster than ``np.argsort`` on one core); other dtypes,
  and rows of more than 2**32 elements, use ``np.argsort(kind="stable")``.
* Larger rows go through Dask's own partitioned sort (:func:`argsort_dask`,
  :func:`scatter_dask`): ``dask.dataframe.set_index`` with explicit divisions
  and an on-disk (partd) shuffle, so peak memory is bounded by the partition
  size (plus partd's fixed write buffer of up to 1 GB), not by ``b``.  With a
  ``dask.distributed`` Client active, Dask picks its own shuffle and the Client
  runs the work.

NaN has no place in a sort order: every entry point raises ``ValueError`` on it.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import weakref
from collections.abc import Iterator

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import zarr
from numba import njit
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["argsort", "argsort_dask", "row_fits", "scatter_dask", "sort_rows", "sort_zarr"]

KEY_BYTES = 8  # one int64 sort key per element
PERM_BYTES = 8  # one int64 permutation entry per element
_INDEX_BITS = 32  # low bits of a packed key hold the element index
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_SAMPLES_PER_PARTITION = 256  # sample size per output partition when choosing divisions
_INT64 = np.iinfo(np.int64)


# --------------------------------------------------------------------------- kernels
@njit(parallel=False, cache=True)
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


@njit(parallel=False, cache=True)
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


def row_fits(n_elements: int, itemsize: int, memory_budget: int) -> bool:
    """The one rule deciding whether a row is sorted in memory or through Dask.

    An in-memory row holds its values (``itemsize`` bytes per element), one
    int64 sort key and one int64 permutation entry per element, i.e.
    ``n_elements * (8 + 8 + itemsize)`` bytes (20 B/element for float32), which
    must not exceed ``memory_budget`` bytes.
    """
    return _row_bytes(n_elements, itemsize) <= memory_budget


def _row_bytes(n_elements: int, itemsize: int) -> int:
    """In-memory footprint of a row as counted by :func:`row_fits`."""
    return n_elements * (KEY_BYTES + PERM_BYTES + itemsize)


# --------------------------------------------------------------------------- dask helpers
def _client_active() -> bool:
    """Whether a ``dask.distributed`` Client is the current default."""
    try:
        from distributed import default_client

        default_client()
    except (ImportError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _scheduler() -> Iterator[None]:
    """Run Dask work on threads unless the caller configured a scheduler (a Client sets one)."""
    with dask.config.set(scheduler=dask.config.get("scheduler", None) or "threads"):
        yield


class _SpillDir:
    """A temporary shuffle directory owned by the Dask graphs that reference it.

    partd only removes its spill files at interpreter exit; holding this object in
    the graph removes the directory once the last array built on it is garbage
    collected.
    """

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="ootrain-sort-")
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def __dask_tokenize__(self) -> str:
        return self.path


def _expect_length(block: np.ndarray, spill: _SpillDir | None = None, block_info=None) -> np.ndarray:
    """Guard that a shuffled partition has the length its array chunk declares.

    ``spill`` is unused here: passing it keeps the shuffle directory alive for as
    long as the graph is.
    """
    expected = block_info[None]["chunk-shape"][0]
    if block.shape[0] != expected:
        raise RuntimeError(f"shuffled partition has {block.shape[0]} rows, expected {expected}")
    return block


def _to_checked_array(collection, lengths: tuple[int, ...], spill: _SpillDir | None) -> da.Array:
    """Dask array of a shuffled frame/series with known chunk ``lengths``, verified when computed."""
    array = collection.to_dask_array(lengths=lengths)
    return array.map_blocks(_expect_length, spill=spill, dtype=array.dtype)


def _sample_block(block: np.ndarray, packed: bool, block_info=None) -> np.ndarray:
    """Sort keys drawn at random (seeded by block position) from one block, as many
    as its output chunk declares.

    Also rejects NaN, so a bad row fails before any shuffle starts.
    """
    start = block_info[0]["array-location"][0][0]
    if packed:
        keys = _pack(block, start)
    else:
        _check_no_nan(block)
        keys = block
    rng = np.random.default_rng(start)
    return keys[rng.integers(0, keys.shape[0], block_info[None]["chunk-shape"][0])]


def _count_block(block: np.ndarray, divisions: np.ndarray, packed: bool, block_info=None) -> np.ndarray:
    """Per-output-partition counts, shape [1, len(divisions) - 1], of one block.

    Uses the same assignment rule as Dask's ``set_partitions_pre``: searchsorted
    right, with out-of-range keys sent to the last partition.
    """
    keys = _pack(block, block_info[0]["array-location"][0][0]) if packed else block
    part = np.searchsorted(divisions, keys, side="right") - 1
    nparts = divisions.shape[0] - 1
    part[(part < 0) | (part >= nparts)] = nparts - 1
    return np.bincount(part, minlength=nparts)[None, :]


def _plan_divisions(x: da.Array, nparts: int, packed: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    """Divisions (sorted, shape [p + 1]) and exact partition lengths for sorting ``x``.

    Two reading passes: a seeded random sample gives the split points, then a
    counting pass gives the exact number of elements per partition, so the
    sorted output has known chunk sizes.  Packed keys are unique, so partitions
    stay balanced even with many tied values.
    """
    b = x.shape[0]
    total = nparts * _SAMPLES_PER_PARTITION
    sizes = tuple(max(1, math.ceil(total * c / b)) for c in x.chunks[0])
    sample_dtype = np.int64 if packed else x.dtype
    sample = x.map_blocks(_sample_block, packed=packed, chunks=(sizes,), dtype=sample_dtype)
    with _scheduler():
        sample = np.sort(sample.compute())
    splits = sample[(np.arange(1, nparts) * sample.shape[0]) // nparts]
    if packed:
        low, high = _INT64.min, _INT64.max
    elif x.dtype.kind == "f":
        low, high = -np.inf, np.inf
    else:
        low, high = np.iinfo(x.dtype).min, np.iinfo(x.dtype).max
    bounds = np.array([low, high], dtype=sample_dtype)
    divisions = np.unique(np.concatenate([bounds[:1], splits, bounds[1:]]))
    counts = x.map_blocks(
        _count_block,
        divisions,
        packed=packed,
        chunks=((1,) * x.numblocks[0], (divisions.shape[0] - 1,)),
        new_axis=1,
        dtype=np.int64,
    )
    with _scheduler():
        lengths = counts.sum(axis=0).compute()
    return divisions, tuple(int(c) for c in lengths)


def _pack_block(block: np.ndarray, block_info=None) -> np.ndarray:
    return _pack(block, block_info[0]["array-location"][0][0])


def _unpack_values(keys: np.ndarray) -> np.ndarray:
    values = np.empty(keys.shape[0], dtype=np.float32)
    _unpack_f32(keys, values.view(np.int32))
    return values


def _break_ties(part):
    """Order a sorted partition (index: values, column ``index``: positions) by (value, position)."""
    return part.iloc[np.lexsort((part["index"].to_numpy(), part.index.to_numpy()))]


@contextlib.contextmanager
def _shuffle(tmpdir: str | None) -> Iterator[tuple[str | None, _SpillDir | None]]:
    """Yield ``(shuffle_method, spill_owner)`` for building a shuffle graph.

    Without a distributed Client: the on-disk shuffle, spilling to ``tmpdir`` or
    to a fresh :class:`_SpillDir` (returned so the graph can hold it).  Dask binds
    the spill directory when the graph is built, i.e. inside this context.
    With a Client: Dask's default shuffle for it, no spill directory.
    """
    if _client_active():
        yield None, None
        return
    spill = None if tmpdir is not None else _SpillDir()
    with dask.config.set(temporary_directory=tmpdir if tmpdir is not None else spill.path):
        yield "disk", spill


# --------------------------------------------------------------------------- out of core
def argsort_dask(
    x: da.Array, partition_size: int, tmpdir: str | None = None
) -> tuple[da.Array, da.Array]:
    """Out-of-core sort of a 1-D Dask array through Dask's partitioned sort.

    Parameters
    ----------
    x : da.Array, shape [b], real float or integer dtype (float16 is widened to
        float32), no NaN (raises ``ValueError`` while planning).
    partition_size : elements per shuffle partition; bounds the memory each task
        holds.  Output partitions hold about this many elements.
    tmpdir : directory for the on-disk shuffle.  The caller owns it and should
        remove it after computing.  If None, a private temporary directory is made
        and removed once the returned arrays (and everything built on them) are
        garbage collected.  Unused when a ``dask.distributed`` Client is active.

    Returns
    -------
    (sorted_values, perm) : da.Array, shape [b] each, in rank order, with known
        regular chunks of ``partition_size``: ``sorted_values`` has ``x``'s dtype,
        ``perm`` is int64 with ``x[perm] == sorted_values``.  Both are lazy and
        share one shuffle: compute or store them in a single call
        (``da.store([v, p], ...)`` / ``dask.compute(v, p)``) so it runs once.

    Two cheap reading passes over ``x`` run immediately to choose the divisions
    and count each partition; the shuffle itself runs when the results are computed.
    """
    if x.ndim != 1:
        raise ValueError(f"argsort_dask expects a 1-D array, got shape {x.shape}")
    if partition_size < 1:
        raise ValueError(f"partition_size must be >= 1, got {partition_size}")
    _check_sortable(x.dtype)
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    b = x.shape[0]
    if b == 0:
        return x, da.zeros(0, dtype=np.int64)
    x = x.rechunk(partition_size)
    packed = _packable(x.dtype, b)
    divisions, lengths = _plan_divisions(x, math.ceil(b / partition_size), packed)
    with _shuffle(tmpdir) as (method, spill):
        if packed:
            frame = dd.from_dask_array(x.map_blocks(_pack_block, dtype=np.int64), columns="k").to_frame()
            keys = frame.set_index("k", divisions=divisions.tolist(), shuffle_method=method).index
            keys = _to_checked_array(keys, lengths, spill)
            values = keys.map_blocks(_unpack_values, dtype=np.float32)
            perm = keys.map_blocks(np.bitwise_and, _INDEX_MASK, dtype=np.int64)
        else:
            frame = dd.from_dask_array(x, columns="v").to_frame().reset_index()
            part = frame.set_index("v", divisions=divisions.tolist(), shuffle_method=method)
            part = part.map_partitions(_break_ties, meta=part._meta)
            values = _to_checked_array(part.index, lengths, spill).astype(x.dtype)
            perm = _to_checked_array(part["index"], lengths, spill)
    return values.rechunk(partition_size), perm.rechunk(partition_size)


def _check_positions(part, partition_info=None, starts=()):
    """Guard that output partition ``i`` holds exactly positions ``starts[i]..starts[i+1]-1``."""
    i = partition_info["number"]
    if not np.array_equal(part.index.to_numpy(), np.arange(starts[i], starts[i + 1])):
        raise ValueError(f"perm is not a permutation of 0..b-1 (output chunk {i} is not exactly covered)")
    return part


def scatter_dask(perm: da.Array, values: da.Array, chunks: int, tmpdir: str | None = None) -> da.Array:
    """Out-of-core scatter ``out[perm[r]] = values[r]`` through Dask's partitioned shuffle.

    Parameters
    ----------
    perm : da.Array, shape [b], integer: a permutation of ``0..b-1`` (rank -> sample).
    values : da.Array, shape [b] or [b, k], in rank order (aligned with ``perm``).
    chunks : elements per output chunk (and per shuffle partition).
    tmpdir : on-disk shuffle directory, as in :func:`argsort_dask`.

    Returns
    -------
    da.Array, shape and dtype of ``values``, in original sample order, with known
    chunks ``chunks`` along axis 0 (the ``k`` columns in one chunk).  Since
    ``perm`` is a permutation the divisions are known exactly (no sampling
    pass); a ``perm`` that is not a permutation raises ``ValueError`` when computed.
    """
    if perm.ndim != 1 or values.ndim not in (1, 2) or values.shape[0] != perm.shape[0]:
        raise ValueError(f"need perm [b] and values [b] or [b, k], got {perm.shape} and {values.shape}")
    if perm.dtype.kind not in "iu":
        raise ValueError(f"perm must have an integer dtype, got {perm.dtype}")
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    b = perm.shape[0]
    if b == 0:
        return values
    values = values.rechunk((perm.chunks[0],) + tuple((k,) for k in values.shape[1:]))
    if values.ndim == 1:
        frame = dd.from_dask_array(values, columns="v").to_frame()
    else:
        frame = dd.from_dask_array(values, columns=[f"v{j}" for j in range(values.shape[1])])
    frame = frame.assign(pos=dd.from_dask_array(perm.astype(np.int64)))
    lengths = da.core.normalize_chunks(chunks, (b,))[0]
    starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    with _shuffle(tmpdir) as (method, spill):
        out = frame.set_index("pos", divisions=starts[:-1] + [b - 1], shuffle_method=method)
        out = out.map_partitions(_check_positions, starts=starts, meta=out._meta)
        out = out["v"] if values.ndim == 1 else out
        return _to_checked_array(out, lengths, spill)


# --------------------------------------------------------------------------- zarr rows
def _dask_partition_size(itemsize: int, memory_budget: int) -> int:
    """Shuffle partition size (elements) for a Dask row under ``memory_budget`` bytes.

    Measured on the threaded scheduler (two workers): the Dask path's peak RSS
    grows by about 140 B per partition element (key, Dask's ``_partitions``
    column and index through partd, pandas sort copies, unpacked values and
    perm), i.e. about 7x :func:`row_fits`' 20 B/element for float32; a divisor
    of 8 keeps that part under the budget.  partd's in-memory write buffer (up
    to 1 GB, fixed by Dask) comes on top.
    """
    return max(1, memory_budget // (8 * _row_bytes(1, itemsize)))


def sort_rows(src: zarr.Array, dst: zarr.Array, memory_budget: int, progress: bool = True) -> None:
    """Sort every row of a 2-D zarr array [rows, n] ascending into ``dst`` (same shape and dtype).

    Rows that satisfy :func:`row_fits` are read several at a time (as many as
    the budget allows, aligned to ``src``'s row chunks) and sorted with
    ``np.sort``; otherwise each row goes through :func:`argsort_dask` with a
    partition size derived from the budget, in its own temporary shuffle
    directory, and is written back with ``da.store`` aligned to ``dst``'s chunks
    (or shards).  All rows share ``n``, so one array takes one path.  On the Dask
    path the budget sizes the partitions; partd's in-memory write buffer (up to
    1 GB, fixed by Dask) comes on top.  Raises
    ``ValueError`` on mismatched shapes or dtypes, NaN, or when one ``src`` chunk
    alone exceeds the budget on the Dask path.
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
        if chunk_bytes > memory_budget:
            raise ValueError(f"one src chunk is {chunk_bytes} bytes, more than memory_budget={memory_budget}")
        partition_size = _dask_partition_size(itemsize, memory_budget)
        write_chunks = (dst.shards or dst.chunks)[1]
        x = da.from_zarr(src)
        for r in range(rows):
            with tempfile.TemporaryDirectory(prefix="ootrain-sort-") as tmp:
                values, _ = argsort_dask(x[r], partition_size, tmp)
                row = values.rechunk(write_chunks)[None, :]
                with _scheduler():
                    da.store(row, dst, regions=(slice(r, r + 1), slice(None)), lock=False)
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
