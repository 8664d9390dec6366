"""``ootrain potgan``: WGAN-GP with the parallel latent OT regulariser (POT-GAN)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ootrain.cli.options import (DASK_HELP, DEVICE_HELP, POPULATION_HELP, THREADS_HELP, console,
                                 set_threads)

__all__ = ["app", "potgan_train"]

app = typer.Typer(help="POT-GAN: WGAN-GP with the parallel latent OT regulariser "
                  "(Avraham et al., CVPR 2019).", no_args_is_help=True)


@app.command("train")
def potgan_train(
    out: Path = typer.Option(Path("potgan-out"), help="Output folder: samples.npy, "
                             "samples.png, loss.png, history.json, metrics.json."),
    data: str = typer.Option("ring8", help="Real data: ring8 (8 Gaussians on a circle), "
                             "gaussian:D (D=3: the paper's ball), mog:D:K[:S], mog1d (exact "
                             "draws), or digits / a .npy/.npz/zarr array (rows drawn with "
                             "replacement)."),
    method: str = typer.Option("potgan", help="potgan | wgan-gp (the baseline: the same "
                               "training without L_POT)."),
    steps: int = typer.Option(3000, help="Generator updates."),
    population: int = typer.Option(256, "--population", "-b", help=POPULATION_HELP + " Here "
                                   "the real and generated samples per update."),
    n_critic: int = typer.Option(5, help="Critic updates per generator update."),
    gp_weight: float = typer.Option(10.0, help="Gradient-penalty weight lambda."),
    lr: float = typer.Option(5e-4, help="Adam learning rate of generator and critic "
                             "(WGAN-GP paper: 1e-4)."),
    latent_dim: int = typer.Option(2, help="Generator noise dimension."),
    pot_weight: float = typer.Option(0.03, help="lambda_POT (L_POT is a sum over the batch; "
                                     "paper: 0.01; 0.03 is the toy pipeline's choice)."),
    matching: str = typer.Option("argmin", help="argmin (per real latent) | exact "
                                 "(one-to-one)."),
    backend: str = typer.Option("auto", help="Argmin backend: auto | torch | keops | faiss."),
    forest_steps: int = typer.Option(1, help="Algorithm 2 steps on F per generator update."),
    forest_lr: float = typer.Option(1e-3, help="Adam learning rate of F (a fast F absorbs "
                                    "the mismatch: see ootrain.methods.potgan)."),
    forest_trees: int = typer.Option(8, help="Trees of F."),
    forest_depth: int = typer.Option(3, help="Depth of each tree of F."),
    vae_latent: int = typer.Option(2, help="VAE latent dimension (the space of L_POT)."),
    vae_steps: int = typer.Option(1500, help="VAE training steps (before the GAN)."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", "-m", help="Samples per "
                                              "forward pass of the engine's Run and ReRun "
                                              "(default: the whole batch)."),
    seed: int = typer.Option(0, help="Seed of the models' init, real draws and latents."),
    ema: float = typer.Option(0.999, help="Decay of the averaged generator (bias-corrected "
                              "moving average of its parameters) whose samples are written "
                              "and scored; 0: the last generator."),
    n_samples: int = typer.Option(5000, help="Samples written and scored."),
    bandwidth: Optional[float] = typer.Option(None, help="Parzen bandwidth of the reverse KL "
                                              "(default: ring8 0.02, else Scott's rule)."),
    store: Optional[str] = typer.Option(None, help="Local path or fsspec URL of the engine's "
                                        "store (a named store resumes an interrupted run); "
                                        "default: in memory, or a temporary folder."),
    overwrite: bool = typer.Option(False, help="Discard an existing store at --store."),
    progress: bool = typer.Option(True, help="Progress bars."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    dask_address: Optional[str] = typer.Option(None, help=DASK_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Train WGAN-GP with (potgan) or without (wgan-gp) the latent OT regulariser.

    POT-GAN first trains a VAE on the data and freezes its encoder Q; each generator update
    then fits the Latent Transformation Forest F (Algorithm 2), matches every real latent to
    its nearest transformed generated latent and adds lambda_POT |Q(X_r) - F(Q(G(Z)))|^2
    over the matched pairs to the WGAN-GP generator loss.  Scores, of the averaged generator
    (--ema) and of the last one: Parzen reverse KL(P_g || P_r) on --n-samples generated vs as
    many real samples, and mode metrics on ring8.
    """
    set_threads(threads)
    from ootrain.jobs.potgan import potgan_train as job

    res = job(out, data=data, method=method, steps=steps, batch=population, n_critic=n_critic,
              gp_weight=gp_weight, lr=lr, latent_dim=latent_dim, pot_weight=pot_weight,
              matching=matching, backend=backend, forest_steps=forest_steps,
              forest_lr=forest_lr, forest_trees=forest_trees, forest_depth=forest_depth,
              vae_latent=vae_latent, vae_steps=vae_steps, micro_batch=micro_batch,
              seed=seed, ema=ema, n_samples=n_samples, bandwidth=bandwidth,
              store=store, overwrite=overwrite, progress=progress, log=console.print,
              dask_address=dask_address, device=device)
    summary = res.summary
    console.print(f"Parzen reverse KL(P_g || P_r) = {summary['reverse_kl']:.4f} (averaged "
                  f"generator; last: {summary['reverse_kl_last']:.4f}; bandwidth "
                  f"{summary['bandwidth']:.3g})")
    if summary["ring_metrics"] is not None:
        m = summary["ring_metrics"]
        console.print(f"modes covered {m['modes_covered']}/{m['n_modes']}  high-quality "
                      f"{100 * m['high_quality_fraction']:.1f} %")
    console.print(f"store {store if store is not None else 'in memory'}; wrote {out}/: "
                  "samples.npy, history.json, metrics.json, loss.png"
                  + (", samples.png" if res.wrote_plot else ""), soft_wrap=True)
