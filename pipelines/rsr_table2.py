"""Table 2 of Run-Sort-ReRun (Lezama et al., ICML 2021) at CPU scale: quality vs population b.

A generator learns ``mog:8:8`` (a fixed 8-D mixture of 8 isotropic Gaussians,
:func:`ootrain.data.mog_params`) by sliced W2 over populations of ``b`` generated samples per
step, ``b ∈ POPULATIONS = (64, 256, 1024, 4096)``, with the micro-batch fixed at ``m = 64``
(``b = m`` is plain mini-batch sliced W2).  Every run sees the same number of generated samples,
``--budget``, so it takes ``budget // b`` steps; all runs of a seed start from the same generator
init and use the same optimiser and learning rate (no rescaling with ``b``).

One step: ``b`` latents and ``b`` real samples (drawn with replacement from a fixed training set of
``N_TRAIN`` points), ``N_DIRECTIONS`` fresh Gaussian directions, loss = the exact sliced W2²
between the two populations (:func:`ootrain.ot.sliced.sliced_wasserstein`), one Adam step.

The gradient is taken in one autograd pass over the ``b`` samples.  This is the gradient that
Run-Sort-ReRun computes with micro-batches of ``m`` (the engine's invariant: with a deterministic
model the ReRun-accumulated gradient equals the full-batch gradient; ``tests/test_engine.py``), so
``m`` changes memory, not the numbers.  At these sizes the engine's per-step store I/O would
dominate the run time, which the table must keep under a few minutes.

Metrics, between ``N_EVAL = 2000`` generated samples and ``N_EVAL`` held-out target samples
(neither seen in training): the sliced W2 (square root of the mean over ``EVAL_DIRECTIONS``
fresh directions of the exact 1-D W2²), and the exact W2 with the squared Euclidean cost
(:func:`ootrain.ot.exact.exact_wasserstein`: the optimal assignment between the two equal-size
samples, the exact OT value that POT's ``ot.emd2`` also returns).  The row "target" scores
``N_EVAL`` training samples the same way: the floor set by finite samples.

Setup: latent ``z ~ N(0, I_8)``; generator ``MLP(8 → 128 → 128 → 8)`` with LayerNorm and ReLU;
Adam (betas 0.5, 0.999), lr 3e-3; ``N_DIRECTIONS = 64`` training directions per step; default
budget ``2**21`` samples (≈ 4 min on 2 CPU cores for seeds 0, 1).

What to expect: at equal samples seen, ``b`` trades bias for steps.  ``b = m = 64`` (32768 steps)
is the worst: mini-batch sliced W2 is biased and its plateau does not improve with more samples
(seed 0, sliced W2 0.25 → 0.30 from 2**20 to 2**22 samples), while ``b = 1024`` keeps improving
(0.22 → 0.20).  ``b = 4096`` gets only 512 steps at the default budget and is not converged.

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
          progress: Any) -> None:
    """``steps`` steps of population-``b`` sliced W2 (see the module docstring)."""
    opt = make_optimizer(generator.parameters(), OPTIMIZER, LR)
    rng = np.random.default_rng([seed, b])
    directions = torch.Generator().manual_seed(seed * 100_003 + b)
    real = torch.as_tensor(train_set)
    task = progress.add_task(f"seed {seed}, b={b}", total=steps)
    for _ in range(steps):
        z = torch.as_tensor(rng.standard_normal((b, LATENT_DIM)), dtype=torch.float32)
        y = real[torch.as_tensor(rng.integers(len(train_set), size=b))]
        omega = random_directions(DIM, N_DIRECTIONS, generator=directions)
        opt.zero_grad(set_to_none=True)
        sliced_wasserstein(generator(z), y, omega).backward()
        opt.step()
        progress.advance(task)
    progress.remove_task(task)


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
                train(generator, train_set, b, budget // b, seed, bars)
                wall = time.perf_counter() - t
                x = generate(generator, N_EVAL, LATENT_DIM, seed=3000 + seed)
                runs[b].append({**metrics(x, held_out, seed), "wall_s": wall})
    result = {
        "config": {"target": TARGET, "micro_batch": MICRO_BATCH, "budget": budget,
                   "seeds": list(seeds), "n_directions": N_DIRECTIONS, "latent_dim": LATENT_DIM,
                   "hidden": list(HIDDEN), "layer_norm": True, "optimizer": OPTIMIZER, "lr": LR,
                   "n_train": N_TRAIN, "n_eval": N_EVAL, "eval_directions": EVAL_DIRECTIONS},
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
