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
