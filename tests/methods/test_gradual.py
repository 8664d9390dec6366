"""OTS + FIT through the engine: the invariant, the replay, and a small training run."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from ootrain.engine.core import Engine, EngineConfig, latent_key
from ootrain.methods import train
from ootrain.methods.gradual import OTSFIT, GradualConfig
from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.store import Store


def _targets(n: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    return (centres[rng.integers(0, 3, n)] + 0.3 * rng.standard_normal((n, 2))).astype(np.float64)


def _method(cost: str, lr: float = 1e-2, config: GradualConfig | None = None, rounds: int = 10
            ) -> tuple[OTSFIT, np.ndarray]:
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2)).double()
    y = _targets()
    ot = SemiDiscreteOT(torch.from_numpy(y), cost=cost, backend="torch")
    return OTSFIT(G, ot, torch.optim.Adam(G.parameters(), lr=lr), config, rounds=rounds,
                  generator_spec="mlp"), y


def _cfg(b: int = 256, m: int = 32) -> EngineConfig:
    return EngineConfig(population=b, micro_batch=m, latent_dim=2, chunk_rows=64, dtype="float64")


def _engine(tmp_path, cost: str, b: int = 256, m: int = 32, lr: float = 1e-2):
    method, y = _method(cost, lr)
    cfg = _cfg(b, m)
    store = Store(tmp_path / "store", Engine.store_config(cfg, method))
    return Engine(method, store, cfg), y


@pytest.mark.parametrize("cost", ["sqeuclidean", "l1"])
def test_assignment_rerun_gradient_equals_full_batch(tmp_path, cost):
    """Out-of-core ReRun gradient == autograd of mean_i c(G(z_i), y_σ(i)) on the whole batch."""
    eng, y = _engine(tmp_path, cost)
    G, ot, opt = eng.method.G, eng.method.solver.ot, eng.method.optimizer
    eng.embed_real()  # OTS + FIT has no static real data: nothing to embed
    assert not eng.store.has("real/embeddings")
    ot.potentials = torch.linspace(-0.3, 0.3, y.shape[0], dtype=torch.float64)
    eng.store.group.require_group("steps/0")
    eng.run(0)
    metrics = eng.solve(0)
    idx = torch.from_numpy(eng.store.array("steps/0/assignments")[:])
    # the stored assignment is the argmin of c − ψ (hard) / a valid index (soft)
    z = torch.as_tensor(np.concatenate([eng.method.latent_sampler(32, latent_key(0, 0, i // 32))
                                        for i in range(0, 256, 32)]))
    plan = eng.method.plan(0)
    assert torch.equal(z, eng.inputs(0, 0, plan.populations[0], 0, 256))
    x = G(z).detach()
    if cost == "sqeuclidean":
        C = ot.ground_cost.matrix(x, torch.from_numpy(y)) - ot.potentials
        assert torch.equal(idx, C.argmin(dim=1))
    else:
        _check_soft_l1_draws(ot, x, y, idx)
    opt.zero_grad(set_to_none=True)
    eng.rerun(0)
    g_ooc = [p.grad.clone() for p in G.parameters()]
    opt.zero_grad(set_to_none=True)
    loss = ot.ground_cost.pairwise(G(z), torch.from_numpy(y)[idx]).mean()
    loss.backward()
    for a, b in zip(g_ooc, (p.grad for p in G.parameters())):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert metrics["loss"] == pytest.approx(float(loss.detach()), rel=1e-10)


def _check_soft_l1_draws(ot: SemiDiscreteOT, x: torch.Tensor, y: np.ndarray,
                         idx: torch.Tensor) -> None:
    """The soft (l1) assignments are draws of P_ij = softmax_j((psi_j - |x_i - y_j|_1) / eps),
    all recomputed here: eps = 0.05 x the median l1 distance of a target to its nearest other
    one (the lower median of the 48, as torch's), C by brute force.  The sampled indices are
    likely under P, their log-likelihood and histogram agree with P's, and repeated draws of
    the 4 most mixed rows match P's rows (a wrong temperature, x1.5 or /2, or a missing psi
    moves those by > 0.04 in total variation; the draws' own noise is ~0.01)."""
    yt = torch.from_numpy(y)
    nn_cost = ((yt[:, None] - yt[None]).abs().sum(-1) + torch.diag(
        torch.full((len(y),), math.inf, dtype=torch.float64))).min(1).values.sort().values
    eps = 0.05 * float(nn_cost[(len(y) - 1) // 2])
    assert ot.eps == pytest.approx(eps, rel=1e-12)
    C = (x[:, None] - yt[None]).abs().sum(-1)
    logP = torch.log_softmax((ot.potentials - C) / eps, dim=1)
    P, rows = logP.exp(), torch.arange(x.shape[0])
    assert float(P[rows, idx].min()) > 1e-6
    # log-likelihood of the draws: a sum of independent rows, mean sum_ij P log P
    ll, mean = float(logP[rows, idx].sum()), float((P * logP).sum())
    var = float(((P * logP**2).sum(1) - (P * logP).sum(1) ** 2).sum())
    assert abs(ll - mean) < 5 * math.sqrt(var), (ll, mean, var)
    # histogram vs the expected counts P.sum(0) (Poisson-binomial variance V_j); each term's
    # mean is V_j / (V_j + 1) < 1, so under P the sum stays well below the 48 bins
    counts = torch.bincount(idx, minlength=len(y)).double()
    V = (P * (1 - P)).sum(0)
    assert float(((counts - P.sum(0)) ** 2 / (V + 1)).sum()) < len(y)
    mixed = (-(P * logP).sum(1)).argsort(descending=True)[:4]
    n = 4000
    draws = ot.assign(x[mixed].repeat_interleave(n, 0),
                      generator=torch.Generator().manual_seed(7)).view(4, n)
    for k, i in enumerate(mixed):
        freq = torch.bincount(draws[k], minlength=len(y)).double() / n
        assert float((freq - P[i]).abs().sum()) / 2 < 0.035, (k, freq, P[i])


def test_replay_takes_one_step_per_micro_batch(tmp_path):
    eng, y = _engine(tmp_path, "sqeuclidean", lr=1e-3)
    opt = eng.method.optimizer
    eng.embed_real()
    eng.store.group.require_group("steps/0")
    eng.run(0)
    w0 = eng.solve(0)["loss"]
    for group in opt.param_groups:
        group["lr"] = 0.0
    assert eng.replay(0, epochs=1) == [pytest.approx(w0, rel=1e-12)]  # loss = transport cost
    for group in opt.param_groups:
        group["lr"] = 1e-3
    steps = []
    orig = opt.step
    opt.step = lambda *a, **k: steps.append(1) or orig(*a, **k)
    losses = eng.replay(0, epochs=3)
    assert len(steps) == 3 * 256 // 32 and len(losses) == 3
    assert losses[-1] < losses[0] < w0  # regression onto a fixed map goes down
    assert len(eng.replay(0, epochs=5, stop=lambda epoch, loss: True)) == 1


def test_gradual_rounds_reduce_transport_cost_and_resume(tmp_path):
    path = str(tmp_path / "store")
    cfg = GradualConfig(fit_epochs=4, alpha_fit=0.3, alpha_stop=10.0,
                        ots={"batch": 512, "max_iter": 300, "tol": 0.2})
    method, _ = _method("sqeuclidean", config=cfg, rounds=4)
    run = train(method, 4, _cfg(512, 64), store=path)   # one engine step = one OTS + FIT round
    results = run.results
    assert [r.step for r in results] == [0, 1, 2, 3]
    w = [r.metrics["loss"] for r in results]             # the transport cost W_t
    assert min(w[1:]) < 0.5 * w[0] and w[-1] < w[0], w  # gradual, not monotone per round
    for r in results:   # FIT: at most fit_epochs epochs, stopped early only at alpha_fit W_t
        fit = r.metrics["fit_losses"]
        assert 1 <= len(fit) <= cfg.fit_epochs, fit
        assert fit[-1] <= cfg.alpha_fit * r.metrics["loss"] or len(fit) == cfg.fit_epochs
        assert all(fit[k] > cfg.alpha_fit * r.metrics["loss"] for k in range(len(fit) - 1))
        checks = r.metrics["ots_checks"]   # OTS ran this round and recorded its checks
        assert checks and all(c["iteration"] > 0 for c in checks), checks
        assert np.isfinite(r.metrics["imbalance"])
        # a balanced histogram's noise level: sqrt(2 N / (pi b)), N = 48 targets, b = 512
        assert r.metrics["imbalance_noise"] == pytest.approx(math.sqrt(96 / (math.pi * 512)))
    # the round's ψ is stored with the round and checkpointed for the next one
    with Store(path, mode="r") as st:
        raw = st.get_bytes("checkpoints/step-4.pt")
        state = torch.load(io.BytesIO(raw), weights_only=True)
        np.testing.assert_array_equal(state["method"]["potentials"].numpy(),
                                      st.array("steps/3/potentials")[:])
        assert state["method"]["costs"].tolist() == w
    np.testing.assert_array_equal(method.ot.potentials.numpy(), state["method"]["potentials"])
    # resuming a finished run does nothing; asking for more rounds continues from round 4
    method2, _ = _method("sqeuclidean", config=GradualConfig(fit_epochs=4, alpha_fit=0.3,
                                                             alpha_stop=10.0, ots=cfg.ots),
                         rounds=5)
    assert train(method2, 4, _cfg(512, 64), store=path).results == []
    for p, q in zip(method.G.parameters(), method2.G.parameters()):
        assert torch.equal(p, q)  # the finished run's checkpoint was loaded
    more = train(method2, 5, _cfg(512, 64), store=path).results
    assert [r.step for r in more] == [4]
    # … and ends where 5 uninterrupted rounds in another store end, bit for bit
    method3, _ = _method("sqeuclidean", config=GradualConfig(fit_epochs=4, alpha_fit=0.3,
                                                             alpha_stop=10.0, ots=cfg.ots),
                         rounds=5)
    full = train(method3, 5, _cfg(512, 64), store=str(tmp_path / "full")).results
    assert [r.step for r in full] == [0, 1, 2, 3, 4]
    for p, q in zip(method3.G.parameters(), method2.G.parameters()):
        assert torch.equal(p, q)
    assert [r.metrics["loss"] for r in full] == w + [more[0].metrics["loss"]]
    assert full[-1].metrics["fit_losses"] == more[0].metrics["fit_losses"]
    assert torch.equal(method3.ot.potentials, method2.ot.potentials)
