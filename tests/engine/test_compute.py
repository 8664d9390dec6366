"""Solve's Dask task graphs give the same stored solution on every scheduler: synchronous,
local threads, and a real ``dask.distributed`` cluster (a ``LocalCluster`` of 2 worker
processes reached at its address), in memory and out of core."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ootrain.engine import Compute, Engine, EngineConfig
from ootrain.methods.rsr import RSR, SlicedSolver, plan_pass
from ootrain.store import Store


@pytest.fixture
def cluster(dask_cluster):
    return dask_cluster


def _solve(path, compute: Compute, budget: int, mode: str = "target") -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 4))
    real = np.random.default_rng(1).normal(size=(700, 4)).astype(np.float32)
    cfg = EngineConfig(population=1000, micro_batch=50, latent_dim=3, chunk_rows=200,
                       memory_budget=budget)
    method = RSR(G, real, torch.optim.SGD(G.parameters(), lr=0.1),
                 solver=SlicedSolver(n_directions=5, mode=mode))
    method.bind(cfg)
    with Store(path, Engine.store_config(cfg, method)) as store:
        eng = Engine(method, store, cfg, compute=compute)
        eng.embed_real()
        store.group.require_group("steps/0")
        eng.run(0)
        metrics = eng.solve(0)
        out = {name: store.array(f"steps/0/{name}")[:]
               for name in ("targets", "distances") + (("cotangents",) if mode == "cotangent"
                                                       else ())}
    assert metrics["loss"] == pytest.approx(float(out["distances"].mean()))
    return out


IN_MEMORY, OUT_OF_CORE = 2**26, 2**14


def test_the_budgets_take_both_paths():
    assert plan_pass(1000, 700, 5, 4, 200 * 4 * 4, IN_MEMORY) == 5
    assert plan_pass(1000, 700, 5, 4, 200 * 4 * 4, OUT_OF_CORE) == 0


@pytest.mark.parametrize("budget", [IN_MEMORY, OUT_OF_CORE], ids=["in-memory", "out-of-core"])
def test_every_scheduler_stores_the_same_solution(cluster, tmp_path, budget):
    ref = _solve(tmp_path / "sync.zarr", Compute(workers=1), budget, mode="cotangent")
    assert ref["distances"].min() > 0
    for name, compute in [("threads", Compute(workers=2)),
                          ("cluster", Compute(cluster.scheduler_address))]:
        with compute.session():
            got = _solve(tmp_path / f"{name}.zarr", compute, budget, mode="cotangent")
        for key in ("targets", "cotangents"):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{name}: {key}")
        # out of core, the local threads share the budget: other buckets, other sums' order
        np.testing.assert_allclose(got["distances"], ref["distances"], rtol=1e-13)


def test_a_cluster_needs_a_store_its_workers_can_open(cluster):
    with Compute(cluster.scheduler_address).session() as compute, \
            pytest.raises(ValueError, match="in-memory store"):
        _solve(None, compute, IN_MEMORY)


def test_a_task_error_reaches_the_caller(cluster):
    import dask

    def fails(x):
        raise FloatingPointError(f"bad block {x}")

    with Compute(cluster.scheduler_address).session() as compute, \
            pytest.raises(FloatingPointError, match="bad block 3"):
        compute.run([dask.delayed(fails)(3)])


@pytest.mark.parametrize("cost", ["sqeuclidean", "l1"])
def test_semidiscrete_assignments_are_the_same_on_every_scheduler(cluster, tmp_path, cost):
    """OTS + FIT's Solve: one argmin task per stored chunk (soft assignments sampled with
    per-chunk keys): the same assignments and costs on every scheduler."""
    from invariant import engine_config, ots_fit_case

    def solve(path, compute):
        method, _ = ots_fit_case(cost)
        cfg = engine_config(population=240, chunk_rows=48)
        method.bind(cfg)
        with Store(path, Engine.store_config(cfg, method)) as store, compute.session():
            eng = Engine(method, store, cfg, compute=compute)
            store.group.require_group("steps/0")
            eng.run(0)
            eng.solve(0)
            return {k: store.array(f"steps/0/{k}")[:] for k in ("assignments", "costs")}

    ref = solve(tmp_path / "sync.zarr", Compute(workers=1))
    assert len(np.unique(ref["assignments"])) > 2
    for name, compute in [("threads", Compute(workers=2)),
                          ("cluster", Compute(cluster.scheduler_address))]:
        got = solve(tmp_path / f"{name}.zarr", compute)
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{name}: {key}")


@pytest.mark.parametrize("case", ["rsr", "ots_fit_l1", "otgan_generator", "otgan_critic",
                                  "wgan_potgan_critic", "wgan_potgan_generator"])
def test_every_method_gives_one_process_gradients_with_solve_on_a_cluster(cluster, tmp_path,
                                                                          case):
    """Each method's step (float64) with its Solve on the LocalCluster of 2 worker processes:
    the gradients of Solve in this process (≤ 1e-6 relative; in practice equal)."""
    from invariant import CASES, engine_config, step_gradients

    build, step = CASES[case]
    grads = {}
    for name, compute in [("sync", Compute(workers=1)),
                          ("cluster", Compute(cluster.scheduler_address))]:
        method, _ = build()
        with compute.session():
            grads[name] = step_gradients(method, engine_config(), tmp_path / name, step,
                                         compute=compute)[2]
    assert any(float(g.abs().max()) > 0 for g in grads["sync"])
    for a, b in zip(grads["sync"], grads["cluster"]):
        assert float((a - b).abs().max()) <= 1e-6 * float(a.abs().max()), case
