"""Run → Solve → ReRun: one optimisation step over a population larger than memory.

For a loss ``L(e_1 … e_b)`` over per-sample embeddings ``e_i = E(G(z_i))`` whose gradient splits
into per-sample pieces once a global transport solution is known,

    dL/dθ = Σ_i (∂L/∂e_i) · ∂e_i/∂θ,

one step is

1. **Run** (no autograd): micro-batches of ``m`` latents → embeddings, written chunk by chunk to
   the store (latents are regenerated from the counter-based key ``(seed, step, micro-batch)``);
2. **Solve** (no model): the solver reads the whole stored population, solves the OT problem out
   of core and writes one per-sample quantity (regression targets or cotangents);
3. **ReRun** (autograd): the same micro-batches again, with grad; the solver's per-sample loss
   ``ℓ(e_i, s_i)``, whose gradient in ``e_i`` is ``∂L/∂e_i``, is back-propagated and parameter
   gradients accumulate; then one optimiser step.

The engine knows nothing of a particular loss: a :class:`Solver` supplies ``solve`` and the
ReRun loss.  With a deterministic model the accumulated gradient equals the full-batch gradient
(the engine's invariant, checked in the tests).  Under ``torch.distributed`` the store chunks of
Run and ReRun are sharded over ranks (chunk ``c`` on rank ``c mod world``), Solve runs on rank 0
and parameter gradients are all-reduced.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
import zarr
from torch import Tensor, nn
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ootrain.store import Store

__all__ = ["Engine", "EngineConfig", "Solver", "SolveContext", "ReRunLoss", "StepResult",
           "NondeterministicModelError", "NonFiniteError", "LatentSampler", "standard_normal",
           "latent_key", "rank_world"]

LatentSampler = Callable[[np.random.Generator, int], np.ndarray]


class NondeterministicModelError(RuntimeError):
    """The model gave different outputs for the same input (Run and ReRun would disagree)."""


class NonFiniteError(ValueError):
    """NaN or Inf reached the store."""


# --------------------------------------------------------------------------- solver interface
@dataclass
class SolveContext:
    """What a solver sees of one step: the stored populations and the resources it may use.

    ``embeddings`` is the generated population [b, d] (row chunks of ``chunk_rows``), ``real`` the
    real population's embeddings [n, d]; ``prefix`` is the step's group path in ``store``, where
    the solver writes its arrays; ``previous`` the previous step's prefix (or None).
    """

    store: Store
    step: int
    prefix: str
    previous: str | None
    embeddings: zarr.Array
    real: zarr.Array
    chunk_rows: int
    memory_budget: int
    seed: int
    progress: Any = None  # a rich.progress.Progress or None


class ReRunLoss(Protocol):
    """Per-sample loss of ReRun: ``load`` reads the stored per-sample quantities of rows
    ``[lo, hi)``; ``__call__(e, batch)`` returns a scalar whose gradient in ``e`` [m, d] is
    ``∂L/∂e`` for those rows (``batch`` holds the same rows sliced to the micro-batch)."""

    def load(self, lo: int, hi: int) -> dict[str, Tensor]: ...

    def __call__(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor: ...


class Solver(Protocol):
    """A global OT solve over stored embeddings (knows nothing of models)."""

    def config(self) -> dict[str, Any]:
        """JSON-able settings that determine what the solver stores (part of the fingerprint)."""
        ...

    def solve(self, ctx: SolveContext) -> dict[str, float]:
        """Read ``ctx.embeddings``/``ctx.real``, write per-sample quantities under ``ctx.prefix``,
        resumable chunk by chunk through the store's manifest; returns metrics (``"loss"``)."""
        ...

    def rerun_loss(self, ctx: SolveContext, dtype: torch.dtype) -> ReRunLoss:
        """The ReRun loss bound to this step's stored solution."""
        ...


# --------------------------------------------------------------------------- configuration
@dataclass
class EngineConfig:
    """Settings of a Run → Solve → ReRun training run.

    population: b, generated samples per step.  micro_batch: m, samples per forward pass.
    chunk_rows: rows per store chunk (a multiple of m; default ≈ ``chunk_bytes`` per chunk).
    seed: the counter-based key of latents and solver randomness.
    verify: compare ReRun's embeddings with Run's and refuse on mismatch.
    memory_budget: bytes the solver may hold in memory (sort rows, chunks).
    """

    population: int
    micro_batch: int
    latent_dim: int
    seed: int = 0
    chunk_rows: int | None = None
    chunk_bytes: int = 16 << 20
    store_latents: bool = False
    verify: bool = False
    verify_rtol: float = 1e-5
    memory_budget: int = 1 << 30
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("population", "micro_batch", "latent_dim", "memory_budget"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.micro_batch > self.population:
            raise ValueError(f"micro_batch m={self.micro_batch} exceeds population "
                             f"b={self.population}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.chunk_rows is not None and self.chunk_rows % self.micro_batch:
            raise ValueError(f"chunk_rows={self.chunk_rows} must be a multiple of "
                             f"micro_batch={self.micro_batch}")


def standard_normal(dim: int, dtype: np.dtype = np.float32) -> LatentSampler:
    """Latent sampler z ~ N(0, I_dim)."""
    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.standard_normal((n, dim), dtype=np.float64).astype(dtype, copy=False)
    return sample


def latent_key(seed: int, step: int, micro_batch: int) -> np.random.Generator:
    """Counter-based RNG for one micro-batch: independent streams keyed by (seed, step, index)."""
    return np.random.Generator(np.random.Philox(key=[seed, step * 2**32 + micro_batch]))


@dataclass
class StepResult:
    step: int
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def rank_world() -> tuple[int, int]:
    """(rank, world size) under ``torch.distributed``, (0, 1) without it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


# --------------------------------------------------------------------------- the engine
class Engine:
    """Run → Solve → ReRun for any generator ``G`` and embedding ``E`` (``torch.nn.Module``).

    Parameters
    ----------
    generator, embedding:
        ``E(G(z))`` maps latents [m, latent_dim] to embeddings [m, d].  Both must be
        deterministic (no dropout, no batch-norm batch statistics); the engine checks.
    solver:
        The global OT solve (e.g. :class:`ootrain.methods.rsr.SlicedSolver`).
    real:
        Real data [n, D] (numpy or zarr array); embedded once through ``E`` into the store.
    store:
        The run's :class:`~ootrain.store.Store` (created with :meth:`store_config`).
    optimizer:
        Optimiser over the generator's parameters.
    """

    def __init__(self, generator: nn.Module, embedding: nn.Module, solver: Solver,
                 real: Any, store: Store, optimizer: torch.optim.Optimizer,
                 config: EngineConfig, latent_sampler: LatentSampler | None = None,
                 progress: Any = None) -> None:
        self.G, self.E, self.solver, self.store = generator, embedding, solver, store
        self.real_data = real
        self.opt = optimizer
        self.cfg = config
        self.dtype = getattr(torch, config.dtype)
        self.sampler = latent_sampler or standard_normal(config.latent_dim, np.dtype(config.dtype))
        self.progress = progress
        self.rank, self.world = rank_world()
        self._check_real(real)
        self.d = self._probe()
        rows = config.chunk_rows or self._default_chunk_rows()
        self.chunk_rows = min(rows, math.ceil(config.population / config.micro_batch)
                              * config.micro_batch)
        self.n_chunks = math.ceil(config.population / self.chunk_rows)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def store_config(config: EngineConfig, solver: Solver, generator_spec: str,
                     embedding_spec: str, real: Any) -> dict[str, Any]:
        """The dict a store is fingerprinted with: everything that determines stored data."""
        return {"engine": {k: v for k, v in config.__dict__.items()
                           if k not in ("verify", "verify_rtol", "memory_budget")},
                "solver": solver.config(), "generator": generator_spec,
                "embedding": embedding_spec, "real": _describe_array(real)}

    def _check_real(self, real: Any) -> None:
        if getattr(real, "ndim", None) != 2:
            raise ValueError(f"real data must be a 2-D array [n, D], got shape "
                             f"{getattr(real, 'shape', type(real))}")
        if not np.issubdtype(np.dtype(real.dtype), np.floating):
            raise ValueError(f"real data must be floating point, got dtype {real.dtype}")

    def _default_chunk_rows(self) -> int:
        m = self.cfg.micro_batch
        row_bytes = self.d * np.dtype(self.cfg.dtype).itemsize
        return max(m, (self.cfg.chunk_bytes // row_bytes) // m * m)

    def _embed(self, z: np.ndarray | Tensor) -> Tensor:
        z = torch.as_tensor(z, dtype=self.dtype)
        return self.E(self.G(z))

    def _latents(self, step: int, lo: int, hi: int) -> np.ndarray:
        """Latents of rows [lo, hi) (lo a multiple of m) regenerated from their keys."""
        m = self.cfg.micro_batch
        parts = [self.sampler(latent_key(self.cfg.seed, step, i // m), min(m, hi - i))
                 for i in range(lo, hi, m)]
        z = np.concatenate(parts)
        if z.shape != (hi - lo, self.cfg.latent_dim):
            raise ValueError(f"latent sampler returned shape {z.shape} for {hi - lo} rows; "
                             f"expected ({hi - lo}, {self.cfg.latent_dim})")
        return z

    def _probe(self) -> int:
        """Embedding width, and a determinism check on one micro-batch before any work."""
        for mod in list(self.G.modules()) + list(self.E.modules()):
            if mod.training and isinstance(mod, (nn.Dropout, nn.AlphaDropout,
                                                 nn.modules.batchnorm._BatchNorm)):
                raise NondeterministicModelError(
                    f"{type(mod).__name__} in training mode makes Run and ReRun disagree "
                    "(different masks / batch statistics per pass); call .eval() on it or "
                    "remove it")
        z = self._latents(0, 0, min(self.cfg.micro_batch, self.cfg.population))
        with torch.no_grad():
            e1, e2 = self._embed(z), self._embed(z)
        if e1.ndim != 2 or e1.shape[0] != z.shape[0]:
            raise ValueError(f"E(G(z)) must return [m, d] for z [m, {self.cfg.latent_dim}], "
                             f"got {tuple(e1.shape)}")
        if not torch.equal(e1, e2):
            raise NondeterministicModelError(
                "the generator/embedding returned different outputs for the same latents "
                f"(max diff {(e1 - e2).abs().max().item():.3g}); the engine needs a "
                "deterministic model (no dropout or random layers in the forward pass)")
        return int(e1.shape[1])

    def _prefix(self, step: int) -> str:
        return f"steps/{step}"

    def _ctx(self, step: int) -> SolveContext:
        prev = self._prefix(step - 1) if step > 0 and self.store.has(self._prefix(step - 1)) \
            else None
        return SolveContext(self.store, step, self._prefix(step), prev,
                            self.store.array(f"{self._prefix(step)}/embeddings"),
                            self.store.array("real/embeddings"), self.chunk_rows,
                            self.cfg.memory_budget, self.cfg.seed, self.progress)

    def _bar(self, description: str, total: int) -> Any:
        if self.progress is None or self.rank != 0:
            return None
        return self.progress.add_task(description, total=total)

    def _advance(self, task: Any, n: int = 1) -> None:
        if task is not None:
            self.progress.advance(task, n)

    def _done_bar(self, task: Any) -> None:
        if task is not None:
            self.progress.remove_task(task)

    def _my_chunks(self, todo: np.ndarray) -> list[int]:
        return [c for c in range(todo.size) if todo[c] and c % self.world == self.rank]

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_key(self, step: int) -> str:
        return f"checkpoints/step-{step}.pt"

    def _save_checkpoint(self, step: int) -> None:
        buf = io.BytesIO()
        torch.save({"generator": self.G.state_dict(), "optimizer": self.opt.state_dict(),
                    "step": step}, buf)
        data = default_buffer_prototype().buffer.from_bytes(buf.getvalue())
        sync(self.store.group.store.set(self._ckpt_key(step), data))

    def _load_checkpoint(self, step: int) -> bool:
        raw = sync(self.store.group.store.get(self._ckpt_key(step),
                                              prototype=default_buffer_prototype()))
        if raw is None:
            return False
        state = torch.load(io.BytesIO(raw.to_bytes()), weights_only=True)
        self.G.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["optimizer"])
        return True

    def completed_steps(self) -> int:
        """Number of fully completed steps recorded in the store."""
        k = 0
        while self.store.has(self._prefix(k)) and \
                self.store.group[self._prefix(k)].attrs.get("phase") == "done":
            k += 1
        return k

    # ------------------------------------------------------------------ the three phases
    def embed_real(self) -> zarr.Array:
        """Embed the real data once (no grad) into ``real/embeddings`` [n, d], resumable."""
        n = int(self.real_data.shape[0])
        rows = max(1, min(n, self._default_chunk_rows()))  # independent of the population b
        if self.rank == 0:  # rank 0 creates arrays; the others open them after the barrier
            self.store.require_array("real/embeddings", (n, self.d), (rows, self.d),
                                     self.cfg.dtype)
        _barrier()
        arr = self.store.array("real/embeddings")
        todo = ~self.store.done("real/embeddings")
        task = self._bar("embed real", int(todo.sum()))
        for c in self._my_chunks(todo):
            lo, hi = c * rows, min(n, (c + 1) * rows)
            x = np.asarray(self.real_data[lo:hi])
            _check_finite(x, f"real data rows [{lo}, {hi})")
            with torch.no_grad():
                e = self.E(torch.as_tensor(x, dtype=self.dtype)).numpy()
            if e.shape != (hi - lo, self.d):
                raise ValueError(f"E(real rows [{lo}, {hi})) has shape {e.shape} but generated "
                                 f"embeddings are [m, {self.d}]: real data of width "
                                 f"{x.shape[1]} does not fit the embedding of G's outputs")
            _check_finite(e, f"real embeddings rows [{lo}, {hi})")
            self.store.write_chunk("real/embeddings", (c, 0), e)
            self._advance(task)
        self._done_bar(task)
        _barrier()
        return arr

    def run(self, step: int) -> None:
        """Run: embeddings of the step's b latents, no autograd, chunk by chunk."""
        b, d, prefix = self.cfg.population, self.d, self._prefix(step)
        itemsize = np.dtype(self.cfg.dtype).itemsize
        path = f"{prefix}/embeddings"
        if self.rank == 0:
            if not self.store.has(path):
                # Run's own arrays (+5% for zarr metadata and the manifest); the solver checks
                # the space for what it writes before it writes it
                self.store.check_space(int(b * (d + self.cfg.latent_dim * self.cfg.store_latents)
                                           * itemsize * 1.05), f"step {step}: Run (embeddings)")
            self.store.require_array(path, (b, d), (self.chunk_rows, d), self.cfg.dtype)
            if self.cfg.store_latents:
                self.store.require_array(f"{prefix}/latents", (b, self.cfg.latent_dim),
                                         (self.chunk_rows, self.cfg.latent_dim), self.cfg.dtype)
        _barrier()
        todo = ~self.store.done(path)
        task = self._bar(f"step {step}: Run", int(todo.sum()) * self.chunk_rows)
        m = self.cfg.micro_batch
        for c in self._my_chunks(todo):
            lo, hi = c * self.chunk_rows, min(b, (c + 1) * self.chunk_rows)
            z = self._latents(step, lo, hi)
            out = np.empty((hi - lo, d), dtype=self.cfg.dtype)
            with torch.no_grad():
                for i in range(0, hi - lo, m):
                    out[i:i + m] = self._embed(z[i:i + m]).numpy()
                    self._advance(task, min(m, hi - lo - i))
            _check_finite(out, f"embeddings of step {step}, rows [{lo}, {hi})")
            if self.cfg.store_latents:
                self.store.write_chunk(f"{prefix}/latents", (c, 0), z)
            self.store.write_chunk(path, (c, 0), out)
        self._done_bar(task)
        _barrier()

    def solve(self, step: int) -> dict[str, float]:
        """Solve: the solver's global pass over the stored population (rank 0)."""
        metrics: dict[str, float] = {}
        group = self.store.group[self._prefix(step)]
        if self.rank == 0:
            if group.attrs.get("solved"):
                metrics = dict(group.attrs["metrics"])
            else:
                metrics = self.solver.solve(self._ctx(step))
                group.attrs.update({"metrics": metrics, "solved": True})
        _barrier()
        if self.rank != 0:
            metrics = dict(self.store.group[self._prefix(step)].attrs["metrics"])
        return metrics

    def rerun(self, step: int) -> None:
        """ReRun: micro-batches with autograd against the stored solution; accumulates grads."""
        b, m = self.cfg.population, self.cfg.micro_batch
        ctx = self._ctx(step)
        loss_fn = self.solver.rerun_loss(ctx, self.dtype)
        emb = ctx.embeddings if self.cfg.verify else None
        chunks = [c for c in range(self.n_chunks) if c % self.world == self.rank]
        task = self._bar(f"step {step}: ReRun", len(chunks) * self.chunk_rows)
        for c in chunks:
            lo, hi = c * self.chunk_rows, min(b, (c + 1) * self.chunk_rows)
            z = torch.as_tensor(self._latents(step, lo, hi), dtype=self.dtype)
            stored = loss_fn.load(lo, hi)
            ref = torch.as_tensor(emb[lo:hi]) if emb is not None else None
            for i in range(0, hi - lo, m):
                e = self._embed(z[i:i + m])
                if ref is not None:
                    _verify(e.detach(), ref[i:i + m], self.cfg.verify_rtol, step, lo + i)
                loss = loss_fn(e, {k: v[i:i + m] for k, v in stored.items()})
                loss.backward()
                self._advance(task, e.shape[0])
        self._done_bar(task)
        if self.world > 1:
            for p in self.G.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)

    def replay(self, step: int, epochs: int, *, stop: Callable[[int, float], bool] | None = None,
               callback: Callable[[int, float], None] | None = None) -> list[float]:
        """Regression against a stored solution: SGD, one optimiser step per micro-batch.

        Where :meth:`rerun` accumulates the whole population's gradient into one step, this
        replays the step's stored pairs (latent key, per-sample solution) for ``epochs`` passes,
        micro-batches in a fresh order each epoch (seeded by ``(seed, step, epoch)``), minimising
        the solver's ReRun loss rescaled to a per-micro-batch mean (``loss · b / m``).  Used by
        FIT (Chen et al.): the generator regresses onto the transport map of the generator that
        ran ``step``.  ``callback(epoch, mean_loss)`` after each epoch; ``stop(epoch, mean_loss)``
        returning True ends early.  Returns the per-epoch mean losses (their values before each
        micro-batch's update).  Single process only.
        """
        if self.world > 1:
            raise NotImplementedError("Engine.replay runs in one process; shard FIT's replay "
                                      "with torch.distributed is not implemented")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        b, m = self.cfg.population, self.cfg.micro_batch
        ctx = self._ctx(step)
        loss_fn = self.solver.rerun_loss(ctx, self.dtype)
        starts = np.arange(0, b, m)
        task = self._bar(f"step {step}: replay", epochs * b)
        losses: list[float] = []
        for epoch in range(epochs):
            order = np.random.default_rng([self.cfg.seed, step, epoch, 0xF17]).permutation(starts)
            total = 0.0
            for lo in order:
                hi = min(b, int(lo) + m)
                z = torch.as_tensor(self._latents(step, int(lo), hi), dtype=self.dtype)
                stored = loss_fn.load(int(lo), hi)
                self.opt.zero_grad(set_to_none=True)
                loss = loss_fn(self._embed(z), stored) * (b / (hi - lo))
                loss.backward()
                self.opt.step()
                total += float(loss.detach()) * (hi - lo)
                self._advance(task, hi - int(lo))
            losses.append(total / b)
            if callback is not None:
                callback(epoch, losses[-1])
            if stop is not None and stop(epoch, losses[-1]):
                break
        self._done_bar(task)
        return losses

    # ------------------------------------------------------------------ a step, a run
    def step(self, step: int) -> StepResult:
        """One full step ``step`` (resumes a partially done one): Run, Solve, ReRun, update."""
        if self.rank == 0:
            self.store.group.require_group(self._prefix(step))
            if not self._load_checkpoint(step):
                self._save_checkpoint(step)
        _barrier()
        group = self.store.group[self._prefix(step)]
        if group.attrs.get("phase") == "done":
            raise RuntimeError(f"step {step} is already complete in {self.store.url}")
        if self.rank != 0:
            self._load_checkpoint(step)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        self.run(step)
        timings["run"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics = self.solve(step)
        timings["solve"] = time.perf_counter() - t
        t = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.rerun(step)
        self.opt.step()
        timings["rerun"] = time.perf_counter() - t
        if self.rank == 0:
            self._save_checkpoint(step + 1)
            group.attrs.update({"phase": "done", "timings": timings})
        _barrier()
        return StepResult(step, metrics, timings)

    def train(self, steps: int, callback: Callable[[StepResult], None] | None = None
              ) -> list[StepResult]:
        """Train until ``steps`` steps are complete, resuming from the store's last state."""
        start = self.completed_steps()
        if start > 0 and not self._load_checkpoint(start):
            raise RuntimeError(f"{self.store.url} has {start} completed steps but no checkpoint "
                               f"for step {start}")
        if not self.store.is_complete("real/embeddings"):  # False when absent too
            self.embed_real()
        results = []
        task = self._bar("training steps", steps)
        self._advance(task, start)
        for k in range(start, steps):
            res = self.step(k)
            results.append(res)
            if callback is not None:
                callback(res)
            self._advance(task)
        self._done_bar(task)
        return results


# --------------------------------------------------------------------------- checks
def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))
        raise NonFiniteError(f"{what}: {len(bad)} non-finite values (NaN/Inf), first at index "
                             f"{tuple(int(i) for i in bad[0])}; nothing was stored for them")


def _verify(e: Tensor, ref: Tensor, rtol: float, step: int, row: int) -> None:
    scale = ref.abs().max().clamp_min(1e-12)
    err = (e - ref.to(e.dtype)).abs().max()
    if err > rtol * scale:
        raise NondeterministicModelError(
            f"step {step}: ReRun embeddings of rows starting at {row} differ from Run's by "
            f"{err.item():.3g} (relative {(err / scale).item():.3g} > {rtol}); the model is not "
            "deterministic between passes (dropout, batch-norm statistics, or weights changed "
            "between Run and ReRun)")


def _describe_array(x: Any) -> dict[str, Any]:
    """Shape, dtype and a content hash of a few rows (cheap identity of the real data)."""
    import hashlib

    n = int(x.shape[0])
    rows = np.asarray(x[: min(n, 64)]).tobytes() + np.asarray(x[max(0, n - 64):]).tobytes()
    return {"shape": [int(s) for s in x.shape], "dtype": str(x.dtype),
            "sha256_head_tail": hashlib.sha256(rows).hexdigest()}
