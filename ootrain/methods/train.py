"""Ready-made training runs that wire models, data, store, solver and engine together
(Run-Sort-ReRun; POT-GAN and its WGAN-GP baseline).

Used by the CLI, the demo and the pipelines; a library user can equally build an
:class:`~ootrain.engine.core.Engine` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ootrain.engine.core import Engine, EngineConfig, StepResult, rank_world
from ootrain.models.forest import LatentTransformForest
from ootrain.models.zoo import MLP, parameter_ema, seeded
from ootrain.methods.potgan import POTConfig, POTRegulariser
from ootrain.methods.rsr import SlicedSolver
from ootrain.store import Store
from ootrain.models.vae import VAEConfig, frozen_encoder, make_vae, train_vae
from ootrain.methods.wgan import WGANConfig, make_wgan_critic, train_wgan_gp

__all__ = ["RSRRun", "GANRun", "GAN_METHODS", "make_optimizer", "open_shared_store", "train_rsr",
           "train_potgan"]


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


@dataclass
class GANRun:
    """Outcome of :func:`train_potgan`: the trained models and their histories (``encoder``,
    ``forest``, ``vae_history`` are None for plain WGAN-GP; ``generator_ema``, the averaged
    generator, is None unless asked for)."""

    method: str
    generator: nn.Module
    critic: nn.Module
    history: list[dict[str, Any]]
    encoder: nn.Module | None = None
    forest: nn.Module | None = None
    vae_history: list[dict[str, Any]] | None = None
    generator_ema: nn.Module | None = None


GAN_METHODS = ("potgan", "wgan-gp")


def train_potgan(sampler: Callable[[int, np.random.Generator], Any], dim: int, *,
                 method: str = "potgan", wgan: WGANConfig | None = None,
                 pot: POTConfig | None = None, vae: VAEConfig | None = None,
                 vae_latent: int = 2, vae_hidden: Sequence[int] = (64, 64),
                 hidden: Sequence[int] = (128, 128, 128),
                 critic_hidden: Sequence[int] = (128, 128, 128), forest_trees: int = 8,
                 forest_depth: int = 3, ema: float | None = None, seed: int = 0,
                 progress: Any = None) -> GANRun:
    """POT-GAN (``method="potgan"``: VAE → frozen encoder ``Q`` → WGAN-GP with the latent OT
    regulariser, :mod:`ootrain.methods.potgan`) or its baseline (``"wgan-gp"``) on data of width
    ``dim`` drawn by ``sampler(n, rng)``.

    Both methods build the generator ``MLP(latent -> hidden -> dim)`` and the critic
    ``MLP(dim -> critic_hidden -> 1)`` (ReLU) from ``seed`` and see the same real draws and
    latents (:func:`ootrain.methods.wgan.train_wgan_gp` seeds them from ``wgan.seed``): they differ
    only by ``lambda_POT * L_POT``.  The VAE (``vae_latent``, ``vae_hidden``) and the forest
    (``forest_trees`` of depth ``forest_depth``) are POT-GAN's only.  ``ema`` (a decay in
    [0, 1)) also keeps the bias-corrected moving average of the generator's parameters over
    its updates (:func:`ootrain.models.zoo.parameter_ema`), returned as ``generator_ema``.
    """
    if method not in GAN_METHODS:
        raise ValueError(f"method must be one of {', '.join(GAN_METHODS)}, got {method!r}")
    wgan = wgan if wgan is not None else WGANConfig(seed=seed)
    G = seeded(seed, lambda: MLP(wgan.latent_dim, dim, hidden=hidden))
    D = make_wgan_critic(dim, critic_hidden, seed=seed + 1)
    average = parameter_ema(G, ema) if ema is not None else None
    callback = (lambda row: average.update_parameters(G)) if average is not None else None
    G_ema = average.module if average is not None else None
    if method == "wgan-gp":
        hist = train_wgan_gp(G, D, sampler, wgan, callback=callback, progress=progress)
        return GANRun(method, G, D, hist, generator_ema=G_ema)
    model = make_vae(dim, vae_latent, vae_hidden, seed=seed + 2)
    vae_hist = train_vae(model, sampler, vae if vae is not None else VAEConfig(seed=seed),
                         progress=progress)
    Q = frozen_encoder(model)
    F = LatentTransformForest(vae_latent, n_trees=forest_trees, depth=forest_depth,
                              seed=seed + 3)
    reg = POTRegulariser(Q, F, pot)
    hist = train_wgan_gp(G, D, sampler, wgan, reg, callback=callback, progress=progress)
    return GANRun(method, G, D, hist, Q, F, vae_hist, G_ema)
