"""OTS + FIT's Solve with targets sharded over Dask tasks (targets in a zarr array larger
than one shard of the task's budget) writes the assignments and costs of the unsharded
Solve, on this thread, on local threads and on a ``LocalCluster`` of 2 worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

import ootrain.methods.gradual as gradual
from ootrain.engine import Compute, Engine, EngineConfig
from ootrain.methods.gradual import OTSFIT, GradualConfig
from ootrain.ot.sharded import SHARD_SHARE
from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.store import Store

N, CHUNK = 300, 16
SHARDED = 64 * 2 * 8 * SHARD_SHARE   # a task's budget for 64 rows (d = 2, float64) a shard
WHOLE = 1 << 30                          # one shard: the per-chunk tasks


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    g = np.random.default_rng(2)
    y = g.normal(size=(N, 2))
    y[250] = y[10]   # a tie across shards
    path = tmp_path_factory.mktemp("targets") / "y.zarr"
    zarr.create_array(str(path), shape=y.shape, chunks=(CHUNK, 2), dtype="f8")[:] = y
    return str(path)


def _solve(targets: str, path, compute: Compute, budget: int) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    G = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(),
                            torch.nn.Linear(16, 2)).double()
    ot = SemiDiscreteOT(targets, backend="torch")
    ot.potentials = torch.linspace(-0.3, 0.3, N, dtype=torch.float64)
    method = OTSFIT(G, ot, torch.optim.SGD(G.parameters(), 0.1), GradualConfig())
    cfg = EngineConfig(population=240, micro_batch=16, latent_dim=3, chunk_rows=48,
                       dtype="float64", seed=5, memory_budget=budget)
    method.bind(cfg)
    with compute.session(), Store(path, Engine.store_config(cfg, method)) as store:
        eng = Engine(method, store, cfg, compute=compute)
        store.group.require_group("steps/0")
        eng.run(0)
        eng.solve(0)
        return {k: store.array(f"steps/0/{k}")[:] for k in ("assignments", "costs")}


def test_sharded_solve_equals_unsharded(targets, tmp_path, dask_cluster, monkeypatch):
    ref = _solve(targets, tmp_path / "whole.zarr", Compute(workers=1), WHOLE)
    assert len(np.unique(ref["assignments"])) > 10
    calls = []

    def spy(graph, queries, y, psi, shards, *args, **kw):
        calls.append(len(shards))
        return argmin_tasks(graph, queries, y, psi, shards, *args, **kw)

    argmin_tasks = gradual.argmin_tasks
    monkeypatch.setattr(gradual, "argmin_tasks", spy)
    for name, compute in [("sync", Compute(workers=1)), ("threads", Compute(workers=2)),
                          ("cluster", Compute(dask_cluster.scheduler_address))]:
        got = _solve(targets, tmp_path / f"{name}.zarr", compute, SHARDED)
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{name}: {key}")
    assert calls == [5, 10, 5]   # 64 rows a shard; 32 on 2 local threads sharing the budget
