"""``ootrain otgan train``: OT-GAN's Algorithm 1 from a data spec to written samples, curves
and metrics, trained on the engine (:class:`ootrain.methods.otgan.OTGAN`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ootrain.engine.core import EngineConfig, StepResult, rank_world
from ootrain.eval.plots import plot_otgan_losses, plot_samples
from ootrain.eval.ring import ring8_modes, ring_metrics
from ootrain.jobs.common import (InputError, check_device, check_population, connect,
                                 input_errors)
from ootrain.data import data_identity, data_sampler
from ootrain.methods.otgan import OTGAN, OTGANConfig, make_critic, make_generator
from ootrain.methods.training import train
from ootrain.models.zoo import generate
from ootrain.progress import make_progress
from ootrain.validation import check_betas, check_bool, check_micro_batch, is_int, is_num

__all__ = ["OTGANJob", "otgan_train", "otgan_engine_config", "otgan_method", "history_row"]


@dataclass
class OTGANJob:
    """What :func:`otgan_train` did: the content of ``metrics.json``, whether
    ``samples.png`` was written (the data's width has a picture) and the full history (resumed
    steps included)."""

    summary: dict[str, Any]
    wrote_plot: bool
    history: list[dict[str, Any]]


def otgan_engine_config(batch: int, latent_dim: int, seed: int,
                        micro_batch: Optional[int] = None, verify: bool = False,
                        **kw: Any) -> EngineConfig:
    """The engine settings of an OT-GAN run: ``population = batch`` (each of X, X', Y, Y'),
    ``micro_batch`` rows per forward pass (None: the whole batch; at most ``batch``)."""
    if not is_int(batch) or batch < 2:
        raise ValueError(f"batch (size of each of X, X', Y, Y') must be an integer >= 2, "
                         f"got {batch!r}")
    if not is_int(latent_dim) or latent_dim < 1:
        raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
    if not is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    check_micro_batch(micro_batch)
    if micro_batch is not None and micro_batch > batch:
        raise ValueError(f"micro_batch {micro_batch} exceeds batch {batch}; pass "
                         "micro_batch <= batch")
    check_bool("verify", verify)
    m = batch if micro_batch is None else int(micro_batch)
    return EngineConfig(population=int(batch), micro_batch=m, latent_dim=int(latent_dim),
                        seed=int(seed), verify=verify, **kw)


def otgan_method(G: torch.nn.Module, C: torch.nn.Module, sampler: Any, cfg: OTGANConfig, *,
                 lr_gen: float, lr_critic: float, betas: tuple[float, float] = (0.5, 0.999),
                 real_spec: str = "custom") -> OTGAN:
    """:class:`OTGAN` with Adam for both players (the paper's optimiser)."""
    for name, v in (("lr_gen", lr_gen), ("lr_critic", lr_critic)):
        if not is_num(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    betas = check_betas(betas)
    return OTGAN(G, C, sampler, torch.optim.Adam(G.parameters(), lr_gen, betas=betas),
                 torch.optim.Adam(C.parameters(), lr_critic, betas=betas), cfg,
                 real_spec=real_spec)


def history_row(res: StepResult) -> dict[str, Any]:
    """One history row of a step: ``step``, the solver's metrics, the phase timings
    (``prepare_s``, ``run_s``, ``solve_s`` (the six Sinkhorn solves), ``rerun_s``) and their sum
    ``step_s``."""
    t = {f"{k}_s": float(v) for k, v in res.timings.items()}
    return {"step": int(res.step), **res.metrics, **t, "step_s": float(sum(t.values()))}


def _with_elapsed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``time_s``: the cumulative step time up to and including each row."""
    total = 0.0
    for r in rows:
        total += r["step_s"]
        r["time_s"] = total
    return rows


def otgan_train(out: Path, *, data: str = "ring8", batch: int = 200, eps: float = 0.05,
                n_gen: int = 3, lr_gen: float = 1e-3, lr_critic: float = 1e-3,
                beta1: float = 0.5, beta2: float = 0.999, sinkhorn_tol: float = 0.01,
                sinkhorn_max_iter: int = 1000, backend: str = "auto",
                warm_start: bool = False, warm_start_method: str = "ctransform",
                freeze_critic_after: Optional[int] = None, steps: int = 1000,
                latent_dim: int = 8, micro_batch: Optional[int] = None, verify: bool = False,
                hidden: Sequence[int] = (128, 128, 128), layer_norm: bool = True,
                critic_hidden: Sequence[int] = (128, 128), feature_dim: int = 32,
                seed: int = 0, n_samples: int = 2500, store: Optional[str] = None,
                overwrite: bool = False, progress: bool = True,
                log: Optional[Callable[[str], Any]] = None,
                dask_address: Optional[str] = None, device: str = "auto") -> OTGANJob:
    """Train a generator against a learned critic by OT-GAN's Algorithm 1 on the engine.

    Each iteration draws X, X' real and Y, Y' generated (each ``batch`` samples), computes the
    mini-batch energy distance of their critic features with the cosine cost (six log-domain
    Sinkhorn solves), and updates the critic or the generator (see
    :class:`ootrain.methods.otgan.OTGAN`): one engine step, features computed and replayed
    ``micro_batch`` rows at a time.  ``store``: path or URL of the run's store (``None``: in
    memory or a temporary folder); a run with a store resumes from it up to ``steps``
    (``overwrite`` discards it first).  Writes to ``out``: ``samples.npy`` (``n_samples``
    generated), ``samples.png`` (picturable widths), ``loss.png``, ``history.json`` (its
    ``config``: the engine settings with ``batch`` and ``micro_batch``, and OTGANConfig's) and
    ``metrics.json`` (ring mode metrics on ``ring8``).  ``log`` receives a line describing the
    run before training.  Solve's six Sinkhorn problems are Dask tasks, on the
    ``dask.distributed`` scheduler at ``dask_address`` (default: local threads).  The
    generator and critic run on ``device`` (:attr:`~ootrain.engine.EngineConfig.device`).
    Bad input raises :class:`InputError` first.
    """
    check_population(batch, micro_batch)
    check_device(device)
    with input_errors(names={"batch": "--population/-b",
                             "critic_freeze_after": "--freeze-critic-after"}):
        cfg = OTGANConfig(eps=eps, n_gen=n_gen, sinkhorn_tol=sinkhorn_tol,
                          sinkhorn_max_iter=sinkhorn_max_iter, backend=backend,
                          warm_start=warm_start, warm_start_method=warm_start_method,
                          critic_freeze_after=freeze_critic_after)
        ecfg = otgan_engine_config(batch, latent_dim, seed, micro_batch, verify,
                                   device=device)
        if not is_int(steps) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if n_samples < 1:
        raise InputError(f"--n-samples must be >= 1, got {n_samples}")
    if feature_dim < 1:
        raise InputError(f"--feature-dim must be >= 1, got {feature_dim}")
    with input_errors(f"--data {data!r}: "):
        sampler, d, what = data_sampler(data)
    G = make_generator(latent_dim, d, tuple(hidden), layer_norm=layer_norm, seed=seed)
    C = make_critic(d, feature_dim, tuple(critic_hidden), seed=seed + 1)
    with input_errors(names={}):
        method = otgan_method(G, C, sampler, cfg, lr_gen=lr_gen, lr_critic=lr_critic,
                              betas=(beta1, beta2), real_spec=data_identity(data, sampler))
    if log is not None:
        log(f"OT-GAN on {what}; 4 x {batch} samples per iteration, {steps} iterations"
            + (f", micro-batches of {ecfg.micro_batch}" if micro_batch else ", in memory")
            + (f", store {store}" if store is not None else ""))
    compute = connect(dask_address)
    t0 = time.perf_counter()
    with compute.session(), make_progress(progress) as bars:
        run = train(method, steps, ecfg, store=None if store is None else str(store),
                    overwrite=overwrite, progress=bars, compute=compute)
    wall = time.perf_counter() - t0
    history = _with_elapsed([history_row(r) for r in run.steps])   # earlier runs' steps too
    out, writer = Path(out), rank_world()[0] == 0   # one writer of the outputs: rank 0
    x = generate(G, n_samples, latent_dim, seed=seed + 12345)
    real = np.asarray(sampler(min(n_samples, 5000), np.random.default_rng([seed, 3])))
    wrote = False
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "samples.npy", x)
        wrote = plot_samples(x, out / "samples.png", real, f"OT-GAN, {steps} iterations, "
                             f"batch 4 x {batch}")
        plot_otgan_losses(history, out / "loss.png")
    config = {"batch": batch, "micro_batch": micro_batch, "steps": steps,
              "lr_gen": lr_gen, "lr_critic": lr_critic, "betas": [beta1, beta2],
              "engine": asdict(ecfg), **cfg.to_dict()}
    if writer:
        (out / "history.json").write_text(json.dumps({"config": config, "data": data,
                                                      "store": run.store, "history": history},
                                                     indent=1) + "\n")
    later = [r["sinkhorn_iterations"] for r in history[1:]]
    summary = {"data": data, "steps": steps, "n_samples": n_samples,
               "steps_this_call": len(run.results), "store": run.store,
               "final_loss": history[-1]["loss"] if history else None,
               "mean_sinkhorn_iterations": float(np.mean(later)) if later else None,
               "wall_s": wall,
               "ring_metrics": ring_metrics(x, ring8_modes()) if data == "ring8" else None}
    if writer:
        (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return OTGANJob(summary=summary, wrote_plot=wrote, history=history)
