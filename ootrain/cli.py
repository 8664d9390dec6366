"""The ``ootrain`` command line (Typer)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Streaming out-of-core optimal-transport training.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
rsr_app = typer.Typer(help="Run-Sort-ReRun sliced-Wasserstein training (Lezama et al. 2021).",
                      no_args_is_help=True)
store_app = typer.Typer(help="Inspect, verify and unlock sample stores.", no_args_is_help=True)
app.add_typer(rsr_app, name="rsr")
app.add_typer(store_app, name="store")
console = Console()

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'512MiB', '2G', '1e9' → bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise typer.BadParameter(f"not a size: {text!r} (e.g. 512MiB, 2GiB, 1e9)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _kwargs(text: str) -> dict:
    try:
        out = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not JSON: {text!r} ({e})") from None
    if not isinstance(out, dict):
        raise typer.BadParameter(f"expected a JSON object, got {text!r}")
    return out


# --------------------------------------------------------------------------- rsr train
@rsr_app.command("train")
def rsr_train(
    store: Path = typer.Option(..., help="Store path (zarr v3 group; local path or fsspec URL)."),
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
    population: int = typer.Option(4096, "--population", "-b", help="b: samples per step."),
    micro_batch: int = typer.Option(256, "--micro-batch", "-m", help="m: samples per pass."),
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
    out: Optional[Path] = typer.Option(None, help="Write samples.npy and loss.png here."),
    progress: bool = typer.Option(True, help="Progress bars."),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default). On a "
                                "small shared machine 1 avoids OpenMP stalls."),
) -> None:
    """Train a generator with Run-Sort-ReRun; resumes automatically from an existing store."""
    import torch

    if threads < 0:
        raise typer.BadParameter(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)

    from ootrain.data import load_data
    from ootrain.engine import EngineConfig
    from ootrain.models import build_model
    from ootrain.progress import make_progress
    from ootrain.recipes import generate, train_rsr
    from ootrain.rsr import SlicedSolver
    from ootrain.data import DATASETS

    builtin = data.split(":")[0] in DATASETS
    # a user's zarr array stays on disk (read chunk by chunk when embedded); built-ins are sampled
    if builtin:
        n = n_real if n_real is not None else (None if data.startswith("digits") else 4096)
        real = load_data(data, n=n, seed=seed + 1)
    else:
        real = load_data(data, lazy=True)
    torch.manual_seed(seed)
    gkw = {"in_dim": latent_dim, "out_dim": real.shape[1], **_kwargs(generator_args)}
    G = build_model(generator, **gkw)
    E = build_model(embedding, **_kwargs(embedding_args)).eval()
    cfg = EngineConfig(population=population, micro_batch=micro_batch, latent_dim=latent_dim,
                       seed=seed, memory_budget=parse_bytes(memory_budget), verify=verify,
                       store_latents=store_latents)
    solver = SlicedSolver(n_directions=directions, directions=direction_mode, keep=keep,
                          mode=mode)
    losses: list[float] = []
    with make_progress(progress) as bars:
        def report(res) -> None:
            losses.append(res.metrics["loss"])
            t = res.timings
            bars.console.log(f"step {res.step}: SW2² {res.metrics['loss']:.5g}  "
                             f"run {t['run']:.2f}s solve {t['solve']:.2f}s "
                             f"rerun {t['rerun']:.2f}s")
        run = train_rsr(G, E, real, str(store), cfg, solver, steps, lr=lr, optimizer=optimizer,
                        overwrite=overwrite, progress=bars,
                        generator_spec=json.dumps([generator, gkw]),
                        embedding_spec=json.dumps([embedding, _kwargs(embedding_args)]),
                        callback=report)
    console.print(f"[green]done[/]: {len(run.results)} steps this call, store {store}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "samples.npy", generate(run.generator, min(real.shape[0], 100_000),
                                              latent_dim))
        if losses:
            _plot_losses(losses, out / "loss.png")
        console.print(f"wrote {out / 'samples.npy'}")


def _plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.semilogy(losses)
    ax.set_xlabel("step")
    ax.set_ylabel("sliced W2² (population)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- store
@store_app.command("info")
def store_info(path: str = typer.Argument(..., help="Store path or URL.")) -> None:
    """Layout, sizes and completion of every array in a store."""
    from ootrain.store import Store

    s = Store(path, mode="r")
    console.print(f"[bold]{path}[/]  fingerprint {s.fingerprint[:16]}…")
    console.print_json(json.dumps(s.stored_config))
    table = Table("array", "shape", "chunks", "dtype", "complete chunks")
    for name, arr in s.walk_arrays():
        done = s.done(name)
        table.add_row(name, str(arr.shape), str(arr.chunks), str(arr.dtype),
                      f"{int(done.sum())}/{done.size}")
    console.print(table)


@store_app.command("verify")
def store_verify(path: str = typer.Argument(..., help="Store path or URL."),
                 finite: bool = typer.Option(True, help="Also scan values for NaN/Inf.")) -> None:
    """Check every array is complete and finite; exits 1 listing the problems."""
    from ootrain.store import Store

    s = Store(path, mode="r")
    problems = []
    for name, arr in s.walk_arrays():
        done = s.done(name)
        if not done.all():
            problems.append(f"{name}: {int((~done).sum())} of {done.size} chunks incomplete")
            continue
        if finite:
            bad = sum(int((~np.isfinite(arr[sl])).sum()) for sl in _row_blocks(arr))
            if bad:
                problems.append(f"{name}: {bad} non-finite values")
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {path}: all arrays complete" + (" and finite" if finite else ""))


def _row_blocks(arr, block_bytes: int = 64 << 20):
    """Slices of whole rows, about ``block_bytes`` each."""
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    for lo in range(0, arr.shape[0], step):
        yield slice(lo, min(arr.shape[0], lo + step))


@store_app.command("unlock")
def store_unlock(path: str = typer.Argument(..., help="Store path or URL.")) -> None:
    """Remove the writer lock of a store whose writer is known to be gone."""
    from ootrain.store import Store

    held = Store.break_lock(path)
    console.print("no lock held" if held is None else f"removed lock of {held.describe()}")


# --------------------------------------------------------------------------- sort
@app.command("sort")
def sort_cmd(src: str = typer.Argument(..., help="2-D zarr array (path or URL) to sort by row."),
             dst: str = typer.Argument(..., help="Destination zarr array (created)."),
             memory_budget: str = typer.Option("1GiB", help="Rows larger are sorted out of core (spill files in $TMPDIR)."),
             array: Optional[str] = typer.Option(None, help="Array name inside a zarr group."),
             progress: bool = typer.Option(True, help="Progress bar.")) -> None:
    """Out-of-core sort of every row of a zarr array (in memory when a row fits, else an external sample sort)."""
    from ootrain.sort import sort_zarr

    t = time.perf_counter()
    sort_zarr(src, dst, parse_bytes(memory_budget), array=array, progress=progress)
    console.print(f"sorted {src} → {dst} in {time.perf_counter() - t:.2f}s")


# --------------------------------------------------------------------------- demo
@app.command("demo")
def demo(out: Path = typer.Option(Path("ootrain-demo"), help="Output folder."),
         steps: Optional[int] = typer.Option(None, help="Optimisation steps (default: the "
                                             "pipeline's)."),
         progress: bool = typer.Option(True, help="Progress bars.")) -> None:
    """The main job on built-in data: RSR vs plain gradient accumulation on the RSR paper's
    Figure 1 problem (1-D mixture of 4 Gaussians, micro-batch 4, effective batch 1024)."""
    from pipelines.rsr_fig1 import DEFAULT_STEPS, run_fig1

    summary = run_fig1(out, steps=steps or DEFAULT_STEPS, progress=progress)
    console.print_json(json.dumps(summary))


if __name__ == "__main__":
    app()
