"""``ootrain rsr train``: Run-Sort-ReRun from spec strings to a store and written samples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ootrain.data import load_targets
from ootrain.engine.core import EngineConfig, rank_world
from ootrain.eval.plots import plot_rsr_losses
from ootrain.jobs.common import (check_device, check_finite_data, connect, check_population,
                                 check_steps, default_rows, input_errors, model_errors)
from ootrain.methods.rsr import RSR, SlicedSolver
from ootrain.methods.training import TrainResult, make_optimizer, train
from ootrain.models.zoo import build_model, generate
from ootrain.progress import make_progress

__all__ = ["RSRJob", "rsr_train"]


@dataclass
class RSRJob:
    """What :func:`rsr_train` did: the training run (``run.results``: the steps of this call)
    and the samples file it wrote (None without ``out``)."""

    run: TrainResult
    losses: list[float]
    samples: Optional[Path]


def rsr_train(store: str, *, data: str = "mog1d", n_real: Optional[int] = None,
              generator: str = "mlp", generator_args: Optional[dict[str, Any]] = None,
              embedding: str = "identity", embedding_args: Optional[dict[str, Any]] = None,
              latent_dim: int = 8, population: int = 4096, micro_batch: int = 256,
              directions: int = 64, keep: int = 0, direction_mode: str = "gaussian",
              mode: str = "target", steps: int = 100, lr: float = 1e-3,
              optimizer: str = "adam", memory_budget: int = 2**30, seed: int = 0,
              verify: bool = False, store_latents: bool = False, overwrite: bool = False,
              out: Optional[Path] = None, progress: bool = True,
              dask_address: Optional[str] = None, device: str = "auto") -> RSRJob:
    """Train a generator with Run-Sort-ReRun; resumes automatically from an existing store.

    ``data`` is a built-in (sampled: ``n_real`` rows, default 4096; ``digits``: all rows) or
    a user's array (a zarr array stays on disk, read chunk by chunk when embedded).  The
    generator is ``build_model(generator, in_dim=latent_dim, out_dim=width, **generator_args)``
    seeded with ``seed``; the embedding ``build_model(embedding, **embedding_args)``.  Each
    step is logged on the progress console.  With ``out``, writes ``samples.npy`` (as many
    samples as data rows, at most 100000) and ``loss.png`` (when steps ran).  Solve runs on
    the ``dask.distributed`` scheduler at ``dask_address`` (default: local threads).  The
    models run on ``device`` (:attr:`~ootrain.engine.EngineConfig.device`).
    """
    check_steps("--steps", steps)
    check_device(device)
    check_population(population, micro_batch)
    builtin_n = default_rows(data, n_real)
    with input_errors(f"--data {data!r}: "):
        real = load_targets(data, n=builtin_n, seed=seed + 1)
    check_finite_data(real)
    torch.manual_seed(seed)
    gkw = {"in_dim": latent_dim, "out_dim": real.shape[1], **(generator_args or {})}
    ekw = dict(embedding_args or {})
    with model_errors(f"--generator {generator!r}"):
        G = build_model(generator, **gkw)
    with model_errors(f"--embedding {embedding!r}"):
        E = build_model(embedding, **ekw).eval()
    with input_errors(names={}):
        cfg = EngineConfig(population=population, micro_batch=micro_batch,
                           latent_dim=latent_dim, seed=seed, memory_budget=memory_budget,
                           verify=verify, store_latents=store_latents, device=device)
    with input_errors("--optimizer: "):
        make_optimizer([torch.zeros(1, requires_grad=True)], optimizer, lr)
    with input_errors(names={"n_directions": "--directions/-p", "directions": "--direction-mode",
                             "keep": "--keep/-r"}):
        solver = SlicedSolver(n_directions=directions, directions=direction_mode, keep=keep,
                              mode=mode)
    compute = connect(dask_address)
    losses: list[float] = []
    with compute.session(), make_progress(progress) as bars:
        def report(res: Any) -> None:
            losses.append(res.metrics["loss"])
            t = res.timings
            bars.console.log(f"step {res.step}: SW2² {res.metrics['loss']:.5g}  "
                             f"run {t['run']:.2f}s solve {t['solve']:.2f}s "
                             f"rerun {t['rerun']:.2f}s")
        method = RSR(G, real, make_optimizer(G.parameters(), optimizer, lr), embedding=E,
                     solver=solver, generator_spec=json.dumps([generator, gkw]),
                     embedding_spec=json.dumps([embedding, ekw]))
        run = train(method, steps, cfg, store=str(store), overwrite=overwrite, progress=bars,
                    callback=report, compute=compute)
    samples = None
    if out is not None and rank_world()[0] == 0:   # one writer of the outputs
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        samples = out / "samples.npy"
        np.save(samples, generate(G, min(real.shape[0], 100_000), latent_dim))
        if losses:
            plot_rsr_losses(losses, out / "loss.png")
    return RSRJob(run=run, losses=losses, samples=samples)
