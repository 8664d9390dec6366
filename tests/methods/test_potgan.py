"""POT-GAN's latent OT regulariser (ootrain.methods.potgan): matching vs brute force, Algorithm 2,
the regulariser's gradient, micro-batched == in-memory training with it, validation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from typer.testing import CliRunner

from ootrain.cli import app
from ootrain.models.forest import LatentTransformForest
from ootrain.models.zoo import MLP, seeded
from ootrain.methods.potgan import POTConfig, POTRegulariser, match
from ootrain.engine import EngineConfig
from ootrain.methods import train
from ootrain.methods.wgan import WGANGP, WGANConfig, make_wgan_critic

pytestmark = pytest.mark.usefixtures("one_thread")


def _frozen(module):
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


@pytest.mark.parametrize("backend", ["torch", "faiss", "auto"])
def test_argmin_matching_agrees_with_brute_force(backend):
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(200, 3, generator=g), torch.randn(150, 3, generator=g)
    rho = match(real, fake, "argmin", backend)
    brute = ((real[:, None] - fake[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(rho, brute)


def test_exact_matching_is_the_optimal_permutation():
    """Against all 7! permutations, and one-to-one where argmin is not."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(7, 2, generator=g).double(), torch.randn(7, 2, generator=g).double()
    C = ((real[:, None] - fake[None]) ** 2).sum(-1)
    best = min(itertools.permutations(range(7)), key=lambda p: float(C[range(7), p].sum()))
    rho = match(real, fake, "exact")
    assert rho.tolist() == list(best)
    clumped = torch.cat([real[:1] + 0.01 * i for i in range(7)])  # all nearest to one fake
    assert len(set(match(clumped, fake, "argmin").tolist())) < 7
    assert sorted(match(clumped, fake, "exact").tolist()) == list(range(7))
    with pytest.raises(ValueError, match="n_r <= n_g"):
        match(real, fake[:5], "exact")


def _regulariser(k=2, **kw):
    Q = _frozen(torch.nn.Identity())
    F = LatentTransformForest(k, n_trees=4, depth=2, seed=0)
    return POTRegulariser(Q, F, POTConfig(**{"forest_lr": 0.05, "backend": "torch", **kw}))


def test_algorithm_2_learns_the_latent_shift():
    """Generated latents are the real ones (4 tight clusters 4-5 apart) shifted by (1.5, 0):
    Adam steps on F drive the matched distance down and F(z_g) onto z_r."""
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [0.0, 4.0], [5.0, 0.0], [5.0, 4.0]])
    real = centres[torch.randint(0, 4, (256,), generator=g)] + 0.1 * torch.randn(256, 2,
                                                                                generator=g)
    fake = real[torch.randperm(256, generator=g)] + torch.tensor([1.5, 0.0])
    reg = _regulariser(forest_steps=1)
    first = reg.prepare(real, fake)["forest_loss"]
    for _ in range(150):
        stats = reg.prepare(real, fake)
    assert first > 1.0 and stats["forest_loss"] < 0.01 * first, (first, stats)
    assert stats["matched"] > 0.3
    moved = reg.forest(fake).detach()
    assert (moved.mean(0) - real.mean(0)).abs().max() < 0.15


def test_matched_is_the_fraction_of_generated_latents_some_real_latent_picks():
    """Real latents in 3 tight clusters at (0, 0), (10, 0), (0, 10); generated latents: one at
    each centre, a second one 1 away from (0, 0), and 4 far away: argmin picks only the 3
    centres (3/8 matched); exact one-to-one matching of 6 real latents picks 6 of the 8."""
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    real = centres.repeat(10, 1) + 0.05 * torch.randn(30, 2, generator=g, dtype=torch.float64)
    fake = torch.cat([centres, torch.tensor([[1.0, 0.0], [50.0, 50.0], [-50.0, 50.0],
                                             [50.0, -50.0], [-50.0, -50.0]],
                                            dtype=torch.float64)])
    reg = _regulariser(forest_steps=0)                 # F stays the identity (zero leaves)
    reg.forest.double()
    assert reg.prepare(real, fake)["matched"] == 3 / 8
    torch.testing.assert_close(reg.forest(fake), fake, rtol=0, atol=0)
    exact = _regulariser(forest_steps=0, matching="exact")
    exact.forest.double()
    assert exact.prepare(real[:6], fake)["matched"] == 6 / 8


def test_regulariser_gradient_reaches_only_the_generated_latents():
    """With F the identity (its initial state), d L_POT / d z_g,j = 2 sum_{i: rho_i = j}
    (z_g,j - z_r,i); F's parameters get no gradient."""
    g = torch.Generator().manual_seed(3)
    real = torch.randn(40, 2, generator=g).double()
    fake = torch.randn(40, 2, generator=g).double().requires_grad_(True)
    reg = _regulariser()
    reg.forest.double()
    value = reg.loss(real, fake)
    value.backward()
    rho = ((real[:, None] - fake.detach()[None]) ** 2).sum(-1).argmin(1)
    expected = torch.zeros_like(fake)
    expected.index_add_(0, rho, 2 * (fake.detach()[rho] - real))
    torch.testing.assert_close(fake.grad, expected)
    torch.testing.assert_close(value, ((real - fake.detach()[rho]) ** 2).sum())
    assert all(p.grad is None for p in reg.forest.parameters())


def test_regulariser_pulls_generated_samples_onto_real_modes():
    """A generator covering one of two real modes at +-3 (1-D latents = data): WGAN-GP's
    adversarial term switched off (weight dominates), L_POT alone moves samples onto the
    dropped mode because every real latent pulls its nearest generated one."""
    def real(n, rng):
        return (rng.integers(0, 2, n) * 6.0 - 3.0)[:, None] + 0.1 * rng.standard_normal((n, 1))

    G = seeded(0, lambda: MLP(1, 1, hidden=(32, 32)))
    with torch.no_grad():  # start on the +3 mode only
        G.net[-1].bias.fill_(3.0)
        G.net[-1].weight.mul_(0.01)
    D = make_wgan_critic(1, (8,), seed=1)
    reg = POTRegulariser(_frozen(torch.nn.Identity()),
                         LatentTransformForest(1, n_trees=2, depth=1, seed=0),
                         POTConfig(weight=1.0, forest_steps=0, backend="torch"))
    method = WGANGP(G, D, real, torch.optim.Adam(G.parameters(), 3e-3, betas=(0.5, 0.9)),
                    torch.optim.Adam(D.parameters(), 1e-4, betas=(0.5, 0.9)),
                    WGANConfig(n_critic=1), reg)
    train(method, 150 * 2, EngineConfig(population=128, micro_batch=128, latent_dim=1))
    with torch.no_grad():
        y = G(torch.randn(2000, 1, generator=torch.Generator().manual_seed(5))).numpy()
    assert 0.2 < (y < 0).mean() < 0.8, (y < 0).mean()


@pytest.mark.parametrize("field,value", [
    ("weight", -1.0), ("weight", float("nan")), ("forest_steps", -1), ("forest_steps", 1.5),
    ("forest_lr", 0.0), ("matching", "greedy"), ("backend", "cuda")])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        POTConfig(**{field: value})


def test_regulariser_rejects_a_trainable_encoder():
    with pytest.raises(ValueError, match="frozen"):
        POTRegulariser(torch.nn.Linear(2, 2), LatentTransformForest(2))
    with pytest.raises(ValueError, match="latents"):
        match(torch.zeros(3, 2), torch.zeros(3, 3))


@pytest.mark.parametrize("method", ["potgan", "wgan-gp"])
def test_cli_potgan_train_writes_outputs(tmp_path, method):
    from ootrain.eval.ring import ring8_modes, ring_metrics

    out, store = tmp_path / "out", tmp_path / "run.zarr"
    res = CliRunner().invoke(app, [
        "potgan", "train", "--out", str(out), "--method", method, "--steps", "4", "-b", "32",
        "--n-critic", "1", "--vae-steps", "5", "--n-samples", "200", "--forest-trees", "2",
        "--forest-depth", "2", "--micro-batch", "10", "--store", str(store), "--no-progress",
        "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert store.exists()   # --store reaches the engine (a named store is kept)
    x = np.load(out / "samples.npy")
    assert x.shape == (200, 2) and np.isfinite(x).all()
    for png in ("samples.png", "loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    hist = json.loads((out / "history.json").read_text())
    assert hist["wgan"] == {"batch": 32, "micro_batch": 10, "lr": 5e-4, "latent_dim": 2,
                            "steps": 4, "seed": 0, "n_critic": 1, "gp_weight": 10.0}
    rows = hist["history"]
    # one row per generator update, each after its n_critic = 1 critic update
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert [r["engine_step"] for r in rows] == [1, 3, 5, 7]
    assert all(np.isfinite([r["wasserstein"], r["gp"], r["critic_loss"]]).all() for r in rows)
    # time_s: the running sum of the cycles' step_s
    np.testing.assert_allclose([r["time_s"] for r in rows],
                               np.cumsum([r["step_s"] for r in rows]), rtol=1e-12)
    assert all(r["step_s"] > 0 for r in rows)
    assert ("reg" in rows[0]) == (method == "potgan")
    w = hist["pot"]["weight"] if method == "potgan" else 0.0
    for r in rows:   # L_G = adv + lambda_POT * L_POT
        np.testing.assert_allclose(r["loss"], r["adv"] + w * r.get("reg", 0.0), rtol=1e-5)
    if method == "potgan":
        assert all(r["reg"] > 0 for r in rows)
        assert hist["vae"]["steps"] == 5
        assert len(hist["vae_history"]) == 5   # build_potgan keeps train_vae's history
    else:
        assert hist["vae_history"] is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["reverse_kl"]) and metrics["bandwidth"] == 0.02
    assert np.isfinite(metrics["reverse_kl_last"]) and metrics["ema"] == 0.999
    assert metrics["ring_metrics"] == json.loads(json.dumps(ring_metrics(x, ring8_modes())))
    assert metrics["wall_s"] == rows[-1]["time_s"]
    # the CLI's run is the library's: the same configuration built by build_potgan and
    # trained by train(...) (in memory) gives the same engine history, bit for bit: each
    # generator row's metrics and its preceding critic row's, and the same samples
    from ootrain.data import data_sampler
    from ootrain.methods.potgan import build_potgan
    from ootrain.models.vae import VAEConfig
    from ootrain.models.zoo import generate

    sampler, d, _ = data_sampler("ring8")
    pcfg = POTConfig(weight=0.03, forest_steps=1, forest_lr=1e-3, matching="argmin",
                     backend="auto")
    assert hist["pot"] == pcfg.to_dict()
    lib_m = build_potgan(sampler, d, method=method, wgan=WGANConfig(n_critic=1, gp_weight=10.0),
                         pot=pcfg, vae=VAEConfig(steps=5, seed=0), latent_dim=2, lr=5e-4,
                         betas=(0.5, 0.9), vae_latent=2, forest_trees=2, forest_depth=2,
                         ema=0.999, seed=0, real_spec="ring8")
    lib = train(lib_m, 4 * 2, EngineConfig(population=32, micro_batch=10, latent_dim=2,
                                           seed=0)).history
    assert len(lib) == 8

    def untimed(r):
        return {k: v for k, v in r.items() if not k.endswith("_s")}

    for r in rows:
        gen, critic = lib[r["engine_step"]], lib[r["engine_step"] - 1]
        assert (gen["player"], critic["player"]) == ("generator", "critic")
        expected = {k: v for k, v in untimed(gen).items() if k not in ("step", "player")}
        expected.update(step=r["step"], engine_step=gen["step"], wasserstein=critic[
            "wasserstein"], gp=critic["gp"], critic_loss=critic["loss"])
        assert untimed(r) == expected
    if method == "potgan":
        assert [untimed(v) for v in hist["vae_history"]] == \
            [untimed(v) for v in lib_m.vae_history]
    np.testing.assert_array_equal(x, generate(lib_m.generator_ema.module, 200, 2, seed=12345))


def test_pipeline_smoke(tmp_path):
    from pipelines.potgan_toys import run_pipeline

    summary = run_pipeline(tmp_path, seeds=(0,), steps=3, vae_steps=3, n_eval=300, n_real=300,
                           progress=False, command="test")
    assert set(summary) == {"ring", "ball"}
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["runs"]) == 4 and res["config"]["bandwidth"]["ring"] == 0.02
    assert res["config"]["n_critic"] == 5 and res["config"]["micro_batch"] == 256
    runs = {(r["problem"], r["method"]): r for r in res["runs"]}
    for problem, entry in summary.items():
        assert entry["seeds"] == [0]
        for sfx in ("", "_last"):
            kl = {m: runs[problem, m]["reverse_kl" + sfx] for m in ("potgan", "wgan-gp")}
            assert all(np.isfinite(v) for v in kl.values())
            assert entry["potgan_wins" + sfx] == int(kl["potgan"] < kl["wgan-gp"])
            for m in kl:
                assert entry[m]["reverse_kl_mean" + sfx] == kl[m]
        assert np.isfinite(runs[problem, "potgan"]["final_L_POT"])
        assert "final_L_POT" not in runs[problem, "wgan-gp"]
    assert "POT-GAN lower on" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert np.load(tmp_path / "samples.npz")["ball_potgan_s0"].shape == (300, 3)


def _generator_step(path, budget, compute=None):
    """Run, Solve and ReRun one POT-GAN generator step (float64, 200 rows in chunks of 40) in
    the store at ``path`` (None: in memory) under ``budget``, Solve on ``compute``; returns
    its metrics, the generator's gradients, the forest's parameters and whether Solve stored
    ``moved`` (streamed)."""
    from ootrain.engine import Engine
    from ootrain.store import Store

    G = seeded(0, lambda: MLP(3, 2, hidden=(16,))).double()
    D = make_wgan_critic(2, (16,), seed=1).double()
    Q = _frozen(seeded(2, lambda: MLP(2, 2, hidden=(8,))).double())
    F = LatentTransformForest(2, n_trees=3, depth=2, seed=0).double()
    reg = POTRegulariser(Q, F, POTConfig(weight=0.05, forest_steps=2, forest_lr=1e-2,
                                         backend="torch"))
    m = WGANGP(G, D, lambda n, rng: rng.normal(size=(n, 2)), torch.optim.SGD(
        G.parameters(), 0.1), torch.optim.SGD(D.parameters(), 0.1), WGANConfig(n_critic=1), reg)
    cfg = EngineConfig(population=200, micro_batch=20, latent_dim=3, chunk_rows=40,
                       dtype="float64", memory_budget=budget, seed=2)
    m.bind(cfg)
    kw = {} if compute is None else {"compute": compute}
    with Store(path, Engine.store_config(cfg, m)) as store:
        eng = Engine(m, store, cfg, **kw)
        plan = m.plan(1)                                  # n_critic 1: step 1 is the generator's
        store.group.require_group("steps/1")
        eng.run(1, plan)
        metrics = eng.solve(1, plan)
        eng._zero_grads()
        eng.rerun(1, plan)
        return metrics, [p.grad.clone() for p in G.parameters()], \
            [p.detach().clone() for p in F.parameters()], store.has("steps/1/moved")


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_streamed_generator_solve_equals_the_in_memory_one(tmp_path, where):
    """A generator step of POT-GAN whose stored rows exceed the memory budget (streamed Solve:
    blocked matching against the stored F(fake), Algorithm 2 by blocks, per-row cotangents)
    gives the in-memory Solve's metrics, forest and generator gradient (float64)."""
    def run(budget):
        return _generator_step(None if where == "memory" else tmp_path / f"s{budget}.zarr",
                               budget)

    (m_mem, g_mem, f_mem, moved_mem), (m_str, g_str, f_str, moved_str) = run(2**30), run(4096)
    assert not moved_mem and moved_str                     # the two paths did run
    assert m_mem.keys() == m_str.keys()
    for key in ("loss", "adv", "reg", "forest_loss", "matched"):
        assert m_str[key] == pytest.approx(m_mem[key], rel=1e-10), key
    assert m_mem["reg"] > 0
    for a, b in zip(f_str + g_str, f_mem + g_mem):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_stored_matching_is_the_c_transform_with_ties_across_shards(tmp_path):
    """The streamed Solve's matching sweep (:func:`stored_nearest`: real latents' blocks x
    shards of the stored targets, merged per block) gives ``c_transform``'s indices (float64),
    exact ties in three shards going to the smallest index, on one thread and on two."""
    from ootrain.engine import Compute, StoreArray
    from ootrain.methods.wgan import stored_nearest
    from ootrain.ot.ctransform import c_transform
    from ootrain.ot.sharded import SHARD_SHARE, plan_shards
    from ootrain.ot.targets import TargetSource
    from ootrain.store import Store

    g = np.random.default_rng(0)
    y = g.normal(size=(100, 2))
    y[57] = y[90] = y[3]                                  # one point, in shards 0, 1 and 2
    x = g.normal(size=(70, 2))
    x[:5] = y[3] + 1e-3 * g.normal(size=(5, 2))           # matched to the tied point
    budget = 32 * 2 * 8 * SHARD_SHARE                     # 32 rows a shard for one task
    with Store(tmp_path / "s.zarr", {"test": "stored matching"}) as store:
        for name, a in (("x", x), ("y", y)):
            store.require_array(name, a.shape, (16, 2), np.float64)
            store.write_region(name, (slice(0, a.shape[0]), slice(0, 2)), a)
        want = c_transform(torch.from_numpy(x), torch.from_numpy(y),
                           torch.zeros(100, dtype=torch.float64), "sqeuclidean", "torch")[0]
        assert (want[:5] == 3).all() and len(torch.unique(want)) > 20
        assert len(plan_shards(TargetSource(StoreArray(store, "y")), budget // SHARD_SHARE,
                               torch.float64)) == 4
        for compute in (Compute(workers=1), Compute(workers=2)):   # 32, 16 rows a shard
            rho = stored_nearest(compute, StoreArray(store, "x"), StoreArray(store, "y"),
                                 rows=24, budget=budget, dtype=torch.float64, backend="torch")
            assert torch.equal(rho, want), compute


def test_streamed_generator_solve_on_a_cluster_equals_the_local_one(tmp_path, dask_cluster):
    """The streamed generator Solve with its matching sweeps on a ``LocalCluster`` of 2
    worker processes (store on disk, opened by URL) gives the local Solve's metrics, forest
    and generator gradient exactly."""
    from ootrain.engine import Compute

    local = _generator_step(tmp_path / "local.zarr", 4096, Compute(workers=1))
    sweeps = []
    with Compute(dask_cluster.scheduler_address).session() as compute:
        get = compute.get
        compute.get = lambda graph, keys, done=None: sweeps.append(len(keys)) or get(graph, keys,
                                                                                      done)
        remote = _generator_step(tmp_path / "cluster.zarr", 4096, compute)
    assert remote[3] and sweeps == [5, 5, 5]   # streamed; 2 Algorithm 2 steps, then L_POT
    assert remote[0] == local[0]
    for a, b in zip(remote[1] + remote[2], local[1] + local[2]):
        assert torch.equal(a, b)
