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

import dataclasses
import math
import operator
import uuid
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import torch
from torch import Tensor, nn

from ootrain.engine.compute import StoreArray
from ootrain.engine.core import (Engine, GeneratorMethod, Plan, Sampler, SolveContext,
                                 StepResult, module_device)
from ootrain.ot.costs import Cost
from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.ot.sharded import SHARD_SHARE, argmin_tasks, plan_shards
from ootrain.ot.targets import TargetSource

__all__ = ["AssignmentSolver", "FitLoss", "GradualConfig", "OTSFIT"]


class AssignmentSolver:
    """Engine solver: per stored sample ``x_i``, its target ``σ(i) = argmin_j c(x_i, y_j) − ψ_j``.

    ``ot`` holds the targets (its source is used for the ReRun gathers), the cost and the
    potentials ``ψ`` fitted by OTS.  With a soft (entropic) ``ot`` the assignment is sampled
    from ``softmax_j((ψ_j − c(x_i, y_j)) / ε)`` with a generator keyed by (seed, step, chunk),
    so a resumed Solve writes the same assignments.  One Dask task per stored chunk (the
    argmin over all targets by ``ot``'s backend), on the step's scheduler — or, for a hard
    argmin over targets in a zarr array larger than one shard, the sharded c-transform
    (:mod:`ootrain.ot.sharded`): one task per (stored chunk, target shard), a shard's rows
    taking at most ``1 / SHARD_SHARE`` of a task's memory budget (the step's budget on a
    cluster, its share per local thread), and a merge-and-write task per chunk, with the same
    assignments.  A task then holds one chunk of queries and one target shard.

    Writes, under the step's group: ``potentials`` [N] (the ψ used), ``assignments`` [b] int64
    (chunks of the embeddings' rows) and ``costs`` [b] (``c(x_i, y_σ(i))``).  Metrics: ``loss``
    (mean transport cost of the population under the map) and ``imbalance``
    ``‖ν − P̂‖₁`` of the assignment histogram.
    """

    def __init__(self, ot: SemiDiscreteOT) -> None:
        self.ot = ot

    def config(self) -> dict[str, Any]:
        import hashlib

        h = hashlib.sha256()   # the targets' whole content
        for _, block in self.ot.source.blocks():
            h.update(np.ascontiguousarray(block.cpu().numpy()).tobytes())
        return {"method": "semidiscrete-assign", "cost": str(self.ot.ground_cost),
                "eps_rel": self.ot.eps_rel, "n_targets": self.ot.n_targets,
                "targets_sha256": h.hexdigest()}

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
        if not store.has(apath):
            store.check_space(2 * store.array_bytes((b,), (rows,), 8), f"step {ctx.step}: Solve "
                              "(assignments and costs)")
        store.require_array(apath, (b,), (rows,), np.int64)
        store.require_array(cpath, (b,), (rows,), np.float64)
        done = store.done(apath) & store.done(cpath)
        ctx.compute.check_store(store)
        refs = ctx.ref(emb), ctx.ref(apath), ctx.ref(cpath)
        todo = [(int(c) * rows, min(b, (int(c) + 1) * rows), int(c))
                for c in np.flatnonzero(~done)]
        shards = self._shards(ctx)
        if shards is None:
            ot = dask.delayed(self.ot)   # one copy for all the tasks (sent once to a cluster)
            ctx.compute.run([dask.delayed(_assign_chunk)(ot, *refs, lo, hi,
                                                         [ctx.seed, ctx.step, c, 0x5D07])
                             for lo, hi, c in todo])
        else:
            self._solve_sharded(ctx, refs, todo, shards)
        counts = np.zeros(self.ot.n_targets, dtype=np.int64)
        total = 0.0
        for lo in range(0, b, rows):
            counts += np.bincount(store.array(apath)[lo:lo + rows], minlength=counts.size)
            total += float(store.array(cpath)[lo:lo + rows].sum())
        nu = self.ot.nu.double().cpu().numpy()
        # a perfectly balanced map's histogram of b samples still shows ≈ sqrt(2N / (π b))
        return {"loss": total / b, "imbalance": float(np.abs(nu - counts / b).sum()),
                "imbalance_noise": math.sqrt(2 * self.ot.n_targets / (math.pi * b))}

    def _shards(self, ctx: SolveContext) -> list[tuple[int, int]] | None:
        """The target shards of a sharded Solve, or None (soft plan, targets in memory or
        within one shard: each chunk's task reduces over all targets)."""
        src = self.ot.source
        if self.ot.soft or src.in_memory:
            return None
        shards = plan_shards(src, ctx.compute.task_budget(ctx.memory_budget) // SHARD_SHARE,
                             self.ot.dtype)
        return shards if len(shards) > 1 else None

    def _solve_sharded(self, ctx: SolveContext, refs: tuple[StoreArray, ...],
                       todo: list[tuple[int, int, int]], shards: list[tuple[int, int]]
                       ) -> None:
        """Per stored chunk: a read task, one argmin task per target shard, and a task that
        merges them and writes the chunk's assignments and costs."""
        emb, assignments, costs = refs
        name = f"ots-fit-{uuid.uuid4().hex}"   # keys unique to the computation
        graph: dict[Any, Any] = {}
        reads = [(name, "queries", c) for _, _, c in todo]
        for key, (lo, hi, _) in zip(reads, todo):
            graph[key] = (emb.rows, lo, hi, self.ot.dtype)
        merged = argmin_tasks(graph, reads, self.ot.source, self.ot.potentials, shards,
                              self.ot.ground_cost, self.ot.backend,
                              distributed=ctx.compute.distributed)
        writes = [(name, "write", c) for _, _, c in todo]
        for key, read, best, (lo, hi, _) in zip(writes, reads, merged, todo):
            graph[key] = (_write_chunk, self.ot.ground_cost, self.ot.source, read,
                          (operator.getitem, best, 0), assignments, costs, lo, hi)
        ctx.compute.get(graph, writes)

    def rerun_loss(self, ctx: SolveContext, population: str, dtype: torch.dtype) -> "FitLoss":
        return FitLoss(ctx.store.array(f"{ctx.prefix}/assignments"), self.ot, ctx.embeddings.shape[0],
                       dtype)


def _assign_chunk(ot: SemiDiscreteOT, emb: StoreArray, assignments: StoreArray,
                  costs: StoreArray, lo: int, hi: int, key: list[int]) -> None:
    """A Dask task: the assignments and costs of the stored rows [lo, hi) (one chunk), the
    soft assignment sampled with a generator seeded by ``key``."""
    x = emb.rows(lo, hi, ot.dtype)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
    _write_chunk(ot.ground_cost, ot.source, x, ot.assign(x, generator=gen), assignments,
                 costs, lo, hi)


def _write_chunk(cost: Cost, source: TargetSource, x: Tensor, idx: Tensor,
                 assignments: StoreArray, costs: StoreArray, lo: int, hi: int) -> None:
    """Write the assignments ``idx`` of the rows [lo, hi) (queries ``x``) and their costs
    ``c(x_i, y_σ(i))``."""
    costs.write_region((slice(lo, hi),), cost.pairwise(x, source.take(idx, dtype=x.dtype))
                       .double().numpy())
    assignments.write_region((slice(lo, hi),), idx.numpy().astype(np.int64))


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
    """Settings of :class:`OTSFIT` (see the module docstring for the rules).

    alternate: False for the one-map ablation.  fit_epochs: epochs of FIT per round (all
    rounds' epochs in one FIT when not alternating).  alpha_fit: FIT stops at
    ``alpha_fit · W_t``.  alpha_stop: stop when ``W_t > alpha_stop · W_{t−1}``.  ots: keyword
    arguments of :meth:`SemiDiscreteOT.fit` (``batch``, ``max_iter``, ``tol`` …).  ots_seed:
    seed of OTS's latent draws.  The number of rounds is the ``steps`` of training.
    """

    alternate: bool = True
    fit_epochs: int = 5
    alpha_fit: float = 0.5
    alpha_stop: float = 1.0
    ots: dict[str, Any] = field(default_factory=dict)
    ots_seed: int = 0

    def __post_init__(self) -> None:
        if self.fit_epochs < 1:
            raise ValueError(f"fit_epochs must be >= 1, got {self.fit_epochs}")
        if not (0.0 <= self.alpha_fit < 1.0):
            raise ValueError(f"alpha_fit must be in [0, 1), got {self.alpha_fit}")
        if not self.alpha_stop > 0:
            raise ValueError(f"alpha_stop must be positive, got {self.alpha_stop}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class OTSFIT(GeneratorMethod):
    """OTS + FIT (Chen et al.) on the engine: one engine step is one round.

    The step's ``prepare`` is OTS (``ot.fit`` on fresh samples of the current generator,
    warm-started from the previous round's ψ; skipped when the round's Solve is already
    stored), Run stores ``x_i = g_t(z_i)``, Solve (:class:`AssignmentSolver`) writes ``σ(i)``,
    and the update is FIT (:meth:`Engine.replay` until ``alpha_fit · W_t`` or ``fit_epochs``);
    the round's ψ goes into the next round's checkpoint.  A round's metrics: ``loss`` (the transport
    cost ``W_t`` of the map before FIT), ``imbalance``, ``imbalance_noise``, ``ots_checks`` (the
    round's :attr:`SemiDiscreteOT.history` entries) and ``fit_losses``.  With
    ``config.alternate=False`` (the ablation) one round fits all ``steps × fit_epochs`` epochs
    towards the single map of the initial generator (train it for 1 step).

    Args:
        generator: ``z [m, latent_dim] -> [m, d]`` (the targets' width).
        ot: the :class:`~ootrain.ot.semidiscrete.SemiDiscreteOT` of the target points.
        optimizer: FIT's optimiser over the generator's parameters.
        config: a :class:`GradualConfig`.
        rounds: the rounds planned (sets the ablation's epochs, and the progress total).
    """

    def __init__(self, generator: nn.Module, ot: SemiDiscreteOT,
                 optimizer: torch.optim.Optimizer, config: GradualConfig | None = None, *,
                 rounds: int = 10, latent_sampler: Sampler | None = None,
                 generator_spec: str = "custom") -> None:
        super().__init__(generator, nn.Identity(), AssignmentSolver(ot), None, optimizer,
                         latent_sampler, generator_spec=generator_spec,
                         embedding_spec="identity")
        self.ot, self.gcfg = ot, config if config is not None else GradualConfig()
        self.rounds = int(rounds)
        self.epochs = self.gcfg.fit_epochs if self.gcfg.alternate \
            else self.gcfg.fit_epochs * self.rounds
        self.alpha_fit = self.gcfg.alpha_fit if self.gcfg.alternate else 0.0
        self._progress: bool | None = None
        self._costs: list[float] = []   # W_t of the rounds done (checkpointed: the α-stop)

    def config(self) -> dict[str, Any]:
        cfg = self.gcfg.to_dict()
        if not self.gcfg.alternate:
            cfg["rounds"] = self.rounds
        return {**super().config(), "gradual": cfg}

    def state_dict(self) -> dict[str, Any]:
        return {"potentials": self.ot.potentials.detach().cpu().clone(),
                "costs": torch.tensor(self._costs, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ot.potentials = state["potentials"].to(self.ot.device, self.ot.dtype)
        self._costs = [float(c) for c in state["costs"]]

    def finish_step(self, step: int, metrics: dict[str, Any]) -> None:
        self._costs.append(float(metrics["loss"]))

    def bind(self, config: Any) -> "OTSFIT":
        super().bind(config)
        self._dtype = getattr(torch, config.dtype)
        return self

    def _ots(self, engine: Engine, step: int) -> None:
        """OTS: fresh generated samples of the current generator, no autograd; its checks go
        into the step's attributes (a round resumed after its Solve still reports them).  The
        latents are drawn on the CPU and embedded on the generator's device; ``ot`` moves the
        samples to its own."""
        gen = np.random.default_rng([self.gcfg.ots_seed, step, 0x075])
        device = module_device(self.G)

        def draw(k: int, rng: np.random.Generator) -> Tensor:
            z = torch.as_tensor(np.asarray(self.latent_sampler(k, rng)), dtype=self._dtype,
                                device=device)
            with torch.no_grad():
                return self.embed(z)

        seen = len(self.ot.history)
        self.ot.fit(draw, rng=gen, progress=self._progress, **self.gcfg.ots)
        engine.store.update_attrs(engine.prefix(step), {"ots_checks": self.ot.history[seen:]})

    def _fit(self, engine: Engine, step: int) -> dict[str, Any]:
        w_t = float(engine.store.group[engine.prefix(step)].attrs["metrics"]["loss"])
        losses = engine.replay(step, self.epochs,
                               stop=lambda _e, loss: loss <= self.alpha_fit * w_t)
        self.ot.load(engine.store, f"{engine.prefix(step)}/potentials")  # the round's ψ, also
        # when resumed after Solve (the checkpoint of the next round keeps it)
        return {"fit_losses": losses}

    def plan(self, step: int) -> Plan:
        return dataclasses.replace(super().plan(step), prepare=self._ots, update=self._fit)

    def stop(self, results: list[StepResult]) -> bool:
        """The α-stop: a round whose cost is not below ``alpha_stop`` × the previous one's."""
        if not self.gcfg.alternate:
            return True
        c = self._costs
        return len(c) >= 2 and c[-1] > self.gcfg.alpha_stop * c[-2]
