"""``ootrain semidiscrete``: the stand-alone solver (``solve``) and OTS + FIT generator
training (``train``) from spec strings, with their summaries."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ootrain.data import DATASETS, load_targets, data_sampler
from ootrain.engine.core import EngineConfig, rank_world
from ootrain.eval.plots import plot_samples
from ootrain.eval.semidiscrete import evaluate_semidiscrete
from ootrain.jobs.common import (InputError, check_device, check_finite_data, check_population,
                                 check_steps, connect, default_rows, input_errors, model_errors)
from ootrain.methods.gradual import OTSFIT, GradualConfig
from ootrain.methods.training import make_optimizer, train
from ootrain.store import Store
from ootrain.models.zoo import build_model, generate
from ootrain.ot.semidiscrete import SemiDiscreteOT, default_batch
from ootrain.progress import make_progress

__all__ = ["SQUASHES", "SolveJob", "GradualJob", "make_ot", "solve_semidiscrete",
           "train_semidiscrete"]

#: Output layers ``train_semidiscrete`` can append to the generator.
SQUASHES = ("auto", "none", "sigmoid", "tanh")


def make_ot(targets: Any, cost: str, backend: str, eps: Optional[float],
            dtype: str = "auto") -> SemiDiscreteOT:
    """``SemiDiscreteOT(targets, ...)`` with ``dtype`` one of ``auto`` (the targets'),
    ``float32``, ``float64``; bad arguments raise :class:`InputError`."""
    if dtype not in ("auto", "float32", "float64"):
        raise InputError(f"--dtype must be auto, float32 or float64, got {dtype!r}")
    with input_errors(names={}):
        return SemiDiscreteOT(targets, cost=cost, backend=backend, eps=eps,
                              dtype=None if dtype == "auto" else getattr(torch, dtype))


@dataclass
class SolveJob:
    """What :func:`solve_semidiscrete` did: the fitted solver, the samples per ascent
    iteration it used, and the summary stored with the potentials."""

    ot: SemiDiscreteOT
    batch: int
    summary: dict[str, Any]


def solve_semidiscrete(source: str, target: str, out: str, *, name: str = "potentials",
                       cost: str = "sqeuclidean", backend: str = "auto",
                       eps: Optional[float] = None, batch: Optional[int] = None,
                       max_iter: int = 20000, tol: Optional[float] = None,
                       chi2_tol: Optional[float] = None, lr: Optional[float] = None,
                       check_every: Optional[int] = None, grow: bool = False, n0: int = 1024,
                       n_target: Optional[int] = None, target_array: Optional[str] = None,
                       source_array: Optional[str] = None, n_eval: int = 65536,
                       dtype: str = "auto", seed: int = 0, progress: bool = True,
                       method: str = "auto", mismatch_tol: Optional[float] = None) -> SolveJob:
    """Fit the semi-discrete OT potentials from a sampled source to target points (no model).

    ``source`` is a spec of :func:`ootrain.data.data_sampler`; ``target`` a built-in
    (``digits[:split]``, or a sampled one with ``n_target`` rows, drawn with seed
    ``seed + 1``) or a user's array (zarr stays on disk and is streamed in blocks).  Runs
    :meth:`SemiDiscreteOT.fit` (``method``; stopping on ``tol``, ``chi2_tol`` and/or
    ``mismatch_tol``, with none on the fit's defaults; ``batch`` default:
    :func:`ootrain.ot.semidiscrete.default_batch` of the target count), writes the
    potentials ψ with ``SemiDiscreteOT.save`` to the zarr group ``out`` as ``name``, and
    stores the summary (:func:`evaluate_semidiscrete` on ``n_eval`` fresh source samples,
    the fit's iterations and time, ...) in that array's ``solve`` attribute.  Bad input
    raises :class:`InputError` before the fit.
    """
    if n_eval < 1:
        raise InputError(f"--n-eval must be >= 1, got {n_eval}")
    if target.split(":")[0] in DATASETS and n_target is None and not target.startswith("digits"):
        raise InputError(f"target {target!r} is a sampled built-in: pass --n-target (rows to "
                         "draw)")
    with input_errors(f"target {target!r}: "):
        targets = load_targets(target, n=n_target, seed=seed + 1, array=target_array)
    ot = make_ot(targets, cost, backend, eps, dtype)
    try:
        sampler, d, described = data_sampler(source, ot.dtype, source_array)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from None
    if d != ot.source.d:
        raise InputError(f"source {source!r} has dimension {d}, targets {target!r} have "
                         f"{ot.source.d}")
    calls = [0]

    def counted(k: int, rng: np.random.Generator) -> torch.Tensor:
        calls[0] += 1
        return sampler(k, rng)

    fit_kw: dict[str, Any] = {"batch": batch, "max_iter": max_iter, "tol": tol,
                              "chi2_tol": chi2_tol, "grow": grow, "method": method,
                              "mismatch_tol": mismatch_tol,
                              "n0": n0, "check_every": check_every, "rng": seed,
                              "generator": torch.Generator().manual_seed(seed)}
    if lr is not None:
        fit_kw["lr"] = lr
    t = time.perf_counter()
    with input_errors(names={}):
        ot.fit(counted, progress=progress, **fit_kw)
    fit_s = time.perf_counter() - t
    used_batch = default_batch(ot.n_targets) if batch is None else batch
    t = time.perf_counter()
    est = evaluate_semidiscrete(ot, sampler, n_eval=n_eval, batch=used_batch, seed=seed + 7)
    summary = {
        "source": described, "target": target, "n_targets": ot.n_targets, "d": d,
        "cost": str(ot.ground_cost), "eps_rel": ot.eps_rel, "eps": ot.eps,
        "iterations": calls[0], "fit_s": round(fit_s, 3),
        **est,
        "imbalance_fit": ot.history[-1]["imbalance"] if ot.history else None,
        "chi2_fit": ot.history[-1]["chi2"] if ot.history else None,
        "chi2_noise_fit": ot.history[-1]["chi2_noise"] if ot.history else None,
        "certified": bool(ot.history[-1]["certified"]) if ot.history else False,
        "method": "quantile" if ot.history and "quantile_samples" in ot.history[-1]
        else "ascent",
        "quantile_samples": ot.history[-1].get("quantile_samples") if ot.history else None,
        "mismatch_fit": ot.history[-1].get("mismatch") if ot.history else None,
        "n_eval": n_eval, "eval_s": round(time.perf_counter() - t, 3),
    }
    ot.save(out, name)
    import zarr
    zarr.open_group(out, mode="a")[name].attrs.update({"solve": summary})
    return SolveJob(ot=ot, batch=used_batch, summary=summary)


@dataclass
class GradualJob:
    """What :func:`train_semidiscrete` did: the rounds of this call, the rounds in the store
    with their history, and the files written (``wrote_plot``: ``samples.png`` among them)."""

    rounds_this_call: int
    rounds_in_store: int
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    wrote_plot: bool = False


def train_semidiscrete(store: str, *, data: str = "digits", n_real: Optional[int] = None,
                       data_array: Optional[str] = None, generator: str = "mlp",
                       generator_args: Optional[dict[str, Any]] = None, squash: str = "auto",
                       latent_dim: int = 16, population: int = 2048, micro_batch: int = 128,
                       rounds: int = 10, fit_epochs: int = 5, alpha_fit: float = 0.5,
                       alpha_stop: float = 1.0, alternate: bool = True, cost: str = "l1",
                       backend: str = "auto", eps: Optional[float] = None,
                       ots_batch: int = 1024, ots_max_iter: int = 100, ots_tol: float = 0.2,
                       ots_lr: Optional[float] = 1.0, lr: float = 2e-3,
                       optimizer: str = "adam", memory_budget: int = 2**30, seed: int = 0,
                       verify: bool = False, overwrite: bool = False,
                       out: Optional[Path] = None, n_samples: Optional[int] = None,
                       progress: bool = True, dask_address: Optional[str] = None,
                       device: str = "auto") -> GradualJob:
    """Train a generator by OTS + FIT (Chen et al. 2019); resumes automatically from the store.

    Each round fits the semi-discrete potentials between the current generator and the data
    (OTS, warm-started), stores b generated samples with their assigned data points, and
    regresses the generator onto that map (FIT) with micro-batch SGD; each round is logged on
    the progress console.  ``squash`` appends an output layer (``auto``: sigmoid for digits,
    none otherwise).  With ``out``, writes ``samples.npy`` (``n_samples``, default as many as
    data rows, at most 100000), ``rounds.json`` and, for a picturable width, ``samples.png``.
    Each round's Solve (an argmin task per stored chunk) runs on the ``dask.distributed``
    scheduler at ``dask_address`` (default: local threads).  The models run on ``device``
    (:attr:`~ootrain.engine.EngineConfig.device`; OTS's argmin and Solve on the CPU).  Bad
    input raises :class:`InputError` before training.
    """
    if squash not in SQUASHES:
        raise InputError(f"--squash must be auto, none, sigmoid or tanh, got {squash!r}")
    check_steps("--rounds", rounds)
    check_device(device)
    check_population(population, micro_batch)
    with input_errors(f"--data {data!r}: "):
        real = load_targets(data, n=default_rows(data, n_real), seed=seed + 1,
                            array=data_array)
    check_finite_data(real)
    if squash == "auto":
        squash = "sigmoid" if data.startswith("digits") else "none"
    torch.manual_seed(seed)
    gkw = {"in_dim": latent_dim, "out_dim": int(real.shape[1]), **(generator_args or {})}
    with model_errors(f"--generator {generator!r}"):
        G = build_model(generator, **gkw)
    if squash != "none":
        G = nn.Sequential(G, nn.Sigmoid() if squash == "sigmoid" else nn.Tanh())
    ot = make_ot(real, cost, backend, eps)
    ots: dict[str, Any] = {"batch": ots_batch, "max_iter": ots_max_iter, "tol": ots_tol}
    if ots_lr is not None:
        ots["lr"] = ots_lr
    with input_errors(names={}):
        cfg = EngineConfig(population=population, micro_batch=micro_batch,
                           latent_dim=latent_dim, seed=seed, memory_budget=memory_budget,
                           verify=verify, device=device)
        gcfg = GradualConfig(alternate=alternate, fit_epochs=fit_epochs,
                             alpha_fit=alpha_fit, alpha_stop=alpha_stop, ots=ots, ots_seed=seed)
    with input_errors("--optimizer: "):
        opt = make_optimizer(G.parameters(), optimizer, lr)
    method = OTSFIT(G, ot, opt, gcfg, rounds=rounds,
                    generator_spec=json.dumps([generator, gkw, squash]))
    history: list[dict[str, Any]] = []
    compute = connect(dask_address)
    with compute.session(), make_progress(progress) as bars:
        def report(res: Any) -> None:
            m = res.metrics
            checks = m.get("ots_checks") or []
            it = checks[-1]["iteration"] if checks else None
            bars.console.log(f"round {res.step}: transport cost {m['loss']:.5g}  "
                             f"imbalance {m['imbalance']:.3f}  OTS "
                             f"{'-' if it is None else it} it.  FIT {len(m['fit_losses'])} "
                             f"epochs → {m['fit_losses'][-1]:.5g}")

        run = train(method, rounds if alternate else 1, cfg, store=str(store),
                    overwrite=overwrite, progress=bars, callback=report, compute=compute)
        results = run.results
        with Store(str(store), mode="r") as st:
            done = 0
            while st.has(f"steps/{done}") and \
                    st.group[f"steps/{done}"].attrs.get("phase") == "done":
                attrs = st.group[f"steps/{done}"].attrs
                metrics = dict(attrs.get("metrics", {}))
                history.append({"round": done, "transport_cost": metrics.get("loss"),
                                "imbalance": metrics.get("imbalance"),
                                "fit_losses": list(attrs.get("fit_losses", []))})
                done += 1
    job = GradualJob(rounds_this_call=len(results), rounds_in_store=done, history=history)
    if out is not None and rank_world()[0] == 0:   # one writer of the outputs
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        k = n_samples if n_samples is not None else min(int(real.shape[0]), 100_000)
        x = generate(G, k, latent_dim, seed=seed + 12345)
        np.save(out / "samples.npy", x)
        (out / "rounds.json").write_text(json.dumps(history, indent=2) + "\n")
        ref = np.asarray(real[:min(int(real.shape[0]), 100_000)])
        job.wrote_plot = plot_samples(x, out / "samples.png", ref,
                                      f"OTS + FIT, {done} rounds, cost {cost}")
        job.files = [out / "samples.npy", out / "rounds.json"] + \
            ([out / "samples.png"] if job.wrote_plot else [])
    return job
