"""The hard c-transform with its targets sharded over Dask tasks, so ``N`` is bounded by the
cluster rather than by one process.

The targets ``y [N, d]`` are split into ``S`` shards of consecutive rows ``J_s = [a_s,
a_{s+1})`` and the queries ``x [B, d]`` into blocks ``Q_q``.  One task per (query block,
shard) runs :func:`~ootrain.ot.ctransform.c_transform` on the shard's rows alone,

    (value_i^s, idx_i^s) = (min, argmin)_{j in J_s}  c(x_i, y_j) - psi_j,      i in Q_q,

and one task per query block merges its ``S`` results in shard order
(:func:`~ootrain.ot.ctransform.merge_argmin`):

    value_i = min_s value_i^s,     idx_i = idx_i^s* with s* the first shard reaching it,

so ties keep the smallest index, as in the unsharded ``c_transform``.  Each shard's value
is recomputed exactly from its index, so the result is the unsharded one bit for bit (same
dtype and backend) — up to what already depends on ``c_transform``'s own block layout:
float32 near-ties among FAISS/KeOps candidates.

Shards are planned from a per-task memory budget (:func:`plan_shards`): a shard's rows,
as read and as converted to the queries' dtype, take at most ``budget`` bytes, and a
zarr source's shards are whole zarr chunks when one fits.  A task holds one query block,
one shard and the backend's workspace (torch: ``TORCH_BLOCK`` cost entries; FAISS: a few
float64/float32 copies of the shard).

The tasks are a plain Dask graph (:func:`argmin_tasks`), run by anything with a
``get(graph, keys)`` method — :class:`ootrain.engine.compute.Compute` (local threads, or a
``dask.distributed`` cluster when its ``distributed`` is true) — or by Dask's synchronous
scheduler in this thread.  On a cluster the targets must be a zarr array every worker
can open (a path they all see, or an object-store URL; or a run's store array,
:class:`~ootrain.engine.compute.StoreArray`): in-memory targets are refused.

Only the hard argmin is sharded: the soft plan's Gumbel-max draws
(:func:`~ootrain.ot.ctransform.soft_assign`) follow the generator's sequence over the
block layout, so a sharded draw could not equal the unsharded one.

Example::

    >>> import torch
    >>> from ootrain.ot.sharded import sharded_c_transform
    >>> y = torch.tensor([[0.0], [1.0], [2.0], [1.0]], dtype=torch.float64)
    >>> x = torch.tensor([[0.9], [2.2]], dtype=torch.float64)
    >>> idx, value = sharded_c_transform(x, y, torch.zeros(4), budget=16)   # 2 rows a shard
    >>> idx.tolist()
    [1, 2]
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

from ootrain.ot.checks import check_psi, check_query
from ootrain.ot.costs import Cost, parse_cost
from ootrain.ot.ctransform import c_transform, merge_argmin
from ootrain.ot.targets import TargetLike, TargetSource, as_source

__all__ = ["SHARD_SHARE", "plan_shards", "argmin_tasks", "sharded_c_transform"]

#: A sharded Solve task's target shard takes at most this fraction (1 / SHARD_SHARE) of the
#: task's memory budget; the rest holds the block of queries and the argmin kernel's copies
#: of the shard (FAISS: the centred float64 rows, their augmented float32 index; a worker's
#: peak was ~7x a float32 shard's bytes in benchmarks/bench_sharded_argmin.py).
SHARD_SHARE = 8


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def plan_shards(source: TargetSource, budget: int, dtype: torch.dtype | None = None
                ) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the shards of ``source`` under ``budget`` bytes a task.

    A shard of ``r`` rows holds ``r · d · (s + t)`` bytes, ``s`` the source's itemsize and
    ``t`` that of ``dtype`` (0 when it is the source's own: no converted copy); ``r`` is the
    largest such count ``<= budget``, rounded down to whole zarr chunks when it holds one.
    The last shard takes the remainder.

    Raises:
        ValueError: a budget that holds no row.
    """
    size = _itemsize(source.dtype)
    row_bytes = source.d * (size + (0 if dtype in (None, source.dtype) else _itemsize(dtype)))
    rows = int(budget) // row_bytes
    if rows < 1:
        raise ValueError(f"a shard budget of {budget} bytes holds no target row "
                         f"({row_bytes} bytes each)")
    chunk = 1 if source.in_memory or source.rows is not None else int(source.data.chunks[0])
    if rows >= chunk:
        rows -= rows % chunk
    return [(a, min(source.n, a + rows)) for a in range(0, source.n, rows)]


def _shard_argmin(x: Tensor, source: TargetSource, psi: Tensor, start: int, stop: int,
                  cost: Cost, backend: str) -> tuple[Tensor, Tensor]:
    """A task: ``(idx, value)`` of ``x`` over the targets ``[start, stop)`` (global idx)."""
    idx, value = c_transform(x, source.read(start, stop), psi, cost, backend)
    return idx + start, value


def _merge(parts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """A task: the shards' results of one query block merged in shard order."""
    best = parts[0]
    for part in parts[1:]:
        best = merge_argmin(best, part)
    return best


def _shareable(source: TargetSource) -> bool:
    """Whether other processes can open the targets: a zarr array not in memory, or a
    :class:`~ootrain.engine.compute.StoreArray` of a store not in memory (its ``store``
    says ``in_memory``)."""
    if source.in_memory:
        return False
    store = source.data.store
    if hasattr(store, "in_memory"):
        return not store.in_memory
    import zarr
    return not isinstance(store, zarr.storage.MemoryStore)


def argmin_tasks(graph: dict[Hashable, Any], queries: Sequence[Hashable], y: TargetSource,
                 psi: Tensor, shards: Sequence[tuple[int, int]], cost: str | Cost = "sqeuclidean",
                 backend: str = "auto", *, distributed: bool = False) -> list[Hashable]:
    """Add the tasks of the sharded c-transform to a plain Dask graph.

    Args:
        graph: ``{key: task}`` (Dask's plain format); the tasks are added to it.
        queries: keys of ``graph`` whose values are the query blocks ``x_q [B_q, d]``.
        y: the targets (a :class:`~ootrain.ot.targets.TargetSource`).
        psi: ``[N]`` dual potential (already in the queries' dtype and device).
        shards: row ranges ``[start, stop)`` covering ``[0, N)`` in order
            (:func:`plan_shards`).
        cost, backend: as in :func:`~ootrain.ot.ctransform.c_transform`, per shard.
        distributed: whether the graph runs in other processes (then ``y`` must be a zarr
            array, or a :class:`~ootrain.engine.compute.StoreArray`, they can open).

    Returns:
        The keys, one per query block, of its ``(idx [B_q] int64, value [B_q])``.

    Raises:
        ValueError: in-memory targets with ``distributed``.
    """
    if distributed and not _shareable(y):
        raise ValueError("a sharded c-transform on a Dask cluster needs targets its workers can "
                         "open: a zarr array on a path they all see or an object-store URL, "
                         f"not {y!r} in memory")
    name = f"sharded-argmin-{uuid.uuid4().hex}"   # keys unique to the computation
    graph[(name, "targets")] = y
    for s, (a, b) in enumerate(shards):
        graph[(name, "psi", s)] = psi[a:b].clone()   # a view would pickle all of psi
    out = []
    for q, qkey in enumerate(queries):
        parts = [(name, "shard", q, s) for s in range(len(shards))]
        for key, (a, b) in zip(parts, shards):
            graph[key] = (_shard_argmin, qkey, (name, "targets"), (name, "psi", key[3]), a, b,
                          cost, backend)
        graph[(name, "merge", q)] = (_merge, parts)
        out.append((name, "merge", q))
    return out


def sharded_c_transform(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "sqeuclidean",
                        backend: str = "auto", *, budget: int, compute: Any = None,
                        query_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """``(idx, value)`` of :func:`~ootrain.ot.ctransform.c_transform`, one Dask task per
    (query block, target shard) and one merge task per query block (module doc).

    Args:
        x: ``[B, d]`` floating queries.
        y: targets ``[N, d]`` (tensor, numpy array, zarr array/path or
            :class:`~ootrain.ot.targets.TargetSource`); a zarr array every worker can open
            on a cluster.
        psi: ``[N]`` dual potential.
        cost, backend: as in ``c_transform`` (used in every shard task).
        budget: bytes of target rows a task holds (:func:`plan_shards`).
        compute: runs the graph: an object with ``get(graph, keys)`` (and ``distributed``,
            true for other processes), e.g. :class:`ootrain.engine.compute.Compute`; None:
            this thread, one task at a time.
        query_rows: queries per block (None: all ``B`` in one block).

    Returns:
        ``idx`` int64 ``[B]`` (ties: smallest ``j``) and ``value`` ``[B]``: those of
        ``c_transform(x, y, psi, cost, backend)``.

    Raises:
        ValueError: bad shapes, dtypes or NaN/Inf, a budget that holds no target row,
            in-memory targets on a cluster, ``query_rows < 1``.
    """
    src = as_source(y)
    check_query(x, src.d)
    psi = check_psi(psi, src.n, x)
    cost = parse_cost(cost)
    if query_rows is not None and (isinstance(query_rows, bool) or query_rows < 1):
        raise ValueError(f"query_rows must be a positive integer or None, got {query_rows!r}")
    step = query_rows or max(1, x.shape[0])
    name = f"sharded-queries-{uuid.uuid4().hex}"
    graph: dict[Hashable, Any] = {(name, q0): x[q0:q0 + step].clone()
                                  for q0 in range(0, x.shape[0], step)}
    queries = list(graph)
    keys = argmin_tasks(graph, queries, src, psi, plan_shards(src, budget, x.dtype), cost,
                        backend, distributed=bool(getattr(compute, "distributed", False)))
    if compute is None:
        import dask.local
        parts = dask.local.get_sync(graph, keys)
    else:
        parts = compute.get(graph, keys)
    if not parts:
        return (torch.empty(0, dtype=torch.long, device=x.device),
                torch.empty(0, dtype=x.dtype, device=x.device))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
