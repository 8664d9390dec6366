"""OT-GAN in memory (ootrain.methods.otgan), ring mode metrics (ootrain.eval.ring), ``ootrain otgan
train`` and the ring pipeline's smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ootrain.cli.app import app
from ootrain.data import RING8_RADIUS, RING8_STD, sample_ring8
from ootrain.eval.ring import ring8_modes, ring_metrics
from ootrain.methods.otgan import (OTGANConfig, _Prev, _ctransform, _unit, energy_step, make_critic,
                           make_generator, train_otgan)
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
    ("batch", 1, "batch"), ("batch", 2.5, "batch"), ("eps", 0.0, "eps"),
    ("eps", float("nan"), "eps"), ("n_gen", 0, "n_gen"), ("lr_gen", -1e-3, "lr_gen"),
    ("lr_critic", 0, "lr_critic"), ("betas", (0.5, 1.0), "betas"), ("betas", (0.5,), "betas"),
    ("sinkhorn_tol", -1, "sinkhorn_tol"), ("sinkhorn_max_iter", 0, "sinkhorn_max_iter"),
    ("sinkhorn_scaling", 1.5, "sinkhorn_scaling"), ("backend", "gpu", "backend"),
    ("warm_start", "yes", "warm_start"), ("warm_start_method", "copy", "warm_start_method"),
    ("critic_freeze_after", -1, "critic_freeze_after"), ("steps", -1, "steps"),
    ("latent_dim", 0, "latent_dim"), ("seed", 1.5, "seed"), ("micro_batch", 0, "micro_batch"),
    ("micro_batch", 2.0, "micro_batch"), ("verify", 1, "verify")])
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


def _fixed_batch_d2(G, C, cfg, x, x2):
    """D^2 on the batch train_otgan draws at its first iteration (the same x, x2 and z)."""
    z = torch.as_tensor(np.random.default_rng([cfg.seed, 2]).standard_normal(
        (2 * cfg.batch, cfg.latent_dim)), dtype=torch.float32)
    with torch.no_grad():
        y = G(z)
        feats = {"x": C(x), "x2": C(x2), "y": C(y[:cfg.batch]), "y2": C(y[cfg.batch:])}
        cold = OTGANConfig(**{**cfg.to_dict(), "warm_start": False, "sinkhorn_tol": 1e-6,
                              "sinkhorn_max_iter": 5000})
        return float(energy_step(feats, cold)[0].value)


@pytest.mark.parametrize("player", ["critic", "generator"])
def test_one_update_moves_d2_the_right_way_on_a_fixed_batch(player):
    G, C = _models()
    cfg = OTGANConfig(batch=64, eps=0.05, n_gen=1, lr_gen=1e-4, lr_critic=1e-4, steps=1,
                      latent_dim=4, sinkhorn_tol=1e-6, sinkhorn_max_iter=5000, seed=3)
    x, x2 = (torch.as_tensor(sample_ring8(64, np.random.default_rng(s))) for s in (10, 11))
    calls = iter([x, x2])
    before = _fixed_batch_d2(G, C, cfg, x, x2)
    # n_gen = 1: iteration 0 (t = 1) updates the generator, iteration 1 (t = 2) the critic
    hist = train_otgan(G, C, lambda n, rng: next(calls), cfg, progress=False,
                       start_step=1 if player == "critic" else 0)
    assert hist[0]["player"] == player
    assert hist[0]["loss"] == pytest.approx(before, abs=1e-4)
    after = _fixed_batch_d2(G, C, cfg, x, x2)
    if player == "critic":
        assert after > before + 1e-4
    else:
        assert after < before - 1e-4


def test_training_is_deterministic_for_a_seed():
    def run(seed):
        G, C = _models()
        cfg = OTGANConfig(batch=32, eps=0.05, steps=8, latent_dim=4, seed=seed,
                          sinkhorn_tol=1e-2)
        h = train_otgan(G, C, sample_ring8, cfg, progress=False)
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
        cfg = OTGANConfig(batch=64, eps=0.05, steps=12, latent_dim=4, lr_gen=1e-4,
                          critic_freeze_after=0, warm_start=warm, warm_start_method=method,
                          sinkhorn_tol=1e-3)
        h = train_otgan(G, C, sample_ring8, cfg, progress=False)
        assert not h[0]["warm"] and all(r["warm"] == warm for r in h[1:])
        return sum(r["sinkhorn_iterations"] for r in h[1:])

    cold, ctr, idx = iters(False), iters(True), iters(True, "index")
    assert ctr < 0.75 * cold and idx < 0.75 * cold, (ctr, idx, cold)


@pytest.mark.parametrize("warm_start", [False, True])
def test_micro_batched_training_equals_in_memory_training(warm_start):
    """The engine invariant through Algorithm 1: micro-batches of 7 rows (ragged: 30 = 4·7 + 2)
    replayed against the solves' cotangents leave the same parameters, step by step over both
    players, as one autograd graph over the whole batch (float64)."""
    def run(micro_batch):
        G, C = (m.double() for m in _models())
        cfg = OTGANConfig(batch=30, eps=0.05, n_gen=1, steps=6, latent_dim=4, lr_gen=1e-3,
                          lr_critic=1e-3, sinkhorn_tol=1e-9, sinkhorn_max_iter=5000,
                          micro_batch=micro_batch, verify=micro_batch is not None,
                          warm_start=warm_start, seed=5)
        h = train_otgan(G, C, sample_ring8, cfg, progress=False)
        return h, [p.detach().clone() for p in (*G.parameters(), *C.parameters())]

    (h_mem, w_mem), (h_mb, w_mb) = run(None), run(7)
    assert [r["player"] for r in h_mb] == ["generator", "critic"] * 3
    np.testing.assert_allclose([r["loss"] for r in h_mb], [r["loss"] for r in h_mem],
                               rtol=1e-9)
    w0 = [p.detach() for m in _models() for p in m.parameters()]
    for a, b, c in zip(w_mb, w_mem, w0):
        assert not torch.equal(b, c.double())            # every parameter moved …
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)   # … identically


def test_micro_batched_training_rejects_a_nondeterministic_critic():
    from ootrain.engine.core import NondeterministicModelError

    G, C = _models()
    noisy = torch.nn.Sequential(torch.nn.Dropout(0.5), C)
    cfg = OTGANConfig(batch=16, eps=0.05, n_gen=1, steps=2, latent_dim=4, micro_batch=8,
                      verify=True)
    with pytest.raises(NondeterministicModelError, match="deterministic"):
        train_otgan(G, noisy, sample_ring8, cfg, progress=False)


def test_train_rejects_bad_inputs():
    G, C = _models()
    cfg = OTGANConfig(batch=8, steps=1, latent_dim=4)
    with pytest.raises(ValueError, match="OTGANConfig"):
        train_otgan(G, C, sample_ring8, {"batch": 8}, progress=False)
    with pytest.raises(ValueError, match="rows"):
        train_otgan(G, C, lambda n, rng: sample_ring8(n + 1, rng), cfg, progress=False)
    with pytest.raises(ValueError, match="width"):
        train_otgan(G, C, lambda n, rng: np.zeros((n, 3), np.float32), cfg, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        train_otgan(G, C, lambda n, rng: np.full((n, 2), np.nan, np.float32), cfg,
                    progress=False)


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
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["ring_metrics"]["modes_covered"] <= 8
    assert "modes covered" in res.output


@pytest.mark.parametrize("args,match", [
    (["-b", "1"], "batch"), (["--eps", "-1"], "eps"), (["--n-gen", "0"], "n_gen"),
    (["--data", "nope"], "nope"), (["--hidden", "a,b"], "hidden"),
    (["--warm-start-method", "copy"], "warm_start_method"), (["-m", "0"], "micro_batch")])
def test_cli_otgan_train_rejects_bad_options(tmp_path, args, match):
    res = runner.invoke(app, ["otgan", "train", "--out", str(tmp_path / "o"), "--steps", "1",
                              "--no-progress", *args])
    assert res.exit_code != 0
    assert match in res.output
    assert not (tmp_path / "o").exists()


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
