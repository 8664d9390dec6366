"""``ootrain otgan train``: OT-GAN's Algorithm 1 from a data spec to written samples, curves
and metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ootrain.eval.plots import plot_otgan_losses, plot_samples
from ootrain.eval.ring import ring8_modes, ring_metrics
from ootrain.jobs.common import InputError, input_errors
from ootrain.methods.otgan import (OTGANConfig, data_sampler, make_critic, make_generator,
                                   train_otgan)
from ootrain.models.zoo import generate

__all__ = ["OTGANJob", "otgan_train"]


@dataclass
class OTGANJob:
    """What :func:`otgan_train` did: the content of ``metrics.json`` and whether
    ``samples.png`` was written (the data's width has a picture)."""

    summary: dict[str, Any]
    wrote_plot: bool


def otgan_train(out: Path, *, data: str = "ring8", batch: int = 200, eps: float = 0.05,
                n_gen: int = 3, lr_gen: float = 1e-3, lr_critic: float = 1e-3,
                beta1: float = 0.5, beta2: float = 0.999, sinkhorn_tol: float = 0.01,
                sinkhorn_max_iter: int = 1000, backend: str = "auto",
                warm_start: bool = False, warm_start_method: str = "ctransform",
                freeze_critic_after: Optional[int] = None, steps: int = 1000,
                latent_dim: int = 8, micro_batch: Optional[int] = None, verify: bool = False,
                hidden: Sequence[int] = (128, 128, 128), layer_norm: bool = True,
                critic_hidden: Sequence[int] = (128, 128), feature_dim: int = 32,
                seed: int = 0, n_samples: int = 2500, progress: bool = True,
                log: Optional[Callable[[str], Any]] = None) -> OTGANJob:
    """Train a generator against a learned critic by OT-GAN's Algorithm 1.

    Each iteration draws X, X' real and Y, Y' generated (each ``batch`` samples), computes the
    mini-batch energy distance of their critic features with the cosine cost (six log-domain
    Sinkhorn solves), and updates the critic or the generator (see
    :func:`ootrain.methods.otgan.train_otgan`).  Writes to ``out``: ``samples.npy``
    (``n_samples`` generated), ``samples.png`` (picturable widths), ``loss.png``,
    ``history.json`` and ``metrics.json`` (ring mode metrics on ``ring8``).  ``log`` receives
    a line describing the run before training.  Bad input raises :class:`InputError` first.
    """
    with input_errors():
        cfg = OTGANConfig(batch=batch, eps=eps, n_gen=n_gen, lr_gen=lr_gen,
                          lr_critic=lr_critic, betas=(beta1, beta2), sinkhorn_tol=sinkhorn_tol,
                          sinkhorn_max_iter=sinkhorn_max_iter, backend=backend,
                          warm_start=warm_start, warm_start_method=warm_start_method,
                          critic_freeze_after=freeze_critic_after, steps=steps,
                          latent_dim=latent_dim, seed=seed, micro_batch=micro_batch,
                          verify=verify)
    if n_samples < 1:
        raise InputError(f"--n-samples must be >= 1, got {n_samples}")
    if feature_dim < 1:
        raise InputError(f"--feature-dim must be >= 1, got {feature_dim}")
    with input_errors(f"--data {data!r}: "):
        sampler, d, what = data_sampler(data)
    G = make_generator(latent_dim, d, tuple(hidden), layer_norm=layer_norm, seed=seed)
    C = make_critic(d, feature_dim, tuple(critic_hidden), seed=seed + 1)
    if log is not None:
        log(f"OT-GAN on {what}; 4 x {batch} samples per iteration, {steps} iterations"
            + (f", micro-batches of {micro_batch}" if micro_batch else ", in memory"))
    history = train_otgan(G, C, sampler, cfg, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x = generate(G, n_samples, latent_dim, seed=seed + 12345)
    np.save(out / "samples.npy", x)
    real = np.asarray(sampler(min(n_samples, 5000), np.random.default_rng([seed, 3])))
    wrote = plot_samples(x, out / "samples.png", real, f"OT-GAN, {steps} iterations, batch "
                         f"4 x {batch}")
    plot_otgan_losses(history, out / "loss.png")
    (out / "history.json").write_text(json.dumps({"config": cfg.to_dict(), "data": data,
                                                  "history": history}, indent=1) + "\n")
    warm = [r["sinkhorn_iterations"] for r in history[1:]]
    summary = {"data": data, "steps": steps, "n_samples": n_samples,
               "final_loss": history[-1]["loss"] if history else None,
               "mean_sinkhorn_iterations": float(np.mean(warm)) if warm else None,
               "wall_s": history[-1]["time_s"] if history else 0.0,
               "ring_metrics": ring_metrics(x, ring8_modes()) if data == "ring8" else None}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return OTGANJob(summary=summary, wrote_plot=wrote)
