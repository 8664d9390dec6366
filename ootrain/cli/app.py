"""The ``ootrain`` command line (Typer)."""

from __future__ import annotations

import json
import math
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
sd_app = typer.Typer(help="Semi-discrete OT: the stand-alone solver and OTS + FIT generator "
                     "training (Chen et al., ICML 2019).", no_args_is_help=True)
app.add_typer(rsr_app, name="rsr")
app.add_typer(store_app, name="store")
app.add_typer(sd_app, name="semidiscrete")
otgan_app = typer.Typer(help="OT-GAN: generator and critic on the mini-batch energy distance "
                        "(Salimans et al., ICLR 2018).", no_args_is_help=True)
app.add_typer(otgan_app, name="otgan")
potgan_app = typer.Typer(help="POT-GAN: WGAN-GP with the parallel latent OT regulariser "
                         "(Avraham et al., CVPR 2019).", no_args_is_help=True)
app.add_typer(potgan_app, name="potgan")
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
    from ootrain.engine.core import EngineConfig
    from ootrain.models.zoo import build_model
    from ootrain.progress import make_progress
    from ootrain.models.zoo import generate
    from ootrain.methods.train import train_rsr
    from ootrain.methods.rsr import SlicedSolver
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
    from ootrain.ot.sort import sort_zarr

    t = time.perf_counter()
    sort_zarr(src, dst, parse_bytes(memory_budget), array=array, progress=progress)
    console.print(f"sorted {src} → {dst} in {time.perf_counter() - t:.2f}s")


# --------------------------------------------------------------------------- semidiscrete
_COST_HELP = ("Ground cost: sqeuclidean | euclidean | l1 | lp:P (sum_k |x_k - y_k|^P, no "
              "root).")
_BACKEND_HELP = ("argmin backend: auto | torch | keops | faiss (soft transforms: torch, or "
                 "keops).")
_EPS_HELP = ("Temperature of the soft (entropic) assignment, relative to the targets' "
             "nearest-neighbour cost scale; 0 = hard argmin (default: 0.05 for l1, 0 "
             "otherwise).")


def _set_threads(threads: int) -> None:
    import torch

    if threads < 0:
        raise typer.BadParameter(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def _row_sampler(data, seed: int, dtype):
    """Draws of rows of ``data`` (numpy array, memory map or zarr array) with replacement;
    each draw reads only the rows it needs."""
    import torch

    n = int(data.shape[0])
    rng = np.random.default_rng(seed)
    lazy = hasattr(data, "get_orthogonal_selection")

    def draw(k: int):
        uniq, inv = np.unique(rng.integers(0, n, size=k), return_inverse=True)
        rows = data.get_orthogonal_selection((uniq, slice(None))) if lazy else data[uniq]
        rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
        return rows[torch.from_numpy(inv.reshape(-1))].to(dtype)

    return draw


def source_sampler(spec: str, seed: int = 0, dtype=None, array: Optional[str] = None):
    """``(sampler, d, description)`` for a source spec of ``ootrain semidiscrete solve``.

    ``sampler(k)`` returns a ``[k, d]`` tensor of i.i.d. source draws:

    - ``gaussian:D`` — N(0, I_D); ``uniform:D`` — uniform on the cube [0, 1]^D;
    - the other sampled built-ins (``mog1d``, ``ring8``, ``mog:D:K[:S]``) — exact draws;
    - ``digits[:split]``, a ``.npy``/``.npz`` file or a zarr array/group (path or URL) — the
      empirical distribution of its rows, sampled with replacement (a zarr array stays on
      disk; each draw reads only its rows).
    """
    import torch

    from ootrain.data import DATASETS, load_data, load_dataset

    dtype = dtype or torch.float32
    name, *args = spec.split(":")
    if name in ("gaussian", "uniform"):
        if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
            raise typer.BadParameter(f"source {spec!r}: expected '{name}:D' with an integer "
                                     "D >= 1")
        d = int(args[0])
        gen = torch.Generator().manual_seed(seed)
        fn = torch.rand if name == "uniform" else torch.randn

        def draw(k: int):
            return fn(k, d, generator=gen, dtype=torch.float64).to(dtype)

        what = "N(0, I)" if name == "gaussian" else "uniform on [0, 1]^D"
        return draw, d, f"{spec}: {what}, exact draws"
    if name in DATASETS and name != "digits":
        try:
            d = int(load_dataset(spec, n=1).shape[1])
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None
        rng = np.random.default_rng(seed)

        def draw_builtin(k: int):
            x = load_dataset(spec, n=k, seed=int(rng.integers(2**63)))
            return torch.from_numpy(x).to(dtype)

        return draw_builtin, d, f"{spec}: exact draws"
    try:
        data = load_data(spec) if name == "digits" else load_data(spec, array=array, lazy=True)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(f"source {spec!r}: {e}") from None
    n, d = (int(s) for s in data.shape)
    return _row_sampler(data, seed, dtype), d, \
        f"{spec}: empirical distribution of {n} rows, drawn with replacement"


def _load_targets(spec: str, n: Optional[int], seed: int, array: Optional[str]):
    """Targets for the semi-discrete commands: a built-in set (in memory; sampled sets need
    ``n``) or a user's array, left on disk when it is zarr."""
    from ootrain.data import DATASETS, load_data

    try:
        if spec.split(":")[0] in DATASETS:
            if n is None and not spec.startswith("digits"):
                raise typer.BadParameter(f"target {spec!r} is a sampled built-in: pass "
                                         "--n-target (rows to draw)")
            return load_data(spec, n=n, seed=seed)
        return load_data(spec, array=array, lazy=True)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(f"target {spec!r}: {e}") from None


def _make_ot(targets, cost: str, backend: str, eps: Optional[float], dtype: str = "auto"):
    import torch

    from ootrain.ot.semidiscrete import SemiDiscreteOT

    if dtype not in ("auto", "float32", "float64"):
        raise typer.BadParameter(f"--dtype must be auto, float32 or float64, got {dtype!r}")
    try:
        return SemiDiscreteOT(targets, cost=cost, backend=backend, eps=eps,
                              dtype=None if dtype == "auto" else getattr(torch, dtype))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@sd_app.command("solve")
def sd_solve(
    source: str = typer.Argument(..., help="Source μ: gaussian:D, uniform:D (the cube [0,1]^D), "
                                 "a sampled built-in (mog1d, ring8, mog:D:K), or digits / a "
                                 ".npy/.npz/zarr path or URL used as an empirical source "
                                 "(rows drawn with replacement)."),
    target: str = typer.Argument(..., help="Target points y_j: a built-in (digits[:split], or a "
                                 "sampled one with --n-target) or a .npy/.npz/zarr path or "
                                 "URL (zarr stays on disk and is streamed in blocks)."),
    out: str = typer.Option(..., "--out", "-o", help="zarr group (local path or URL) the "
                            "potentials are written to; created, or added to."),
    name: str = typer.Option("potentials", help="Name of the potentials array inside --out."),
    cost: str = typer.Option("sqeuclidean", help=_COST_HELP),
    backend: str = typer.Option("auto", help=_BACKEND_HELP),
    eps: Optional[float] = typer.Option(None, help=_EPS_HELP),
    batch: Optional[int] = typer.Option(None, help="Source samples per ascent iteration "
                                        "(default: N/4 as a power of two in [256, 4096])."),
    max_iter: int = typer.Option(20000, help="Iteration budget (per stage with --grow)."),
    tol: float = typer.Option(0.05, help="Stop when the mass imbalance ||ν - P̂||₁ of the "
                              "averaged potential, measured on fresh samples, is at most it."),
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
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default). On a "
                                "small shared machine 1 avoids OpenMP stalls."),
) -> None:
    """Fit the semi-discrete OT potentials from a sampled source to target points (no model).

    Stochastic ascent of the (entropic, for l1) semi-discrete dual; writes the potentials ψ with
    SemiDiscreteOT.save and prints the transport cost of the map T(x) = y_σ(x), the dual
    estimate (≤ the OT cost, equal at the optimum) and the final mass imbalance, all on
    --n-eval fresh source samples.
    """
    import torch

    _set_threads(threads)
    if n_eval < 1:
        raise typer.BadParameter(f"--n-eval must be >= 1, got {n_eval}")
    targets = _load_targets(target, n_target, seed + 1, target_array)
    ot = _make_ot(targets, cost, backend, eps, dtype)
    sampler, d, described = source_sampler(source, seed, ot.dtype, source_array)
    if d != ot.source.d:
        raise typer.BadParameter(f"source {source!r} has dimension {d}, targets "
                                 f"{target!r} have {ot.source.d}")
    calls = [0]

    def counted(k: int):
        calls[0] += 1
        return sampler(k)

    fit_kw = {"batch": batch, "max_iter": max_iter, "tol": tol, "grow": grow, "n0": n0,
              "check_every": check_every, "generator": torch.Generator().manual_seed(seed)}
    if lr is not None:
        fit_kw["lr"] = lr
    t = time.perf_counter()
    try:
        ot.fit(counted, progress=progress, **fit_kw)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    fit_s = time.perf_counter() - t
    # final estimates on fresh samples
    t = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 7)
    total, counts, done = 0.0, torch.zeros(ot.n_targets, dtype=torch.float64), 0
    while done < n_eval:
        x = sampler(min(batch, n_eval - done))
        total += float(ot.cost_per_sample(x).double().sum())
        counts += torch.bincount(ot.assign(x, generator=gen).cpu(),
                                 minlength=ot.n_targets).double()
        done += x.shape[0]
    nu = ot.nu.double().cpu()
    summary = {
        "source": described, "target": target, "n_targets": ot.n_targets, "d": d,
        "cost": str(ot.ground_cost), "eps_rel": ot.eps_rel, "eps": ot.eps,
        "iterations": calls[0], "fit_s": round(fit_s, 3),
        "transport_cost": total / n_eval,
        "dual": ot.dual(sampler, n=n_eval, batch=batch),
        "imbalance": float((counts / n_eval - nu).abs().sum()),
        "imbalance_noise": float(torch.sqrt(2 * nu * (1 - nu) / (math.pi * n_eval)).sum()),
        "imbalance_fit": ot.history[-1]["imbalance"] if ot.history else None,
        "n_eval": n_eval, "eval_s": round(time.perf_counter() - t, 3),
    }
    ot.save(out, name)
    import zarr
    zarr.open_group(out, mode="a")[name].attrs.update({"solve": summary})

    table = Table("", "value", title="semi-discrete OT", title_justify="left")
    table.add_row("source", described)
    table.add_row("targets", f"{target}: N={ot.n_targets}, d={d}")
    kind = f" (soft, eps={ot.eps:.4g})" if ot.soft else " (hard argmin)"
    table.add_row("cost", f"{ot.ground_cost}{kind}")
    table.add_row("iterations", f"{calls[0]} × {batch} samples, {fit_s:.2f}s")
    table.add_row("transport cost", f"{summary['transport_cost']:.6g}")
    table.add_row("dual", f"{summary['dual']:.6g}")
    table.add_row("imbalance", f"{summary['imbalance']:.4f} (noise floor "
                  f"{summary['imbalance_noise']:.4f} at {n_eval} samples)")
    if summary["imbalance_fit"] is not None:
        table.add_row("imbalance (last fit check)", f"{summary['imbalance_fit']:.4f}")
    table.add_row("potentials", f"{out} / {name}")
    console.print(table)
    console.print(f"transport cost {summary['transport_cost']:.6g}  dual "
                  f"{summary['dual']:.6g}  imbalance {summary['imbalance']:.4f}",
                  soft_wrap=True)


def plot_samples(x: np.ndarray, path: Path, real: Optional[np.ndarray] = None,
                 title: str = "", n_show: int = 100) -> bool:
    """Picture of generated samples: an image grid when ``d`` is a square (8x8 digits: 64),
    a scatter over the real data when ``d == 2``, its three coordinate-pair projections when
    ``d == 3``, histograms when ``d == 1``.  Returns False (nothing written) for other
    widths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = x.shape[1]
    side = int(round(d ** 0.5))
    if d == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        if real is not None:
            r = np.asarray(real[:5000])
            ax.scatter(r[:, 0], r[:, 1], s=2, c="0.6", label="data")
        ax.scatter(x[:5000, 0], x[:5000, 1], s=2, c="C0", label="generated")
        ax.legend(markerscale=4, fontsize=8)
    elif d == 3:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
        for ax, (i, j) in zip(axes, ((0, 1), (0, 2), (1, 2))):
            if real is not None:
                r = np.asarray(real[:5000])
                ax.scatter(r[:, i], r[:, j], s=1, c="0.6", label="data")
            ax.scatter(x[:5000, i], x[:5000, j], s=1, c="C0", label="generated")
            ax.set_xlabel(f"x{i}")
            ax.set_ylabel(f"x{j}")
            ax.set_aspect("equal")
        axes[0].legend(markerscale=4, fontsize=8)
        ax = axes[1]
    elif d == 1:
        fig, ax = plt.subplots(figsize=(5, 3))
        if real is not None:
            ax.hist(np.asarray(real[:100_000, 0]), bins=100, density=True, color="0.6",
                    label="data")
        ax.hist(x[:, 0], bins=100, density=True, alpha=0.6, label="generated")
        ax.legend(fontsize=8)
    elif side * side == d and side >= 4:
        k = int(np.ceil(np.sqrt(min(n_show, len(x)))))
        lo, hi = (0.0, 1.0) if (x.min() >= -0.05 and x.max() <= 1.05) else \
            (float(np.percentile(x, 1)), float(np.percentile(x, 99)))
        canvas = np.full((k * (side + 1) - 1, k * (side + 1) - 1), lo + 0.3 * (hi - lo))
        for i, img in enumerate(x[:k * k]):
            r, c = divmod(i, k)
            canvas[r * (side + 1):r * (side + 1) + side,
                   c * (side + 1):c * (side + 1) + side] = img.reshape(side, side)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(canvas, cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
        ax.axis("off")
    else:
        return False
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


@sd_app.command("train")
def sd_train(
    store: Path = typer.Option(..., help="Store path (zarr v3 group; local path or fsspec URL)."),
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
    population: int = typer.Option(2048, "--population", "-b", help="b: generated samples per "
                                   "round (FIT's regression set)."),
    micro_batch: int = typer.Option(128, "--micro-batch", "-m", help="m: samples per pass "
                                    "(and per FIT optimiser step)."),
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
    out: Optional[Path] = typer.Option(None, help="Write samples.npy, samples.png and "
                                       "rounds.json here."),
    n_samples: Optional[int] = typer.Option(None, help="Samples written to --out (default: "
                                            "as many as data rows, at most 100000)."),
    progress: bool = typer.Option(True, help="Progress bars."),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default). On a "
                                "small shared machine 1 avoids OpenMP stalls."),
) -> None:
    """Train a generator by OTS + FIT (Chen et al. 2019); resumes automatically from the store.

    Each round fits the semi-discrete potentials between the current generator and the data
    (OTS, warm-started), stores b generated samples with their assigned data points, and
    regresses the generator onto that map (FIT) with micro-batch SGD.
    """
    import torch
    from torch import nn

    from ootrain.data import DATASETS, load_data
    from ootrain.engine.core import Engine, EngineConfig
    from ootrain.methods.gradual import AssignmentSolver, GradualConfig, train_gradual
    from ootrain.models.zoo import build_model
    from ootrain.progress import make_progress
    from ootrain.models.zoo import generate
    from ootrain.methods.train import make_optimizer, open_shared_store

    _set_threads(threads)
    if squash not in ("auto", "none", "sigmoid", "tanh"):
        raise typer.BadParameter(f"--squash must be auto, none, sigmoid or tanh, got {squash!r}")
    builtin = data.split(":")[0] in DATASETS
    try:
        if builtin:
            n = n_real if n_real is not None else (None if data.startswith("digits") else 4096)
            real = load_data(data, n=n, seed=seed + 1)
        else:
            real = load_data(data, array=data_array, lazy=True)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(f"--data {data!r}: {e}") from None
    if squash == "auto":
        squash = "sigmoid" if data.startswith("digits") else "none"
    torch.manual_seed(seed)
    gkw = {"in_dim": latent_dim, "out_dim": int(real.shape[1]), **_kwargs(generator_args)}
    G = build_model(generator, **gkw)
    if squash != "none":
        G = nn.Sequential(G, nn.Sigmoid() if squash == "sigmoid" else nn.Tanh())
    ot = _make_ot(real, cost, backend, eps)
    ots = {"batch": ots_batch, "max_iter": ots_max_iter, "tol": ots_tol}
    if ots_lr is not None:
        ots["lr"] = ots_lr
    try:
        cfg = EngineConfig(population=population, micro_batch=micro_batch,
                           latent_dim=latent_dim, seed=seed,
                           memory_budget=parse_bytes(memory_budget), verify=verify)
        gcfg = GradualConfig(rounds=rounds, alternate=alternate, fit_epochs=fit_epochs,
                             alpha_fit=alpha_fit, alpha_stop=alpha_stop, ots=ots, ots_seed=seed)
        opt = make_optimizer(G.parameters(), optimizer, lr)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    solver = AssignmentSolver(ot)
    store_cfg = Engine.store_config(cfg, solver, json.dumps([generator, gkw, squash]),
                                    "identity", real)
    # what determines the stored rounds; `rounds` only when FIT's epochs depend on it
    store_cfg["gradual"] = {"alternate": alternate, "fit_epochs": fit_epochs,
                            "alpha_fit": alpha_fit, "ots": ots, "ots_seed": seed,
                            **({} if alternate else {"rounds": rounds})}
    store_cfg["optimizer"] = {"name": optimizer, "lr": lr}
    history: list[dict] = []
    with make_progress(progress) as bars, \
            open_shared_store(str(store), store_cfg, overwrite) as st:
        eng = Engine(G, nn.Identity(), solver, real, st, opt, cfg, progress=bars)

        def report(res) -> None:
            it = res.ots_checks[-1]["iteration"] if res.ots_checks else None
            bars.console.log(f"round {res.round}: transport cost {res.transport_cost:.5g}  "
                             f"imbalance {res.imbalance:.3f}  OTS "
                             f"{'-' if it is None else it} it.  FIT {len(res.fit_losses)} "
                             f"epochs → {res.fit_losses[-1]:.5g}")

        results = train_gradual(eng, gcfg, callback=report)
        done = eng.completed_steps()
        for k in range(done):
            attrs = st.group[f"steps/{k}"].attrs
            metrics = dict(attrs.get("metrics", {}))
            history.append({"round": k, "transport_cost": metrics.get("loss"),
                            "imbalance": metrics.get("imbalance"),
                            "fit_losses": list(attrs.get("fit_losses", []))})
    console.print(f"[green]done[/]: {len(results)} rounds this call, {done} in store {store}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        k = n_samples if n_samples is not None else min(int(real.shape[0]), 100_000)
        x = generate(G, k, latent_dim, seed=seed + 12345)
        np.save(out / "samples.npy", x)
        (out / "rounds.json").write_text(json.dumps(history, indent=2) + "\n")
        ref = np.asarray(real[:min(int(real.shape[0]), 100_000)])
        wrote = plot_samples(x, out / "samples.png", ref,
                             f"OTS + FIT, {done} rounds, cost {cost}")
        console.print(f"wrote {out / 'samples.npy'}, {out / 'rounds.json'}"
                      + (f", {out / 'samples.png'}" if wrote else ""))


# --------------------------------------------------------------------------- otgan train
def _int_list(text: str, option: str) -> tuple:
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated integers, got {text!r}") \
            from None
    if not out or min(out) < 1:
        raise typer.BadParameter(f"{option} must list positive widths, got {text!r}")
    return out


@otgan_app.command("train")
def otgan_train(
    out: Path = typer.Option(..., help="Output folder: samples.npy, samples.png, loss.png, "
                             "history.json, metrics.json."),
    data: str = typer.Option("ring8", help="Real data: ring8 (8 Gaussians on a circle, the "
                             "paper's toy), gaussian:D, mog:D:K[:S], mog1d (exact draws), or "
                             "digits / a .npy/.npz/zarr array (rows drawn with replacement)."),
    batch: int = typer.Option(200, "--batch", "-b", help="Samples in EACH of X, X' (real) and "
                              "Y, Y' (generated): 4 x batch per iteration (the paper's '8000' "
                              "is that total)."),
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
    backend: str = typer.Option("auto", help="Sinkhorn backend: auto | dense | keops."),
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
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", "-m", help="Rows per "
                                              "forward pass: critic features are computed "
                                              "and replayed with autograd m rows at a time "
                                              "against the solves' per-sample cotangents "
                                              "(same gradient; default: the whole batch in "
                                              "one graph)."),
    verify: bool = typer.Option(False, help="With --micro-batch, check the replay reproduces "
                                "the first pass (deterministic models)."),
    hidden: str = typer.Option("128,128,128", help="Generator hidden widths (ReLU MLP)."),
    layer_norm: bool = typer.Option(True, "--layer-norm/--no-layer-norm", help="LayerNorm in "
                                    "the generator's hidden layers (sharper modes sooner)."),
    critic_hidden: str = typer.Option("128,128", help="Critic hidden widths (leaky-ReLU MLP)."),
    feature_dim: int = typer.Option(32, help="Critic feature dimension (L2-normalised)."),
    seed: int = typer.Option(0, help="Seed of the models' init, real draws and latents."),
    n_samples: int = typer.Option(2500, help="Samples written to samples.npy and scored "
                                  "(PacGAN scores 2500)."),
    progress: bool = typer.Option(True, help="Progress bar."),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default). On a "
                                "small shared machine 1 avoids OpenMP stalls."),
) -> None:
    """Train a generator against a learned critic by OT-GAN's Algorithm 1.

    Each iteration draws X, X' real and Y, Y' generated (each --batch samples), computes the
    mini-batch energy distance of their critic features with the cosine cost (six log-domain
    Sinkhorn solves, warm-started), and updates the critic (ascent, every n_gen+1-th
    iteration, until --freeze-critic-after) or the generator (descent).
    """
    from ootrain.eval.ring import ring8_modes, ring_metrics
    from ootrain.models.zoo import generate
    from ootrain.methods.otgan import OTGANConfig, data_sampler, make_critic, make_generator
    from ootrain.methods.otgan import train_otgan as _train

    _set_threads(threads)
    try:
        cfg = OTGANConfig(batch=batch, eps=eps, n_gen=n_gen, lr_gen=lr_gen,
                          lr_critic=lr_critic, betas=(beta1, beta2), sinkhorn_tol=sinkhorn_tol,
                          sinkhorn_max_iter=sinkhorn_max_iter, backend=backend,
                          warm_start=warm_start, warm_start_method=warm_start_method,
                          critic_freeze_after=freeze_critic_after, steps=steps,
                          latent_dim=latent_dim, seed=seed, micro_batch=micro_batch,
                          verify=verify)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if n_samples < 1:
        raise typer.BadParameter(f"--n-samples must be >= 1, got {n_samples}")
    if feature_dim < 1:
        raise typer.BadParameter(f"--feature-dim must be >= 1, got {feature_dim}")
    g_hidden, c_hidden = _int_list(hidden, "--hidden"), _int_list(critic_hidden,
                                                                  "--critic-hidden")
    try:
        sampler, d, what = data_sampler(data)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(f"--data {data!r}: {e}") from None
    G = make_generator(latent_dim, d, g_hidden, layer_norm=layer_norm, seed=seed)
    C = make_critic(d, feature_dim, c_hidden, seed=seed + 1)
    console.print(f"OT-GAN on {what}; 4 x {batch} samples per iteration, {steps} iterations"
                  + (f", micro-batches of {micro_batch}" if micro_batch else ", in memory"))
    history = _train(G, C, sampler, cfg, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    x = generate(G, n_samples, latent_dim, seed=seed + 12345)
    np.save(out / "samples.npy", x)
    real = np.asarray(sampler(min(n_samples, 5000), np.random.default_rng([seed, 3])))
    wrote = plot_samples(x, out / "samples.png", real, f"OT-GAN, {steps} iterations, batch "
                         f"4 x {batch}")
    _plot_losses_otgan(history, out / "loss.png")
    (out / "history.json").write_text(json.dumps({"config": cfg.to_dict(), "data": data,
                                                  "history": history}, indent=1) + "\n")
    warm = [r["sinkhorn_iterations"] for r in history[1:]]
    summary = {"data": data, "steps": steps, "n_samples": n_samples,
               "final_loss": history[-1]["loss"] if history else None,
               "mean_sinkhorn_iterations": float(np.mean(warm)) if warm else None,
               "wall_s": history[-1]["time_s"] if history else 0.0,
               "ring_metrics": ring_metrics(x, ring8_modes()) if data == "ring8" else None}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["ring_metrics"] is not None:
        m = summary["ring_metrics"]
        console.print(f"modes covered {m['modes_covered']}/{m['n_modes']}  high-quality "
                      f"{100 * m['high_quality_fraction']:.1f} %  reverse KL "
                      f"{m['reverse_kl']:.3f}")
    console.print(f"wrote {out / 'samples.npy'}, history.json, metrics.json, loss.png"
                  + (", samples.png" if wrote else ""))


def _plot_losses_otgan(history: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for player, color in (("generator", "C0"), ("critic", "C3")):
        rows = [r for r in history if r["player"] == player]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], ".", ms=2, color=color,
                label=f"{player} iterations")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mini-batch energy distance D²")
    ax.legend(fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- POT-GAN
@potgan_app.command("train")
def potgan_train(
    out: Path = typer.Option(..., help="Output folder: samples.npy, samples.png, loss.png, "
                             "history.json, metrics.json."),
    data: str = typer.Option("ring8", help="Real data: ring8 (8 Gaussians on a circle), "
                             "gaussian:D (D=3: the paper's ball), mog:D:K[:S], mog1d (exact "
                             "draws), or digits / a .npy/.npz/zarr array (rows drawn with "
                             "replacement)."),
    method: str = typer.Option("potgan", help="potgan | wgan-gp (the baseline: the same "
                               "training without L_POT)."),
    steps: int = typer.Option(3000, help="Generator updates."),
    batch: int = typer.Option(256, "--batch", "-b", help="Real and generated samples per "
                              "update."),
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
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", "-m", help="Rows per "
                                              "forward pass (cotangent mode; default: the "
                                              "whole batch)."),
    seed: int = typer.Option(0, help="Seed of the models' init, real draws and latents."),
    ema: float = typer.Option(0.999, help="Decay of the averaged generator (bias-corrected "
                              "moving average of its parameters) whose samples are written "
                              "and scored; 0: the last generator."),
    n_samples: int = typer.Option(5000, help="Samples written and scored."),
    bandwidth: Optional[float] = typer.Option(None, help="Parzen bandwidth of the reverse KL "
                                              "(default: ring8 0.02, else Scott's rule)."),
    progress: bool = typer.Option(True, help="Progress bars."),
    threads: int = typer.Option(0, help="torch intra-op threads (0: torch's default)."),
) -> None:
    """Train WGAN-GP with (potgan) or without (wgan-gp) the latent OT regulariser.

    POT-GAN first trains a VAE on the data and freezes its encoder Q; each generator update
    then fits the Latent Transformation Forest F (Algorithm 2), matches every real latent to
    its nearest transformed generated latent and adds lambda_POT |Q(X_r) - F(Q(G(Z)))|^2
    over the matched pairs to the WGAN-GP generator loss.  Scores, of the averaged generator
    (--ema) and of the last one: Parzen reverse KL(P_g || P_r) on --n-samples generated vs as
    many real samples, and mode metrics on ring8.
    """
    from ootrain.eval.ring import ring8_modes, ring_metrics
    from ootrain.models.zoo import generate
    from ootrain.methods.otgan import data_sampler
    from ootrain.eval.parzen import parzen_reverse_kl, scott_bandwidth
    from ootrain.methods.potgan import POTConfig
    from ootrain.methods.train import GAN_METHODS, train_potgan
    from ootrain.models.vae import VAEConfig
    from ootrain.methods.wgan import WGANConfig

    _set_threads(threads)
    if method not in GAN_METHODS:
        raise typer.BadParameter(f"--method must be one of {', '.join(GAN_METHODS)}, got "
                                 f"{method!r}")
    try:
        wcfg = WGANConfig(batch=batch, n_critic=n_critic, gp_weight=gp_weight, lr_gen=lr,
                          lr_critic=lr, steps=steps, latent_dim=latent_dim, seed=seed,
                          micro_batch=micro_batch)
        pcfg = POTConfig(weight=pot_weight, forest_steps=forest_steps, forest_lr=forest_lr,
                         matching=matching, backend=backend)
        vcfg = VAEConfig(steps=vae_steps, seed=seed)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    for name, v in (("--n-samples", n_samples), ("--vae-latent", vae_latent),
                    ("--forest-trees", forest_trees), ("--forest-depth", forest_depth)):
        if v < 1:
            raise typer.BadParameter(f"{name} must be >= 1, got {v}")
    if not 0 <= ema < 1:
        raise typer.BadParameter(f"--ema must be in [0, 1), got {ema}")
    if bandwidth is not None and not bandwidth > 0:
        raise typer.BadParameter(f"--bandwidth must be > 0, got {bandwidth}")
    try:
        sampler, d, what = data_sampler(data)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(f"--data {data!r}: {e}") from None
    console.print(f"{method} on {what}; batch {batch}, {steps} generator updates")
    run = train_potgan(sampler, d, method=method, wgan=wcfg, pot=pcfg, vae=vcfg,
                       vae_latent=vae_latent, forest_trees=forest_trees,
                       forest_depth=forest_depth, ema=ema, seed=seed, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    x = generate(run.generator_ema, n_samples, latent_dim, seed=seed + 12345)
    x_last = generate(run.generator, n_samples, latent_dim, seed=seed + 12345)
    real = np.asarray(sampler(n_samples, np.random.default_rng([seed, 3])))
    h = bandwidth if bandwidth is not None else (0.02 if data == "ring8"
                                                 else scott_bandwidth(real))
    np.save(out / "samples.npy", x)
    wrote = plot_samples(x, out / "samples.png", real, f"{method}, {steps} updates")
    _plot_losses_potgan(run.history, out / "loss.png")
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
    console.print(f"Parzen reverse KL(P_g || P_r) = {summary['reverse_kl']:.4f} (averaged "
                  f"generator; last: {summary['reverse_kl_last']:.4f}; bandwidth {h:.3g})")
    if summary["ring_metrics"] is not None:
        m = summary["ring_metrics"]
        console.print(f"modes covered {m['modes_covered']}/{m['n_modes']}  high-quality "
                      f"{100 * m['high_quality_fraction']:.1f} %")
    console.print(f"wrote {out / 'samples.npy'}, history.json, metrics.json, loss.png"
                  + (", samples.png" if wrote else ""))


def _plot_losses_potgan(history: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["wasserstein"] for r in history], lw=0.8, label="critic's W estimate")
    if history and "reg" in history[0]:
        ax.plot(steps, [r["reg"] for r in history], lw=0.8, label="L_POT")
    ax.set_xlabel("generator update")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
