"""Table 2 of Run-Sort-ReRun (Lezama et al., ICML 2021) at CPU scale: quality vs population b.

A generator learns ``mog:8:8`` (a fixed 8-D mixture of 8 isotropic Gaussians,
:func:`ootrain.data.mog_params`) by sliced W2 over populations of ``b`` generated samples per
step, ``b ∈ POPULATIONS = (64, 256, 1024, 4096)``, with the micro-batch fixed at ``m = 64``
(``b = m`` is plain mini-batch sliced W2).  Every run sees the same number of generated samples,
``--budget``, so it takes ``budget // b`` steps; all runs of a seed start from the same generator
init and use the same optimiser and learning rate (no rescaling with ``b``).

Training runs on the engine, Run → Sort → ReRun:
``ootrain.methods.train(RSR(G, real, Adam, solver=SlicedSolver(N_DIRECTIONS)), budget // b,
EngineConfig(population=b, micro_batch=min(MICRO_BATCH, b), latent_dim=LATENT_DIM, seed=…),
store=None)`` (the in-memory store: in-process numpy arrays).  One step: Run embeds ``b``
latents ``m`` at a time without autograd, Sort draws ``N_DIRECTIONS`` fresh Gaussian directions
and computes each generated sample's exact quantile target, ReRun replays the ``m``-row
micro-batches with autograd and accumulates the gradient, then one Adam step.  With this
deterministic generator the accumulated gradient is the full-batch gradient of the sliced W2²
(``tests/invariant.py``), so ``m`` changes memory, not the numbers.

The real side: every step matches the ``b`` generated samples against the WHOLE fixed training
set of ``N_TRAIN`` = 32768 points (the ``real`` of :class:`~ootrain.methods.rsr.RSR`, embedded
once per run), with the exact quantile targets for unequal sizes (the target of rank ``r`` is
the mean of the training set's quantile function over ``[r/b, (r+1)/b]``).  This differs from
this pipeline's earlier in-memory loop, which drew ``b`` real samples with replacement per step
and took the sliced W2² between two ``b``-sample populations: the generated side's mini-batch
bias is unchanged (it is what the table measures), the real side's sampling noise and bias are
gone (its quantile function is the training set's, every step).  The numbers are therefore not
comparable with tables made by the old loop; in particular the ``b = m = 64`` row is now
"mini-batch on the generated side only".

Metrics, between ``N_EVAL = 2000`` generated samples and ``N_EVAL`` held-out target samples
(neither seen in training): the sliced W2 (square root of the mean over ``EVAL_DIRECTIONS``
fresh directions of the exact 1-D W2²), and the exact W2 with the squared Euclidean cost
(:func:`ootrain.ot.exact.exact_wasserstein`: the optimal assignment between the two equal-size
samples, the exact OT value that POT's ``ot.emd2`` also returns).  The row "target" scores
``N_EVAL`` training samples the same way: the floor set by finite samples.

Setup: latent ``z ~ N(0, I_8)``; generator ``MLP(8 → 128 → 128 → 8)`` with LayerNorm and ReLU;
Adam (betas 0.5, 0.999), lr 3e-3; ``N_DIRECTIONS = 64`` training directions per step; engine
seed ``100003 · seed + b``; default budget ``2**21`` samples.

Time (measured on the project's shared 2-core VM, one torch thread): an engine step costs
about the same at every ``b`` here, because Solve re-sorts the 64 projections of the 32768
training points every step: 0.15-0.18 s per step at b = 64 … 4096 under load ~2 (100/50/20/10
steps), 0.28-0.47 s per step under load 4-5 (the run below).  The default budget is
``32768 + 8192 + 2048 + 512 = 43520`` steps per seed, so ≈ 2-6 h per seed (4-11 h for seeds
0, 1); it has not been run on the engine.  ``--budget 32768 --seeds 0`` (680 steps) took 305 s
under load 4-5.

What to expect: at equal samples seen, ``b`` trades bias for steps.  Measured on the engine
with ``--budget 32768 --seeds 0`` only (512 / 128 / 32 / 8 steps; sliced W2 to held-out data,
floor 0.134): b = 64: 0.445, b = 256: 0.385, b = 1024: 0.532, b = 4096: 1.148 — at this tiny
budget the large populations get too few steps to converge, so the ordering is set by the
step count, not yet by the mini-batch bias.  Tables from the old in-memory loop (b real
samples per step; seed 0, sliced W2 0.25 → 0.30 at b = 64 and 0.22 → 0.20 at b = 1024 from
2**20 to 2**22 samples) were not re-measured on the engine.

Outputs (in ``--out``): ``table2.md`` (the table and the command that made it), ``table2.json``
(configuration; per ``b``: steps, per-seed metrics, their mean and standard deviation; the floor)
and ``table2.png`` (metrics vs ``b``).

Usage: ``python -m pipelines.rsr_table2 --out DIR [--budget SAMPLES] [--seeds 0,1]``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from ootrain.data import load_dataset
from ootrain.models.zoo import MLP
from ootrain.progress import make_progress
from ootrain.models.zoo import generate
from ootrain.engine import EngineConfig
from ootrain.methods import RSR, train as engine_train
from ootrain.methods.rsr import SlicedSolver
from ootrain.methods.training import make_optimizer
from ootrain.ot.exact import exact_wasserstein
from ootrain.ot.sliced import random_directions, sliced_wasserstein
from pipelines.common import one_thread

TARGET = "mog:8:8"
DIM = 8
LATENT_DIM = 8
HIDDEN = (128, 128)
MICRO_BATCH = 64
POPULATIONS = (64, 256, 1024, 4096)
N_DIRECTIONS = 64
OPTIMIZER = "adam"
LR = 3e-3
N_TRAIN = 32_768
N_EVAL = 2000
EVAL_DIRECTIONS = 1000
DEFAULT_BUDGET = 2**21
DEFAULT_SEEDS = "0,1"


def make_generator(seed: int) -> MLP:
    """The generator, initialised from ``seed`` without touching the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(LATENT_DIM, DIM, hidden=HIDDEN, activation="relu", layer_norm=True)


def train(generator: MLP, train_set: np.ndarray, b: int, steps: int, seed: int,
          progress: Any) -> list[dict[str, Any]]:
    """``steps`` engine steps of population-``b`` sliced W2 against the whole ``train_set``
    (see the module docstring); returns the engine's per-step history."""
    opt = make_optimizer(generator.parameters(), OPTIMIZER, LR)
    method = RSR(generator, train_set, opt, solver=SlicedSolver(n_directions=N_DIRECTIONS))
    config = EngineConfig(population=b, micro_batch=min(MICRO_BATCH, b), latent_dim=LATENT_DIM,
                          seed=seed * 100_003 + b)
    task = progress.add_task(f"seed {seed}, b={b}", total=steps)
    try:   # one bar per run: the engine's per-phase bars would cost more than these steps
        run = engine_train(method, steps, config, store=None,
                           callback=lambda _: progress.advance(task))
    finally:
        progress.remove_task(task)
    return run.history


def metrics(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """Sliced W2 (``EVAL_DIRECTIONS`` fresh directions) and exact W2 between ``x`` and ``y``."""
    xt, yt = (torch.as_tensor(a, dtype=torch.float64) for a in (x, y))
    omega = random_directions(DIM, EVAL_DIRECTIONS, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(10_000 + seed))
    sw = float(sliced_wasserstein(xt, yt, omega)) ** 0.5
    return {"sliced_w2": sw, "w2": exact_wasserstein(x, y)}


def _mean_std(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {k: {"mean": float(np.mean([r[k] for r in runs])),
                "std": float(np.std([r[k] for r in runs]))} for k in runs[0]}


def write_markdown(path: Path, result: dict[str, Any], command: str) -> None:
    """The table (mean ± std over seeds) and the command that made it."""
    cfg = result["config"]
    lines = [f"# RSR Table 2 (CPU scale): {TARGET}, m = {MICRO_BATCH}, "
             f"{cfg['budget']} generated samples per run, seeds {cfg['seeds']}", "",
             "| b | steps | sliced W2 ↓ | W2 (exact) ↓ |", "|---:|---:|---:|---:|"]

    def cell(stats: dict[str, float]) -> str:
        return f"{stats['mean']:.4f} ± {stats['std']:.4f}"
    for row in result["rows"]:
        label = f"{row['b']}" + (" (= m, mini-batch SW)" if row["b"] == MICRO_BATCH else "")
        lines.append(f"| {label} | {row['steps']} | {cell(row['sliced_w2'])} | "
                     f"{cell(row['w2'])} |")
    floor = result["floor"]
    lines += [f"| target (floor) | – | {cell(floor['sliced_w2'])} | {cell(floor['w2'])} |", "",
              f"Metrics between {N_EVAL} generated and {N_EVAL} held-out target samples; "
              f"mean ± std over seeds. Made by:", "", f"    {command}", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, result: dict[str, Any]) -> None:
    """Both metrics vs b (log scale), error bars over seeds, the target floor dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bs = [row["b"] for row in result["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("sliced_w2", "w2"), ("sliced W2", "exact W2")):
        ax.errorbar(bs, [row[key]["mean"] for row in result["rows"]],
                    yerr=[row[key]["std"] for row in result["rows"]], marker="o", capsize=3)
        ax.axhline(result["floor"][key]["mean"], color="k", ls="--", lw=1, label="target floor")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"population b (m = {MICRO_BATCH}, equal samples seen)")
        ax.set_title(f"{title} to held-out {TARGET}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_table2(out: Path, budget: int = DEFAULT_BUDGET, seeds: tuple[int, ...] = (0, 1),
               progress: bool = True, command: str = "") -> dict[str, Any]:
    """Train every (seed, b), write ``table2.{md,json,png}`` to ``out``; returns the json."""
    if budget < max(POPULATIONS):
        raise ValueError(f"budget {budget} must be at least the largest b = {max(POPULATIONS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[dict[str, float]]] = {b: [] for b in POPULATIONS}
    floor = []
    t0 = time.perf_counter()
    with make_progress(progress) as bars, one_thread():
        for seed in seeds:
            train_set = load_dataset(TARGET, n=N_TRAIN, seed=1000 + seed)
            held_out = load_dataset(TARGET, n=N_EVAL, seed=2000 + seed)
            floor.append(metrics(train_set[:N_EVAL], held_out, seed))
            for b in POPULATIONS:
                generator = make_generator(seed)
                t = time.perf_counter()
                history = train(generator, train_set, b, budget // b, seed, bars)
                wall = time.perf_counter() - t
                x = generate(generator, N_EVAL, LATENT_DIM, seed=3000 + seed)
                runs[b].append({**metrics(x, held_out, seed), "wall_s": wall,
                                "train_loss": float(history[-1]["loss"])})
    result = {
        "config": {"target": TARGET, "micro_batch": MICRO_BATCH, "budget": budget,
                   "seeds": list(seeds), "n_directions": N_DIRECTIONS, "latent_dim": LATENT_DIM,
                   "hidden": list(HIDDEN), "layer_norm": True, "optimizer": OPTIMIZER, "lr": LR,
                   "n_train": N_TRAIN, "n_real": N_TRAIN, "n_eval": N_EVAL,
                   "eval_directions": EVAL_DIRECTIONS, "store": "memory"},
        "rows": [{"b": b, "steps": budget // b, **_mean_std(runs[b]), "per_seed": runs[b]}
                 for b in POPULATIONS],
        "floor": _mean_std(floor),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / "table2.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(out / "table2.md", result, command or
                   f"python -m pipelines.rsr_table2 --out {out} --budget {budget} "
                   f"--seeds {','.join(map(str, seeds))}")
    plot(out / "table2.png", result)
    return result


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command()
def main(out: Path = typer.Option(..., help="Output folder."),
         budget: int = typer.Option(DEFAULT_BUDGET, help="Generated samples seen per run."),
         seeds: str = typer.Option(DEFAULT_SEEDS, help="Comma-separated seeds."),
         progress: bool = typer.Option(True, help="Progress bars.")) -> None:
    """Sliced and exact W2 vs population b at equal samples seen (RSR Table 2, CPU scale)."""
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise typer.BadParameter(f"--seeds must be comma-separated integers, got {seeds!r}")
    command = "python -m pipelines.rsr_table2 " + shlex.join(sys.argv[1:])
    result = run_table2(out, budget=budget, seeds=seed_list, progress=progress, command=command)
    typer.echo((out / "table2.md").read_text())
    typer.echo(f"wall time {result['wall_s']} s")


if __name__ == "__main__":
    app()
