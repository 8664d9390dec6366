"""A step killed mid-Run or mid-Solve resumes to exactly the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from ootrain.store import Store

_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np, torch
    from torch import nn
    from ootrain.engine.core import EngineConfig
    from ootrain.methods import RSR, make_optimizer, train

    torch.set_num_threads(1)

    class SlowMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
        def forward(self, z):
            time.sleep(float(sys.argv[2]))
            return self.net(z)

    torch.manual_seed(0)
    G = SlowMLP()
    real = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    cfg = EngineConfig(population=1024, micro_batch=16, latent_dim=2, chunk_rows=32, seed=3)
    method = RSR(G, real, make_optimizer(G.parameters(), "adam", 1e-2), n_directions=4,
                 generator_spec="slow-mlp", embedding_spec="identity")
    train(method, 2, cfg, store=sys.argv[1])
    print("finished", flush=True)
""")


def _run(store: str, sleep: float) -> subprocess.Popen:
    env = dict(os.environ, OOTRAIN_NO_PROGRESS="1")
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, store, str(sleep)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final_state(store: str) -> dict[str, torch.Tensor]:
    import io

    raw = Store(store, mode="r").get_bytes("checkpoints/step-2.pt")
    return torch.load(io.BytesIO(raw), weights_only=True)["modules"]["generator"]


def test_killed_run_resumes_to_uninterrupted_result(tmp_path):
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    p = _run(ref, 0.0)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    p = _run(cut, 0.05)  # Run of step 0 then takes ~3 s: a wide window to kill it in
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            done = Store(cut, mode="r").done("steps/0/embeddings")
        except Exception:
            continue
        if 4 <= done.sum() < done.size:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed_at = int(done.sum())
            break
    assert killed_at is not None, "the run finished before it could be killed mid-Run"
    p = _run(cut, 0.0)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "taking over the lock" in err  # the killed writer's lock was stale
    a, b = _final_state(ref), _final_state(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    emb_ref = Store(ref, mode="r").array("steps/1/embeddings")[:]
    emb_cut = Store(cut, mode="r").array("steps/1/embeddings")[:]
    np.testing.assert_array_equal(emb_ref, emb_cut)


def test_killed_solve_resumes_to_uninterrupted_result(tmp_path, monkeypatch):
    from torch import nn

    from ootrain.methods import rsr
    from ootrain.engine.core import Engine, EngineConfig

    def make(path):
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        real = np.random.default_rng(0).normal(size=(300, 3))
        # the budget holds two directions at a time: Solve aligns them in 3 passes
        cfg = EngineConfig(population=256, micro_batch=16, latent_dim=2, chunk_rows=64,
                           dtype="float64", memory_budget=24000)
        solver = rsr.SlicedSolver(n_directions=6, mode="cotangent")
        assert rsr.plan_pass(256, 300, 6, 8, 64 * 3 * 8, cfg.memory_budget) == 2
        method = rsr.RSR(G, real, torch.optim.SGD(G.parameters(), lr=0.1), solver=solver,
                         generator_spec="g", embedding_spec="e")
        store = Store(path, Engine.store_config(cfg, method))
        return Engine(method, store, cfg)

    ref = make(tmp_path / "ref")
    ref.train(1)
    calls = {"n": 0}
    original = rsr._align_in_memory

    def dies_on_second_pass(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-Solve")
        return original(*args, **kwargs)

    cut = make(tmp_path / "cut")
    monkeypatch.setattr(rsr, "_align_in_memory", dies_on_second_pass)
    with pytest.raises(KeyboardInterrupt):
        cut.train(1)
    cut.store.release()
    assert cut.store.done("steps/0/distances").tolist() == [True] * 2 + [False] * 4
    monkeypatch.setattr(rsr, "_align_in_memory", original)
    resumed = make(tmp_path / "cut")
    resumed.train(1)
    for p, q in zip(ref.method.G.parameters(), resumed.method.G.parameters()):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(ref.store.array("steps/0/cotangents")[:],
                                  resumed.store.array("steps/0/cotangents")[:])
