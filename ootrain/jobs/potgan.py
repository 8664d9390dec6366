"""``ootrain potgan train``: WGAN-GP with or without the latent OT regulariser, from a data
spec to written samples, curves and scores."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ootrain.eval.parzen import parzen_reverse_kl, scott_bandwidth
from ootrain.eval.plots import plot_potgan_losses, plot_samples
from ootrain.eval.ring import ring8_modes, ring_metrics
from ootrain.jobs.common import (InputError, check_device, check_population, connect,
                                 input_errors)
from ootrain.engine import Compute, EngineConfig, rank_world
from ootrain.data import data_identity, data_sampler
from ootrain.methods.potgan import GAN_METHODS, POTConfig, build_potgan
from ootrain.methods.training import train
from ootrain.methods.wgan import WGANConfig
from ootrain.models.vae import VAEConfig
from ootrain.models.zoo import generate
from ootrain.progress import make_progress

__all__ = ["POTGANJob", "GANRun", "potgan_train", "train_gan", "generator_rows"]


def generator_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per generator update from the engine's history (one row per engine step:
    ``n_critic`` critic steps, then a generator step): ``step`` (the generator update,
    from 0), ``engine_step``, the generator row's ``loss`` (``L_G``), ``adv``, ``reg``,
    ``forest_loss``, ``matched``, the preceding critic row's ``wasserstein``, ``gp`` and
    ``critic_loss``, ``step_s`` (wall seconds of the cycle's engine steps: the critic
    updates and the generator update) and ``time_s`` (cumulative)."""
    rows: list[dict[str, Any]] = []
    critic: Optional[dict[str, Any]] = None
    cycle = total = 0.0
    for r in history:
        cycle += sum(v for k, v in r.items() if k.endswith("_s"))
        if r.get("player") == "critic":
            critic = r
            continue
        if r.get("player") != "generator":
            raise ValueError(f"engine row {r.get('step')} has no player: {sorted(r)}")
        total += cycle
        row: dict[str, Any] = {"step": len(rows), "engine_step": r["step"]}
        row.update({k: v for k, v in r.items()
                    if k not in ("step", "player") and not k.endswith("_s")})
        if critic is not None:
            row.update(wasserstein=critic["wasserstein"], gp=critic["gp"],
                       critic_loss=critic["loss"])
        row.update(step_s=cycle, time_s=total)
        rows.append(row)
        cycle = 0.0
    return rows


@dataclass
class GANRun:
    """What :func:`train_gan` trained: the method (``.G``, ``.D``, ``.reg``), the last and
    the averaged generator (the last one when there is no average), the engine's per-step
    history and its per-generator-update rows (:func:`generator_rows`), the VAE's history
    (when the method keeps one) and where the store was."""

    method: Any
    generator: Any
    generator_ema: Any
    engine_history: list[dict[str, Any]]
    history: list[dict[str, Any]]
    vae_history: Optional[list[dict[str, Any]]]
    store: str


def train_gan(sampler: Any, dim: int, *, method: str, steps: int, batch: int,
              wgan: WGANConfig, pot: POTConfig, vae: VAEConfig, lr: float,
              latent_dim: int = 2, vae_latent: int = 2, forest_trees: int = 8,
              forest_depth: int = 3, micro_batch: Optional[int] = None,
              ema: Optional[float] = None, seed: int = 0, real_spec: str = "custom",
              store: Optional[str] = None, overwrite: bool = False,
              progress: Any = None, compute: Optional[Compute] = None,
              device: str = "auto") -> GANRun:
    """Build POT-GAN or WGAN-GP (:func:`ootrain.methods.potgan.build_potgan`, Adam ``lr``,
    betas (0.5, 0.9)) and train ``steps`` generator updates (``steps * (n_critic + 1)``
    engine steps, population ``batch``, micro-batch ``micro_batch`` or the whole batch) by
    :func:`ootrain.methods.training.train`.  ``progress``: a ``rich.progress.Progress``, or a
    bool / None for bars of its own (:func:`ootrain.progress.make_progress`).  ``compute``:
    where the Solves' Dask tasks run (default: local threads).  The models (the forest too)
    run on ``device`` (:attr:`~ootrain.engine.EngineConfig.device`; the VAE trains on the
    CPU before)."""
    if progress is None or isinstance(progress, bool):
        with make_progress(bool(progress)) as bars:
            return train_gan(sampler, dim, method=method, steps=steps, batch=batch, wgan=wgan,
                             pot=pot, vae=vae, lr=lr, latent_dim=latent_dim,
                             vae_latent=vae_latent, forest_trees=forest_trees,
                             forest_depth=forest_depth, micro_batch=micro_batch, ema=ema,
                             seed=seed, real_spec=real_spec, store=store,
                             overwrite=overwrite, progress=bars, compute=compute,
                             device=device)
    m = build_potgan(sampler, dim, method=method, wgan=wgan, pot=pot, vae=vae,
                     latent_dim=latent_dim, lr=lr, betas=(0.5, 0.9), vae_latent=vae_latent,
                     forest_trees=forest_trees, forest_depth=forest_depth,
                     ema=ema or None, seed=seed, real_spec=real_spec, progress=progress)
    cfg = EngineConfig(population=batch, micro_batch=micro_batch or batch,
                       latent_dim=latent_dim, seed=seed, device=device)
    run = train(m, steps * (wgan.n_critic + 1), cfg, store=store, overwrite=overwrite,
                progress=progress, compute=compute)
    hist = run.history
    avg = m.generator_ema.module if m.generator_ema is not None else m.G
    return GANRun(m, m.G, avg, hist, generator_rows(hist), getattr(m, "vae_history", None),
                  run.store)


@dataclass
class POTGANJob:
    """What :func:`potgan_train` did: the content of ``metrics.json`` and whether
    ``samples.png`` was written (the data's width has a picture)."""

    summary: dict[str, Any]
    wrote_plot: bool


def potgan_train(out: Path, *, data: str = "ring8", method: str = "potgan", steps: int = 3000,
                 batch: int = 256, n_critic: int = 5, gp_weight: float = 10.0,
                 lr: float = 5e-4, latent_dim: int = 2, pot_weight: float = 0.03,
                 matching: str = "argmin", backend: str = "auto", forest_steps: int = 1,
                 forest_lr: float = 1e-3, forest_trees: int = 8, forest_depth: int = 3,
                 vae_latent: int = 2, vae_steps: int = 1500,
                 micro_batch: Optional[int] = None, seed: int = 0, ema: float = 0.999,
                 n_samples: int = 5000, bandwidth: Optional[float] = None,
                 store: Optional[str] = None, overwrite: bool = False,
                 progress: bool = True,
                 log: Optional[Callable[[str], Any]] = None,
                 dask_address: Optional[str] = None, device: str = "auto") -> POTGANJob:
    """Train WGAN-GP with (``potgan``) or without (``wgan-gp``) the latent OT regulariser.

    On the engine (:func:`train_gan`: ``steps`` generator updates, each after ``n_critic``
    critic updates, of ``batch`` real and generated samples in forward passes of
    ``micro_batch`` rows); ``store``: local path or URL of the engine's store (resumable),
    None: in memory (or a temporary folder).  Scores, of the averaged generator
    (``ema``) and of the last one: Parzen reverse KL(P_g || P_r) on ``n_samples`` generated vs
    as many real samples (``bandwidth``: default 0.02 on ring8, else Scott's rule), and mode
    metrics on ring8.  Writes to ``out``: ``samples.npy`` (of the averaged generator),
    ``samples.png`` (picturable widths), ``loss.png``, ``history.json`` (one row per
    generator update, :func:`generator_rows`), ``metrics.json``.
    ``log`` receives a line describing the run before training.  The critic updates' Solves
    run on the ``dask.distributed`` scheduler at ``dask_address`` (default: local threads).
    The models run on ``device`` (:attr:`~ootrain.engine.EngineConfig.device`).  Bad input
    raises :class:`InputError` first.
    """
    if method not in GAN_METHODS:
        raise InputError(f"--method must be one of {', '.join(GAN_METHODS)}, got {method!r}")
    for name, v, lo in (("--steps", steps, 1), ("--population/-b", batch, 2),
                        ("--latent-dim", latent_dim, 1), ("--n-samples", n_samples, 1),
                        ("--vae-latent", vae_latent, 1), ("--forest-trees", forest_trees, 1),
                        ("--forest-depth", forest_depth, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    check_population(batch, micro_batch)
    check_device(device)
    if not (np.isfinite(lr) and lr > 0):
        raise InputError(f"--lr must be > 0, got {lr}")
    with input_errors(names={"weight": "--pot-weight"}):
        wcfg = WGANConfig(n_critic=n_critic, gp_weight=gp_weight)
        pcfg = POTConfig(weight=pot_weight, forest_steps=forest_steps, forest_lr=forest_lr,
                         matching=matching, backend=backend)
        vcfg = VAEConfig(steps=vae_steps, seed=seed)
    if not 0 <= ema < 1:
        raise InputError(f"--ema must be in [0, 1), got {ema}")
    if bandwidth is not None and not bandwidth > 0:
        raise InputError(f"--bandwidth must be > 0, got {bandwidth}")
    with input_errors(f"--data {data!r}: "):
        sampler, d, what = data_sampler(data)
    mb = micro_batch or batch
    if log is not None:
        log(f"{method} on {what}; batch {batch} (micro-batch {mb}), {steps} generator updates "
            f"after {n_critic} critic updates each")
    compute = connect(dask_address)
    with compute.session():
        run = train_gan(sampler, d, method=method, steps=steps, batch=batch, wgan=wcfg,
                        pot=pcfg, vae=vcfg, lr=lr, latent_dim=latent_dim,
                        vae_latent=vae_latent, forest_trees=forest_trees,
                        forest_depth=forest_depth, micro_batch=mb, ema=ema, seed=seed,
                        real_spec=data_identity(data, sampler), store=store,
                        overwrite=overwrite, progress=progress, compute=compute,
                        device=device)
    out, writer = Path(out), rank_world()[0] == 0   # one writer of the outputs: rank 0
    x = generate(run.generator_ema, n_samples, latent_dim, seed=seed + 12345)
    x_last = generate(run.generator, n_samples, latent_dim, seed=seed + 12345)
    real = np.asarray(sampler(n_samples, np.random.default_rng([seed, 3])))
    h = bandwidth if bandwidth is not None else (0.02 if data == "ring8"
                                                 else scott_bandwidth(real))
    wrote = False
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "samples.npy", x)
        wrote = plot_samples(x, out / "samples.png", real, f"{method}, {steps} updates")
        plot_potgan_losses(run.history, out / "loss.png")
        (out / "history.json").write_text(json.dumps(
            {"method": method, "data": data, "ema": ema,
             "wgan": {"batch": batch, "micro_batch": mb, "lr": lr, "latent_dim": latent_dim,
                      "steps": steps, "seed": seed, **wcfg.to_dict()},
             "pot": pcfg.to_dict(), "vae": vcfg.to_dict(), "store": store,
             "history": run.history, "vae_history": run.vae_history},
            indent=1) + "\n")
    summary = {"method": method, "data": data, "steps": steps, "n_samples": n_samples,
               "ema": ema, "bandwidth": h, "reverse_kl": parzen_reverse_kl(x, real, h),
               "reverse_kl_last": parzen_reverse_kl(x_last, real, h),
               "wall_s": run.history[-1]["time_s"] if run.history else 0.0,
               "ring_metrics": ring_metrics(x, ring8_modes()) if data == "ring8" else None}
    if writer:
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return POTGANJob(summary=summary, wrote_plot=wrote)
