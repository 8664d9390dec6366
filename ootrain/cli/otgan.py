"""``ootrain otgan``: OT-GAN, generator and critic on the mini-batch energy distance."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ootrain.cli.options import (DASK_HELP, DEVICE_HELP, POPULATION_HELP, THREADS_HELP, console, int_list,
                                 set_threads)

__all__ = ["app", "otgan_train"]

app = typer.Typer(help="OT-GAN: generator and critic on the mini-batch energy distance "
                  "(Salimans et al., ICLR 2018).", no_args_is_help=True)


@app.command("train")
def otgan_train(
    out: Path = typer.Option(Path("otgan-out"), help="Output folder: samples.npy, "
                             "samples.png, loss.png, history.json, metrics.json."),
    data: str = typer.Option("ring8", help="Real data: ring8 (8 Gaussians on a circle, the "
                             "paper's toy), gaussian:D, mog:D:K[:S], mog1d (exact draws), or "
                             "digits / a .npy/.npz/zarr array (rows drawn with replacement)."),
    population: int = typer.Option(200, "--population", "-b", help=POPULATION_HELP + " Here "
                                   "each of X, X' (real) and Y, Y' (generated): 4 x b samples "
                                   "per iteration (the paper's '8000' is that total)."),
    eps: float = typer.Option(0.05, help="Sinkhorn temperature in cosine-cost units (cost in "
                              "[0, 2]); the paper's 1/500 needs ~10x more Sinkhorn iterations."),
    n_gen: int = typer.Option(3, help="Generator updates per critic update (paper: 3)."),
    lr_gen: float = typer.Option(1e-3, help="Generator Adam learning rate (paper: 3e-4)."),
    lr_critic: float = typer.Option(1e-3, help="Critic Adam learning rate (paper: 3e-4)."),
    beta1: float = typer.Option(0.5, help="Adam beta1 (paper: 0.5)."),
    beta2: float = typer.Option(0.999, help="Adam beta2 (paper: 0.999)."),
    sinkhorn_tol: float = typer.Option(0.01, help="Stop each Sinkhorn solve at marginal error "
                                       "||P1 - a||_1 <= tol."),
    sinkhorn_max_iter: int = typer.Option(1000, help="Sinkhorn iteration cap per solve."),
    backend: str = typer.Option("auto", help="Sinkhorn backend: auto | torch | keops."),
    warm_start: bool = typer.Option(False, "--warm-start/--no-warm-start",
                                    help="Start each solve from the previous iteration's "
                                    "potentials instead of eps-scaling (saves iterations only "
                                    "while the critic is smooth; see ootrain.methods.otgan)."),
    warm_start_method: str = typer.Option("ctransform", help="ctransform (move the potentials "
                                          "to the new points) | index (reuse as they are)."),
    freeze_critic_after: Optional[int] = typer.Option(None, help="Stop updating the critic "
                                                      "after this many iterations."),
    steps: int = typer.Option(1000, help="Iterations (generator and critic updates)."),
    latent_dim: int = typer.Option(8, help="Latent dimension (z ~ N(0, I))."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", "-m", help="Samples per "
                                              "forward pass (engine micro-batch m): critic features are computed "
                                              "and replayed with autograd m rows at a time "
                                              "against the solves' per-sample cotangents "
                                              "(same gradient; default: the whole batch in "
                                              "one pass)."),
    verify: bool = typer.Option(False, help="Check the replay reproduces the first pass "
                                "(deterministic models)."),
    store: Optional[str] = typer.Option(None, help="Store of the run (local path or fsspec "
                                        "URL): a run with a store resumes from it up to "
                                        "--steps.  Default: in memory (or a temporary folder "
                                        "for big batches), not resumable."),
    overwrite: bool = typer.Option(False, help="Discard an existing store at --store."),
    hidden: str = typer.Option("128,128,128", help="Generator hidden widths (ReLU MLP)."),
    layer_norm: bool = typer.Option(True, "--layer-norm/--no-layer-norm", help="LayerNorm in "
                                    "the generator's hidden layers (sharper modes sooner)."),
    critic_hidden: str = typer.Option("128,128", help="Critic hidden widths (leaky-ReLU MLP)."),
    feature_dim: int = typer.Option(32, help="Critic feature dimension (L2-normalised)."),
    seed: int = typer.Option(0, help="Seed of the models' init, real draws and latents."),
    n_samples: int = typer.Option(2500, help="Samples written to samples.npy and scored "
                                  "(PacGAN scores 2500)."),
    progress: bool = typer.Option(True, help="Progress bar."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    dask_address: Optional[str] = typer.Option(None, help=DASK_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Train a generator against a learned critic by OT-GAN's Algorithm 1.

    Each iteration draws X, X' real and Y, Y' generated (each --population samples), computes the
    mini-batch energy distance of their critic features with the cosine cost (six log-domain
    Sinkhorn solves), and updates the critic (ascent, every n_gen+1-th iteration, until
    --freeze-critic-after) or the generator (descent); each iteration is one step of the
    streaming engine, resumable from --store.
    """
    set_threads(threads)
    g_hidden = int_list(hidden, "--hidden")
    c_hidden = int_list(critic_hidden, "--critic-hidden")
    from ootrain.jobs.otgan import otgan_train as job

    res = job(out, data=data, batch=population, eps=eps, n_gen=n_gen, lr_gen=lr_gen,
              lr_critic=lr_critic, beta1=beta1, beta2=beta2, sinkhorn_tol=sinkhorn_tol,
              sinkhorn_max_iter=sinkhorn_max_iter, backend=backend, warm_start=warm_start,
              warm_start_method=warm_start_method, freeze_critic_after=freeze_critic_after,
              steps=steps, latent_dim=latent_dim, micro_batch=micro_batch, verify=verify,
              store=store, overwrite=overwrite,
              hidden=g_hidden, layer_norm=layer_norm, critic_hidden=c_hidden,
              feature_dim=feature_dim, seed=seed, n_samples=n_samples, progress=progress,
              log=console.print, dask_address=dask_address, device=device)
    m = res.summary["ring_metrics"]
    if m is not None:
        console.print(f"modes covered {m['modes_covered']}/{m['n_modes']}  high-quality "
                      f"{100 * m['high_quality_fraction']:.1f} %  reverse KL "
                      f"{m['reverse_kl']:.3f}")
    console.print(f"{res.summary['steps_this_call']} steps this call, store "
                  f"{store if store is not None else 'in memory'}; wrote {out}/: samples.npy, "
                  "history.json, metrics.json, loss.png"
                  + (", samples.png" if res.wrote_plot else ""), soft_wrap=True)
