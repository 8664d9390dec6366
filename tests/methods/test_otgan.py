"""OT-GAN on the engine (ootrain.methods.otgan), ring mode metrics (ootrain.eval.ring), ``ootrain otgan
train`` and the ring pipeline's smoke run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ootrain.cli import app
from ootrain.data import RING8_RADIUS, RING8_STD, sample_ring8
from ootrain.eval.ring import ring8_modes, ring_metrics
from ootrain.engine import Engine, EngineConfig, NondeterministicModelError
from ootrain.methods import train
from ootrain.methods.otgan import (OTGAN, OTGANConfig, _Prev, _ctransform, _unit, energy_step,
                                   make_critic, make_generator)
from ootrain.store import Store
from ootrain.ot.sinkhorn import sinkhorn

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- ring metrics
def test_ring8_modes_are_eight_distinct_modes_of_the_sampler():
    modes = ring8_modes()
    assert modes.shape == (8, 2)
    gaps = np.linalg.norm(modes[:, None] - modes[None], axis=-1) + np.eye(8) * 1e9
    assert gaps.min() > 20 * 3 * RING8_STD                # well separated, none duplicated
    x = sample_ring8(8000, np.random.default_rng(0))
    m = ring_metrics(x, modes, RING8_STD)
    assert m["modes_covered"] == 8 and all(m["covered"])
    # P(|N(0, I_2)| <= 3) = 1 - exp(-9/2) = 0.989
    assert m["high_quality_fraction"] == pytest.approx(0.989, abs=0.006)
    assert min(m["counts"]) > 900 and m["reverse_kl"] < 0.01


def test_ring_metrics_on_constructed_samples():
    modes = ring8_modes()
    on = np.repeat(modes[[0, 2, 5]], [10, 1, 5], axis=0)          # 3 modes, exactly on
    far = np.array([[0.0, 0.0], [modes[1, 0] + 0.07, modes[1, 1]]])  # 0.07 > 3 sigma = 0.06
    m = ring_metrics(np.concatenate([on, far]), modes, RING8_STD)
    assert m["modes_covered"] == 3
    assert m["covered"] == [True, False, True, False, False, True, False, False]
    assert m["counts"] == [10, 0, 1, 0, 0, 5, 0, 0]
    assert m["high_quality_fraction"] == pytest.approx(16 / 18)
    assert sum(m["nearest_counts"]) == 18 and m["n_samples"] == 18
    assert ring_metrics(on, modes, RING8_STD, min_count=2)["modes_covered"] == 2
    # all mass on one mode: reverse KL = log 8
    assert ring_metrics(on[:10], modes)["reverse_kl"] == pytest.approx(np.log(8))
    with pytest.raises(ValueError, match="modes must be"):
        ring_metrics(on, modes[:, :1])
    with pytest.raises(ValueError, match="non-finite"):
        ring_metrics(np.array([[np.nan, 0.0]]))


def test_linspace_bug_sampler_covers_only_seven_modes():
    """``linspace(0, 2 pi, 8)`` puts its first and last angles on the same point: its "8"
    modes are 7 distinct ones, and the metric reports 7/8 against those 8 means (and 1/8
    against the real ring: its other angles miss the true modes by more than 3 sigma)."""
    angles = np.linspace(0, 2 * np.pi, 8)
    bug_modes = RING8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rng = np.random.default_rng(1)
    x = bug_modes[rng.integers(0, 8, 4000)] + RING8_STD * rng.standard_normal((4000, 2))
    m = ring_metrics(x, bug_modes, RING8_STD)
    assert m["modes_covered"] == 7 and m["covered"][-1] is False
    assert m["n_distinct_modes"] == 7
    assert ring_metrics(x, ring8_modes(), RING8_STD)["modes_covered"] == 1


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,value,match", [
    ("eps", 0, "eps"), ("eps", float("nan"), "eps"), ("n_gen", 0, "n_gen"),
    ("sinkhorn_tol", -1, "sinkhorn_tol"), ("sinkhorn_max_iter", 0, "sinkhorn_max_iter"),
    ("sinkhorn_scaling", 1.5, "sinkhorn_scaling"), ("backend", "gpu", "backend"),
    ("backend", "dense", "backend"),
    ("warm_start", "yes", "warm_start"), ("warm_start_method", "copy", "warm_start_method"),
    ("critic_freeze_after", -1, "critic_freeze_after")])
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        OTGANConfig(**{field: value})


def test_schedule_follows_algorithm_1_and_freezing():
    cfg = OTGANConfig(n_gen=3, critic_freeze_after=10)
    players = [cfg.player(k) for k in range(14)]
    assert [k for k, p in enumerate(players) if p == "critic"] == [3, 7]   # t = 4, 8
    assert OTGANConfig(n_gen=1).player(1) == "critic"


# --------------------------------------------------------------------------- training
def _models(seed=0, latent=4):
    return (make_generator(latent, 2, (32, 32), seed=seed),
            make_critic(2, 8, (32, 32), seed=seed + 1))


def _method(G, C, cfg, sampler=sample_ring8, lr=1e-4):
    return OTGAN(G, C, sampler, torch.optim.Adam(G.parameters(), lr, betas=(0.5, 0.999)),
                 torch.optim.Adam(C.parameters(), lr, betas=(0.5, 0.999)), cfg)


def _engine_cfg(b=32, m=16, seed=3, **kw):
    return EngineConfig(population=b, micro_batch=m, latent_dim=4, seed=seed, **kw)


def _d2_of_step(method, ecfg, step):
    """D^2 of step ``step``'s inputs (regenerated from the engine's keys) under the current
    models, solved tightly."""
    eng = Engine(method, Store(None, Engine.store_config(ecfg, method)), ecfg)
    plan = method.plan(step)
    u = {p.name: eng.inputs(step, i, p, 0, ecfg.population)
         for i, p in enumerate(plan.populations)}
    tight = OTGANConfig(**{**method.cfg.to_dict(), "sinkhorn_tol": 1e-6,
                           "sinkhorn_max_iter": 5000})
    with torch.no_grad():
        feats = {"x": method.C(u["x"]), "x2": method.C(u["x2"]),
                 "y": method.C(method.G(u["y"])), "y2": method.C(method.G(u["y2"]))}
        return float(energy_step(feats, tight).value)


@pytest.mark.parametrize("step", [0, 1])   # n_gen = 1: step 0 updates the generator, 1 the critic
def test_one_update_moves_d2_the_right_way(step):
    G, C = _models()
    cfg = OTGANConfig(eps=0.05, n_gen=1, sinkhorn_tol=1e-6, sinkhorn_max_iter=5000)
    method, ecfg = _method(G, C, cfg), _engine_cfg(b=64)
    method.bind(ecfg)
    before = _d2_of_step(method, ecfg, step)
    eng = Engine(method, Store(None, Engine.store_config(ecfg, method)), ecfg)
    res = eng.step(step)
    assert res.metrics["player"] == cfg.player(step)
    assert res.metrics["loss"] == pytest.approx(before, abs=1e-4)
    after = _d2_of_step(method, ecfg, step)
    if cfg.player(step) == "critic":
        assert after > before + 1e-4
    else:
        assert after < before - 1e-4


def test_training_is_deterministic_for_a_seed():
    def run(seed):
        G, C = _models()
        h = train(_method(G, C, OTGANConfig(eps=0.05, sinkhorn_tol=1e-2)), 8,
                  _engine_cfg(seed=seed)).history
        return [r["loss"] for r in h], [r["player"] for r in h], \
            torch.cat([p.detach().flatten() for p in (*G.parameters(), *C.parameters())])

    (l1, p1, w1), (l2, p2, w2), (l3, _, _) = run(0), run(0), run(1)
    assert l1 == l2 and p1 == p2 and torch.equal(w1, w2)
    assert p1.count("critic") == 2 and l1 != l3


def test_ctransform_warm_start_on_the_same_points_converges_at_once():
    rng = torch.Generator().manual_seed(0)
    p, q = _unit(torch.randn(80, 5, generator=rng)), _unit(torch.randn(60, 5, generator=rng))
    cold = sinkhorn(p, q, 0.05, "cosine", tol=1e-6, max_iter=5000)
    g0 = _ctransform(_Prev(p, q, cold.f, cold.g), q, 0.05)
    assert torch.allclose(g0, cold.g, atol=1e-4)
    warm = sinkhorn(p, q, 0.05, "cosine", tol=1e-6, max_iter=5000,
                    init=(torch.zeros(80), g0))
    assert warm.iterations <= 2 < cold.iterations


def test_warm_start_reduces_sinkhorn_iterations():
    """Against a frozen critic with a slowly moving generator, the six solves of an iteration
    start from the previous iteration's (moved) potentials instead of eps-scaling."""
    def iters(warm, method="ctransform"):
        G, C = _models()
        cfg = OTGANConfig(eps=0.05, critic_freeze_after=0, warm_start=warm,
                          warm_start_method=method, sinkhorn_tol=1e-3)
        h = train(_method(G, C, cfg), 12, _engine_cfg(b=64, m=64)).history
        assert not h[0]["warm"] and all(r["warm"] == warm for r in h[1:])
        return sum(r["sinkhorn_iterations"] for r in h[1:])

    cold, ctr, idx = iters(False), iters(True), iters(True, "index")
    assert ctr < 0.75 * cold and idx < 0.75 * cold, (ctr, idx, cold)


def test_resumed_training_is_bit_identical(tmp_path):
    """Six alternating steps in one go == three, then a new process-like restart (fresh models
    and optimisers) resuming from the store to six."""
    def fresh():
        G, C = (m.double() for m in _models())
        return G, C, _method(G, C, OTGANConfig(eps=0.05, n_gen=1, sinkhorn_tol=1e-6))

    ecfg = _engine_cfg(b=30, m=7, chunk_rows=14, dtype="float64")
    G, C, m = fresh()
    train(m, 6, ecfg, store=str(tmp_path / "a.zarr"))
    G2, C2, m2 = fresh()
    train(m2, 3, ecfg, store=str(tmp_path / "b.zarr"))
    G3, C3, m3 = fresh()
    more = train(m3, 6, ecfg, store=str(tmp_path / "b.zarr"))
    assert [r.step for r in more.results] == [3, 4, 5]
    for a, b in zip((*G.parameters(), *C.parameters()), (*G3.parameters(), *C3.parameters())):
        assert torch.equal(a, b)


def test_a_nondeterministic_critic_is_refused_before_any_work():
    G, C = _models()
    noisy = torch.nn.Sequential(torch.nn.Dropout(0.5), C)
    with pytest.raises(NondeterministicModelError, match="Dropout"):
        train(_method(G, noisy, OTGANConfig(eps=0.05)), 2, _engine_cfg())


def test_train_rejects_bad_inputs():
    G, C = _models()
    with pytest.raises(ValueError, match="rows"):
        train(_method(G, C, OTGANConfig(), lambda n, rng: sample_ring8(n + 1, rng)), 1,
              _engine_cfg())
    with pytest.raises(ValueError, match="width"):
        train(_method(G, C, OTGANConfig(), lambda n, rng: np.zeros((n, 3), np.float32)), 1,
              _engine_cfg())
    with pytest.raises(ValueError, match="non-finite"):
        train(_method(G, C, OTGANConfig(), lambda n, rng: np.full((n, 2), np.nan, np.float32)),
              1, _engine_cfg())


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("micro", [[], ["--micro-batch", "6", "--verify"]])
def test_cli_otgan_train_writes_outputs(tmp_path, micro):
    out = tmp_path / "out"
    res = runner.invoke(app, ["otgan", "train", "--out", str(out), "--steps", "5", "-b", "16",
                              *micro,
                              "--n-samples", "300", "--hidden", "16,16", "--critic-hidden",
                              "16", "--feature-dim", "4", "--latent-dim", "3", "--no-progress",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert np.load(out / "samples.npy").shape == (300, 2)
    for png in ("samples.png", "loss.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["history"]) == 5 and hist["config"]["batch"] == 16
    assert hist["config"]["micro_batch"] == (6 if micro else None)
    assert [r["player"] for r in hist["history"]].count("critic") == 1
    assert hist["config"]["engine"]["population"] == 16
    assert hist["config"]["engine"]["micro_batch"] == (6 if micro else 16)
    assert hist["config"]["eps"] == 0.05 and hist["store"] == "<memory>"
    assert [r["step"] for r in hist["history"]] == list(range(5))
    # time_s: the running sum of the steps' step_s, itself the sum of the phase timings
    np.testing.assert_allclose([r["time_s"] for r in hist["history"]],
                               np.cumsum([r["step_s"] for r in hist["history"]]), rtol=1e-12)
    for r in hist["history"]:
        assert r["step_s"] == pytest.approx(sum(v for k, v in r.items()
                                                if k.endswith("_s") and k not in
                                                ("step_s", "time_s")), rel=1e-12)
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["ring_metrics"]
    assert type(m["modes_covered"]) is int
    assert m == ring_metrics(np.load(out / "samples.npy"), ring8_modes())  # from the samples
    assert m["modes_covered"] == sum(m["covered"]) and m["n_samples"] == 300
    assert metrics["final_loss"] == hist["history"][-1]["loss"]
    assert f"modes covered {m['modes_covered']}/8" in res.output
    # the CLI's run is the library's: the same models, method and engine settings trained by
    # train(...) give the same history (timings aside) and the same samples, bit for bit
    from ootrain.jobs.otgan import otgan_engine_config, otgan_method
    from ootrain.data import data_sampler
    from ootrain.models.zoo import generate

    sampler, d, _ = data_sampler("ring8")
    G = make_generator(3, d, (16, 16), layer_norm=True, seed=0)
    C = make_critic(d, 4, (16,), seed=1)
    cfg = OTGANConfig(eps=0.05, n_gen=3, sinkhorn_tol=0.01, sinkhorn_max_iter=1000,
                      backend="auto")
    method = otgan_method(G, C, sampler, cfg, lr_gen=1e-3, lr_critic=1e-3, betas=(0.5, 0.999),
                          real_spec="ring8")
    ecfg = otgan_engine_config(16, 3, 0, 6 if micro else None, bool(micro))
    assert hist["config"]["engine"] == json.loads(json.dumps(dataclasses.asdict(ecfg)))
    lib = train(method, 5, ecfg).history

    def untimed(r):
        return {k: v for k, v in r.items() if not k.endswith("_s")}

    assert [untimed(r) for r in hist["history"]] == json.loads(json.dumps(
        [untimed(r) for r in lib]))
    np.testing.assert_array_equal(np.load(out / "samples.npy"), generate(G, 300, 3, seed=12345))


def test_cli_otgan_train_resumes_from_a_store(tmp_path):
    """--store: 4 steps, then the same command to 6 resumes (2 steps this call) and ends with
    the models of an uninterrupted 6-step run; history.json holds all 6 rows."""
    def cli(out, steps, store):
        res = runner.invoke(app, ["otgan", "train", "--out", str(out), "--steps", str(steps),
                                  "-b", "12", "-m", "6", "--n-gen", "1", "--n-samples", "50",
                                  "--hidden", "8", "--critic-hidden", "8", "--feature-dim",
                                  "4", "--latent-dim", "2", "--no-progress", "--threads", "1",
                                  "--store", str(store)])
        assert res.exit_code == 0, res.output
        return res

    cli(tmp_path / "full", 6, tmp_path / "full.zarr")
    cli(tmp_path / "part", 4, tmp_path / "part.zarr")
    res = cli(tmp_path / "part", 6, tmp_path / "part.zarr")
    assert "2 steps this call" in res.output
    full = json.loads((tmp_path / "full" / "history.json").read_text())["history"]
    part = json.loads((tmp_path / "part" / "history.json").read_text())["history"]
    assert [r["step"] for r in part] == list(range(6))
    assert [r["loss"] for r in part] == [r["loss"] for r in full]
    assert np.array_equal(np.load(tmp_path / "part" / "samples.npy"),
                          np.load(tmp_path / "full" / "samples.npy"))
    # another configuration on the same store is refused as a usage error
    bad = runner.invoke(app, ["otgan", "train", "--out", str(tmp_path / "bad"), "--steps", "6",
                              "-b", "12", "-m", "6", "--n-gen", "2", "--n-samples", "50",
                              "--hidden", "8", "--critic-hidden", "8", "--feature-dim", "4",
                              "--latent-dim", "2", "--no-progress", "--store",
                              str(tmp_path / "part.zarr")])
    assert bad.exit_code != 0 and "--store" in bad.output


# --------------------------------------------------------------------------- pipeline
def test_pipeline_smoke(tmp_path):
    from pipelines import otgan_ring

    summary = otgan_ring.run_pipeline(tmp_path, **otgan_ring.SMOKE, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert {"config", "consistency", "batch_size", "warm_start"} <= set(on_disk)
    for png in ("consistency.png", "batch_size.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC
    with np.load(tmp_path / "consistency_samples.npz") as f:
        assert f["samples"].shape[1:] == (otgan_ring.SMOKE["n_eval"], 2)
        assert len(f["steps"]) == f["samples"].shape[0]


@pytest.mark.parametrize("step", [0, 3])   # a generator update, a critic update (n_gen 3)
def test_streamed_solve_equals_the_in_memory_one(tmp_path, step, monkeypatch):
    """Critic features beyond a quarter of the memory budget are solved by the streamed
    Sinkhorn (blocks read from the store): the same D^2 and the same ReRun gradient as the
    in-memory Solve (float64, tight tolerance)."""
    def run(budget):
        G, C = (m.double() for m in _models())
        method = _method(G, C, OTGANConfig(eps=0.1, sinkhorn_tol=1e-10, sinkhorn_max_iter=5000))
        ecfg = _engine_cfg(b=120, m=20, chunk_rows=40, dtype="float64", memory_budget=budget)
        method.bind(ecfg)
        eng = Engine(method, Store(tmp_path / f"s{budget}.zarr",
                                   Engine.store_config(ecfg, method)), ecfg)
        plan = method.plan(step)
        eng.store.group.require_group(eng.prefix(step))
        eng.run(step, plan)
        metrics = eng.solve(step, plan)
        eng._zero_grads()
        eng.rerun(step, plan)
        return metrics, [p.grad.clone() for p in plan.player.parameters()]

    import ootrain.ot.sinkhorn as sk

    calls = []
    real_streamed = sk.energy_distance_streamed

    def counting(*args, **kw):
        calls.append(kw.get("block_rows"))
        return real_streamed(*args, **kw)

    monkeypatch.setattr(sk, "energy_distance_streamed", counting)
    m_mem, g_mem = run(2**30)
    assert calls == []                                     # in memory: no streamed solve
    m_str, g_str = run(2**14)
    assert len(calls) == 1                                 # the small budget streamed
    assert m_mem["player"] == m_str["player"]
    assert m_str["loss"] == pytest.approx(m_mem["loss"], rel=1e-8)
    for a, b in zip(g_str, g_mem):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
