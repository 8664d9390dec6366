"""The engine's device setting (:attr:`EngineConfig.device`): its resolution and errors, that it
stays out of the store's fingerprint, that an explicit ``cpu`` run stores exactly what the
default stores, and that checkpoints hold CPU tensors and restore models and optimiser state
(CPU only: no GPU is faked here; ``benchmarks/gpu_check.py`` checks CUDA on a device)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from ootrain.engine import Engine, EngineConfig, place, resolve_device
from ootrain.methods.rsr import RSR, SlicedSolver
from ootrain.store import Store

GPU = torch.cuda.is_available()


def test_resolve_device():
    assert resolve_device("auto") == (torch.device("cuda", 0) if GPU else torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("tpu", "CPU", "cuda:", "cuda:x", "", 0, None):
        with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    with pytest.raises(ValueError, match="device must be a GPU"):
        resolve_device("cuda:99" if GPU else "cuda")


@pytest.mark.skipif(GPU, reason="checks the refusal of a GPU that is not there")
def test_cuda_without_a_gpu_is_refused_by_the_config():
    with pytest.raises(ValueError, match="device must be a GPU torch can use, got 'cuda:0' but "
                                         "torch sees no CUDA device"):
        EngineConfig(population=8, micro_batch=4, latent_dim=2, device="cuda:0")


def test_device_is_not_in_the_fingerprint():
    kw = dict(population=8, micro_batch=4, latent_dim=2)
    assert "device" not in EngineConfig(**kw).fingerprint()
    assert EngineConfig(**kw, device="cpu").fingerprint() == EngineConfig(**kw).fingerprint()


def _method(seed: int = 0) -> RSR:
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 4))
    real = np.random.default_rng(1).normal(size=(96, 4)).astype(np.float32)
    return RSR(G, real, torch.optim.Adam(G.parameters(), 1e-2), solver=SlicedSolver(8),
               generator_spec="g")


def _train(path, steps: int, **device) -> tuple[RSR, Engine]:
    cfg = EngineConfig(population=96, micro_batch=32, latent_dim=3, chunk_rows=32, **device)
    method = _method()
    store = Store(str(path), Engine.store_config(cfg, method))
    engine = Engine(method, store, cfg)
    engine.train(steps)
    return method, engine


def _arrays(store: Store) -> dict[str, np.ndarray]:
    return {name: obj[...] for name, obj in store.group.members(max_depth=None)
            if isinstance(obj, zarr.Array)}


@pytest.mark.filterwarnings("ignore:Object at")   # the lock file and the checkpoints
def test_explicit_cpu_stores_what_the_default_stores(tmp_path):
    """Bit for bit: every stored array, the checkpoints' bytes, the trained parameters."""
    m1, e1 = _train(tmp_path / "default.zarr", 2)
    m2, e2 = _train(tmp_path / "cpu.zarr", 2, device="cpu")
    assert e2.device == torch.device("cpu")
    a1, a2 = _arrays(e1.store), _arrays(e2.store)
    assert a1.keys() == a2.keys() and a1
    for k in a1:
        assert np.array_equal(a1[k], a2[k]), k
    assert e1.store.get_bytes(e1._ckpt_key(2)) == e2.store.get_bytes(e2._ckpt_key(2))
    for p, q in zip(m1.G.parameters(), m2.G.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_holds_cpu_tensors_and_restores_optimiser_state(tmp_path):
    method, engine = _train(tmp_path / "run.zarr", 1, device="cpu")
    raw = engine.store.get_bytes(engine._ckpt_key(1))
    state = torch.load(io.BytesIO(raw), map_location="meta", weights_only=True)
    assert state["optimizers"]["generator"]["state"]   # Adam's moments were saved
    cpu = torch.load(io.BytesIO(raw), weights_only=True)   # no map_location needed
    tensors = [t for m in cpu["modules"].values() for t in m.values()] + \
        [t for s in cpu["optimizers"]["generator"]["state"].values() for t in s.values()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    # a fresh engine on the same store restores the models and Adam's moments
    fresh = _method(seed=5)
    other = Engine(fresh, engine.store, engine.cfg)
    assert other.load_checkpoint(1)
    for p, q in zip(method.G.parameters(), fresh.G.parameters()):
        assert torch.equal(p, q)
    s1, s2 = method.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s1[k][name], s2[k][name])
            assert s2[k][name].device == next(fresh.G.parameters()).device


def test_place_keeps_optimiser_state():
    method = _method()
    G = method.G
    G(torch.randn(4, 3)).sum().backward()
    method.optimizer.step()
    before = {k: {n: v.clone() for n, v in s.items()} for k, s in
              method.optimizer.state_dict()["state"].items()}
    place(method, torch.device("cpu"))
    after = method.optimizer.state_dict()["state"]
    for k in before:
        for n in before[k]:
            assert torch.equal(before[k][n], after[k][n])
