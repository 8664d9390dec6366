"""Ready-made training runs that wire models, data, store, solver and engine together.

Used by the CLI, the demo and the pipelines; a library user can equally build an
:class:`~ootrain.engine.Engine` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import torch.distributed as dist

from ootrain.engine import Engine, EngineConfig, StepResult, rank_world
from ootrain.rsr import SlicedSolver
from ootrain.store import Store


@dataclass
class RSRRun:
    """Outcome of :func:`train_rsr`: the trained generator and one result per step taken."""

    generator: nn.Module
    results: list[StepResult] = field(default_factory=list)


def make_optimizer(params: Any, name: str, lr: float) -> torch.optim.Optimizer:
    """``adam`` (betas 0.5, 0.999 as common for generators) or ``sgd``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def train_rsr(generator: nn.Module, embedding: nn.Module, real: Any, store_path: str,
              config: EngineConfig, solver: SlicedSolver, steps: int, *, lr: float = 1e-3,
              optimizer: str = "adam", overwrite: bool = False, generator_spec: str = "custom",
              embedding_spec: str = "custom", progress: Any = None,
              callback: Callable[[StepResult], None] | None = None) -> RSRRun:
    """Run-Sort-ReRun training of ``generator`` so that ``embedding(generator(z))`` matches
    ``embedding(real)`` in sliced W2, over populations of ``config.population`` per step.

    Resumes from ``store_path`` when it holds an earlier run of the same configuration.
    """
    opt = make_optimizer(generator.parameters(), optimizer, lr)
    store_cfg = Engine.store_config(config, solver, generator_spec, embedding_spec, real)
    store_cfg["optimizer"] = {"name": optimizer, "lr": lr}
    with open_shared_store(store_path, store_cfg, overwrite) as store:
        eng = Engine(generator, embedding, solver, real, store, opt, config, progress=progress)
        results = eng.train(steps, callback=callback)
    return RSRRun(generator, results)


def open_shared_store(path: str, config: dict[str, Any], overwrite: bool = False) -> Store:
    """Open the run's store on every ``torch.distributed`` rank: rank 0 creates it and holds the
    writer lock (ranks write disjoint chunks under it), the others open it once it exists."""
    rank, world = rank_world()
    store = Store(path, config, mode="w" if overwrite else "a") if rank == 0 else None
    if world > 1:
        dist.barrier()
    return store if store is not None else Store(path, config, mode="a", lock=False)


def generate(generator: nn.Module, n: int, latent_dim: int, seed: int = 12345,
             batch: int = 65536) -> np.ndarray:
    """``n`` samples ``G(z)``, ``z ~ N(0, I)``, in batches, without grad: [n, out_dim]."""
    rng = np.random.default_rng(seed)
    dtype = next(generator.parameters()).dtype
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            z = torch.as_tensor(rng.standard_normal((min(batch, n - i), latent_dim)), dtype=dtype)
            out.append(generator(z).numpy())
    return np.concatenate(out)
