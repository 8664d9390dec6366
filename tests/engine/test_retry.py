"""A step that fails midway in the same process: retried from its checkpoint on disk (no update
applied twice), refused in memory (no checkpoint to restore); pruning of plain keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ootrain.engine import Engine, EngineConfig
from ootrain.methods import RSR
from ootrain.store import Store


def _method(seed: int = 0) -> RSR:
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    real = np.random.default_rng(1).normal(size=(64, 2))
    return RSR(G, real, torch.optim.Adam(G.parameters(), 1e-2), n_directions=4)


CFG = EngineConfig(population=64, micro_batch=16, latent_dim=3, dtype="float64")


def _fail_after_the_update(method: RSR) -> None:
    """Make the next finish_step raise, after the optimiser has stepped."""
    def boom(step, metrics):
        del method.finish_step
        raise RuntimeError("boom")
    method.finish_step = boom


def test_a_failed_step_retried_on_disk_restarts_from_its_checkpoint(tmp_path):
    ref = _method()
    with Store(tmp_path / "ref.zarr", Engine.store_config(CFG, ref)) as st:
        Engine(ref, st, CFG).train(3)
    m = _method()
    with Store(tmp_path / "s.zarr", Engine.store_config(CFG, m)) as st:
        eng = Engine(m, st, CFG)
        eng.train(1)
        _fail_after_the_update(m)
        with pytest.raises(RuntimeError, match="boom"):
            eng.train(3)
        eng.train(3)             # same engine, same process: step 1 again from its checkpoint
    for a, b in zip(ref.G.parameters(), m.G.parameters()):
        assert torch.equal(a, b)


def test_a_failed_step_in_memory_is_refused_and_so_is_a_second_engine():
    m = _method()
    st = Store(None, Engine.store_config(CFG, m))
    eng = Engine(m, st, CFG)
    eng.train(1)
    _fail_after_the_update(m)
    with pytest.raises(RuntimeError, match="boom"):
        eng.train(3)
    with pytest.raises(RuntimeError, match="in-memory store keeps no checkpoints"):
        eng.train(3)
    other = _method()
    st2 = Store(None, Engine.store_config(CFG, other))
    Engine(other, st2, CFG).train(2)
    with pytest.raises(RuntimeError, match="in-memory store has 2 completed steps"):
        Engine(_method(), st2, CFG).train(3)


def test_pruning_removes_the_plain_keys_of_old_steps(tmp_path):
    m = _method()
    for where in (None, tmp_path / "s.zarr"):
        st = Store(where, Engine.store_config(CFG, m))
        eng = Engine(m, st, CFG)
        eng.train(1)
        st.put_bytes("steps/0/extra.pt", b"state")
        eng.train(3)
        assert st.get_bytes("steps/0/extra.pt") is None
        assert st.group["steps/0"].attrs["phase"] == "done"       # the attributes stay
        keys = [k for k in ("checkpoints/step-1.pt", "checkpoints/step-2.pt",
                            "checkpoints/step-3.pt") if st.get_bytes(k) is not None]
        assert keys == ([] if where is None else ["checkpoints/step-3.pt"])
        st.release()
