"""OTS + FIT: gradual semi-discrete training of a generator (Chen et al., ICML 2019).

Each round ``t`` of the method alternates two steps on the engine's machinery:

1. **OTS** (optimal transport solver): fit the semi-discrete dual potential ``ψ`` between the
   current generator's distribution ``g_t#μ`` and the target points ``y_1 … y_N``
   (:class:`ootrain.ot.semidiscrete.SemiDiscreteOT`, warm-started from the previous round's ``ψ``),
   so that the map ``T_t(x) = y_σ(x)``, ``σ(x) = argmin_j c(x, y_j) − ψ_j``, pushes ``g_t#μ`` onto
   the targets.
2. **FIT**: regress the generator onto that map: Run stores ``x_i = g_t(z_i)`` for ``b`` latents
   (regenerated from their counter-based keys), Solve writes the assignments ``σ(i)``
   (:class:`AssignmentSolver`, targets streamed from the store), then ``Engine.replay`` runs SGD
   on ``ℓ(θ) = mean_i c(g_θ(z_i), y_σ(i))`` with micro-batches, starting from ``θ_t``.  The
   number of latents per round is set by the disk, not by memory.

Stopping rules (the paper's α-rules, as implemented here — the paper states them informally):

- FIT stops when the regression loss falls to ``α_fit`` times the round's initial transport
  cost ``W_t = mean_i c(x_i, y_σ(i))`` (the generator has moved ``1 − α_fit`` of the way to its
  map), or after ``fit_epochs`` epochs.
- The alternation stops after ``rounds`` rounds, or earlier when a round's transport cost did
  not fall below ``α_stop`` times the previous round's (no progress).

``alternate=False`` is the ablation: one OTS on the initial generator, then FIT all the way to
that single map (``α_fit = 0``) with the same total number of epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ootrain.engine.core import Engine, SolveContext
from ootrain.ot.semidiscrete import SemiDiscreteOT

__all__ = ["AssignmentSolver", "FitLoss", "GradualConfig", "RoundResult", "train_gradual"]


class AssignmentSolver:
    """Engine solver: per stored sample ``x_i``, its target ``σ(i) = argmin_j c(x_i, y_j) − ψ_j``.

    ``ot`` holds the targets (its source is used for the ReRun gathers), the cost and the
    potentials ``ψ`` fitted by OTS.  With a soft (entropic) ``ot`` the assignment is sampled
    from ``softmax_j((ψ_j − c(x_i, y_j)) / ε)`` with a generator keyed by (seed, step, chunk),
    so a resumed Solve writes the same assignments.

    Writes, under the step's group: ``potentials`` [N] (the ψ used), ``assignments`` [b] int64
    (chunks of the embeddings' rows) and ``costs`` [b] (``c(x_i, y_σ(i))``).  Metrics: ``loss``
    (mean transport cost of the population under the map) and ``imbalance``
    ``‖ν − P̂‖₁`` of the assignment histogram.
    """

    def __init__(self, ot: SemiDiscreteOT) -> None:
        self.ot = ot

    def config(self) -> dict[str, Any]:
        return {"method": "semidiscrete-assign", "cost": str(self.ot.ground_cost),
                "eps_rel": self.ot.eps_rel, "n_targets": self.ot.n_targets}

    def solve(self, ctx: SolveContext) -> dict[str, float]:
        store, emb = ctx.store, ctx.embeddings
        b = emb.shape[0]
        if emb.shape[1] != self.ot.source.d:
            raise ValueError(f"embeddings have width {emb.shape[1]}, targets {self.ot.source.d}")
        rows = emb.chunks[0]
        ppath, apath, cpath = (f"{ctx.prefix}/{name}"
                               for name in ("potentials", "assignments", "costs"))
        if store.has(ppath) and store.is_complete(ppath):
            self.ot.load(store, ppath)  # resuming: the ψ this step started with
        else:
            self.ot.save(store, ppath)
        store.require_array(apath, (b,), (rows,), np.int64)
        store.require_array(cpath, (b,), (rows,), np.float64)
        done = store.done(apath) & store.done(cpath)
        for c in np.flatnonzero(~done):
            lo, hi = int(c) * rows, min(b, (int(c) + 1) * rows)
            x = torch.as_tensor(np.asarray(emb[lo:hi]), dtype=self.ot.dtype)
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence(
                [ctx.seed, ctx.step, int(c), 0x5D07]).generate_state(1)[0]))
            idx = self.ot.assign(x, generator=gen)
            cost = self.ot.ground_cost.pairwise(x, self.ot.source.take(idx, dtype=x.dtype))
            store.write_chunk(cpath, int(c), cost.double().numpy())
            store.write_chunk(apath, int(c), idx.numpy().astype(np.int64))
        counts = np.zeros(self.ot.n_targets, dtype=np.int64)
        total = 0.0
        for lo in range(0, b, rows):
            counts += np.bincount(store.array(apath)[lo:lo + rows], minlength=counts.size)
            total += float(store.array(cpath)[lo:lo + rows].sum())
        nu = self.ot.nu.double().cpu().numpy()
        # a perfectly balanced map's histogram of b samples still shows ≈ sqrt(2N / (π b))
        return {"loss": total / b, "imbalance": float(np.abs(nu - counts / b).sum()),
                "imbalance_noise": math.sqrt(2 * self.ot.n_targets / (math.pi * b))}

    def rerun_loss(self, ctx: SolveContext, dtype: torch.dtype) -> "FitLoss":
        return FitLoss(ctx.store.array(f"{ctx.prefix}/assignments"), self.ot, ctx.embeddings.shape[0],
                       dtype)


@dataclass
class FitLoss:
    """FIT's ReRun loss: ``Σ_i c(g_θ(z_i), y_σ(i)) / b`` over a micro-batch (the population mean
    once summed over all micro-batches); targets gathered from the target source."""

    assignments: Any
    ot: SemiDiscreteOT
    b: int
    dtype: torch.dtype

    def load(self, lo: int, hi: int) -> dict[str, Tensor]:
        idx = torch.from_numpy(np.asarray(self.assignments[lo:hi], dtype=np.int64))
        return {"y": self.ot.source.take(idx, dtype=self.dtype)}

    def __call__(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return self.ot.ground_cost.pairwise(e, batch["y"]).sum() / self.b


@dataclass
class GradualConfig:
    """Settings of :func:`train_gradual` (see the module docstring for the rules).

    rounds: OTS + FIT rounds.  alternate: False for the one-map ablation.  fit_epochs: epochs
    of FIT per round (all rounds' epochs in one FIT when not alternating).  alpha_fit: FIT stops
    at ``alpha_fit · W_t``.  alpha_stop: stop when ``W_t > alpha_stop · W_{t−1}``.
    ots: keyword arguments of :meth:`SemiDiscreteOT.fit` (``batch``, ``max_iter``, ``tol`` …).
    ots_seed: seed of OTS's latent draws.
    """

    rounds: int = 10
    alternate: bool = True
    fit_epochs: int = 5
    alpha_fit: float = 0.5
    alpha_stop: float = 1.0
    ots: dict[str, Any] = field(default_factory=dict)
    ots_seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.fit_epochs < 1:
            raise ValueError("rounds and fit_epochs must be >= 1")
        if not (0.0 <= self.alpha_fit < 1.0):
            raise ValueError(f"alpha_fit must be in [0, 1), got {self.alpha_fit}")
        if not self.alpha_stop > 0:
            raise ValueError(f"alpha_stop must be positive, got {self.alpha_stop}")


@dataclass
class RoundResult:
    """One round: the transport cost and mass imbalance of the map before FIT, OTS's imbalance
    checks (:attr:`SemiDiscreteOT.history` entries of this round) and FIT's per-epoch losses."""

    round: int
    transport_cost: float
    imbalance: float
    ots_checks: list[dict[str, float]]
    fit_losses: list[float]


def _ots_sampler(engine: Engine, seed: int, rnd: int) -> Callable[[int], Tensor]:
    """Fresh generated samples of the current generator, no autograd."""
    gen = np.random.default_rng([seed, rnd, 0x075])

    def draw(k: int) -> Tensor:
        z = torch.as_tensor(engine.sampler(gen, k), dtype=engine.dtype)
        with torch.no_grad():
            return engine._embed(z)

    return draw


def train_gradual(engine: Engine, config: GradualConfig,
                  callback: Callable[[RoundResult], None] | None = None,
                  fit_callback: Callable[[int, int, float], None] | None = None
                  ) -> list[RoundResult]:
    """Run OTS + FIT rounds on ``engine`` (its solver must be an :class:`AssignmentSolver`).

    ``callback(result)`` after each round; ``fit_callback(round, epoch, loss)`` after each FIT
    epoch.  Resumes from the store: a completed round (``steps/t`` phase ``done``) is skipped
    after loading the generator checkpoint and ``ψ`` that followed it.  Returns this call's
    rounds.
    """
    solver = engine.solver
    if not isinstance(solver, AssignmentSolver):
        raise TypeError("train_gradual needs an engine whose solver is an AssignmentSolver")
    ot = solver.ot
    rounds = config.rounds if config.alternate else 1
    epochs = config.fit_epochs if config.alternate else config.fit_epochs * config.rounds
    alpha_fit = config.alpha_fit if config.alternate else 0.0
    if not engine.store.is_complete("real/embeddings"):
        engine.embed_real()
    start = engine.completed_steps()
    previous = math.inf
    if start:
        if not engine._load_checkpoint(start):
            raise RuntimeError(f"{engine.store.url}: {start} rounds done but no checkpoint")
        ot.load(engine.store, f"{engine._prefix(start - 1)}/potentials_after")
        previous = float(engine.store.group[engine._prefix(start - 1)].attrs["metrics"]["loss"])
    results: list[RoundResult] = []
    for t in range(start, rounds):
        engine.store.group.require_group(engine._prefix(t))
        if not engine._load_checkpoint(t):
            engine._save_checkpoint(t)
        seen = len(ot.history)
        if not engine.store.group[engine._prefix(t)].attrs.get("solved"):  # OTS, unless this round's Solve is already done
            ot.fit(_ots_sampler(engine, config.ots_seed, t), progress=engine.progress is not None,
                   **config.ots)
        engine.run(t)
        metrics = engine.solve(t)
        w_t = float(metrics["loss"])
        losses = engine.replay(
            t, epochs, stop=lambda _e, loss: loss <= alpha_fit * w_t,
            callback=None if fit_callback is None else
            (lambda epoch, loss, t=t: fit_callback(t, epoch, loss)))
        ot.save(engine.store, f"{engine._prefix(t)}/potentials_after")
        engine._save_checkpoint(t + 1)
        engine.store.group[engine._prefix(t)].attrs.update({"phase": "done",
                                                             "fit_losses": losses})
        res = RoundResult(t, w_t, float(metrics["imbalance"]), ot.history[seen:], losses)
        results.append(res)
        if callback is not None:
            callback(res)
        if w_t > config.alpha_stop * previous:
            break
        previous = w_t
    return results

