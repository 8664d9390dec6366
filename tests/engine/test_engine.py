"""The engine invariant: out-of-core Run → Sort → ReRun gradient == full-batch autograd gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ootrain.engine.core import Engine, EngineConfig, NondeterministicModelError, NonFiniteError
from ootrain.methods import rsr
from ootrain.methods.rsr import SlicedSolver
from ootrain.ot.sliced import sliced_wasserstein
from ootrain.store import Store


def _models(seed: int = 0, zdim: int = 3, d: int = 5) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(zdim, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    e = nn.Sequential(nn.Linear(6, d), nn.Tanh()).double()
    for p in e.parameters():
        p.requires_grad_(False)
    return g, e


def _engine(tmp_path, b, m, n, *, mode="target", directions="gaussian", keep=0, k=4,
            budget=1 << 30, verify=False, chunk_rows=None, seed=0, real=None):
    g, e = _models()
    if real is None:
        real = np.random.default_rng(1).normal(size=(n, 6)) * 0.7 + 0.3
    cfg = EngineConfig(population=b, micro_batch=m, latent_dim=3, seed=seed, dtype="float64",
                       memory_budget=budget, verify=verify, chunk_rows=chunk_rows)
    solver = SlicedSolver(n_directions=k, directions=directions, keep=keep, mode=mode)
    store = Store(tmp_path / "store", Engine.store_config(cfg, solver, "g", "e", real))
    opt = torch.optim.SGD(g.parameters(), lr=0.1)
    return Engine(g, e, solver, real, store, opt, cfg), real


def _full_batch_grad(eng: Engine, step: int) -> tuple[list[torch.Tensor], float]:
    """Reference: autograd of the in-memory sliced W2 with the same latents and directions."""
    b = eng.cfg.population
    z = torch.as_tensor(eng._latents(step, 0, b))
    omega = torch.as_tensor(eng.store.array(f"steps/{step}/directions")[:])
    with torch.no_grad():
        y = eng.E(torch.as_tensor(np.asarray(eng.real_data)))
    eng.G.zero_grad()
    loss = sliced_wasserstein(eng.E(eng.G(z)), y, omega, p=2)
    loss.backward()
    return [p.grad.clone() for p in eng.G.parameters()], float(loss.detach())


def _ooc_grad(eng: Engine, step: int) -> tuple[list[torch.Tensor], float]:
    eng.store.group.require_group(f"steps/{step}")
    eng.run(step)
    metrics = eng.solve(step)
    eng.G.zero_grad()
    eng.rerun(step)
    return [p.grad.clone() for p in eng.G.parameters()], metrics["loss"]


def _rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    den = sum(float(y.pow(2).sum()) for y in b) ** 0.5
    return num / den


@pytest.mark.parametrize("b,m,n,chunk_rows", [(64, 4, 64, 16), (100, 8, 37, 24),
                                              (257, 16, 1000, 64), (30, 30, 7, None)])
@pytest.mark.parametrize("mode", ["target", "cotangent"])
def test_out_of_core_gradient_equals_full_batch(tmp_path, b, m, n, chunk_rows, mode):
    eng, _ = _engine(tmp_path, b, m, n, mode=mode, chunk_rows=chunk_rows)
    _assert_invariant(eng, loss_rel=1e-10)


@pytest.mark.parametrize("b,n,budget", [
    (3000, 2000, 4096),  # both rows out of core (the real row through a spill file)
    (3000, 500, 32_000),  # generated row out of core, real row sorted in memory
    (1000, 3001, 8192),  # n > b, n not a multiple of b: targets straddle buckets
])
def test_external_sort_path_gradient_equals_full_batch(tmp_path, b, n, budget):
    """A memory budget below one row forces the external sort (sort.external_argsort)."""
    eng, _ = _engine(tmp_path, b, 100, n, budget=budget, chunk_rows=500, k=2)
    assert rsr.plan_pass(b, n, 2, 8, 500 * 6 * 8, budget) == 0
    _assert_invariant(eng, loss_rel=1e-9)


def _assert_invariant(eng: Engine, loss_rel: float) -> None:
    """Step 0 out of core == full-batch autograd: gradient to 1e-5, loss to ``loss_rel``."""
    eng.embed_real()
    g_ooc, loss_ooc = _ooc_grad(eng, 0)
    g_ref, loss_ref = _full_batch_grad(eng, 0)
    assert _rel_err(g_ooc, g_ref) <= 1e-5
    assert loss_ooc == pytest.approx(loss_ref, rel=loss_rel)


def test_algorithm2_second_step_invariant(tmp_path):
    eng, _ = _engine(tmp_path, 128, 16, 90, directions="algorithm2", keep=2, k=5)
    eng.embed_real()
    eng.step(0)
    prev = eng.store.array("steps/0/directions")[:]
    prev_dist = eng.store.array("steps/0/distances")[:]
    g_ooc, _ = _ooc_grad(eng, 1)
    omega = eng.store.array("steps/1/directions")[:]
    top = np.sort(np.argsort(prev_dist)[::-1][:2])
    kept = [any(np.allclose(omega[:, i], prev[:, t]) for i in range(5)) for t in top]
    assert all(kept)
    g_ref, _ = _full_batch_grad(eng, 1)
    assert _rel_err(g_ooc, g_ref) <= 1e-5


def test_training_reduces_loss_and_resumes(tmp_path):
    eng, real = _engine(tmp_path, 256, 32, 256, k=8)
    res = eng.train(6)
    assert [r.step for r in res] == list(range(6))
    assert res[-1].metrics["loss"] < res[0].metrics["loss"]
    eng.store.release()
    # reopening the same store continues where it stopped
    eng2, _ = _engine(tmp_path, 256, 32, 256, k=8, real=real)
    assert eng2.completed_steps() == 6
    assert eng2._load_checkpoint(6)
    for p, q in zip(eng.G.parameters(), eng2.G.parameters()):
        assert torch.equal(p, q)  # the checkpoint holds the weights after the 6th update
    more = eng2.train(7)
    assert [r.step for r in more] == [6]


def test_verify_detects_weights_changed_between_run_and_rerun(tmp_path):
    eng, _ = _engine(tmp_path, 64, 8, 64, verify=True)
    eng.embed_real()
    eng.store.group.require_group("steps/0")
    eng.run(0)
    eng.solve(0)
    with torch.no_grad():
        next(eng.G.parameters()).add_(0.5)
    with pytest.raises(NondeterministicModelError, match="differ from Run"):
        eng.rerun(0)


def test_dropout_is_refused_before_any_work(tmp_path):
    g, e = _models()
    g = nn.Sequential(g, nn.Dropout(0.5))
    real = np.zeros((10, 6))
    cfg = EngineConfig(population=16, micro_batch=4, latent_dim=3, dtype="float64")
    solver = SlicedSolver(n_directions=2)
    store = Store(tmp_path / "s", Engine.store_config(cfg, solver, "g", "e", real))
    with pytest.raises(NondeterministicModelError, match="Dropout"):
        Engine(g, e, solver, real, store, torch.optim.SGD(g.parameters(), 0.1), cfg)


def test_nan_embeddings_are_refused(tmp_path):
    real = np.random.default_rng(0).normal(size=(10, 6))
    real[3, 2] = np.nan
    eng, _ = _engine(tmp_path, 16, 4, 10, real=real)
    with pytest.raises(NonFiniteError, match="NaN"):
        eng.embed_real()


def test_bad_real_data_shape_and_dtype(tmp_path):
    with pytest.raises(ValueError, match=r"2-D array \[n, D\]"):
        _engine(tmp_path / "a", 16, 4, 10, real=np.zeros(10))
    with pytest.raises(ValueError, match="floating point"):
        _engine(tmp_path / "b", 16, 4, 10, real=np.zeros((10, 6), dtype=np.int64))
    eng, _ = _engine(tmp_path / "c", 16, 4, 10, real=np.zeros((10, 7)))
    with pytest.raises(RuntimeError, match="7"):  # torch: E cannot take width 7 (expects 6)
        eng.embed_real()


def test_real_embedding_width_mismatch(tmp_path):
    g, _ = _models()
    real = np.zeros((10, 5))
    cfg = EngineConfig(population=16, micro_batch=4, latent_dim=3, dtype="float64")
    solver = SlicedSolver(n_directions=2)
    store = Store(tmp_path / "s", Engine.store_config(cfg, solver, "g", "e", real))
    eng = Engine(g, nn.Identity(), solver, real, store, torch.optim.SGD(g.parameters(), 0.1), cfg)
    with pytest.raises(ValueError, match="does not fit the embedding"):
        eng.embed_real()


def test_nan_from_generator_is_refused_before_storing(tmp_path):
    eng, _ = _engine(tmp_path, 64, 8, 64)
    eng.embed_real()
    with torch.no_grad():
        eng.G[0].bias.fill_(float("nan"))
    eng.store.group.require_group("steps/0")
    with pytest.raises(NonFiniteError, match="embeddings of step 0"):
        eng.run(0)
    assert not eng.store.done("steps/0/embeddings").any()


def test_config_validation():
    with pytest.raises(ValueError, match="micro_batch m=8 exceeds population"):
        EngineConfig(population=4, micro_batch=8, latent_dim=1)
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        EngineConfig(population=64, micro_batch=8, latent_dim=1, chunk_rows=12)
    with pytest.raises(ValueError, match="population must be positive"):
        EngineConfig(population=0, micro_batch=1, latent_dim=1)
    with pytest.raises(ValueError, match="directions must be"):
        SlicedSolver(n_directions=4, directions="orthogonal")
    with pytest.raises(ValueError, match=r"keep r=5 must be in \[0, k=4\]"):
        SlicedSolver(n_directions=4, keep=5)


def test_generator_output_shape_is_checked(tmp_path):
    class Flat(nn.Module):
        def forward(self, z):
            return z.sum()

    real = np.zeros((10, 6))
    cfg = EngineConfig(population=16, micro_batch=4, latent_dim=3, dtype="float64")
    solver = SlicedSolver(n_directions=2)
    store = Store(tmp_path / "s", Engine.store_config(cfg, solver, "g", "e", real))
    lin = nn.Linear(1, 1)
    with pytest.raises(ValueError, match=r"must return \[m, d\]"):
        Engine(Flat(), nn.Identity(), solver, real, store, torch.optim.SGD(lin.parameters(), 1),
               cfg)
