"""Figure 1 of Run-Sort-ReRun (Lezama et al., ICML 2021) at CPU scale: RSR vs plain gradient
accumulation on a 1-D mixture of 4 Gaussians with micro-batch ``m = 4`` and effective batch
``b = 1024``.

The experiment, its setup and its outputs (``samples.npz``, ``target.npz``, ``fig1.png``,
``summary.json``, ``store/``) are those of :mod:`ootrain.jobs.demo` (``ootrain demo`` runs the
same function, :func:`~ootrain.jobs.demo.run_fig1`); this module is its command line.

Usage: ``python -m pipelines.rsr_fig1 --out DIR [--steps N] [--seed S]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from ootrain.jobs.demo import (DEFAULT_STEPS, EVAL_EVERY, HIDDEN, LATENT_DIM, LR, MICRO_BATCH,
                               N_REAL, N_SAMPLES, N_TARGET, OPTIMIZER, POPULATION,
                               make_generator, mode_metrics, plot_fig1, run_fig1,
                               train_baseline, w2)

__all__ = ["app", "main", "DEFAULT_STEPS", "EVAL_EVERY", "HIDDEN", "LATENT_DIM", "LR",
           "MICRO_BATCH", "N_REAL", "N_SAMPLES", "N_TARGET", "OPTIMIZER", "POPULATION",
           "make_generator", "mode_metrics", "plot_fig1", "run_fig1", "train_baseline", "w2"]

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command()
def main(out: Path = typer.Option(..., help="Output folder."),
         steps: int = typer.Option(DEFAULT_STEPS, help="Optimisation steps of each method."),
         seed: int = typer.Option(0, help="Seed of init, real data, latents and metrics."),
         progress: bool = typer.Option(True, help="Progress bars.")) -> None:
    """RSR vs plain gradient accumulation on the RSR paper's Figure 1 problem."""
    summary = run_fig1(out, steps=steps, progress=progress, seed=seed)
    Console().print_json(json.dumps(summary))


if __name__ == "__main__":
    app()
