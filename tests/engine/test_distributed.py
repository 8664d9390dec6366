"""torch.distributed (gloo): sharded Run/ReRun over 2 ranks gives the single-process gradient."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ootrain.engine.core import Engine, EngineConfig
from ootrain.methods.training import open_shared_store
from ootrain.methods.rsr import RSR, SlicedSolver


def _engine(store_path: str) -> Engine:
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    real = np.random.default_rng(1).normal(size=(150, 4))
    cfg = EngineConfig(population=200, micro_batch=10, latent_dim=3, chunk_rows=40,
                       dtype="float64")
    solver = SlicedSolver(n_directions=5)
    method = RSR(G, real, torch.optim.SGD(G.parameters(), lr=0.1), solver=solver,
                 generator_spec="g", embedding_spec="e")
    store = open_shared_store(store_path, Engine.store_config(cfg, method))
    return Engine(method, store, cfg)


def _grads(eng: Engine) -> list[torch.Tensor]:
    eng.embed_real()
    if eng.rank == 0:
        eng.store.group.require_group("steps/0")
    if eng.world > 1:
        dist.barrier()
    eng.run(0)
    eng.solve(0)
    eng.method.G.zero_grad()
    eng.rerun(0)
    return [p.grad.clone() for p in eng.method.G.parameters()]


def _worker(rank: int, world: int, init: str, store_path: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))  # a failing rank must not hang CI
    try:
        eng = _engine(store_path)
        grads = _grads(eng)
        if rank == 0:
            torch.save(grads, out)
        eng.store.release()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_ranks_match_single_process(tmp_path):
    single = _engine(str(tmp_path / "single"))
    ref = _grads(single)
    single.store.release()
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path / "multi"), out),
             nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
