"""The engine's invariant, one check for every method: the ReRun-accumulated gradient of one
engine step equals full-batch autograd of the method's loss on the same inputs."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ootrain.engine import Engine, EngineConfig
from ootrain.methods.training import open_shared_store


def step_gradients(method, config: EngineConfig, store_path, step: int = 0, compute=None
                   ) -> tuple[Engine, dict[str, Tensor], list[Tensor]]:
    """Run and Solve step ``step`` of ``method`` in a store (``store_path`` None: in memory;
    under ``torch.distributed`` every rank's engine shares it), ReRun it; returns the engine, every population's full inputs and the player's
    accumulated gradients (the optimiser does not step)."""
    method.bind(config)
    store = open_shared_store(None if store_path is None else str(store_path),
                              Engine.store_config(config, method))
    eng = Engine(method, store, config, compute=compute)
    if getattr(method, "real", None) is not None:
        eng.embed_real()
    plan = method.plan(step)
    if eng.rank == 0:
        store.group.require_group(eng.prefix(step))
    if eng.world > 1:
        torch.distributed.barrier()
    eng.run(step, plan)
    eng.solve(step, plan)
    eng._zero_grads()
    eng.rerun(step, plan)
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
             for p in plan.player.parameters()]
    inputs = {p.name: eng.inputs(step, i, p, 0, p.size or config.population)
              for i, p in enumerate(plan.populations)}
    return eng, inputs, grads


def assert_rerun_equals_full_batch(method, config: EngineConfig, store_path,
                                   reference: Callable[[Engine, dict[str, Tensor]], Tensor],
                                   step: int = 0, rtol: float = 1e-9, atol: float = 1e-11
                                   ) -> None:
    """``reference(engine, inputs)`` is the method's full-batch loss (a scalar with a graph to
    the player's parameters) on the step's inputs, after its Solve."""
    eng, inputs, grads = step_gradients(method, config, store_path, step)
    player = method.plan(step).player
    params = list(player.parameters())
    loss = reference(eng, inputs)
    ref = torch.autograd.grad(loss, params, allow_unused=True)
    assert any(float(g.abs().max()) > 0 for g in grads), "the engine left no gradient"
    for g, r in zip(grads, ref):
        r = torch.zeros_like(g) if r is None else r
        assert torch.allclose(g, r, rtol=rtol, atol=atol), float((g - r).abs().max())


# --------------------------------------------------------------------------- the four methods
# Each case builds, from fixed seeds, a method and the full-batch reference of one step's loss;
# the invariant test checks them in one process, the distributed test under torchrun ranks.
def engine_config(**kw) -> EngineConfig:
    base = dict(population=96, micro_batch=16, latent_dim=3, chunk_rows=32, dtype="float64",
                seed=5)
    return EngineConfig(**{**base, **kw})


def _mlp(i: int, o: int, seed: int):
    from torch import nn
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(i, 16), nn.Tanh(), nn.Linear(16, o)).double()


def rsr_case():
    import numpy as np
    from ootrain.methods import RSR
    from ootrain.ot.sliced import sliced_wasserstein
    G = _mlp(3, 2, 0)
    real = np.random.default_rng(1).normal(size=(80, 2)) * 0.7 + 0.3
    method = RSR(G, real, torch.optim.SGD(G.parameters(), 0.1), n_directions=4)

    def reference(eng, inputs):
        omega = torch.as_tensor(eng.store.array("steps/0/directions")[:])
        return sliced_wasserstein(G(inputs["embeddings"]), torch.as_tensor(real), omega, p=2)

    return method, reference


def ots_fit_case(cost: str, *, with_hooks: bool = False):
    """OTS + FIT; ``with_hooks=False`` strips OTS and FIT (the invariant is about ReRun of
    the stored pairs), True keeps them (a whole round: OTS, Solve, FIT's replay)."""
    import numpy as np
    from ootrain.methods import OTSFIT, GradualConfig
    from ootrain.ot.semidiscrete import SemiDiscreteOT
    G = _mlp(3, 2, 0)
    y = torch.as_tensor(np.random.default_rng(2).normal(size=(40, 2)))
    ot = SemiDiscreteOT(y, cost=cost, backend="torch")
    ot.potentials = torch.linspace(-0.3, 0.3, 40, dtype=torch.float64)
    gcfg = GradualConfig(fit_epochs=2, alpha_fit=0.0, ots={"batch": 64, "max_iter": 50})
    method = OTSFIT(G, ot, torch.optim.SGD(G.parameters(), 0.1), gcfg)

    def reference(eng, inputs):
        idx = torch.from_numpy(eng.store.array("steps/0/assignments")[:])
        return ot.ground_cost.pairwise(G(inputs["embeddings"]), y[idx]).mean()

    if not with_hooks:
        def plan(step, _p=method.plan):
            p = _p(step)
            p.prepare = p.update = None
            return p
        method.plan = plan
    return method, reference


def otgan_case(step: int):
    from ootrain.data import sample_ring8
    from ootrain.methods import OTGAN, OTGANConfig, make_critic, make_generator
    from ootrain.ot.sinkhorn import energy_distance
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

    return method, reference


def wgan_potgan_case(step: int):
    from ootrain.data import sample_ring8
    from ootrain.methods import (WGANGP, POTConfig, POTRegulariser, WGANConfig,
                                 make_wgan_critic)
    from ootrain.methods.wgan import gradient_penalty
    from ootrain.models.forest import LatentTransformForest
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

    return method, reference


#: name -> (builder of (method, reference), step): one step of each method's players
CASES = {
    "rsr": (rsr_case, 0),
    "ots_fit_sqeuclidean": (lambda: ots_fit_case("sqeuclidean"), 0),
    "ots_fit_l1": (lambda: ots_fit_case("l1"), 0),
    "otgan_generator": (lambda: otgan_case(0), 0),
    "otgan_critic": (lambda: otgan_case(3), 3),
    "wgan_potgan_critic": (lambda: wgan_potgan_case(0), 0),
    "wgan_potgan_generator": (lambda: wgan_potgan_case(2), 2),
}


def every_case(directory) -> dict[str, list[Tensor]]:
    """Each case's accumulated gradients (stores under ``directory``), and ``ots_fit_round``:
    the generator's parameters after a whole OTS + FIT round (OTS, Solve, FIT's replay); the
    same in one process and under ``torch.distributed`` ranks."""
    from pathlib import Path
    out = {}
    for name, (build, step) in CASES.items():
        method, _ = build()
        out[name] = step_gradients(method, engine_config(), Path(directory) / name, step)[2]
    method, _ = ots_fit_case("sqeuclidean", with_hooks=True)
    config = engine_config()
    method.bind(config)
    store = open_shared_store(str(Path(directory) / "ots_fit_round"),
                              Engine.store_config(config, method))
    Engine(method, store, config).train(1)
    out["ots_fit_round"] = [p.detach().clone() for p in method.G.parameters()]
    return out


if __name__ == "__main__":   # under torchrun: python -m torch.distributed.run ... invariant.py DIR OUT
    import sys

    from ootrain.distributed import from_environment

    with from_environment():
        results = every_case(sys.argv[1])
        if torch.distributed.get_rank() == 0:
            torch.save(results, sys.argv[2])
