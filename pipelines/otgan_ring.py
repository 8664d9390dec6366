"""OT-GAN on the ring of 8 Gaussians (Salimans et al., ICLR 2018) at CPU scale.

OT-GAN trains a generator against the mini-batch energy distance ``D^2`` of a learned critic's
features (cosine cost, entropic OT; :mod:`ootrain.methods.otgan`).  Two of the paper's claims are tested
on the 2-D ring (``ring8``: 8 Gaussians of std 0.02 on a circle of radius 2, the toy of the
paper's Section 5.1):

(a) **Consistency** — ``D^2`` is a proper distance for *any* fixed critic, so once the critic
    is frozen the generator keeps a sensible objective and should keep covering all 8 modes
    (a standard GAN generator against a frozen discriminator collapses onto its maxima).  Run:
    ``train_steps`` iterations of Algorithm 1 (critic and generator), then
    ``frozen_steps`` generator-only iterations against the frozen critic.
(b) **Batch size** — the paper reports better results with larger batches (200 → 8000
    samples per iteration).  Run: the same training at several batch sizes, given as
    **totals** per iteration, ``4 x batch`` (X, X', Y, Y'), like the paper's; all for the
    **same number of iterations** (so the larger batches cost more time: the wall time is
    reported) from the same initial models.

Metrics (PacGAN / VEEGAN convention, :func:`ootrain.eval.ring.ring_metrics`) on ``n_eval = 2500``
generated samples from fixed latents, snapshotted during training and **computed afterwards
from the saved samples**: a sample is high-quality when within 3σ = 0.06 of its nearest mode; a
mode is covered when it has at least one high-quality sample; reverse KL of the nearest-mode
histogram to the uniform one.

Warm starts: ``warm_start`` in ``results.json`` measures what starting the six Sinkhorn solves
from the previous iteration's potentials saves over eps-scaling: from the models at the freeze
point, ``ablation_steps`` iterations with the critic still training and ``ablation_steps``
with it frozen, each with warm starts ``ctransform``, ``index`` and none (same seed: the same
draws).  The training runs start every solve cold, with eps-scaling: warm starts saved no
iterations once the critic had learned the modes.

Outputs (in ``--out``): ``results.json`` (config, per-run metrics per snapshot and final,
Sinkhorn iterations, wall times, the warm-start ablation), ``consistency.png`` (modes covered
and high-quality fraction vs iteration with the freeze marked; samples at the freeze and at the
end), ``batch_size.png`` (metric curves and final samples per batch size),
``consistency_samples.npz`` (``samples [S, n_eval, 2]``, ``steps [S]``: completed iterations,
``frozen [S]``), ``batch_size_samples.npz`` (``b<total>_samples``, ``b<total>_steps``), and
``history_<run>.json`` (per-iteration training history).

Usage: ``python -m pipelines.otgan_ring --out DIR`` (about 10 min on 2 busy CPU cores);
``--quick`` for a smoke run (< 1 min).
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console
from torch import nn

from ootrain.data import RING8_RADIUS, RING8_STD, sample_ring8
from ootrain.eval.ring import PACGAN_N_SAMPLES, ring8_modes, ring_metrics
from ootrain.models.zoo import generate
from ootrain.engine.core import StepResult
from ootrain.jobs.otgan import history_row, otgan_engine_config, otgan_method
from ootrain.methods.otgan import OTGANConfig, make_critic, make_generator
from ootrain.methods.training import train
from ootrain.progress import make_progress
from pipelines.common import one_thread

# ---------------------------------------------------------------- defaults (see --help)
LATENT_DIM = 8
G_HIDDEN = (128, 128, 128)
G_LAYER_NORM = True
C_HIDDEN = (128, 128)
FEATURE_DIM = 32
EPS = 0.05
LR = 1e-3
N_GEN = 3
SINKHORN_TOL = 1e-2
WARM_START = False  # measured by the ablation: no saving once the critic has learned the modes
BATCH = 200  # per set: 800 in all, the middle of the batch-size study
TRAIN_STEPS = 2000
FROZEN_STEPS = 1000
BATCH_TOTALS = (200, 800, 3200)
BATCH_STEPS = 400
ABLATION_STEPS = 40
EVAL_EVERY = 100
N_EVAL = PACGAN_N_SAMPLES
EVAL_SEED = 12345

QUICK = {"train_steps": 120, "frozen_steps": 60, "batch_totals": (200, 800),
         "batch_steps": 60, "ablation_steps": 8, "eval_every": 30}
#: Tiny settings for the tests.
SMOKE = {"batch": 16, "train_steps": 8, "frozen_steps": 4, "batch_totals": (32, 64),
         "batch_steps": 4, "ablation_steps": 2, "eval_every": 4, "n_eval": 200}


def make_models(seed: int) -> tuple[nn.Module, nn.Module]:
    """The generator and the critic, initialised from ``seed`` (and ``seed + 1``)."""
    return (make_generator(LATENT_DIM, 2, G_HIDDEN, layer_norm=G_LAYER_NORM, seed=seed),
            make_critic(2, FEATURE_DIM, C_HIDDEN, seed=seed + 1))


def _config(**kw: Any) -> OTGANConfig:
    base = {"eps": EPS, "n_gen": N_GEN, "sinkhorn_tol": SINKHORN_TOL, "warm_start": WARM_START}
    return OTGANConfig(**{**base, **kw})


def _run_config(cfg: OTGANConfig, batch: int, steps: int, seed: int) -> dict[str, Any]:
    """What results.json records of one training run: OTGANConfig's fields and the run's."""
    return {**cfg.to_dict(), "batch": batch, "steps": steps, "seed": seed, "lr_gen": LR,
            "lr_critic": LR, "betas": [0.5, 0.999], "latent_dim": LATENT_DIM,
            "micro_batch": batch}


def train_ring(G: nn.Module, C: nn.Module, cfg: OTGANConfig, *, batch: int, steps: int,
               seed: int, callback: Optional[Any] = None, bars: Any = None
               ) -> list[dict[str, Any]]:
    """``steps`` OT-GAN iterations on ring8 on the engine (in memory, whole batch per pass);
    returns the history rows (:func:`ootrain.jobs.otgan.history_row`, plus ``time_s``: wall
    seconds since the start, and ``sinkhorn_s``: the Solve phase), each passed to
    ``callback`` as it completes."""
    method = otgan_method(G, C, sample_ring8, cfg, lr_gen=LR, lr_critic=LR,
                          betas=(0.5, 0.999), real_spec="ring8")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def on_step(res: StepResult) -> None:
        row = history_row(res)
        row.update(time_s=time.perf_counter() - t0, sinkhorn_s=row.get("solve_s", 0.0))
        rows.append(row)
        if callback is not None:
            callback(row)

    train(method, steps, otgan_engine_config(batch, LATENT_DIM, seed), progress=bars,
          callback=on_step)
    return rows


class Snapshots:
    """Samples of the generator on fixed latents every ``every`` iterations (and at 0)."""

    def __init__(self, G: nn.Module, n: int, every: int, offset: int = 0) -> None:
        self.G, self.n, self.every = G, n, every
        self.steps: list[int] = []
        self.times: list[float] = []
        self.samples: list[np.ndarray] = []
        self.take(offset, 0.0)

    def take(self, done: int, t: float) -> None:
        self.steps.append(done)
        self.times.append(round(t, 3))
        self.samples.append(generate(self.G, self.n, LATENT_DIM, seed=EVAL_SEED)
                            .astype(np.float32))

    def __call__(self, row: dict[str, Any]) -> None:
        done = row["step"] + 1
        if done % self.every == 0:
            self.take(done, row["time_s"])


def _metrics_of(samples: np.ndarray) -> list[dict[str, Any]]:
    modes = ring8_modes()
    return [ring_metrics(s, modes, RING8_STD) for s in samples]


def _short(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("modes_covered", "high_quality_fraction", "reverse_kl", "counts")}


def _sinkhorn_stats(hist: list[dict[str, Any]]) -> dict[str, float]:
    rows = hist[1:] or hist
    return {"mean_iterations_per_step": float(np.mean([r["sinkhorn_iterations"]
                                                       for r in rows])),
            "mean_sinkhorn_s_per_step": float(np.mean([r["sinkhorn_s"] for r in rows])),
            "mean_step_s": float(np.mean([r["step_s"] for r in rows])),
            "max_marginal_error": float(max(r["marginal_error"] for r in rows)),
            "converged_fraction": float(np.mean([r["converged"] for r in rows]))}


# --------------------------------------------------------------------------- (a)
def run_consistency(out: Path, *, batch: int, train_steps: int, frozen_steps: int,
                    eval_every: int, n_eval: int, seed: int, bars: Any
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train with the critic, freeze it, keep training the generator; returns the summary and
    the models' state at the freeze point (for the warm-start ablation)."""
    G, C = make_models(seed)
    snaps = Snapshots(G, n_eval, eval_every)
    at_freeze: dict[str, Any] = {}
    if train_steps == 0:  # frozen from the start: the freeze point is the initialisation
        at_freeze.update(G=copy.deepcopy(G.state_dict()), C=copy.deepcopy(C.state_dict()))

    def cb(row: dict[str, Any]) -> None:
        snaps(row)
        if row["step"] + 1 == train_steps:
            at_freeze.update(G=copy.deepcopy(G.state_dict()), C=copy.deepcopy(C.state_dict()))
            if (row["step"] + 1) % eval_every:
                snaps.take(train_steps, row["time_s"])

    cfg = _config(critic_freeze_after=train_steps)
    hist = train_ring(G, C, cfg, batch=batch, steps=train_steps + frozen_steps, seed=seed,
                      callback=cb, bars=bars)
    if snaps.steps[-1] != len(hist):
        snaps.take(len(hist), hist[-1]["time_s"] if hist else 0.0)
    steps = np.array(snaps.steps)
    np.savez(out / "consistency_samples.npz", samples=np.stack(snaps.samples), steps=steps,
             frozen=steps > train_steps, times=np.array(snaps.times))
    (out / "history_consistency.json").write_text(json.dumps(hist) + "\n")
    # metrics from the saved samples
    with np.load(out / "consistency_samples.npz") as f:
        samples, steps = f["samples"], f["steps"]
    mets = _metrics_of(samples)
    i_freeze = int(np.flatnonzero(steps == train_steps)[0])
    frozen_rows = [m for s, m in zip(steps, mets) if s > train_steps]
    summary = {
        "config": _run_config(cfg, batch, train_steps + frozen_steps, seed),
        "train_steps": train_steps, "frozen_steps": frozen_steps,
        "curve": [{"step": int(s), "frozen": bool(s > train_steps), **_short(m)}
                  for s, m in zip(steps, mets)],
        "at_freeze": {"step": train_steps, **_short(mets[i_freeze]),
                      "time_s": hist[train_steps - 1]["time_s"] if train_steps else 0.0},
        "final": {"step": int(steps[-1]), **_short(mets[-1])},
        "frozen_phase_min_modes": min((m["modes_covered"] for m in frozen_rows), default=None),
        "sinkhorn_training_phase": _sinkhorn_stats(hist[:train_steps]) if train_steps else None,
        "sinkhorn_frozen_phase": _sinkhorn_stats(hist[train_steps:]) if frozen_steps else None,
        "wall_s": hist[-1]["time_s"] if hist else 0.0,
    }
    return summary, at_freeze


# --------------------------------------------------------------------------- (b)
def run_batch_sizes(out: Path, *, totals: tuple[int, ...], steps: int, eval_every: int,
                    n_eval: int, seed: int, bars: Any) -> dict[str, Any]:
    """The same training (same init, seed and iterations) at each total batch size."""
    arrays: dict[str, np.ndarray] = {}
    runs: dict[str, Any] = {}
    for total in totals:
        G, C = make_models(seed)
        snaps = Snapshots(G, n_eval, eval_every)
        cfg = _config()
        hist = train_ring(G, C, cfg, batch=total // 4, steps=steps, seed=seed, callback=snaps,
                          bars=bars)
        if snaps.steps[-1] != len(hist):
            snaps.take(len(hist), hist[-1]["time_s"] if hist else 0.0)
        key = f"b{total}"
        arrays.update({f"{key}_samples": np.stack(snaps.samples),
                       f"{key}_steps": np.array(snaps.steps),
                       f"{key}_times": np.array(snaps.times)})
        (out / f"history_batch_{total}.json").write_text(json.dumps(hist) + "\n")
        runs[key] = {"total": total, "per_set": total // 4, "config": _run_config(cfg, total // 4, steps, seed),
                     "sinkhorn": _sinkhorn_stats(hist),
                     "wall_s": hist[-1]["time_s"] if hist else 0.0}
    np.savez(out / "batch_size_samples.npz", **arrays)
    with np.load(out / "batch_size_samples.npz") as f:  # metrics from the saved samples
        for key, run in runs.items():
            mets = _metrics_of(f[f"{key}_samples"])
            run["curve"] = [{"step": int(s), "time_s": float(t), **_short(m)}
                            for s, t, m in zip(f[f"{key}_steps"], f[f"{key}_times"], mets)]
            run["final"] = {"step": int(f[f"{key}_steps"][-1]), **_short(mets[-1])}
    return {"totals": list(totals), "steps": steps, "runs": runs}


# --------------------------------------------------------------------------- warm starts
def run_warm_ablation(state: dict[str, Any], *, batch: int, steps: int, seed: int,
                      bars: Any) -> dict[str, Any]:
    """Sinkhorn iterations per iteration with each warm start, from the freeze-point models,
    with the critic training and frozen."""
    res: dict[str, Any] = {"steps": steps, "batch": batch}
    if steps < 2:
        return res
    for phase, freeze in (("critic_training", None), ("critic_frozen", 0)):
        res[phase] = {}
        for name, kw in (("none", {"warm_start": False}),
                         ("index", {"warm_start": True, "warm_start_method": "index"}),
                         ("ctransform", {"warm_start": True,
                                         "warm_start_method": "ctransform"})):
            G, C = make_models(seed)
            G.load_state_dict(state["G"])
            C.load_state_dict(state["C"])
            cfg = _config(critic_freeze_after=freeze, **kw)
            res[phase][name] = _sinkhorn_stats(train_ring(G, C, cfg, batch=batch, steps=steps,
                                                          seed=seed + 7, bars=bars))
        cold = res[phase]["none"]["mean_iterations_per_step"]
        for name in ("index", "ctransform"):
            res[phase][name]["iteration_saving"] = \
                1 - res[phase][name]["mean_iterations_per_step"] / cold
    return res


# --------------------------------------------------------------------------- figures
def _scatter(ax: Any, x: np.ndarray, title: str) -> None:
    real = sample_ring8(2000, np.random.default_rng(0))
    ax.scatter(real[:, 0], real[:, 1], s=2, c="0.6", label="data")
    ax.scatter(x[:, 0], x[:, 1], s=1, c="C0", alpha=0.5, label="generated")
    lim = RING8_RADIUS * 1.5
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)


def plot_consistency(path: Path, summary: dict[str, Any], npz: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.load(npz) as f:
        samples, steps = f["samples"], f["steps"]
    curve, K = summary["curve"], summary["train_steps"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    s = [c["step"] for c in curve]
    for ax, key, label in ((axes[0], "modes_covered", "modes covered (of 8)"),
                           (axes[1], "high_quality_fraction", "high-quality fraction")):
        ax.plot(s, [c[key] for c in curve], "-o", ms=3)
        ax.axvline(K, color="C3", ls="--", label=f"critic frozen (iteration {K})")
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_ylim(-0.3, 8.3)
    i = int(np.flatnonzero(steps == K)[0])
    for ax, j, what in ((axes[2], i, "at the freeze"), (axes[3], -1, "end, critic frozen")):
        m = curve[j]
        _scatter(ax, samples[j], f"{what} (it. {int(steps[j])}): {m['modes_covered']}/8 "
                 f"modes, {100 * m['high_quality_fraction']:.1f} % HQ")
    axes[3].legend(fontsize=7, markerscale=4)
    fig.suptitle("OT-GAN consistency on ring8: the generator keeps training against a frozen "
                 "critic", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_batch_sizes(path: Path, summary: dict[str, Any], npz: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    fig, axes = plt.subplots(1, 2 + len(runs), figsize=(4.2 * (2 + len(runs)), 4))
    with np.load(npz) as f:
        for n, (key, run) in enumerate(runs.items()):
            c = run["curve"]
            lab = f"total {run['total']} ({run['per_set']}/set)"
            axes[0].plot([r["step"] for r in c], [r["modes_covered"] for r in c], "-o", ms=3,
                         label=lab)
            axes[1].plot([r["step"] for r in c], [r["high_quality_fraction"] for r in c],
                         "-o", ms=3, label=lab)
            fin = run["final"]
            _scatter(axes[2 + n], f[f"{key}_samples"][-1],
                     f"{lab}, it. {fin['step']}, {run['wall_s']:.0f} s:\n"
                     f"{fin['modes_covered']}/8 modes, "
                     f"{100 * fin['high_quality_fraction']:.1f} % HQ")
    for ax, label in ((axes[0], "modes covered (of 8)"), (axes[1], "high-quality fraction")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_ylim(-0.3, 8.3)
    fig.suptitle("OT-GAN on ring8: batch size (samples per iteration, X+X'+Y+Y'), same "
                 "iterations", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- pipeline
def run_pipeline(out: Path, *, batch: int = BATCH, train_steps: int = TRAIN_STEPS,
                 frozen_steps: int = FROZEN_STEPS,
                 batch_totals: tuple[int, ...] = BATCH_TOTALS, batch_steps: int = BATCH_STEPS,
                 ablation_steps: int = ABLATION_STEPS, eval_every: int = EVAL_EVERY,
                 n_eval: int = N_EVAL, seed: int = 0, progress: bool = True
                 ) -> dict[str, Any]:
    """Run (a), the warm-start ablation and (b); write the outputs listed in the module
    docstring to ``out``; return the content of ``results.json``."""
    for name, v, lo in (("batch", batch, 2), ("train_steps", train_steps, 0),
                        ("frozen_steps", frozen_steps, 0), ("batch_steps", batch_steps, 1),
                        ("ablation_steps", ablation_steps, 0), ("eval_every", eval_every, 1),
                        ("n_eval", n_eval, 1)):
        if int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not batch_totals or any(t < 8 or t % 4 for t in batch_totals):
        raise ValueError(f"batch totals must be multiples of 4, >= 8 (X, X', Y, Y' of "
                         f"total/4 each), got {batch_totals!r}")
    if train_steps + frozen_steps < 1:
        raise ValueError("train_steps + frozen_steps must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with one_thread(), make_progress(progress) as bars:
        cons, state = run_consistency(out, batch=batch, train_steps=train_steps,
                                      frozen_steps=frozen_steps, eval_every=eval_every,
                                      n_eval=n_eval, seed=seed, bars=bars)
        warm = run_warm_ablation(state, batch=batch, steps=ablation_steps, seed=seed,
                                 bars=bars)
        bsz = run_batch_sizes(out, totals=tuple(batch_totals), steps=batch_steps,
                              eval_every=eval_every, n_eval=n_eval, seed=seed, bars=bars)
    summary = {
        "config": {"data": "ring8", "radius": RING8_RADIUS, "std": RING8_STD,
                   "latent_dim": LATENT_DIM, "generator": {"hidden": list(G_HIDDEN),
                                                           "activation": "relu",
                                                           "layer_norm": G_LAYER_NORM},
                   "critic": {"hidden": list(C_HIDDEN), "activation": "leaky_relu(0.2)",
                              "feature_dim": FEATURE_DIM, "normalised": True},
                   "eps": EPS, "lr": LR, "n_gen": N_GEN, "sinkhorn_tol": SINKHORN_TOL,
                   "batch_per_set": batch, "n_eval": n_eval, "eval_every": eval_every,
                   "eval_seed": EVAL_SEED, "seed": seed,
                   "metric": "PacGAN: high-quality = within 3 sigma of the nearest mode; a "
                             "mode is covered with >= 1 high-quality sample"},
        "consistency": cons, "warm_start": warm, "batch_size": bsz,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    summary = json.loads(json.dumps(summary, default=float))
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_consistency(out / "consistency.png", cons, out / "consistency_samples.npz")
    plot_batch_sizes(out / "batch_size.png", bsz, out / "batch_size_samples.npz")
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    """The final metrics, one row per run."""
    cons, bsz = summary["consistency"], summary["batch_size"]
    rows = ["| run | samples / iteration | iterations | wall s | modes covered | "
            "high-quality % | reverse KL | Sinkhorn it. / iteration |",
            "|---|---|---|---|---|---|---|---|"]
    per_set = summary["config"]["batch_per_set"]

    def fmt(name: str, total: int, m: dict[str, Any], wall: Any, sk: Any) -> str:
        return (f"| {name} | {total} ({total // 4}/set) | {m['step']} | "
                f"{'' if wall is None else f'{wall:.0f}'} | {m['modes_covered']}/8 | "
                f"{100 * m['high_quality_fraction']:.1f} | {m['reverse_kl']:.3f} | "
                f"{'' if sk is None else f'{sk:.0f}'} |")

    tr, fr = cons["sinkhorn_training_phase"], cons["sinkhorn_frozen_phase"]
    rows.append(fmt("(a) critic trained, at the freeze", 4 * per_set, cons["at_freeze"],
                    cons["at_freeze"].get("time_s"), tr and tr["mean_iterations_per_step"]))
    rows.append(fmt("(a) after the frozen-critic phase", 4 * per_set, cons["final"],
                    cons["wall_s"], fr and fr["mean_iterations_per_step"]))
    for run in bsz["runs"].values():
        rows.append(fmt(f"(b) batch total {run['total']}", run["total"], run["final"],
                        run["wall_s"], run["sinkhorn"]["mean_iterations_per_step"]))
    rows.append("")
    rows.append(f"(a) fewest modes covered at any snapshot of the frozen phase: "
                f"{cons['frozen_phase_min_modes']}/8")
    for phase in ("critic_training", "critic_frozen"):
        if phase in summary["warm_start"]:
            w = summary["warm_start"][phase]
            rows.append(f"warm starts, {phase.replace('_', ' ')} ({summary['warm_start']['steps']}"
                        f" it. from the freeze point): Sinkhorn it. / iteration cold "
                        f"{w['none']['mean_iterations_per_step']:.0f}, index "
                        f"{w['index']['mean_iterations_per_step']:.0f} (saving "
                        f"{100 * w['index']['iteration_saving']:.0f} %), ctransform "
                        f"{w['ctransform']['mean_iterations_per_step']:.0f} (saving "
                        f"{100 * w['ctransform']['iteration_saving']:.0f} %)")
    return "\n".join(rows)


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)

HELP = "\n\n".join([
    "OT-GAN (Salimans et al., ICLR 2018) on the ring of 8 Gaussians: (a) consistency — train "
    "generator and critic, freeze the critic, keep training the generator; (b) batch size — "
    "the same training at several batch sizes.  Metrics (modes covered, high-quality %, "
    "PacGAN convention) from 2500 saved samples per snapshot.",
    "Choices the paper leaves open (or that CPU scale forces), fixed here:",
    f"- Data: ring8 = 8 Gaussians, std {RING8_STD}, on a circle of radius {RING8_RADIUS} "
    "(ootrain.data); high-quality = within 3 std of the nearest mode.",
    f"- Generator: MLP {LATENT_DIM} -> {' -> '.join(map(str, G_HIDDEN))} -> 2, each hidden "
    f"layer Linear -> LayerNorm -> ReLU, z ~ N(0, I_{LATENT_DIM}).  Measured at 200 per set: "
    "without LayerNorm 4-6 of 8 modes after 200 iterations, with it 8; a third hidden layer "
    "raised the high-quality fraction after 1000 iterations from 3-6 % to 14 %; 4 x 256 "
    "dropped modes.",
    f"- Critic: MLP 2 -> {' -> '.join(map(str, C_HIDDEN))} (leaky ReLU 0.2) -> {FEATURE_DIM} "
    "features, L2-normalised; cost 1 - cosine (the paper's).",
    f"- eps = {EPS} in cosine-cost units (cost in [0, 2]).  The paper's 1/500 took ~1 s per "
    "iteration at 200 per set (10-20x the Sinkhorn iterations, some solves unconverged at "
    "1000); eps 0.02 and 0.01 were 3-9x slower than 0.05 and gave no better samples after "
    f"600-1000 iterations.  Sinkhorn: log domain, dense, stop at ||P1 - a||_1 <= {SINKHORN_TOL}, "
    "eps-scaling (x0.5 from 2) on cold starts; no gradient through the plans.",
    f"- Adam lr {LR} for both (paper: 3e-4, a budget of many more iterations than the few "
    "thousand here), betas (0.5, 0.999) (paper); n_gen = "
    f"{N_GEN} generator updates per critic update (paper's text; measured: n_gen = 1 covered "
    "fewer modes, 5 about the same).",
    "- Batch sizes of (b) are totals per iteration (X + X' + Y + Y', each a quarter), like "
    "the paper's 200 ... 8000; all runs get the same number of iterations (not the same wall "
    "time: the wall time is reported), same seeds and init.",
    "- Sinkhorn solves start cold (eps-scaling): warm starts from the previous iteration's "
    "potentials ('ctransform': moved to the new points by the entropic c-transform; 'index': "
    "reused as is) saved no iterations once the critic had learned the modes; results.json "
    "'warm_start' holds the measurement.",
])


@app.command(help=HELP)
def main(out: Path = typer.Option(..., help="Output folder."),
         quick: bool = typer.Option(False, "--quick", help="Smoke run (< 1 min): "
                                    + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + "."),
         batch: int = typer.Option(BATCH, help="(a): samples in each of X, X', Y, Y'."),
         train_steps: Optional[int] = typer.Option(None, help=f"(a): iterations before the "
                                                   f"critic is frozen [{TRAIN_STEPS}]."),
         frozen_steps: Optional[int] = typer.Option(None, help=f"(a): generator iterations "
                                                    f"against the frozen critic "
                                                    f"[{FROZEN_STEPS}]."),
         batch_totals: Optional[str] = typer.Option(None, help="(b): comma-separated totals "
                                                    "per iteration (multiples of 4) "
                                                    f"[{','.join(map(str, BATCH_TOTALS))}]."),
         batch_steps: Optional[int] = typer.Option(None, help=f"(b): iterations per batch "
                                                   f"size [{BATCH_STEPS}]."),
         ablation_steps: Optional[int] = typer.Option(None, help=f"Iterations per warm-start "
                                                      f"variant [{ABLATION_STEPS}]."),
         eval_every: Optional[int] = typer.Option(None, help=f"Iterations between sample "
                                                  f"snapshots [{EVAL_EVERY}]."),
         n_eval: int = typer.Option(N_EVAL, help="Samples per snapshot."),
         seed: int = typer.Option(0, help="Seed of the models' init, draws and latents."),
         progress: bool = typer.Option(True, help="Progress bars.")) -> None:
    kw: dict[str, Any] = dict(QUICK) if quick else {}
    for name, v in (("train_steps", train_steps), ("frozen_steps", frozen_steps),
                    ("batch_steps", batch_steps), ("ablation_steps", ablation_steps),
                    ("eval_every", eval_every)):
        if v is not None:
            kw[name] = v
    if batch_totals is not None:
        try:
            kw["batch_totals"] = tuple(int(v) for v in batch_totals.split(","))
        except ValueError:
            raise typer.BadParameter(f"--batch-totals: not integers: {batch_totals!r}") \
                from None
    try:
        summary = run_pipeline(out, batch=batch, n_eval=n_eval, seed=seed, progress=progress,
                               **kw)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console = Console()
    console.print("$ python -m pipelines.otgan_ring "
                  + " ".join(shlex.quote(a) for a in sys.argv[1:]), soft_wrap=True)
    print(markdown_table(summary))
    console.print(f"total {summary['wall_s']:.0f} s; wrote {out}/results.json, "
                  "consistency.png, batch_size.png, *_samples.npz, history_*.json",
                  soft_wrap=True)


if __name__ == "__main__":
    app()
