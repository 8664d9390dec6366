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
from ootrain.jobs.common import InputError, input_errors
from ootrain.methods.otgan import data_sampler
from ootrain.methods.potgan import POTConfig
from ootrain.methods.train import GAN_METHODS, train_potgan
from ootrain.methods.wgan import WGANConfig
from ootrain.models.vae import VAEConfig
from ootrain.models.zoo import generate

__all__ = ["POTGANJob", "potgan_train"]


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
                 progress: bool = True,
                 log: Optional[Callable[[str], Any]] = None) -> POTGANJob:
    """Train WGAN-GP with (``potgan``) or without (``wgan-gp``) the latent OT regulariser.

    See :func:`ootrain.methods.train.train_potgan`.  Scores, of the averaged generator
    (``ema``) and of the last one: Parzen reverse KL(P_g || P_r) on ``n_samples`` generated vs
    as many real samples (``bandwidth``: default 0.02 on ring8, else Scott's rule), and mode
    metrics on ring8.  Writes to ``out``: ``samples.npy`` (of the averaged generator),
    ``samples.png`` (picturable widths), ``loss.png``, ``history.json``, ``metrics.json``.
    ``log`` receives a line describing the run before training.  Bad input raises
    :class:`InputError` first.
    """
    if method not in GAN_METHODS:
        raise InputError(f"--method must be one of {', '.join(GAN_METHODS)}, got {method!r}")
    with input_errors():
        wcfg = WGANConfig(batch=batch, n_critic=n_critic, gp_weight=gp_weight, lr_gen=lr,
                          lr_critic=lr, steps=steps, latent_dim=latent_dim, seed=seed,
                          micro_batch=micro_batch)
        pcfg = POTConfig(weight=pot_weight, forest_steps=forest_steps, forest_lr=forest_lr,
                         matching=matching, backend=backend)
        vcfg = VAEConfig(steps=vae_steps, seed=seed)
    for name, v in (("--n-samples", n_samples), ("--vae-latent", vae_latent),
                    ("--forest-trees", forest_trees), ("--forest-depth", forest_depth)):
        if v < 1:
            raise InputError(f"{name} must be >= 1, got {v}")
    if not 0 <= ema < 1:
        raise InputError(f"--ema must be in [0, 1), got {ema}")
    if bandwidth is not None and not bandwidth > 0:
        raise InputError(f"--bandwidth must be > 0, got {bandwidth}")
    with input_errors(f"--data {data!r}: "):
        sampler, d, what = data_sampler(data)
    if log is not None:
        log(f"{method} on {what}; batch {batch}, {steps} generator updates")
    run = train_potgan(sampler, d, method=method, wgan=wcfg, pot=pcfg, vae=vcfg,
                       vae_latent=vae_latent, forest_trees=forest_trees,
                       forest_depth=forest_depth, ema=ema, seed=seed, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x = generate(run.generator_ema, n_samples, latent_dim, seed=seed + 12345)
    x_last = generate(run.generator, n_samples, latent_dim, seed=seed + 12345)
    real = np.asarray(sampler(n_samples, np.random.default_rng([seed, 3])))
    h = bandwidth if bandwidth is not None else (0.02 if data == "ring8"
                                                 else scott_bandwidth(real))
    np.save(out / "samples.npy", x)
    wrote = plot_samples(x, out / "samples.png", real, f"{method}, {steps} updates")
    plot_potgan_losses(run.history, out / "loss.png")
    (out / "history.json").write_text(json.dumps(
        {"method": method, "data": data, "ema": ema, "wgan": wcfg.to_dict(),
         "pot": pcfg.to_dict(),
         "vae": vcfg.to_dict(), "history": run.history, "vae_history": run.vae_history},
        indent=1) + "\n")
    summary = {"method": method, "data": data, "steps": steps, "n_samples": n_samples,
               "ema": ema, "bandwidth": h, "reverse_kl": parzen_reverse_kl(x, real, h),
               "reverse_kl_last": parzen_reverse_kl(x_last, real, h),
               "wall_s": run.history[-1]["time_s"] if run.history else 0.0,
               "ring_metrics": ring_metrics(x, ring8_modes()) if data == "ring8" else None}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return POTGANJob(summary=summary, wrote_plot=wrote)
