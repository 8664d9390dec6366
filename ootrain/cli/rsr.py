"""``ootrain rsr``: Run-Sort-ReRun sliced-Wasserstein training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ootrain.cli.options import (DASK_HELP, DEVICE_HELP, MICRO_BATCH_HELP, POPULATION_HELP, THREADS_HELP,
                                 console,
                                 json_kwargs, parse_bytes, set_threads)

__all__ = ["app", "rsr_train"]

app = typer.Typer(help="Run-Sort-ReRun sliced-Wasserstein training (Lezama et al. 2021).",
                  no_args_is_help=True)


@app.command("train")
def rsr_train(
    store: str = typer.Option(..., help="Store: a local path or an fsspec URL (file://, "
                              "memory://, s3://)."),
    data: str = typer.Option("mog1d", help="Real data: built-in (mog1d, ring8, gaussian:D, "
                             "mog:D:K, digits) or a .npy/.npz/zarr path or URL."),
    n_real: Optional[int] = typer.Option(None, help="Rows of a built-in data set (default: "
                                         "4096 samples of a sampled set, all of digits)."),
    generator: str = typer.Option("mlp", help="Generator: zoo name or module:factory."),
    generator_args: str = typer.Option("", help="JSON kwargs for the generator factory "
                                       "(in_dim/out_dim default to latent-dim/data width)."),
    embedding: str = typer.Option("identity", help="Embedding: zoo name or module:factory."),
    embedding_args: str = typer.Option("", help="JSON kwargs for the embedding factory."),
    latent_dim: int = typer.Option(8, help="Latent dimension."),
    population: int = typer.Option(4096, "--population", "-b", help=POPULATION_HELP),
    micro_batch: int = typer.Option(256, "--micro-batch", "-m", help=MICRO_BATCH_HELP),
    directions: int = typer.Option(64, "--directions", "-p", help="Projections per step."),
    keep: int = typer.Option(0, "--keep", "-r", help="Algorithm 2: directions kept."),
    direction_mode: str = typer.Option("gaussian", help="gaussian | algorithm2"),
    mode: str = typer.Option("target", help="target | cotangent (what ReRun reads)."),
    steps: int = typer.Option(100, help="Total optimisation steps (resumes to this count)."),
    lr: float = typer.Option(1e-3, help="Learning rate."),
    optimizer: str = typer.Option("adam", help="adam | sgd"),
    memory_budget: str = typer.Option("1GiB", help="Memory the Sort step may hold."),
    seed: int = typer.Option(0, help="Seed of latents, directions and model init."),
    verify: bool = typer.Option(False, help="Check ReRun reproduces Run's embeddings."),
    store_latents: bool = typer.Option(False, help="Store latents (default: regenerate them "
                                       "from their counter-based key)."),
    overwrite: bool = typer.Option(False, help="Discard an existing store at this path."),
    out: Path = typer.Option(Path("rsr-out"), help="Output folder: samples.npy and loss.png."),
    progress: bool = typer.Option(True, help="Progress bars."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
    dask_address: Optional[str] = typer.Option(None, help=DASK_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Train a generator with Run-Sort-ReRun; resumes automatically from an existing store."""
    set_threads(threads)
    gargs, eargs = json_kwargs(generator_args), json_kwargs(embedding_args)
    budget = parse_bytes(memory_budget)

    from ootrain.jobs.rsr import rsr_train as job

    res = job(str(store), data=data, n_real=n_real, generator=generator, generator_args=gargs,
              embedding=embedding, embedding_args=eargs, latent_dim=latent_dim,
              population=population, micro_batch=micro_batch, directions=directions,
              keep=keep, direction_mode=direction_mode, mode=mode, steps=steps, lr=lr,
              optimizer=optimizer, memory_budget=budget, seed=seed, verify=verify,
              store_latents=store_latents, overwrite=overwrite, out=out, progress=progress,
              dask_address=dask_address, device=device)
    console.print(f"[green]done[/]: {len(res.run.results)} steps this call, store {store}; "
                  f"wrote {out}/: samples.npy" + (", loss.png" if res.losses else ""),
                  soft_wrap=True)
