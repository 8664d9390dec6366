"""The engine invariant: out-of-core Run → Sort → ReRun gradient == full-batch autograd gradient;
the engine's refusals (nondeterministic layers, NaN/Inf, bad shapes), step pruning
(``keep_steps``), the in-memory store and :func:`ootrain.methods.train`'s choice of store."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from ootrain.engine.core import (Engine, EngineConfig, GeneratorMethod, NondeterministicModelError,
                                 NonFiniteError, Plan, Population)
from ootrain.methods import rsr
from ootrain.methods.rsr import RSR, SlicedSolver
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
            budget=1 << 30, verify=False, chunk_rows=None, seed=0, real=None, keep_steps=2,
            in_memory=False):
    g, e = _models()
    if real is None:
        real = np.random.default_rng(1).normal(size=(n, 6)) * 0.7 + 0.3
    cfg = EngineConfig(population=b, micro_batch=m, latent_dim=3, seed=seed, dtype="float64",
                       memory_budget=budget, verify=verify, chunk_rows=chunk_rows,
                       keep_steps=keep_steps)
    solver = SlicedSolver(n_directions=k, directions=directions, keep=keep, mode=mode)
    opt = torch.optim.SGD(g.parameters(), lr=0.1)
    method = RSR(g, real, opt, embedding=e, solver=solver, generator_spec="g",
                 embedding_spec="e")
    store = Store(None if in_memory else tmp_path / "store", Engine.store_config(cfg, method))
    return Engine(method, store, cfg), real


def _full_batch_grad(eng: Engine, step: int) -> tuple[list[torch.Tensor], float]:
    """Reference: autograd of the in-memory sliced W2 with the same latents and directions."""
    b = eng.cfg.population
    plan = eng.method.plan(step)
    z = eng.inputs(step, 0, plan.populations[0], 0, b)
    omega = torch.as_tensor(eng.store.array(f"steps/{step}/directions")[:])
    G, E = eng.method.G, eng.method.E
    with torch.no_grad():
        y = E(torch.as_tensor(np.asarray(eng.method.real)))
    G.zero_grad()
    loss = sliced_wasserstein(E(G(z)), y, omega, p=2)
    loss.backward()
    return [p.grad.clone() for p in G.parameters()], float(loss.detach())


def _ooc_grad(eng: Engine, step: int) -> tuple[list[torch.Tensor], float]:
    eng.store.group.require_group(f"steps/{step}")
    eng.run(step)
    metrics = eng.solve(step)
    eng.method.G.zero_grad()
    eng.rerun(step)
    return [p.grad.clone() for p in eng.method.G.parameters()], metrics["loss"]


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
    (3000, 2000, 4096),  # both populations in many buckets
    (3000, 500, 32_000),  # the real one in few buckets
    (3000, 2000, 120_000),  # partition and gather tasks of two stored chunks
    (1000, 3001, 8192),  # n > b, n not a multiple of b: targets straddle buckets
])
def test_external_sort_path_gradient_equals_full_batch(tmp_path, monkeypatch, b, n, budget):
    """A memory budget below one row forces the sample sort (engine.samplesort), here with
    buckets of ~100 values, so targets straddle the real buckets."""
    from ootrain.engine import samplesort
    monkeypatch.setattr(samplesort, "MIN_BUCKET", 100)
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
    assert eng2.load_checkpoint(6)
    for p, q in zip(eng.method.G.parameters(), eng2.method.G.parameters()):
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
        next(eng.method.G.parameters()).add_(0.5)
    with pytest.raises(NondeterministicModelError, match="differ from Run"):
        eng.rerun(0)


class _TwoPlayers:
    """A minimal two-module method: ``player`` is updated, ``aux`` is only run through."""

    def __init__(self, player: nn.Module, aux: nn.Module, real: np.ndarray) -> None:
        self.player, self.aux, self.real_data = player, aux, real
        self.opt = torch.optim.SGD(player.parameters(), 0.1)
        self.solver = SlicedSolver(n_directions=2)

    def config(self):
        return {"method": "two-players"}

    def modules(self):
        return {"player": self.player, "aux": self.aux}

    def optimizers(self):
        return {"player": self.opt}

    def plan(self, step):
        draw = lambda n, rng: rng.standard_normal((n, 3))  # noqa: E731
        return Plan([Population("embeddings", draw, lambda z: self.aux(self.player(z)))],
                    self.solver, self.opt, self.player)


def _nondeterministic_methods():
    """(label, build) pairs: each build() returns a method with one training-mode Dropout or
    BatchNorm in one of its modules (generator, embedding, a non-player module)."""
    real = np.zeros((10, 6))

    def rsr_generator_dropout():
        g, e = _models()
        g = nn.Sequential(g, nn.Dropout(0.5))
        return RSR(g, real, torch.optim.SGD(g.parameters(), 0.1), embedding=e, n_directions=2)

    def rsr_embedding_batchnorm():
        g, e = _models()
        e = nn.Sequential(nn.BatchNorm1d(6).double(), e)
        return RSR(g, real, torch.optim.SGD(g.parameters(), 0.1), embedding=e, n_directions=2)

    def generator_method_alpha_dropout():
        g, e = _models()
        e = nn.Sequential(e, nn.AlphaDropout(0.2))
        return GeneratorMethod(g, e, SlicedSolver(2), real, torch.optim.SGD(g.parameters(), 0.1))

    def aux_module_batchnorm():
        g, _ = _models()
        aux = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)).double()
        return _TwoPlayers(g, aux, real)

    def aux_module_nested_dropout():
        g, _ = _models()
        aux = nn.Sequential(nn.Linear(6, 4), nn.Sequential(nn.Tanh(), nn.Dropout(0.1))).double()
        return _TwoPlayers(g, aux, real)

    return {"rsr-generator-Dropout": (rsr_generator_dropout, "Dropout"),
            "rsr-embedding-BatchNorm": (rsr_embedding_batchnorm, "BatchNorm1d"),
            "embedding-AlphaDropout": (generator_method_alpha_dropout, "AlphaDropout"),
            "aux-module-BatchNorm": (aux_module_batchnorm, "BatchNorm1d"),
            "aux-module-nested-Dropout": (aux_module_nested_dropout, "Dropout")}


@pytest.mark.parametrize("case", list(_nondeterministic_methods()))
def test_dropout_or_batchnorm_in_any_module_is_refused_before_any_work(tmp_path, case):
    build, layer = _nondeterministic_methods()[case]
    method = build()
    cfg = EngineConfig(population=16, micro_batch=4, latent_dim=3, dtype="float64")
    store = Store(tmp_path / "s", Engine.store_config(cfg, method))
    with pytest.raises(NondeterministicModelError, match=layer):
        Engine(method, store, cfg)
    assert list(store.walk_arrays()) == []          # no array written …
    assert store.get_bytes("checkpoints/step-0.pt") is None   # … nor a checkpoint
    store.release()
    # the same through the one training entry point: refused, nothing stored
    from ootrain.methods import train
    with pytest.raises(NondeterministicModelError, match=layer):
        train(build(), 1, cfg, store=str(tmp_path / "t"))
    with Store(tmp_path / "t", mode="r") as st:
        assert list(st.walk_arrays()) == []
        assert st.get_bytes("checkpoints/step-0.pt") is None
    # in eval mode the same layers are deterministic and accepted
    method = build()
    for mod in method.modules().values():
        mod.eval()
    with Store(None, Engine.store_config(cfg, method)) as mem:
        Engine(method, mem, cfg)


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
    # the generic engine embeds the real data without knowing the generated width; the mismatch
    # is refused by the solver at the start of Solve, before any update
    g, _ = _models()
    real = np.zeros((10, 5))
    cfg = EngineConfig(population=16, micro_batch=4, latent_dim=3, dtype="float64")
    method = RSR(g, real, torch.optim.SGD(g.parameters(), 0.1), n_directions=2,
                 generator_spec="g", embedding_spec="e")
    store = Store(tmp_path / "s", Engine.store_config(cfg, method))
    eng = Engine(method, store, cfg)
    before = [p.detach().clone() for p in g.parameters()]
    with pytest.raises(ValueError, match="real embeddings have width 5, generated 6"):
        eng.train(1)
    assert all(torch.equal(p, q) for p, q in zip(g.parameters(), before))
    assert not store.has("steps/0/targets")
    store.release()


def test_nan_from_generator_is_refused_before_storing(tmp_path):
    eng, _ = _engine(tmp_path, 64, 8, 64)
    eng.embed_real()
    with torch.no_grad():
        eng.method.G[0].bias.fill_(float("nan"))
    eng.store.group.require_group("steps/0")
    with pytest.raises(NonFiniteError, match="embeddings 'embeddings' of step 0"):
        eng.run(0)
    assert not eng.store.done("steps/0/embeddings").any()


def test_config_validation():
    with pytest.raises(ValueError, match="micro_batch m=8 exceeds population"):
        EngineConfig(population=4, micro_batch=8, latent_dim=1)
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        EngineConfig(population=64, micro_batch=8, latent_dim=1, chunk_rows=12)
    with pytest.raises(ValueError, match="population must be a positive integer"):
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
    lin = nn.Linear(1, 1)
    method = RSR(Flat(), real, torch.optim.SGD(lin.parameters(), 1), n_directions=2,
                 generator_spec="g", embedding_spec="e")
    store = Store(tmp_path / "s", Engine.store_config(cfg, method))
    eng = Engine(method, store, cfg)
    store.group.require_group("steps/0")
    with pytest.raises(ValueError, match=r"must return \[m, d\]"):
        eng.run(0)
    assert not store.has("steps/0/embeddings")  # refused before the Run array is created
    store.release()


# --------------------------------------------------------------------------- keep_steps
def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_keep_steps_prunes_old_arrays_resumes_and_keeps_algorithm2(tmp_path):
    kw = dict(directions="algorithm2", keep=2, k=5)
    # reference: every array kept, 6 uninterrupted steps
    ref, real = _engine(tmp_path / "ref", 128, 16, 90, keep_steps=None, **kw)
    ref_res = ref.train(6)
    for k in range(6):
        assert ref.store.has(f"steps/{k}/embeddings") and ref.store.has(f"steps/{k}/directions")
    ref.store.release()

    # pruned run: 4 steps, then a fresh engine resumes to 6
    eng, _ = _engine(tmp_path / "pruned", 128, 16, 90, keep_steps=2, real=real, **kw)
    eng.train(4)
    # keep_steps=2: the arrays of at most 2 steps coexist (the running one and the previous one
    # it reads); once step 3 is done, the arrays of steps 0-2 are gone, their attributes stay
    for k in (0, 1, 2):
        assert not eng.store.has(f"steps/{k}/embeddings")
        assert not eng.store.has(f"steps/{k}/directions")
        assert not eng.store.has(f"steps/{k}/targets")
        assert not eng.store.has(f"manifest/steps/{k}/embeddings")
        attrs = eng.store.group[f"steps/{k}"].attrs
        assert attrs["phase"] == "done"
        assert attrs["metrics"] == ref_res[k].metrics
    for name in ("embeddings", "directions", "distances", "targets"):
        assert eng.store.is_complete(f"steps/3/{name}"), name
    assert eng.store.is_complete("real/embeddings")
    # only the checkpoint that resumes the next step is kept
    assert [eng.store.get_bytes(f"checkpoints/step-{k}.pt") is not None for k in range(5)] \
        == [False, False, False, False, True]
    assert eng.completed_steps() == 4
    eng.store.release()

    # resume once for step 4 (algorithm2 reads step 3's directions and distances) …
    eng2, _ = _engine(tmp_path / "pruned", 128, 16, 90, keep_steps=2, real=real, **kw)
    more = eng2.train(5)
    assert [r.step for r in more] == [4]
    assert not eng2.store.has("steps/3/embeddings")
    prev = eng2.store.array("steps/4/directions")[:]
    prev_dist = eng2.store.array("steps/4/distances")[:]
    eng2.store.release()
    # … and again for step 5
    eng3, _ = _engine(tmp_path / "pruned", 128, 16, 90, keep_steps=2, real=real, **kw)
    more += eng3.train(6)
    assert [r.step for r in more] == [4, 5]
    for a, b in zip(more, ref_res[4:]):
        assert a.metrics == b.metrics
    for p, q in zip(eng3.method.G.parameters(), ref.method.G.parameters()):
        assert torch.equal(p, q)
    # algorithm2 at step 5 kept the r directions of step 4 with the largest distances
    omega = eng3.store.array("steps/5/directions")[:]
    top = np.sort(np.argsort(prev_dist)[::-1][:2])
    assert all(any(np.allclose(omega[:, i], prev[:, t]) for i in range(5)) for t in top)
    with Store(tmp_path / "ref" / "store", mode="r") as full:
        np.testing.assert_array_equal(omega, full.array("steps/5/directions")[:])
        np.testing.assert_array_equal(prev, full.array("steps/4/directions")[:])
    assert not eng3.store.has("steps/4/embeddings")
    eng3.store.release()


def test_keep_steps_validation():
    with pytest.raises(ValueError, match="keep_steps must be >= 2"):
        EngineConfig(population=8, micro_batch=4, latent_dim=1, keep_steps=1)
    # keep_steps does not change what is stored: it is not part of the fingerprint
    a = EngineConfig(population=8, micro_batch=4, latent_dim=1, keep_steps=None)
    b = EngineConfig(population=8, micro_batch=4, latent_dim=1, keep_steps=5)
    assert a.fingerprint() == b.fingerprint()


# --------------------------------------------------------------------------- in-memory store
@pytest.mark.parametrize("mode", ["target", "cotangent"])
def test_in_memory_store_is_bit_identical_to_disk(tmp_path, mode):
    disk, real = _engine(tmp_path, 200, 16, 150, k=6, mode=mode, chunk_rows=48)
    mem, _ = _engine(tmp_path / "unused", 200, 16, 150, k=6, mode=mode, chunk_rows=48,
                     real=real, in_memory=True)
    assert mem.store.in_memory and mem.store.url == "<memory>"
    assert not (tmp_path / "unused").exists()  # nothing on disk for the in-memory store
    r_disk, r_mem = disk.train(3), mem.train(3)
    assert [r.metrics for r in r_disk] == [r.metrics for r in r_mem]
    for p, q in zip(disk.method.G.parameters(), mem.method.G.parameters()):
        assert torch.equal(p, q)
    for path in ("steps/2/embeddings", "steps/2/targets", "steps/2/directions",
                 "real/embeddings"):
        np.testing.assert_array_equal(disk.store.array(path)[:], mem.store.array(path)[:])
    # a store in memory keeps no checkpoints (the models in memory are the state; nothing
    # survives the process to resume from), a disk store does
    assert mem.store.get_bytes("checkpoints/step-3.pt") is None
    assert disk.store.get_bytes("checkpoints/step-3.pt") is not None
    assert not mem.store.has("steps/0/embeddings")  # pruned in memory too (keep_steps=2)
    disk.store.release()
    mem.store.release()


# --------------------------------------------------------------------------- train(store=None)
def _train_rsr(budget: int, keep_steps: int | None, steps: int = 3, callback=None):
    from ootrain.methods import train

    g, _ = _models()
    real = np.random.default_rng(1).normal(size=(256, 6)) * 0.7 + 0.3
    cfg = EngineConfig(population=256, micro_batch=32, latent_dim=3, dtype="float64",
                       chunk_rows=64, memory_budget=budget, keep_steps=keep_steps)
    method = RSR(g, real, torch.optim.SGD(g.parameters(), lr=0.1), n_directions=4)
    return train(method, steps, cfg, store=None, callback=callback), cfg


def test_train_without_store_uses_memory_or_a_temporary_folder(tmp_path, monkeypatch):
    from ootrain.methods import estimate_step_bytes

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    g, _ = _models()
    real = np.random.default_rng(1).normal(size=(256, 6))
    cfg = EngineConfig(population=256, micro_batch=32, latent_dim=3, dtype="float64")
    est = estimate_step_bytes(RSR(g, real, torch.optim.SGD(g.parameters(), 0.1),
                                  n_directions=4).bind(cfg), cfg)
    # embeddings [256, 6] twice (embeddings + solver output) + real embeddings [256, 6]
    assert est == (2 * 256 * 6 + 256 * 6) * 8
    # one budget for both runs (it also sizes the solver's passes, so results must not depend
    # on it): 2 kept steps fit, 3 (keep_steps=None over 3 steps) do not
    budget = int(2.5 * est)

    small, _ = _train_rsr(budget, keep_steps=2)
    assert small.store == "<memory>"
    assert list((tmp_path / "tmp").iterdir()) == []

    seen: list[list[str]] = []

    def on_step(res):  # while training, the store is a folder under the temporary directory
        seen.append(sorted(p.name for p in (tmp_path / "tmp").iterdir()))

    big, _ = _train_rsr(budget, keep_steps=None, callback=on_step)
    assert big.store != "<memory>" and big.store.endswith("run.zarr")
    assert big.store.startswith(str(tmp_path / "tmp"))
    assert len(seen) == 3 and all(len(s) == 1 and s[0].startswith("ootrain-store-")
                                  for s in seen)
    assert not os.path.exists(big.store)
    assert list((tmp_path / "tmp").iterdir()) == []   # the temporary folder is removed

    assert [r.step for r in small.results] == [r.step for r in big.results] == [0, 1, 2]
    assert [r.metrics for r in small.results] == [r.metrics for r in big.results]
    for p, q in zip(small.method.G.parameters(), big.method.G.parameters()):
        assert torch.equal(p, q)


def test_train_without_store_removes_temporary_folder_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def boom(res):
        raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):
        _train_rsr(1024, keep_steps=None, callback=boom)   # tiny budget: a temporary folder
    assert list((tmp_path / "tmp").iterdir()) == []


def test_resumed_out_of_core_solve_stays_out_of_core(tmp_path, monkeypatch):
    """A Solve interrupted under a budget below one row resumes on the sample sort (it used
    to read the one-direction chunks of the targets as an in-memory pass of one direction,
    ignoring the budget), and ends with the same targets."""
    b, n, budget = 1000, 800, 8192
    eng, _ = _engine(tmp_path, b, 100, n, budget=budget, chunk_rows=500, k=3)
    eng.embed_real()
    eng.store.group.require_group("steps/0")
    eng.run(0)
    eng.solve(0)
    full = eng.store.array("steps/0/targets")[:]
    # as if killed after the first direction: flags of directions 1, 2 cleared
    eng.store._manifest("steps/0/targets")[2:] = 0     # 2 chunks of 500 per direction
    eng.store._manifest("steps/0/distances")[1:] = 0
    eng.store.group["steps/0"].attrs.update({"solved": False})
    used = []
    for name in ("_align_sample_sort", "_align_in_memory"):
        original = getattr(rsr, name)
        monkeypatch.setattr(rsr, name, lambda *a, _o=original, _n=name, **k:
                            used.append(_n) or _o(*a, **k))
    eng.solve(0)
    assert used == ["_align_sample_sort"]
    np.testing.assert_array_equal(eng.store.array("steps/0/targets")[:], full)


# --------------------------------------------------------------------------- Solve overlapping Run
def _train_targets(tmp_path, name, *, overlap, steps=2, **kw):
    """Train RSR ``steps`` steps; the stored targets and distances of each step, the final
    parameters, and the observer timings (None where Solve had no observer)."""
    eng, _ = _engine(tmp_path / name, keep_steps=None, **kw)
    eng.cfg.overlap = overlap
    res = eng.train(steps)
    out = [(eng.store.array(f"steps/{k}/targets")[:], eng.store.array(f"steps/{k}/distances")[:])
           for k in range(steps)]
    return out, [p.detach().clone() for p in eng.method.G.parameters()], \
        [r.timings.get("observer") for r in res]


@pytest.mark.parametrize("case", [
    dict(b=257, m=16, n=300, chunk_rows=64),                                  # in memory
    dict(b=257, m=16, n=300, chunk_rows=64, directions="algorithm2", keep=2),  # waits a chunk
    dict(b=6000, m=500, n=5000, chunk_rows=1000, budget=60_000, k=3),         # out of core
])
def test_solve_overlapping_run_stores_what_solve_alone_stores(tmp_path, case):
    """The real side of Solve runs while Run streams (and, in memory, the generated chunks
    are projected as they are stored): the targets, distances and trained parameters are
    bit-identical to a Solve that does it all after Run."""
    if case.get("budget", 1 << 30) < 1 << 20:
        assert rsr.plan_pass(case["b"], case["n"], case["k"], 8, 1000 * 5 * 8,
                             case["budget"]) == 0   # the out-of-core case is out of core
    with_, params, timings = _train_targets(tmp_path, "with", overlap=True, **case)
    alone, params0, timings0 = _train_targets(tmp_path, "alone", overlap=False, **case)
    assert all(t is not None and t > 0 for t in timings) and timings0 == [None, None]
    for (t, d), (t0, d0) in zip(with_, alone):
        np.testing.assert_array_equal(t, t0)
        np.testing.assert_array_equal(d, d0)
    for p, p0 in zip(params, params0):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)


def test_overlap_projects_every_generated_chunk_while_run_streams(tmp_path, monkeypatch):
    """In memory Solve projects no generated chunk from the store when Run was observed in
    this process, and projects exactly the unseen ones otherwise (a resumed Run)."""
    projected = []
    original = rsr._project_into
    monkeypatch.setattr(rsr, "_project_into",
                        lambda out, src, lo, hi, om: (projected.append(lo),
                                                      original(out, src, lo, hi, om))[1])
    eng, _ = _engine(tmp_path, 256, 16, 300, chunk_rows=64)
    eng.cfg.overlap = True
    eng.train(1)
    assert projected == []
    # step 1's Run already stored two chunks: those are not seen, so Solve projects them
    eng.store.group.require_group("steps/1")
    plan = eng.method.plan(1)
    eng._require_populations(1, plan)
    x = np.concatenate([eng.method.embed(eng.inputs(1, 0, plan.populations[0], lo, lo + 64))
                        .detach().numpy() for lo in (0, 64)])
    for c in (0, 1):
        eng.store.write_chunk("steps/1/embeddings", (c, 0), x[64 * c:64 * (c + 1)])
    eng.train(2)
    assert sorted(projected) == [0, 64]


def test_a_failed_run_stops_the_observer_before_the_error(tmp_path, monkeypatch):
    """Run fails midway: the observer's background work is waited for (no thread left
    writing to the store) and the Run's error is the one raised."""
    import threading

    eng, _ = _engine(tmp_path, 256, 16, 300, chunk_rows=64)
    eng.cfg.overlap = True
    calls = []
    embed = eng.method.embed

    def bad(z):
        calls.append(1)
        e = embed(z)
        return e * float("nan") if len(calls) > 6 else e
    eng.method.embed = bad
    with pytest.raises(NonFiniteError, match="embeddings"):
        eng.train(1)
    assert not [t for t in threading.enumerate() if t.name.startswith("ootrain-rsr-overlap")]


@pytest.mark.parametrize("killed_after", ["sort/generated/mapped_stats", "sort/real/records"])
def test_out_of_core_solve_killed_while_deleting_its_sorts_keeps_its_distances(
        tmp_path, monkeypatch, killed_after):
    """A Solve out of core killed while it deletes its sample sorts (the targets all stored):
    the resumed Solve ends with the distances of an uninterrupted one, and no sort arrays.
    The distances were written after the deletion, so a kill after the generated sort's
    ``mapped_stats`` was gone made the resumed Solve redo the sorts, skip the mapping (every
    chunk of targets gathered) and take the W2² from a new, empty ``mapped_stats``."""
    b, n, budget = 1000, 800, 8192
    ref, _ = _engine(tmp_path / "ref", b, 100, n, budget=budget, chunk_rows=500, k=3)
    ref.embed_real()
    ref.store.group.require_group("steps/0")
    ref.run(0)
    ref.solve(0)
    eng, _ = _engine(tmp_path / "cut", b, 100, n, budget=budget, chunk_rows=500, k=3)
    eng.embed_real()
    eng.store.group.require_group("steps/0")
    eng.run(0)

    class Killed(Exception):
        pass

    delete_array = Store.delete_array

    def killing_delete_array(self, path):
        delete_array(self, path)
        if path == f"steps/0/{killed_after}":
            raise Killed(path)

    monkeypatch.setattr(Store, "delete_array", killing_delete_array)
    with pytest.raises(Killed):
        eng.solve(0)
    monkeypatch.setattr(Store, "delete_array", delete_array)
    eng.solve(0)
    for name in ("targets", "distances"):
        np.testing.assert_array_equal(eng.store.array(f"steps/0/{name}")[:],
                                      ref.store.array(f"steps/0/{name}")[:])
    for side in ("real", "generated"):
        assert list(eng.store.group[f"steps/0/sort/{side}"].array_keys()) == []


def test_overlap_by_default_only_where_run_leaves_a_core_free(tmp_path, monkeypatch):
    """``overlap=None``: the observer runs when Run leaves a CPU core free — models on a GPU
    (a core per rank feeds it), or more usable cores than the node's ranks' torch threads."""
    from ootrain.engine import core

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(core, "available_cpus", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert not core.run_leaves_cores(cpu) and core.run_leaves_cores(gpu)   # 2 x 4 = 8 busy
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert core.run_leaves_cores(cpu)
    monkeypatch.setattr(core, "available_cpus", lambda: 4)
    assert not core.run_leaves_cores(cpu) and core.run_leaves_cores(gpu)
    # the engine asks it when overlap is None: no observer on saturated cores
    eng, _ = _engine(tmp_path, 256, 16, 300, chunk_rows=64)
    assert eng.cfg.overlap is None
    assert eng.train(1)[0].timings.get("observer") is None
