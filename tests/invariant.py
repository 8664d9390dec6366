"""The engine's invariant, one check for every method: the ReRun-accumulated gradient of one
engine step equals full-batch autograd of the method's loss on the same inputs."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ootrain.engine import Engine, EngineConfig
from ootrain.store import Store


def step_gradients(method, config: EngineConfig, store_path, step: int = 0
                   ) -> tuple[Engine, dict[str, Tensor], list[Tensor]]:
    """Run and Solve step ``step`` of ``method`` in a store (``store_path`` None: in memory),
    ReRun it; returns the engine, every population's full inputs and the player's
    accumulated gradients (the optimiser does not step)."""
    method.bind(config)
    store = Store(store_path, Engine.store_config(config, method))
    eng = Engine(method, store, config)
    if getattr(method, "real", None) is not None:
        eng.embed_real()
    plan = method.plan(step)
    store.group.require_group(eng.prefix(step))
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
