"""Two real ``torchrun`` ranks (gloo) give one process's gradients for every method: each
step's ReRun-accumulated gradient (chunks sharded over the ranks, all-reduced), and a whole
OTS + FIT round (OTS on rank 0, FIT's replay with each micro-batch split over the ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invariant import CASES, every_case

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    out = tmp / "ranks.pt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                          "2", "--master_port", str(29000 + os.getpid() % 1000),
                          str(TESTS / "invariant.py"), str(tmp / "two"), str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return every_case(tmp / "one"), torch.load(out, weights_only=True)


@pytest.mark.parametrize("case", [*CASES, "ots_fit_round"])
def test_two_ranks_give_one_process(both, case):
    one, two = both
    assert len(one[case]) == len(two[case]) > 0
    assert any(float(g.abs().max()) > 0 for g in one[case])
    for a, b in zip(one[case], two[case]):
        assert a.dtype == torch.float64
        # ≤ 1e-6 relative (in practice the order of the sums: ~1e-15)
        assert float((a - b).abs().max()) <= 1e-6 * float(a.abs().max()), \
            (case, float((a - b).abs().max()))


SLOW_SOLVE = '''
import sys, time
import numpy as np, torch
from ootrain.distributed import from_environment
from ootrain.engine import Engine, EngineConfig
from ootrain.methods import RSR, SlicedSolver
from ootrain.methods.training import open_shared_store


class Slow(SlicedSolver):
    def solve(self, ctx):
        time.sleep(4)          # rank 0 alone, longer than OOTRAIN_DIST_TIMEOUT
        return super().solve(ctx)


with from_environment():
    torch.manual_seed(0)
    G = torch.nn.Linear(3, 2)
    real = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    cfg = EngineConfig(population=64, micro_batch=16, latent_dim=3)
    method = RSR(G, real, torch.optim.SGD(G.parameters(), 0.1), solver=Slow(n_directions=4))
    method.bind(cfg)
    store = open_shared_store(sys.argv[1], Engine.store_config(cfg, method))
    Engine(method, store, cfg).train(1)
    print("trained")
'''


@pytest.mark.parametrize("alone_timeout, ok", [("60", True), ("1", False)])
def test_the_others_wait_out_work_rank0_does_alone(tmp_path, alone_timeout, ok):
    """A Solve longer than OOTRAIN_DIST_TIMEOUT (2 s) does not stop the run: the other ranks
    wait for rank 0's lone work up to OOTRAIN_DIST_ALONE_TIMEOUT, and past that they stop."""
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SOLVE)
    env = dict(os.environ, OOTRAIN_DIST_TIMEOUT="2", OOTRAIN_DIST_ALONE_TIMEOUT=alone_timeout,
               OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                          "2", "--master_port", str(28000 + os.getpid() % 1000), str(script),
                          str(tmp_path / "s.zarr")], env=env, capture_output=True, text=True,
                         timeout=300)
    if ok:
        assert res.returncode == 0 and res.stdout.count("trained") == 2, res.stderr[-3000:]
    else:
        assert res.returncode != 0 and "the end of step 0's Solve (rank 0)" in res.stderr, \
            res.stderr[-3000:]
