"""The engine invariant for all four methods, with the store in memory and on disk: one
engine step's ReRun-accumulated gradient == full-batch autograd in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from invariant import assert_rerun_equals_full_batch
from ootrain.data import sample_ring8
from ootrain.engine import EngineConfig
from ootrain.methods import (OTGAN, OTSFIT, RSR, WGANGP, OTGANConfig, POTConfig,
                             POTRegulariser, WGANConfig, make_critic, make_generator,
                             make_wgan_critic)
from ootrain.models.forest import LatentTransformForest
from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.ot.sinkhorn import energy_distance
from ootrain.ot.sliced import sliced_wasserstein


def _cfg(**kw) -> EngineConfig:
    base = dict(population=96, micro_batch=16, latent_dim=3, chunk_rows=32, dtype="float64",
                seed=5)
    return EngineConfig(**{**base, **kw})


def _mlp(i: int, o: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(i, 16), nn.Tanh(), nn.Linear(16, o)).double()


@pytest.fixture(params=["memory", "disk"])
def where(request, tmp_path):
    return None if request.param == "memory" else tmp_path / "store.zarr"


def test_rsr(where):
    G = _mlp(3, 2, 0)
    real = np.random.default_rng(1).normal(size=(80, 2)) * 0.7 + 0.3
    method = RSR(G, real, torch.optim.SGD(G.parameters(), 0.1), n_directions=4)

    def reference(eng, inputs):
        omega = torch.as_tensor(eng.store.array("steps/0/directions")[:])
        return sliced_wasserstein(G(inputs["embeddings"]), torch.as_tensor(real), omega, p=2)

    assert_rerun_equals_full_batch(method, _cfg(), where, reference)


@pytest.mark.parametrize("cost", ["sqeuclidean", "l1"])
def test_ots_fit(where, cost):
    G = _mlp(3, 2, 0)
    y = torch.as_tensor(np.random.default_rng(2).normal(size=(40, 2)))
    ot = SemiDiscreteOT(y, cost=cost, backend="torch")
    ot.potentials = torch.linspace(-0.3, 0.3, 40, dtype=torch.float64)
    method = OTSFIT(G, ot, torch.optim.SGD(G.parameters(), 0.1))

    def reference(eng, inputs):
        idx = torch.from_numpy(eng.store.array("steps/0/assignments")[:])
        return ot.ground_cost.pairwise(G(inputs["embeddings"]), y[idx]).mean()

    # the FIT update replays; the invariant is about ReRun of the same stored pairs
    method.plan = lambda step, _p=method.plan: _strip_hooks(_p(step))
    assert_rerun_equals_full_batch(method, _cfg(), where, reference)


def _strip_hooks(plan):
    plan.prepare = plan.update = None
    return plan


@pytest.mark.parametrize("step", [0, 3])   # 0: a generator update, 3: a critic update
def test_otgan(where, step):
    G = make_generator(3, 2, hidden=(16,), seed=0).double()
    C = make_critic(2, 8, hidden=(16,), seed=1).double()
    cfg = OTGANConfig(eps=0.1, sinkhorn_tol=1e-9, sinkhorn_max_iter=2000)
    method = OTGAN(G, C, sample_ring8, torch.optim.SGD(G.parameters(), 0.1),
                   torch.optim.SGD(C.parameters(), 0.1), cfg)
    sign = -1.0 if cfg.player(step) == "critic" else 1.0

    def reference(eng, inputs):
        y, y2 = G(inputs["y"]), G(inputs["y2"])
        res = energy_distance(C(inputs["x"]), C(inputs["x2"]), C(y), C(y2), cfg.eps,
                              tol=cfg.sinkhorn_tol, max_iter=cfg.sinkhorn_max_iter)
        return sign * res.value

    assert_rerun_equals_full_batch(method, _cfg(), where, reference, step=step, rtol=1e-6,
                                   atol=1e-9)


@pytest.mark.parametrize("step", [0, 2])   # n_critic 2: steps 0, 1 critic, 2 generator
def test_wgan_potgan(where, step):
    G = _mlp(3, 2, 0)
    D = make_wgan_critic(2, (16,), seed=1).double()
    encoder = _mlp(2, 2, 7)
    for p in encoder.parameters():
        p.requires_grad_(False)
    forest = LatentTransformForest(2, n_trees=2, depth=2, seed=3).double()
    reg = POTRegulariser(encoder, forest, POTConfig(weight=0.1, backend="torch"))
    wcfg = WGANConfig(n_critic=2, gp_weight=10.0)
    method = WGANGP(G, D, sample_ring8, torch.optim.SGD(G.parameters(), 0.1),
                    torch.optim.SGD(D.parameters(), 0.1), wcfg, reg)
    from ootrain.methods.wgan import gradient_penalty

    def reference(eng, inputs):
        if wcfg.player(step) == "critic":
            u = inputs["pairs"]
            x, z, a = u[:, :2], u[:, 2:5], u[:, 5]
            with torch.no_grad():
                yy = G(z)
            return (D(yy).mean() - D(x).mean()
                    + wcfg.gp_weight * gradient_penalty(D, x, yy, a).mean())
        fake = G(inputs["fake"])
        with torch.no_grad():
            real_e = encoder(inputs["real"])
        return -D(fake).mean() + reg.weight * reg.loss(real_e, encoder(fake))

    assert_rerun_equals_full_batch(method, _cfg(), where, reference, step=step)
