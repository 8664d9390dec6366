"""``ootrain semidiscrete``: the stand-alone semi-discrete OT solver and OTS + FIT generator
training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ootrain.cli.options import (DASK_HELP, DEVICE_HELP, MICRO_BATCH_HELP, POPULATION_HELP, THREADS_HELP,
                                 console, json_kwargs, parse_bytes, set_threads)

__all__ = ["app", "sd_solve", "sd_train"]

app = typer.Typer(help="Semi-discrete OT: the stand-alone solver and OTS + FIT generator "
                  "training (Chen et al., ICML 2019).", no_args_is_help=True)

_COST_HELP = ("Ground cost: sqeuclidean | euclidean | l1 | lp:P (sum_k |x_k - y_k|^P, no "
              "root).")
_BACKEND_HELP = ("argmin backend: auto | torch | keops | faiss (soft transforms: torch, or "
                 "keops).")
_EPS_HELP = ("Temperature of the soft (entropic) assignment, relative to the targets' "
             "nearest-neighbour cost scale; 0 = hard argmin (default: 0.05 for l1, 0 "
             "otherwise).")


@app.command("solve")
def sd_solve(
    source: str = typer.Argument(..., help="Source μ: gaussian:D, uniform:D (the cube [0,1]^D), "
                                 "a sampled built-in (mog1d, ring8, mog:D:K), or digits / a "
                                 ".npy/.npz/zarr path or URL used as an empirical source "
                                 "(rows drawn with replacement)."),
    target: str = typer.Argument(..., help="Target points y_j: a built-in (digits[:split], or a "
                                 "sampled one with --n-target) or a .npy/.npz/zarr path or "
                                 "URL (zarr stays on disk and is streamed in blocks)."),
    store: str = typer.Option(..., "--store", "-s", help="zarr group (local path or URL) the "
                              "potentials are written to; created, or added to."),
    name: str = typer.Option("potentials", help="Name of the potentials array inside --store."),
    cost: str = typer.Option("sqeuclidean", help=_COST_HELP),
    backend: str = typer.Option("auto", help=_BACKEND_HELP),
    eps: Optional[float] = typer.Option(None, help=_EPS_HELP),
    batch: Optional[int] = typer.Option(None, help="Source samples per ascent iteration "
                                        "(default: N/4 as a power of two in [256, 4096])."),
    max_iter: int = typer.Option(20000, help="Iteration budget (per stage with --grow)."),
    tol: Optional[float] = typer.Option(None, help="Stop when the mass imbalance ||ν - P̂||₁ "
                                        "of the averaged potential, measured on fresh "
                                        "samples, is at most it (with --chi2-tol: both)."),
    chi2_tol: Optional[float] = typer.Option(None, help="Stop when the marginal χ² error "
                                             "Σ_j (p_j - ν_j)²/ν_j of the averaged potential "
                                             "is certified at most it (unbiased estimate on "
                                             "fresh samples + 2 standard errors).  Default, "
                                             "when neither this nor --tol is given: the "
                                             "solver's (SemiDiscreteOT.fit)."),
    method: str = typer.Option("auto", help="auto, quantile (1-D targets, sqeuclidean or "
                               "lp with p > 1: the monotone map from streamed source "
                               "quantiles) or ascent (stochastic dual ascent); auto: quantile "
                               "where it applies."),
    mismatch_tol: Optional[float] = typer.Option(None, help="Quantile method: draw enough "
                                                 "samples that at most this fraction of the "
                                                 "source mass goes elsewhere than under the "
                                                 "exact map, with 99 % probability (default "
                                                 "with no other stop: 0.01)."),
    lr: Optional[float] = typer.Option(None, help="First step in cell widths (default: the "
                                       "solver's, 3)."),
    check_every: Optional[int] = typer.Option(None, help="Check every this many iterations "
                                              "(default: at geometrically growing ones)."),
    grow: bool = typer.Option(False, help="The paper's schedule: fit on --n0 random targets "
                              "first, doubling until all (warm starts)."),
    n0: int = typer.Option(1024, help="First stage's targets with --grow."),
    n_target: Optional[int] = typer.Option(None, help="Rows drawn from a built-in target "
                                           "(required for sampled ones; default all digits)."),
    target_array: Optional[str] = typer.Option(None, help="Array name when the target is a "
                                               "zarr group."),
    source_array: Optional[str] = typer.Option(None, help="Array name when the source is a "
                                               "zarr group."),
    n_eval: int = typer.Option(65536, help="Fresh source samples for the final cost, dual and "
                               "imbalance estimates."),
    dtype: str = typer.Option("auto", help="Compute dtype: auto (the targets'), float32 or "
                              "float64."),
    seed: int = typer.Option(0, help="Seed of the source draws and of built-in targets."),
    progress: bool = typer.Option(True, help="Progress bar."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Fit the semi-discrete OT potentials from a sampled source to target points (no model).

    Stochastic ascent of the (entropic, for l1) semi-discrete dual, or for 1-D targets and
    sqeuclidean / lp (p > 1) the monotone map from streamed source quantiles; writes the
    potentials ψ with SemiDiscreteOT.save and prints the transport cost of the map
    T(x) = y_σ(x) with its standard error, the dual estimate (≤ the OT cost, equal at the
    optimum), the marginal χ² error (unbiased estimate, with its standard error and the noise
    floor of a balanced map) and the mass imbalance, all on --n-eval fresh source samples.
    """
    set_threads(threads)
    from ootrain.jobs.semidiscrete import solve_semidiscrete

    res = solve_semidiscrete(source, target, store, name=name, cost=cost, backend=backend,
                             eps=eps, batch=batch, max_iter=max_iter, tol=tol,
                             chi2_tol=chi2_tol, lr=lr,
                             check_every=check_every, grow=grow, n0=n0, n_target=n_target,
                             target_array=target_array, source_array=source_array,
                             n_eval=n_eval, dtype=dtype, seed=seed, progress=progress,
                             method=method, mismatch_tol=mismatch_tol)
    ot, summary = res.ot, res.summary
    table = Table("", "value", title="semi-discrete OT", title_justify="left")
    table.add_row("source", summary["source"])
    table.add_row("targets", f"{target}: N={ot.n_targets}, d={summary['d']}")
    kind = f" (soft, eps={ot.eps:.4g})" if ot.soft else " (hard argmin)"
    table.add_row("cost", f"{ot.ground_cost}{kind}")
    quantile = summary["method"] == "quantile"
    if quantile:
        table.add_row("fit", f"1-D quantiles of {summary['quantile_samples']:,} draws, "
                      f"{summary['fit_s']:.2f}s")
    else:
        table.add_row("iterations", f"{summary['iterations']} × {res.batch} samples, "
                      f"{summary['fit_s']:.2f}s")
    table.add_row("transport cost", f"{summary['transport_cost']:.6g} ± "
                  f"{summary['transport_cost_noise']:.2g} (standard error)")
    table.add_row("dual", f"{summary['dual']:.6g}")
    table.add_row("marginal χ²", f"{summary['chi2']:.3g} ± {summary['chi2_noise']:.2g} "
                  f"(noise floor {summary['chi2_floor']:.2g} at {n_eval} samples)")
    table.add_row("imbalance", f"{summary['imbalance']:.4f} (noise floor "
                  f"{summary['imbalance_noise']:.4f} at {n_eval} samples)")
    if summary["imbalance_fit"] is not None:
        table.add_row("last fit check", f"χ² {summary['chi2_fit']:.3g} ± "
                      f"{summary['chi2_noise_fit']:.2g}, imbalance "
                      f"{summary['imbalance_fit']:.4f}"
                      + (f", mismatch ≤ {summary['mismatch_fit']:.2g} (99 %)" if quantile
                         else "")
                      + ("" if summary["certified"] else " (not certified: "
                         + ("max-samples" if quantile else "max-iter") + " reached)"))
    table.add_row("potentials", f"{store} / {name}")
    console.print(table)
    console.print(f"transport cost {summary['transport_cost']:.6g} ± "
                  f"{summary['transport_cost_noise']:.2g}  dual {summary['dual']:.6g}  chi2 "
                  f"{summary['chi2']:.4g} ± {summary['chi2_noise']:.2g} (floor "
                  f"{summary['chi2_floor']:.2g})  imbalance {summary['imbalance']:.4f}",
                  soft_wrap=True)
    console.print(f"wrote the potentials to the array {name!r} of the store {store}",
                  soft_wrap=True)


@app.command("train")
def sd_train(
    store: str = typer.Option(..., help="Store: a local path or an fsspec URL (file://, "
                              "memory://, s3://)."),
    data: str = typer.Option("digits", help="Target data: built-in (digits[:split], mog1d, "
                             "ring8, gaussian:D, mog:D:K) or a .npy/.npz/zarr path or URL "
                             "(zarr stays on disk)."),
    n_real: Optional[int] = typer.Option(None, help="Rows of a built-in data set (default: "
                                         "4096 samples of a sampled set, all of digits)."),
    data_array: Optional[str] = typer.Option(None, help="Array name when --data is a zarr "
                                             "group."),
    generator: str = typer.Option("mlp", help="Generator: zoo name or module:factory."),
    generator_args: str = typer.Option("", help="JSON kwargs for the generator factory "
                                       "(in_dim/out_dim default to latent-dim/data width)."),
    squash: str = typer.Option("auto", help="Output layer appended to the generator: none | "
                               "sigmoid | tanh | auto (sigmoid for digits, whose pixels are in "
                               "[0, 1]; none otherwise)."),
    latent_dim: int = typer.Option(16, help="Latent dimension (z ~ N(0, I))."),
    population: int = typer.Option(2048, "--population", "-b", help=POPULATION_HELP + " Here "
                                   "the generated samples per round (FIT's regression set)."),
    micro_batch: int = typer.Option(128, "--micro-batch", "-m", help=MICRO_BATCH_HELP + " Also "
                                    "the samples per FIT optimiser step."),
    rounds: int = typer.Option(10, help="OTS + FIT rounds (resumes to this count)."),
    fit_epochs: int = typer.Option(5, help="FIT epochs per round (all rounds' epochs in one FIT "
                                   "with --no-alternate)."),
    alpha_fit: float = typer.Option(0.5, help="FIT stops once its loss is below alpha_fit × "
                                    "the round's transport cost."),
    alpha_stop: float = typer.Option(1.0, help="Stop when a round's transport cost exceeds "
                                     "alpha_stop × the previous round's."),
    alternate: bool = typer.Option(True, "--alternate/--no-alternate", help="--no-alternate: "
                                   "the ablation, one OTS then FIT to that single map."),
    cost: str = typer.Option("l1", help=_COST_HELP + " The paper's choice is l1."),
    backend: str = typer.Option("auto", help=_BACKEND_HELP),
    eps: Optional[float] = typer.Option(None, help=_EPS_HELP),
    ots_batch: int = typer.Option(1024, help="OTS: generated samples per ascent iteration."),
    ots_max_iter: int = typer.Option(100, help="OTS: iteration budget per round."),
    ots_tol: float = typer.Option(0.2, help="OTS: stop at this imbalance ||ν - P̂||₁."),
    ots_lr: Optional[float] = typer.Option(1.0, help="OTS: first step in cell widths "
                                           "(warm-started rounds need smaller steps than "
                                           "the solver's default 3)."),
    lr: float = typer.Option(2e-3, help="FIT learning rate."),
    optimizer: str = typer.Option("adam", help="adam | sgd"),
    memory_budget: str = typer.Option("1GiB", help="Memory the Solve step may hold."),
    seed: int = typer.Option(0, help="Seed of latents, OTS draws and model init."),
    verify: bool = typer.Option(False, help="Check ReRun reproduces Run's outputs."),
    overwrite: bool = typer.Option(False, help="Discard an existing store at this path."),
    out: Path = typer.Option(Path("semidiscrete-out"), help="Output folder: samples.npy, "
                             "samples.png and rounds.json."),
    n_samples: Optional[int] = typer.Option(None, help="Samples written to --out (default: "
                                            "as many as data rows, at most 100000)."),
    progress: bool = typer.Option(True, help="Progress bars."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    dask_address: Optional[str] = typer.Option(None, help=DASK_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Train a generator by OTS + FIT (Chen et al. 2019); resumes automatically from the store.

    Each round fits the semi-discrete potentials between the current generator and the data
    (OTS, warm-started), stores b generated samples with their assigned data points, and
    regresses the generator onto that map (FIT) with micro-batch SGD.
    """
    set_threads(threads)
    gargs = json_kwargs(generator_args)
    budget = parse_bytes(memory_budget)
    from ootrain.jobs.semidiscrete import train_semidiscrete

    res = train_semidiscrete(
        str(store), data=data, n_real=n_real, data_array=data_array, generator=generator,
        generator_args=gargs, squash=squash, latent_dim=latent_dim, population=population,
        micro_batch=micro_batch, rounds=rounds, fit_epochs=fit_epochs, alpha_fit=alpha_fit,
        alpha_stop=alpha_stop, alternate=alternate, cost=cost, backend=backend, eps=eps,
        ots_batch=ots_batch, ots_max_iter=ots_max_iter, ots_tol=ots_tol, ots_lr=ots_lr,
        lr=lr, optimizer=optimizer, memory_budget=budget, seed=seed, verify=verify,
        overwrite=overwrite, out=out, n_samples=n_samples, progress=progress,
        dask_address=dask_address, device=device)
    console.print(f"[green]done[/]: {res.rounds_this_call} rounds this call, "
                  f"{res.rounds_in_store} in store {store}; wrote {out}/: "
                  + ", ".join(f.name for f in res.files), soft_wrap=True)
