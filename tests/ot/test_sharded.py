"""The sharded c-transform (``ootrain.ot.sharded``) equals the unsharded ``c_transform`` bit
for bit in float64 — index and value — on this thread, on local threads and on a real
``LocalCluster`` of 2 worker processes reading the targets from a zarr store on disk;
ties across shard boundaries keep the smaller index; shards respect their budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from ootrain.ot.ctransform import c_transform
from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.ot.sharded import plan_shards, sharded_c_transform
from ootrain.ot.targets import TargetSource

N, D, CHUNK = 1000, 5, 64
ROW = D * 8   # bytes of a float64 target row


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Targets on disk (zarr chunks of 64 rows) with duplicated rows in different shards
    (100 = 700 = 999, same psi), queries on the duplicates, psi random."""
    g = np.random.default_rng(0)
    y = g.normal(size=(N, D))
    psi = 0.1 * g.normal(size=N)
    for j in (700, 999):
        y[j], psi[j] = y[100], psi[100]
    path = tmp_path_factory.mktemp("sharded") / "y.zarr"
    arr = zarr.create_array(str(path), shape=y.shape, chunks=(CHUNK, D), dtype="f8")
    arr[:] = y
    x = torch.as_tensor(g.normal(size=(150, D)))
    x[:3] = torch.as_tensor(y[100])
    return x, str(path), torch.as_tensor(psi)


@pytest.mark.parametrize("rows", [N, 3 * CHUNK, 5 * CHUNK + 10, CHUNK])
def test_local_threads_equal_unsharded(problem, rows):
    """S = 1 (all rows), uneven last shard (1000 = 5 x 192 + 40), budgets between chunks
    (rounded down to 5 chunks), one chunk a shard; query blocks of 64 (uneven too)."""
    from ootrain.engine.compute import Compute
    x, path, psi = problem
    ref = c_transform(x, path, psi, "sqeuclidean", "torch")
    assert (ref[0][:3] == 100).all()   # the duplicates tie: the smallest index
    for compute in (None, Compute(workers=2)):
        idx, value = sharded_c_transform(x, path, psi, "sqeuclidean", "torch",
                                         budget=rows * ROW, compute=compute,
                                         query_rows=64)
        assert torch.equal(idx, ref[0]) and torch.equal(value, ref[1])


@pytest.mark.parametrize("backend", ["faiss", "auto"])
@pytest.mark.parametrize("cost", ["sqeuclidean", "l1"])
def test_every_backend_and_cost_equals_unsharded(problem, cost, backend):
    pytest.importorskip("faiss")
    x, path, psi = problem
    ref = c_transform(x, path, psi, cost, backend)
    got = sharded_c_transform(x, path, psi, cost, backend, budget=4 * CHUNK * ROW)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_cluster_equals_unsharded(problem, dask_cluster):
    from ootrain.engine.compute import Compute
    x, path, psi = problem
    ref = c_transform(x, path, psi, "sqeuclidean", "torch")
    with Compute(dask_cluster.scheduler_address).session() as compute:
        for rows in (N, 3 * CHUNK):
            idx, value = sharded_c_transform(x, path, psi, "sqeuclidean", "torch",
                                             budget=rows * ROW, compute=compute,
                                             query_rows=100)
            assert torch.equal(idx, ref[0]) and torch.equal(value, ref[1])
        ot = SemiDiscreteOT(path, backend="torch")
        ot.potentials = psi
        assert torch.equal(ot.assign(x, budget=2 * CHUNK * ROW, compute=compute),
                           ref[0])


def test_in_memory_targets_on_a_cluster_are_refused(problem, dask_cluster):
    from ootrain.engine.compute import Compute
    x, path, psi = problem
    y = zarr.open_array(path, mode="r")
    mem = zarr.create_array(zarr.storage.MemoryStore(), shape=y.shape, chunks=y.chunks,
                            dtype=y.dtype)
    mem[:] = y[:]
    with Compute(dask_cluster.scheduler_address).session() as compute:
        for targets in (torch.as_tensor(y[:]), mem):
            with pytest.raises(ValueError, match=r"^a sharded c-transform on a Dask cluster "
                               r"needs targets its workers can open[^\n]*$"):
                sharded_c_transform(x, targets, psi, budget=2**20, compute=compute)


def test_a_bad_address_is_one_line(problem):
    from ootrain.engine.compute import Compute
    x, path, psi = problem
    with Compute("tcp://127.0.0.1:9").session() as compute, \
            pytest.raises(ConnectionError, match=r"^no Dask scheduler answers at "
                                                 r"tcp://127.0.0.1:9[^\n]*$"):
        sharded_c_transform(x, path, psi, budget=2**20, compute=compute)


@pytest.mark.parametrize("budget", [1, 40, 100, 1000, 12_345, 10**9])
def test_shards_cover_the_targets_within_the_budget(problem, budget):
    """Shards tile [0, N) in order; a shard's rows (as read, plus a converted copy when the
    dtype differs) take at most the budget; whole zarr chunks when one fits."""
    _, path, _ = problem
    src = TargetSource(path)
    for dtype, row in ((torch.float64, D * 8), (torch.float32, D * (8 + 4))):
        if budget < row:
            with pytest.raises(ValueError, match="holds no target row"):
                plan_shards(src, budget, dtype)
            continue
        shards = plan_shards(src, budget, dtype)
        assert shards[0][0] == 0 and shards[-1][1] == N
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
        sizes = [b - a for a, b in shards]
        assert max(sizes) * row <= budget
        if budget >= CHUNK * row:
            assert all(s % CHUNK == 0 for s in sizes[:-1])


def test_soft_plans_refuse_a_sharded_assignment():
    y = torch.as_tensor(np.random.default_rng(3).normal(size=(30, 2)))
    with pytest.raises(ValueError, match="hard argmin only"):
        SemiDiscreteOT(y, cost="l1").assign(y[:4], budget=2**10)


def test_empty_queries_and_bad_query_rows(problem):
    x, path, psi = problem
    idx, value = sharded_c_transform(x[:0], path, psi, budget=2**20)
    assert idx.shape == value.shape == (0,) and idx.dtype == torch.int64
    with pytest.raises(ValueError, match="query_rows must be a positive integer"):
        sharded_c_transform(x, path, psi, budget=2**20, query_rows=0)
