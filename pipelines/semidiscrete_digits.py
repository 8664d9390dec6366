"""OTS + FIT on 8x8 digits (Chen et al., ICML 2019): alternating vs one map, W1 per round.

"A gradual, semi-discrete approach to generative network training via explicit Wasserstein
minimization" trains a generator by alternating OTS (fit the semi-discrete OT map from the
current generator to the data) and FIT (regress the generator onto that map), and argues that
the alternation ("gradual") is the method: fitting once to the map of the initial generator
gives a worse generator.  It measures progress by W1 with the l1 ground cost, to the training
set and to held-out data (the latter exposes memorisation).  This pipeline reproduces that
comparison at CPU scale with :class:`ootrain.methods.gradual.OTSFIT` on the engine's store:

- data: scikit-learn's digits (1797 images, 8x8 -> 64-D, pixel values / 16 in [0, 1]); a
  seeded split into ``N_TRAIN = 1500`` training images (the targets y_j) and the 297 others
  (held out, never seen by training);
- both variants start from the same generator (same seed) and use the same latents, OTS draws
  and optimiser; ``alternating`` runs ``rounds`` rounds of OTS + FIT; ``nonalternating``
  (``GradualConfig(alternate=False)``) one OTS, then FIT to that map for ``rounds ×
  fit_epochs`` epochs (the same epoch budget), evaluated every ``fit_epochs`` epochs;
- metric: after each round, exact W1 (l1 cost, uniform weights, POT's ``ot.emd2``) between a
  generated sample of the same size as the set (fixed evaluation latents) and the training set /
  the held-out set.  Without POT the fallback is :class:`~ootrain.ot.semidiscrete.SemiDiscreteOT`'s
  transport-cost estimate between the generator and the set (a different estimator: no
  finite-sample term from the generated side); ``metrics.json`` says which was used.
  ``reference.w1_train_subsample_to_heldout`` (297 random training images vs the held-out
  set) is the score of real data at the held-out size.

Outputs (in ``--out``): ``metrics.json`` (config, metric, initial W1, per variant and round:
W1 train / held-out, transport cost W_t of the round's map and its assignment imbalance, OTS
iterations, the last OTS check's marginal chi^2 +- its standard error, L1 imbalance, samples
and whether it met the stop, FIT epochs and loss, wall time), ``w1.png``,
``samples_alternating.png``, ``samples_nonalternating.png`` (10x10 grids), ``samples.npz``
(``alternating``, ``nonalternating``: the final evaluation samples [N_TRAIN, 64];
``train_rows``, ``heldout_rows``: the split, rows of ``sklearn.datasets.load_digits``), and the
two stores ``store_alternating/``, ``store_nonalternating/`` (overwritten each run).

Usage: ``python -m pipelines.semidiscrete_digits --out DIR`` (about 1-2 min on 2 CPU cores).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from ootrain.engine.core import Engine, EngineConfig, StepResult
from ootrain.methods.gradual import OTSFIT, GradualConfig
from ootrain.models.zoo import MLP
from ootrain.progress import make_progress
from ootrain.methods.training import make_optimizer, open_shared_store
from ootrain.ot.semidiscrete import SemiDiscreteOT
from pipelines.common import one_thread

N_TRAIN = 1500  # training images; the other 297 of the 1797 are held out
SPLIT_SEED = 0
LATENT_DIM = 16
HIDDEN = (128, 128)
COST = "l1"  # the paper's ground cost; soft assignment with SemiDiscreteOT's default eps
POPULATION = 2048  # b: generated samples per round (FIT's regression set)
MICRO_BATCH = 128  # m: samples per forward pass and per FIT optimiser step
ROUNDS = 10
FIT_EPOCHS = 5
ALPHA_FIT = 0.5
ALPHA_STOP = 1.0
OPTIMIZER = "adam"  # betas (0.5, 0.999), ootrain.methods.training.make_optimizer
LR = 2e-3
# OTS stop: the marginal chi^2 certified <= 0.05 (the SD-FM paper's level).  Against the L1
# imbalance <= 0.2 it ends with a similar chi^2 (0.01-0.04) after as many fitting iterations,
# but certifies on 4.7k samples instead of 49k: 43 % fewer OTS samples (benchmarks/RESULTS.md).
OTS = {"batch": 1024, "max_iter": 300, "tol": None, "chi2_tol": 0.05, "lr": 1.0}
N_SHOW = 100  # samples per grid

VARIANTS = ("alternating", "nonalternating")


# --------------------------------------------------------------------------- data, model
def split_digits(n_train: int = N_TRAIN, seed: int = SPLIT_SEED
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train [n_train, 64], held-out [1797 - n_train, 64], train_rows, heldout_rows): float32
    pixels / 16 in [0, 1], rows of ``sklearn.datasets.load_digits`` split by a seeded
    permutation (each part kept in the original order)."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    if not 0 < n_train < len(x):
        raise ValueError(f"n_train must be in [1, {len(x) - 1}], got {n_train}")
    order = np.random.default_rng(seed).permutation(len(x))
    tr, te = np.sort(order[:n_train]), np.sort(order[n_train:])
    return x[tr], x[te], tr, te


def make_generator(seed: int, latent_dim: int = LATENT_DIM,
                   hidden: tuple[int, ...] = HIDDEN) -> nn.Module:
    """MLP ``latent -> hidden (ReLU) -> 64`` with a sigmoid output (pixels in [0, 1]),
    initialised from ``seed`` without touching the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(MLP(latent_dim, 64, hidden=hidden, activation="relu"), nn.Sigmoid())


# --------------------------------------------------------------------------- the W1 metric
def pot_available() -> bool:
    try:
        import ot  # noqa: F401  (POT: a test dependency, optional here)
    except ImportError:
        return False
    return True


def w1_exact(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W1 with the l1 ground cost between two uniform point clouds (POT ``emd2``)."""
    import ot

    M = torch.cdist(torch.as_tensor(x, dtype=torch.float64),
                    torch.as_tensor(y, dtype=torch.float64), p=1).numpy()
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(ot.emd2(a, b, M, numItermax=10**7))


class W1Metric:
    """W1 (l1 cost) of a generator to a fixed point set, after each round.

    ``pot``: exact ``emd2`` between the generator's outputs on fixed latents (as many as the
    set has points) and the set.  ``semidiscrete``: the transport cost, on the same outputs, of
    a :class:`SemiDiscreteOT` fitted from the generator to the set (warm-started from the
    previous evaluation's potentials).
    """

    def __init__(self, method: str, ref: np.ndarray, latents: torch.Tensor) -> None:
        self.method, self.ref, self.latents = method, ref, latents
        self.ot = SemiDiscreteOT(torch.from_numpy(ref), cost=COST, backend="torch") \
            if method == "semidiscrete" else None

    def __call__(self, G: nn.Module, seed: int) -> float:
        with torch.no_grad():
            x = G(self.latents)
        if self.ot is None:
            return w1_exact(x.numpy(), self.ref)
        dim = self.latents.shape[1]

        def draw(k: int, rng: np.random.Generator) -> torch.Tensor:
            z = torch.as_tensor(rng.standard_normal((k, dim)), dtype=torch.float32)
            with torch.no_grad():
                return G(z)

        self.ot.fit(draw, rng=seed, progress=False, **{**OTS, "max_iter": 300})
        return self.ot.cost(x)


# --------------------------------------------------------------------------- training
def _engine(G: nn.Module, train: np.ndarray, store: Path, population: int, micro_batch: int,
            lr: float, seed: int, rounds: int, gcfg: GradualConfig, progress: Any
            ) -> tuple[Engine, Any]:
    ot = SemiDiscreteOT(torch.from_numpy(train), cost=COST, backend="torch")
    cfg = EngineConfig(population=population, micro_batch=micro_batch,   # CPU scale, as
                       latent_dim=G[0].in_dim, seed=seed, device="cpu")  # the evaluator
    method = OTSFIT(G, ot, make_optimizer(G.parameters(), OPTIMIZER, lr), gcfg, rounds=rounds,
                    generator_spec=json.dumps(["digits-mlp", HIDDEN, seed]))
    st = open_shared_store(str(store), Engine.store_config(cfg, method), overwrite=True)
    return Engine(method, st, cfg, progress=progress), st


def _count_ots_iterations(ot: SemiDiscreteOT, counter: list[int]) -> None:
    """Count OTS iterations exactly: ``fit`` draws one batch per iteration (instance-level
    wrapper of ``ot.fit``)."""
    fit = ot.fit

    def counting_fit(sampler: Callable[[int, np.random.Generator], Any], **kw: Any
                     ) -> SemiDiscreteOT:
        def counted(k: int, rng: np.random.Generator) -> Any:
            counter[0] += 1
            return sampler(k, rng)
        return fit(counted, **kw)

    ot.fit = counting_fit  # type: ignore[method-assign]


def ots_config(tol: Optional[float] = OTS["tol"], chi2_tol: Optional[float] = OTS["chi2_tol"],
               max_iter: int = OTS["max_iter"]) -> dict[str, Any]:
    """Training OTS's ``SemiDiscreteOT.fit`` keywords: :data:`OTS` with its stop (L1 imbalance
    ``tol`` and / or marginal chi^2 ``chi2_tol``; None or 0 = that test off, both off = the
    solver's default chi^2 stop) and iteration budget replaced."""
    return {**OTS, "max_iter": max_iter, "tol": tol or None, "chi2_tol": chi2_tol or None}


def train_variant(alternate: bool, train: np.ndarray, store: Path, evaluate: Callable,
                  *, rounds: int, fit_epochs: int, population: int, micro_batch: int,
                  lr: float, alpha_fit: float, alpha_stop: float, seed: int,
                  progress: Any, ots: Optional[dict[str, Any]] = None
                  ) -> tuple[nn.Module, list[dict[str, Any]], float]:
    """Train one variant from the seed's init; ``evaluate(G)`` -> dict after each round (for
    ``alternate=False``: every ``fit_epochs`` epochs of the single FIT).  Returns the generator,
    the per-round records and the wall time without evaluation."""
    G = make_generator(seed)
    gcfg = GradualConfig(alternate=alternate, fit_epochs=fit_epochs, alpha_fit=alpha_fit,
                         alpha_stop=alpha_stop, ots=dict(ots or ots_config()), ots_seed=seed)
    eng, st = _engine(G, train, store, population, micro_batch, lr, seed, rounds, gcfg,
                      progress)
    records: list[dict[str, Any]] = []
    ots_calls = [0]
    _count_ots_iterations(eng.method.ot, ots_calls)
    t0, eval_s, epochs_done = time.perf_counter(), [0.0], [0]

    def measure(**extra: Any) -> dict[str, Any]:
        t = time.perf_counter()
        rec = {**extra, **evaluate(G)}
        eval_s[0] += time.perf_counter() - t
        rec["wall_s"] = round(time.perf_counter() - t0 - eval_s[0], 2)
        return rec

    if not alternate:  # evaluate the single FIT every fit_epochs epochs
        replay = eng.replay

        def replay_with_eval(step: int, epochs: int, *, stop: Any = None,
                             callback: Any = None) -> list[float]:
            def cb(epoch: int, loss: float) -> None:
                if (epoch + 1) % fit_epochs == 0:
                    records.append(measure(round=(epoch + 1) // fit_epochs,
                                           fit_epochs_total=epoch + 1, fit_loss=loss))
            return replay(step, epochs, stop=stop, callback=cb)

        eng.replay = replay_with_eval  # type: ignore[method-assign]

    def on_round(res: StepResult) -> None:
        m, check = res.metrics, eng.method.ot.history[-1]  # the round's last OTS check
        info = {"transport_cost": m["loss"], "imbalance": m["imbalance"],
                "ots_iterations": ots_calls[0], "ots_chi2": check["chi2"],
                "ots_chi2_noise": check["chi2_noise"], "ots_imbalance": check["imbalance"],
                "ots_check_samples": check["samples"], "ots_certified": check["certified"]}
        ots_calls[0] = 0
        if alternate:
            epochs_done[0] += len(m["fit_losses"])
            records.append(measure(round=res.step + 1, fit_epochs_total=epochs_done[0],
                                   fit_loss=m["fit_losses"][-1], **info))
        else:  # one OTS for the whole run, before the first evaluation; none after it
            for k, rec in enumerate(records):
                rec.update(info if k == 0 else {**dict.fromkeys(info), "ots_iterations": 0})

    with st:
        eng.train(rounds if alternate else 1, callback=on_round)
    wall = time.perf_counter() - t0 - eval_s[0]
    return G, records, wall


# --------------------------------------------------------------------------- figures
def plot_w1(path: Path, initial: dict[str, float], results: dict[str, list[dict[str, Any]]],
            reference: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name, color in zip(VARIANTS, ("C0", "C3")):
        rounds = [0] + [r["round"] for r in results[name]]
        for key, style, label in (("w1_train", "-o", "train"), ("w1_heldout", "--s", "held-out")):
            ax.plot(rounds, [initial[key]] + [r[key] for r in results[name]], style,
                    color=color, ms=3, label=f"{name}, {label}")
    ax.axhline(reference, color="0.5", lw=0.8, ls=":",
               label="real train subsample vs held-out")
    ax.set_xlabel("round (non-alternating: FIT epochs / fit_epochs)")
    ax.set_ylabel("W1, l1 cost")
    ax.set_title("W1 to the training set and to held-out digits")
    ax.legend(fontsize=7)
    ax = axes[1]
    alt = results["alternating"]
    ax.plot([r["round"] for r in alt], [r["transport_cost"] for r in alt], "-o", color="C0",
            ms=3, label="alternating: W_t (map of round t)")
    ax.plot([r["round"] for r in alt], [r["fit_loss"] for r in alt], "--", color="C0",
            label="alternating: FIT loss at round end")
    non = results["nonalternating"]
    ax.plot([r["round"] for r in non], [r["fit_loss"] for r in non], "--", color="C3",
            label="non-alternating: FIT loss (one map)")
    ax.set_xlabel("round")
    ax.set_title("transport cost of the OTS maps, FIT loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- the pipeline
def run_digits(out: Path, *, rounds: int = ROUNDS, fit_epochs: int = FIT_EPOCHS,
               population: int = POPULATION, micro_batch: int = MICRO_BATCH, lr: float = LR,
               alpha_fit: float = ALPHA_FIT, alpha_stop: float = ALPHA_STOP,
               n_train: int = N_TRAIN, metric: str = "auto", seed: int = 0,
               ots: Optional[dict[str, Any]] = None, progress: bool = True) -> dict[str, Any]:
    """Train both variants, write the outputs listed in the module docstring to ``out`` and
    return the content of ``metrics.json``.  ``ots``: the training OTS's fit keywords
    (default :func:`ots_config`'s)."""
    from ootrain.eval.plots import plot_samples

    if metric not in ("auto", "pot", "semidiscrete"):
        raise ValueError(f"metric must be auto, pot or semidiscrete, got {metric!r}")
    if metric == "auto":
        metric = "pot" if pot_available() else "semidiscrete"
    elif metric == "pot" and not pot_available():
        raise ValueError("metric 'pot' needs POT (pip install pot)")
    ots = dict(ots or ots_config())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train, held, train_rows, held_rows = split_digits(n_train)
    zrng = np.random.default_rng([seed, 10])
    z_train = torch.as_tensor(zrng.standard_normal((len(train), LATENT_DIM)), dtype=torch.float32)
    z_held = torch.as_tensor(zrng.standard_normal((len(held), LATENT_DIM)), dtype=torch.float32)
    results: dict[str, list[dict[str, Any]]] = {}
    walls: dict[str, float] = {}
    samples: dict[str, np.ndarray] = {}
    with one_thread(), make_progress(progress) as bars:
        sub = train[np.random.default_rng([seed, 11]).choice(len(train), len(held),
                                                             replace=False)]
        reference = w1_exact(sub, held) if metric == "pot" else None
        metrics_for: dict[str, tuple[W1Metric, W1Metric]] = {}

        def evaluator(name: str) -> Callable[[nn.Module], dict[str, float]]:
            metrics_for[name] = (W1Metric(metric, train, z_train),
                                 W1Metric(metric, held, z_held))
            counter = [0]

            def evaluate(G: nn.Module) -> dict[str, float]:
                counter[0] += 1
                m_tr, m_te = metrics_for[name]
                return {"w1_train": m_tr(G, 1000 + counter[0]),
                        "w1_heldout": m_te(G, 2000 + counter[0])}
            return evaluate

        initial = evaluator("initial")(make_generator(seed))
        if reference is None:  # semidiscrete fallback: a fitted estimate at the held-out size
            reference = float(SemiDiscreteOT(torch.from_numpy(held), cost=COST,
                                             backend="torch")
                               .fit(torch.from_numpy(sub), progress=False,
                                    generator=torch.Generator().manual_seed(seed),
                                    **{**OTS, "max_iter": 300})
                               .cost(torch.from_numpy(sub)))
        for name in VARIANTS:
            G, recs, wall = train_variant(
                name == "alternating", train, out / f"store_{name}", evaluator(name),
                rounds=rounds, fit_epochs=fit_epochs, population=population,
                micro_batch=micro_batch, lr=lr, alpha_fit=alpha_fit, alpha_stop=alpha_stop,
                seed=seed, progress=bars, ots=ots)
            results[name], walls[name] = recs, wall
            with torch.no_grad():
                samples[name] = G(z_train).numpy()
            plot_samples(samples[name][:N_SHOW], out / f"samples_{name}.png",
                         title=f"OTS + FIT, {name} (final W1 train "
                               f"{recs[-1]['w1_train']:.2f}, held-out "
                               f"{recs[-1]['w1_heldout']:.2f})")
    np.savez(out / "samples.npz", **samples, train_rows=train_rows, heldout_rows=held_rows)
    summary: dict[str, Any] = {
        "config": {"n_train": len(train), "n_heldout": len(held), "split_seed": SPLIT_SEED,
                   "latent_dim": LATENT_DIM, "hidden": list(HIDDEN), "activation": "relu",
                   "output": "sigmoid", "cost": COST, "eps_rel": "SemiDiscreteOT default",
                   "population": population, "micro_batch": micro_batch, "rounds": rounds,
                   "fit_epochs": fit_epochs, "alpha_fit": alpha_fit, "alpha_stop": alpha_stop,
                   "optimizer": OPTIMIZER, "lr": lr, "ots": ots, "seed": seed},
        "w1_metric": {"pot": "exact W1 (POT ot.emd2, l1 cost) between a generated sample of "
                             "the set's size (fixed latents) and the set",
                      "semidiscrete": "POT absent: transport cost, on fixed generated samples "
                                      "of the set's size, of a SemiDiscreteOT (l1, soft) "
                                      "fitted from the generator to the set"}[metric],
        "w1_method": metric,
        "reference": {"w1_train_subsample_to_heldout": reference},
        "initial": initial,
        **{name: {"rounds": results[name], "train_wall_s": round(walls[name], 2)}
           for name in VARIANTS},
        "wall_s": round(time.perf_counter() - t_start, 2),
    }
    summary = json.loads(json.dumps(summary, default=float))
    plot_w1(out / "w1.png", initial, results, reference)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def results_table(summary: dict[str, Any]) -> Table:
    """Per round: W1 train / held-out of both variants, W_t, OTS iterations and the last OTS
    check's chi^2 +- s.e. and L1 imbalance (alternating; '*': the check did not meet the
    stop, the fit ran out of iterations)."""
    table = Table("round", "alt W1 train", "alt W1 held-out", "alt W_t", "alt OTS it.",
                  "OTS χ²", "imbalance", "non-alt W1 train", "non-alt W1 held-out",
                  title=f"W1 (l1), metric: {summary['w1_method']}; real train subsample vs "
                        f"held-out: {summary['reference']['w1_train_subsample_to_heldout']:.3f}")
    ini = summary["initial"]
    table.add_row("0", f"{ini['w1_train']:.3f}", f"{ini['w1_heldout']:.3f}", "", "", "", "",
                  f"{ini['w1_train']:.3f}", f"{ini['w1_heldout']:.3f}")
    alt = {r["round"]: r for r in summary["alternating"]["rounds"]}
    non = {r["round"]: r for r in summary["nonalternating"]["rounds"]}

    def fmt(rec: Optional[dict[str, Any]], key: str, spec: str = ".3f") -> str:
        return "" if rec is None or rec.get(key) is None else format(rec[key], spec)

    for k in sorted(set(alt) | set(non)):
        a, n = alt.get(k), non.get(k)
        chi2 = "" if a is None or a.get("ots_chi2") is None else \
            f"{a['ots_chi2']:.3g} ± {a['ots_chi2_noise']:.2g}" \
            + ("" if a["ots_certified"] else "*")
        table.add_row(str(k), fmt(a, "w1_train"), fmt(a, "w1_heldout"),
                      fmt(a, "transport_cost"), fmt(a, "ots_iterations", "d"), chi2,
                      fmt(a, "ots_imbalance"), fmt(n, "w1_train"), fmt(n, "w1_heldout"))
    return table


app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


HELP = "\n\n".join([
    "OTS + FIT (Chen et al., ICML 2019) on scikit-learn's 8x8 digits: alternating rounds vs "
    "one map (GradualConfig(alternate=False)), from the same init; W1 (l1 cost) of the "
    "generator to the training set and to held-out digits after every round.",
    "Choices the paper leaves open, fixed here:",
    f"- Data: pixels / 16 in [0, 1], 64-D; a seeded split ({N_TRAIN} train / "
    f"{1797 - N_TRAIN} held out, seed {SPLIT_SEED}).",
    f"- Generator: MLP {LATENT_DIM} -> {' -> '.join(map(str, HIDDEN))} (ReLU) -> 64, sigmoid "
    f"output; z ~ N(0, I_{LATENT_DIM}).",
    "- Cost: l1, with the soft (entropic) assignment at SemiDiscreteOT's default temperature "
    "(0.05 x the median nearest-neighbour l1 distance of the training images): the hard l1 "
    "argmin cannot split tied mass.",
    f"- OTS: SemiDiscreteOT.fit (Adam directions, t^-2/3 step, iterate averaging), "
    f"{OTS['batch']} generated samples per iteration, at most "
    "--ots-max-iter iterations per round, stop at imbalance ||nu - P||_1 <= --ots-tol "
    "and / or marginal chi^2 <= --ots-chi2-tol (certified by its own checks on fresh "
    f"samples), first step {OTS['lr']} cell width, "
    f"warm-started from the previous round's potentials; no growing schedule "
    f"(N = {N_TRAIN} is small).",
    "- FIT: b = --population fresh latents per round, regressed onto their assigned images "
    "(loss: mean l1 cost); Adam (betas 0.5, 0.999), one step per micro-batch of -m; at most "
    "--fit-epochs epochs, stopped once the loss is below alpha_fit x the round's transport "
    "cost W_t.",
    "- Stopping: after --rounds rounds, or when W_t > alpha_stop x W_(t-1).",
    "- Non-alternating: one OTS, then FIT to that single map with alpha_fit = 0 for rounds x "
    "fit_epochs epochs (the same epoch budget), evaluated every fit_epochs epochs.",
    "- Metric: exact W1 (POT emd2, l1 cost) between generated samples on fixed latents, as "
    "many as the set has images, and the set; without POT a fitted SemiDiscreteOT estimate "
    "(metrics.json says which).",
])


@app.command(help=HELP)
def main(out: Path = typer.Option(..., help="Output folder."),
         rounds: int = typer.Option(ROUNDS, help="OTS + FIT rounds (non-alternating: "
                                    "rounds x fit-epochs FIT epochs)."),
         fit_epochs: int = typer.Option(FIT_EPOCHS, help="FIT epochs per round."),
         population: int = typer.Option(POPULATION, "--population", "-b",
                                        help="b: generated samples per round."),
         micro_batch: int = typer.Option(MICRO_BATCH, "--micro-batch", "-m",
                                         help="m: samples per pass and per FIT step."),
         lr: float = typer.Option(LR, help="FIT learning rate (Adam)."),
         alpha_fit: float = typer.Option(ALPHA_FIT, help="FIT stops at alpha_fit x W_t."),
         alpha_stop: float = typer.Option(ALPHA_STOP, help="Stop when W_t > alpha_stop x "
                                          "W_(t-1)."),
         n_train: int = typer.Option(N_TRAIN, help="Training images (the rest are held out)."),
         metric: str = typer.Option("auto", help="W1 estimator: auto (pot if installed) | pot "
                                    "| semidiscrete."),
         seed: int = typer.Option(0, help="Seed of init, latents, OTS draws, evaluation."),
         ots_tol: float = typer.Option(0.0, help="OTS stop: L1 imbalance ||nu - P||_1 "
                                       "(0 = off)."),
         ots_chi2_tol: float = typer.Option(OTS["chi2_tol"], help="OTS stop: marginal chi^2 "
                                            "(0 = off; with --ots-tol both must hold; both "
                                            "0: the solver's default chi^2 stop)."),
         ots_max_iter: int = typer.Option(OTS["max_iter"], help="OTS iterations per round."),
         progress: bool = typer.Option(True, help="Progress bars.")) -> None:
    summary = run_digits(out, rounds=rounds, fit_epochs=fit_epochs, population=population,
                         micro_batch=micro_batch, lr=lr, alpha_fit=alpha_fit,
                         alpha_stop=alpha_stop, n_train=n_train, metric=metric, seed=seed,
                         ots=ots_config(ots_tol, ots_chi2_tol, ots_max_iter),
                         progress=progress)
    console = Console()
    console.print("$ python -m pipelines.semidiscrete_digits "
                  + " ".join(shlex.quote(a) for a in sys.argv[1:]), soft_wrap=True)
    console.print(results_table(summary))
    console.print(f"training: alternating {summary['alternating']['train_wall_s']:.1f}s, "
                  f"non-alternating {summary['nonalternating']['train_wall_s']:.1f}s; total "
                  f"{summary['wall_s']:.1f}s; wrote {out}/metrics.json, w1.png, "
                  "samples_*.png, samples.npz")


if __name__ == "__main__":
    app()
