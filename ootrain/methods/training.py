"""The one way to train any method: :func:`train` opens the store, builds the engine, resumes.

Every method (:class:`ootrain.methods.rsr.RSR`, :class:`ootrain.methods.gradual.OTSFIT`,
:class:`ootrain.methods.otgan.OTGAN`, :class:`ootrain.methods.wgan.WGANGP` with or without
POT-GAN's regulariser) is a :class:`ootrain.engine.Method`; the CLI, the pipelines and the tests
all train through this function.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ootrain.distributed import barrier
from ootrain.engine.compute import Compute
from ootrain.engine.core import (Engine, EngineConfig, Method, StepResult, place, rank_world,
                                 resolve_device)
from ootrain.store import Store
from ootrain.threads import threads as thread_pools

__all__ = ["TrainResult", "train", "open_shared_store", "make_optimizer", "estimate_step_bytes"]


@dataclass
class TrainResult:
    """Outcome of :func:`train`: the method (its models trained in place), one
    :class:`~ootrain.engine.StepResult` per step taken by this call (``results``) and per
    completed step of the store, earlier runs' included (``steps``), and where the store was
    (``"<memory>"`` or a temporary folder that is gone for runs that did not name one)."""

    method: Any
    results: list[StepResult] = field(default_factory=list)
    store: str = "<memory>"
    steps: list[StepResult] = field(default_factory=list)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One row per completed step of the store: ``step``, the solver's metrics, the
        update's results and the phase timings (``run_s``, ``solve_s``, …)."""
        return [{"step": r.step, **r.metrics, **{f"{k}_s": v for k, v in r.timings.items()}}
                for r in self.steps]


def make_optimizer(params: Any, name: str, lr: float,
                   betas: tuple[float, float] = (0.5, 0.999)) -> torch.optim.Optimizer:
    """``adam`` (default betas 0.5, 0.999, common for generators) or ``sgd``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def open_shared_store(path: str | None, config: dict[str, Any], overwrite: bool = False) -> Store:
    """Open the run's store on every ``torch.distributed`` rank: rank 0 creates it and holds the
    writer lock (ranks write disjoint chunks under it), the others open it once it exists."""
    rank, world = rank_world()
    if path is None and world > 1:
        raise ValueError("ranks of torch.distributed need a store they all see: pass a path or "
                         "URL, not the in-memory store")
    store = Store(path, config, mode="w" if overwrite else "a") if rank == 0 else None
    barrier("opening the store")
    return store if store is not None else Store(path, config, mode="a", lock=False)


def estimate_step_bytes(method: Method, config: EngineConfig) -> int:
    """Bytes one step keeps in its store: each population's embeddings, and as much again for
    what the solver writes per sample, plus the static real embeddings (one forward pass of a
    micro-batch per population measures the widths, on ``config.device``, where the method's
    modules must be); the largest over the first 8 steps."""
    itemsize = np.dtype(config.dtype).itemsize
    plans = {}
    for k in range(8):   # adversarial methods alternate plans; one of each kind
        plan = method.plan(k)
        plans.setdefault(tuple((p.name, p.size) for p in plan.populations), plan)
    device = resolve_device(config.device)
    return max(_plan_bytes(method, plan, config, itemsize, device) for plan in plans.values())


def _plan_bytes(method: Method, plan: Any, config: EngineConfig, itemsize: int,
                device: torch.device) -> int:
    """:func:`estimate_step_bytes` of one step's plan (adversarial methods alternate plans:
    the estimate is the largest of the first steps')."""
    total = 0
    for pop in plan.populations:
        b = pop.size if pop.size is not None else config.population
        m = min(config.micro_batch, b)
        u = torch.as_tensor(np.asarray(pop.draw(m, np.random.default_rng(0))))
        u = u.to(getattr(torch, config.dtype)) if u.is_floating_point() else u
        with torch.no_grad():
            d = int(pop.forward(u.to(device)).shape[1])
        total += 2 * b * d * itemsize
    real = getattr(method, "real", None)
    if real is not None:
        with torch.no_grad():
            d = int(method.real_embedding(torch.as_tensor(np.asarray(real[:1]),
                                                          dtype=getattr(torch, config.dtype)
                                                          ).to(device)).shape[1])
        total += int(real.shape[0]) * d * itemsize
    return total


def train(method: Method, steps: int, config: EngineConfig, *,
          store: str | None = None, overwrite: bool = False, progress: Any = None,
          callback: Callable[[StepResult], None] | None = None,
          threads: int | None = None, compute: Compute | None = None) -> TrainResult:
    """Train ``method`` until ``steps`` steps are complete (resuming from ``store``).

    Args:
        method: any method on the engine.
        steps: total steps (a resumed run continues up to it).
        config: the :class:`~ootrain.engine.EngineConfig` (population, micro-batch, seed, memory
            budget, …).
        store: local path or fsspec URL of the store; ``None``: in memory while the arrays of
            ``keep_steps`` steps fit ``config.memory_budget``, else a temporary folder removed
            at the end (name one to be able to resume).
        overwrite: discard an existing store at ``store``.
        progress: a ``rich.progress.Progress`` for the engine's bars, or None.
        callback: called with each :class:`~ootrain.engine.StepResult`.
        threads: threads of torch, BLAS/OpenMP and numba while training, restored after;
            ``None``: the process's setting (the CLI's ``--threads``, ``OOTRAIN_THREADS``), else
            :func:`ootrain.threads.default_threads` (1 on a machine of <= 2 cores);
            ``0``: leave the pools as they are.
        compute: where Solve's Dask task graphs run (:class:`~ootrain.engine.compute.Compute`:
            ``Compute("tcp://host:8786")`` for a ``dask.distributed`` cluster); default the
            local threaded scheduler.  The results do not depend on it.

    Returns:
        A :class:`TrainResult`; the method's modules stay on ``config.device``.

    Example
    -------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from ootrain.engine import EngineConfig
    >>> from ootrain.methods import RSR, train
    >>> G = nn.Linear(4, 2)
    >>> real = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    >>> run = train(RSR(G, real, torch.optim.Adam(G.parameters(), 1e-2), n_directions=8),
    ...             steps=2, config=EngineConfig(population=256, micro_batch=64, latent_dim=4))
    >>> len(run.history)
    2
    """
    place(method, resolve_device(config.device))   # before bind and the size estimate run them
    bind = getattr(method, "bind", None)
    if bind is not None:
        bind(config)
    temp = None
    if store is None and rank_world()[1] > 1:
        raise ValueError("ranks of torch.distributed need a store they all see: pass a path or "
                         "URL as store=")
    if store is None:
        keep = config.keep_steps if config.keep_steps is not None else max(steps, 1)
        if estimate_step_bytes(method, config) * keep > config.memory_budget:
            temp = tempfile.mkdtemp(prefix="ootrain-store-")
            store = f"{temp}/run.zarr"
    try:
        with thread_pools(threads), \
                open_shared_store(store, Engine.store_config(config, method), overwrite) as st:
            engine = Engine(method, st, config, progress=progress, compute=compute)
            results = engine.train(steps, callback=callback)
            done = engine.history()
            where = st.url
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return TrainResult(method, results, where, done)
