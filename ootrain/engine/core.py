"""Run → Solve → ReRun: one optimisation step over populations larger than memory.

For a loss ``L`` over per-sample embeddings ``e_pi = f_p(u_pi)`` of one or more populations
``p`` (generated samples through ``E∘G``, real data through a critic, …) whose gradient splits
into per-sample pieces once a global transport solution is known,

    dL/dθ = Σ_p Σ_i (∂L/∂e_pi) · ∂e_pi/∂θ,

one step is

1. **Run** (no autograd): for each population, micro-batches of ``m`` inputs ``u`` (latents,
   real draws; regenerated from the counter-based key ``(seed, step, population, micro-batch)``,
   never stored unless asked) → embeddings, written chunk by chunk to the store;
2. **Solve** (no model): the solver reads the stored populations, solves the OT problem out
   of core and writes per-sample quantities (regression targets or cotangents);
3. **ReRun** (autograd): the same micro-batches of the populations marked ``replay`` again,
   with grad; the solver's per-sample loss ``ℓ(e_i, s_i)``, whose gradient in ``e_i`` is
   ``∂L/∂e_i``, is back-propagated and the updating player's gradients accumulate (every other
   module's parameters are frozen); then one optimiser step.

The engine knows nothing of a particular loss or method: a :class:`Method` supplies, per step,
a :class:`Plan` (its populations, its :class:`Solver`, the optimiser that steps).  Adversarial
methods alternate two players; each player's update is one engine step.  With deterministic
models the accumulated gradient equals the full-batch gradient (the engine's invariant, checked
for every method by one shared test, ``tests/invariant.py``).  Under
``torch.distributed`` the store chunks of Run and ReRun are sharded over ranks (chunk ``c`` on
rank ``c mod world``), Solve runs on rank 0 and the player's gradients are all-reduced.

Store layout of one step ``k`` (see :mod:`ootrain.store`)::

    steps/<k>/<population>        [b, d]  embeddings written by Run
    steps/<k>/...                          what the solver writes (targets, cotangents, …)
    steps/<k>.attrs               {"phase": "done", "metrics": {...}, "timings": {...}}
    checkpoints/step-<k>.pt       every module and optimiser before step k (torch, weights only)

Arrays of steps older than ``keep_steps`` are deleted once a step completes (their attributes,
with the step's metrics, stay).
"""

from __future__ import annotations

import io
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import zarr
from torch import Tensor, nn

from ootrain.data import describe_array
from ootrain.engine.compute import Compute, StoreArray
from ootrain.distributed import all_reduce, barrier, rank_world, resolve_device
from ootrain.store import Store, StoreCorruptError
from ootrain.threads import available_cpus
from ootrain.validation import DIVERGED, NonFiniteError

__all__ = ["Engine", "EngineConfig", "Method", "Plan", "Population", "Solver", "SolveContext",
           "RunObserver",
           "ReRunLoss", "CotangentLoss", "StepResult", "GeneratorMethod",
           "NondeterministicModelError", "NonFiniteError", "Sampler", "standard_normal",
           "latent_key", "rank_world", "frozen_parameters", "describe_array",
           "resolve_device", "module_device", "place", "to_cpu", "run_leaves_cores"]

#: The one sampler convention: ``draw(n, rng) -> [n, ...]`` (numpy array or tensor) given a
#: seeded ``numpy.random.Generator``.
Sampler = Callable[[int, np.random.Generator], Any]


class NondeterministicModelError(RuntimeError):
    """The model gave different outputs for the same input (Run and ReRun would disagree)."""


# --------------------------------------------------------------------------- method interface
@dataclass
class Population:
    """One population of a step: rows whose inputs ``draw`` makes and ``forward`` embeds.

    ``draw(n, rng)`` returns the inputs of ``n`` rows; it is called once per micro-batch with
    the generator keyed by ``(seed, step, population index, micro-batch)``, so ReRun
    regenerates exactly Run's inputs.  ``forward(u [m, ...]) -> [m, d]``.  ``replay=False``
    skips the population in ReRun (its embeddings are only read by Solve, e.g. the real data
    on a generator update).  ``size``: rows (default: the engine's ``population``).
    """

    name: str
    draw: Sampler
    forward: Callable[[Tensor], Tensor]
    replay: bool = True
    size: int | None = None


@dataclass
class SolveContext:
    """What a solver sees of one step: the stored populations and the resources it may use.

    ``arrays`` maps population names to their stored embeddings (row chunks of the
    population's chunk rows); ``embeddings`` is the first population's; ``real`` the static
    real embeddings of methods that have them (else None); ``prefix`` is the step's group
    path in ``store``, where the solver writes; ``previous`` the previous step's prefix;
    ``compute`` the Dask scheduler that Solve's task graphs run on
    (:class:`~ootrain.engine.compute.Compute`); ``observed`` what the solver's
    :class:`RunObserver` did while this process ran the step's Run (None when it had none,
    e.g. a Solve resumed after Run).
    """

    store: Store
    step: int
    prefix: str
    previous: str | None
    arrays: dict[str, zarr.Array]
    real: zarr.Array | None
    memory_budget: int
    seed: int
    progress: Any = None  # a rich.progress.Progress or None
    compute: Compute = field(default_factory=Compute)
    observed: Any = None  # the solver's RunObserver of this step (joined), or None

    @property
    def embeddings(self) -> zarr.Array:
        return next(iter(self.arrays.values()))

    def ref(self, array: str | Any) -> StoreArray:
        """A store array (its path, or one of :attr:`arrays`) as Solve's Dask tasks read and
        write it."""
        return StoreArray(self.store, array if isinstance(array, str) else array.store_path)

    @property
    def chunk_rows(self) -> int:
        return int(self.embeddings.chunks[0])


class ReRunLoss(Protocol):
    """Per-sample loss of ReRun: ``load`` reads the stored per-sample quantities of rows
    ``[lo, hi)``; ``__call__(e, batch)`` returns a scalar whose gradient in ``e`` [m, d] is
    ``∂L/∂e`` for those rows (``batch`` holds the same rows sliced to the micro-batch)."""

    def load(self, lo: int, hi: int) -> dict[str, Tensor]: ...

    def __call__(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor: ...


class CotangentLoss:
    """The ReRun loss of stored cotangents ``g`` [b, d]: ``Σ_i e_i · g_i`` (gradient ``g_i``)."""

    def __init__(self, array: Any, dtype: torch.dtype) -> None:
        self.array, self.dtype = array, dtype

    def load(self, lo: int, hi: int) -> dict[str, Tensor]:
        return {"g": torch.as_tensor(np.asarray(self.array[lo:hi]), dtype=self.dtype)}

    def __call__(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return (e * batch["g"].to(e.dtype)).sum()


class RunObserver(Protocol):
    """Work a solver starts before Run and feeds while Run streams (``Solver.observe``), so
    that Solve is left with less: e.g. projecting and sorting the real data, projecting each
    generated chunk as it is made.

    ``chunk(population, lo, rows)`` is called in the Run loop of rank 0 right after rows
    ``[lo, lo + len(rows))`` of ``population`` are stored, with those rows exactly as stored
    ([rows, d], read-only); chunks run by other ranks, or stored before a resume, are never
    seen, so Solve must not rely on every chunk being observed.  ``join()`` (at the start of
    Solve) waits for the observer's background work and re-raises its error; ``seconds`` is
    then the wall time that work took; ``abandon()`` (Run failed) waits for it and drops its
    error.
    """

    seconds: float

    def chunk(self, population: str, lo: int, rows: np.ndarray) -> None: ...

    def join(self) -> None: ...

    def abandon(self) -> None: ...


class Solver(Protocol):
    """A global OT solve over stored embeddings (knows nothing of models).

    Optional: ``observe(ctx) -> RunObserver | None``, called on rank 0 before Run once the
    step's arrays exist (its Solve not done yet); the engine joins the observer before Solve
    and hands it to :meth:`solve` as ``ctx.observed``."""

    def config(self) -> dict[str, Any]:
        """JSON-able settings that determine what the solver stores (part of the fingerprint)."""
        ...

    def solve(self, ctx: SolveContext) -> dict[str, float]:
        """Read ``ctx.arrays``/``ctx.real``, write per-sample quantities under ``ctx.prefix``,
        resumable chunk by chunk through the store's manifest; returns metrics (``"loss"``)."""
        ...

    def rerun_loss(self, ctx: SolveContext, population: str, dtype: torch.dtype) -> ReRunLoss:
        """The ReRun loss of ``population`` bound to this step's stored solution."""
        ...


@dataclass
class Plan:
    """What one engine step does: Run the ``populations``, Solve with ``solver``, then the
    update: ReRun and ``optimizer.step()`` (``player``'s parameters accumulate gradients, every
    other module of the method is frozen), or ``update(engine, step)`` instead (e.g. FIT's
    regression; it runs on every rank, and collectives over the player's gradients go through
    the engine).  ``prepare(engine, step)`` runs before Run, on rank 0 only (like Solve),
    unless the step's Solve is already done; what it leaves for the step, Solve or its record
    it keeps for rank 0's solver or stores in the step's attributes."""

    populations: Sequence[Population]
    solver: Solver
    optimizer: torch.optim.Optimizer
    player: nn.Module
    prepare: Callable[["Engine", int], None] | None = None
    update: Callable[["Engine", int], dict[str, Any]] | None = None


class Method(Protocol):
    """A training method on the engine (RSR, OTS + FIT, OT-GAN, WGAN-GP / POT-GAN).

    ``modules()`` and ``optimizers()`` are everything a checkpoint restores (named);
    ``plan(step)`` the step's :class:`Plan`; ``config()`` the JSON-able settings of the
    fingerprint.  Optional: ``real`` and ``real_embedding`` (static real data embedded once
    into ``real/embeddings``), ``finish_step(step, metrics)`` (after the update, before the
    checkpoint: e.g. a parameter average), ``stop(results)`` (True ends training early).
    """

    def config(self) -> dict[str, Any]: ...

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def plan(self, step: int) -> Plan: ...


# --------------------------------------------------------------------------- configuration
@dataclass
class EngineConfig:
    """Settings of a Run → Solve → ReRun training run (every method).

    population: b, samples of each population per step.  micro_batch: m, samples per forward
    pass.  latent_dim: the generator's latent width.  chunk_rows: rows per store chunk (a
    multiple of m; default ≈ ``chunk_bytes`` per chunk).  seed: the counter-based key of every
    input and of solver randomness.  verify: compare ReRun's embeddings with Run's and refuse
    on mismatch.  memory_budget: bytes the solver may hold (sort rows, Sinkhorn blocks, …) and
    the size up to which :func:`ootrain.methods.training.train` keeps the store in memory;
    store chunks are at most 1/16 of it.
    keep_steps: steps whose arrays stay in the store (None: all).
    device: where the models run (Run, ReRun, the update): ``auto`` (``cuda:<LOCAL_RANK>``
    when torch sees a GPU, else ``cpu``), ``cpu``, ``cuda`` or ``cuda:N``
    (:func:`~ootrain.distributed.resolve_device`).  Inputs are drawn and Solve runs on the
    CPU whatever it is; it is not part of the fingerprint: a store trained on one device
    resumes on another.
    overlap: let the solver work while Run streams (its :class:`RunObserver`); ``None``: when
    Run leaves a CPU core free (:func:`run_leaves_cores`: the models on a GPU, or more usable
    cores than the node's ranks' torch threads), since on saturated cores the extra thread
    slows Run by more than it saves.  It does not change what is stored.
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
    keep_steps: int | None = 2
    device: str = "auto"
    overlap: bool | None = None

    def __post_init__(self) -> None:
        for name in ("population", "micro_batch", "latent_dim", "memory_budget"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.micro_batch > self.population:
            raise ValueError(f"micro_batch m={self.micro_batch} exceeds population "
                             f"b={self.population}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.chunk_rows is not None and self.chunk_rows % self.micro_batch:
            raise ValueError(f"chunk_rows={self.chunk_rows} must be a multiple of "
                             f"micro_batch={self.micro_batch}")
        if self.keep_steps is not None and self.keep_steps < 2:
            raise ValueError(f"keep_steps must be >= 2 (a step reads the previous one) or "
                             f"None, got {self.keep_steps}")
        resolve_device(self.device)   # a bad or absent device fails here, before any work

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine stored data (the part of the store's fingerprint)."""
        return {k: v for k, v in self.__dict__.items()
                if k not in ("verify", "verify_rtol", "memory_budget", "keep_steps", "device",
                             "overlap")}


def standard_normal(dim: int, dtype: np.dtype = np.float32) -> Sampler:
    """Latent sampler ``z ~ N(0, I_dim)``: ``draw(n, rng) -> [n, dim]``."""
    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((n, dim), dtype=np.float64).astype(dtype, copy=False)
    return draw


def latent_key(seed: int, step: int, micro_batch: int, population: int = 0
               ) -> np.random.Generator:
    """Counter-based RNG for one micro-batch: independent streams keyed by (seed, step, index)
    and the population's position in the step's plan."""
    return np.random.Generator(np.random.Philox(
        key=[(seed + (population << 40)) % 2**64, step * 2**32 + micro_batch]))


@dataclass
class StepResult:
    step: int
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def frozen_parameters(*modules: nn.Module) -> Iterator[None]:
    """Within the block, backward passes go *through* ``modules`` (to their inputs) without
    accumulating their parameters' gradients: e.g. a generator's ReRun through a critic."""
    flags = [(p, p.requires_grad) for mod in modules for p in mod.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def run_leaves_cores(device: torch.device) -> bool:
    """Whether Run, on ``device``, leaves a CPU core of this node free for other work: the
    node's ranks (``LOCAL_WORLD_SIZE``) each keep one core busy feeding a GPU, or
    ``torch.get_num_threads()`` cores computing on the CPU."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    busy = ranks * (1 if device.type != "cpu" else torch.get_num_threads())
    return available_cpus() > busy


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); ``cpu`` for one with neither."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


def place(method: Method, device: torch.device) -> None:
    """Move every module of ``method`` to ``device`` (``Module.to`` moves parameters in place,
    so optimisers built over them keep working) and any optimiser state already there
    (``load_state_dict`` casts it to its parameter's device; fresh state is created there)."""
    for mod in method.modules().values():
        mod.to(device)
    for opt in method.optimizers().values():
        if opt.state:
            opt.load_state_dict(opt.state_dict())


def to_cpu(obj: Any) -> Any:
    """``obj`` (nested dicts, lists, tuples of tensors) with every tensor on the CPU."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- the engine
class Engine:
    """Run → Solve → ReRun for any :class:`Method` over a :class:`~ootrain.store.Store`.

    Parameters
    ----------
    method:
        The method (e.g. :class:`GeneratorMethod` with :class:`ootrain.methods.rsr.SlicedSolver`,
        :class:`ootrain.methods.otgan.OTGAN`).  Its models must be deterministic (no dropout,
        no batch-norm batch statistics); the engine checks before any work.
    store:
        The run's store, created with :meth:`store_config`.
    config:
        An :class:`EngineConfig`.
    progress:
        A ``rich.progress.Progress`` to add the phases' bars to (rank 0), or None.
    compute:
        Where Solve's Dask task graphs run (:class:`~ootrain.engine.compute.Compute`; default
        the local threaded scheduler on the usable cores).  It does not change the results.

    The method's modules are moved to ``config.device`` (:attr:`device`) once; each
    micro-batch's inputs are drawn on the CPU and moved there, the embeddings come back to
    the CPU for the store, the stored per-sample quantities of ReRun go to the device
    (solvers stay device-agnostic), gradients are all-reduced there (nccl for CUDA tensors,
    gloo for CPU ones), and checkpoints hold CPU tensors, so they load on any machine.

    Example
    -------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from ootrain.engine import Engine, EngineConfig, GeneratorMethod
    >>> from ootrain.methods.rsr import SlicedSolver
    >>> from ootrain.store import Store
    >>> G, real = nn.Linear(4, 2), np.random.default_rng(0).normal(size=(512, 2))
    >>> cfg = EngineConfig(population=512, micro_batch=128, latent_dim=4)
    >>> method = GeneratorMethod(G, nn.Identity(), SlicedSolver(8), real,
    ...                          torch.optim.Adam(G.parameters(), 1e-2))
    >>> with Store(None, Engine.store_config(cfg, method)) as store:   # in memory
    ...     results = Engine(method, store, cfg).train(steps=3)
    >>> len(results)
    3
    """

    def __init__(self, method: Method, store: Store, config: EngineConfig,
                 progress: Any = None, compute: Compute | None = None) -> None:
        self.method, self.store, self.cfg = method, store, config
        self.compute = compute if compute is not None else Compute()
        self.dtype = getattr(torch, config.dtype)
        self.device = resolve_device(config.device)
        place(method, self.device)
        # a rich Progress to add bars to; anything else (None, a bool) means no bars
        self.progress = progress if hasattr(progress, "add_task") else None
        self.rank, self.world = rank_world()
        self._widths: dict[tuple[int, str], int] = {}
        # the step whose starting state the models in memory hold (skips reloading it); an
        # in-memory store keeps no checkpoints: the models in memory are the state
        self._current: int | None = None
        self._changed = False        # a step of this engine has begun changing the models
        self._pruned = 0             # steps below this have had their arrays pruned
        bind = getattr(method, "bind", None)
        if bind is not None:
            bind(config)
        self._check_deterministic_layers()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def store_config(config: EngineConfig, method: Method) -> dict[str, Any]:
        """The dict a store is fingerprinted with: everything that determines stored data
        (the engine's settings, the method's, and each optimiser's class and settings)."""
        plain = (int, float, str, bool, tuple, list, type(None))
        opts = {name: {"class": type(o).__name__,
                       **{k: v for k, v in o.defaults.items() if isinstance(v, plain)}}
                for name, o in method.optimizers().items()}
        return {"engine": config.fingerprint(), "method": method.config(), "optimizers": opts}

    def _check_deterministic_layers(self) -> None:
        for name, module in self.method.modules().items():
            for mod in module.modules():
                if mod.training and isinstance(mod, (nn.Dropout, nn.AlphaDropout,
                                                     nn.modules.batchnorm._BatchNorm)):
                    raise NondeterministicModelError(
                        f"{type(mod).__name__} in training mode in the {name} makes Run and "
                        "ReRun disagree (different masks / batch statistics per pass); call "
                        ".eval() on it or remove it")

    @staticmethod
    def prefix(step: int) -> str:
        """The store group of step ``step``."""
        return f"steps/{step}"

    def _size(self, pop: Population) -> int:
        return int(pop.size if pop.size is not None else self.cfg.population)

    def _chunk_rows(self, pop: Population, width: int) -> int:
        b, m = self._size(pop), min(self.cfg.micro_batch, self._size(pop))
        if self.cfg.chunk_rows is not None:
            rows = self.cfg.chunk_rows
        else:
            row_bytes = width * np.dtype(self.cfg.dtype).itemsize
            rows = max(m, (self._chunk_bytes() // row_bytes) // m * m)
        return min(rows, math.ceil(b / m) * m)

    def _chunk_bytes(self) -> int:
        """Bytes of a store chunk: ``chunk_bytes``, at most 1/16 of the memory budget (a
        solver streams chunks, so one must fit well inside what it may hold)."""
        return max(1, min(self.cfg.chunk_bytes, self.cfg.memory_budget // 16))

    def inputs(self, step: int, index: int, pop: Population, lo: int, hi: int) -> Tensor:
        """Inputs of rows [lo, hi) (lo a multiple of m) of the plan's ``index``-th population,
        regenerated from their keys (drawn on the CPU, returned on the engine's device)."""
        m = self.cfg.micro_batch
        parts = [torch.as_tensor(np.asarray(pop.draw(min(m, hi - i), latent_key(
            self.cfg.seed, step, i // m, index)))) for i in range(lo, hi, m)]
        u = torch.cat(parts)
        if u.shape[0] != hi - lo:
            raise ValueError(f"population {pop.name!r}: its sampler returned {u.shape[0]} rows "
                             f"for {hi - lo}")
        if u.is_floating_point():
            u = u.to(self.dtype)
            _check_finite(u.numpy(), f"inputs of population {pop.name!r} of step {step}, "
                          f"rows [{lo}, {hi})")
        return u.to(self.device)

    def _load(self, loss_fn: ReRunLoss, lo: int, hi: int) -> dict[str, Tensor]:
        """The stored per-sample quantities of rows [lo, hi), on the engine's device."""
        return {k: v.to(self.device) for k, v in loss_fn.load(lo, hi).items()}

    def _width(self, step: int, index: int, pop: Population) -> int:
        """Embedding width of a population, and a determinism check on one micro-batch."""
        key = (index, pop.name)
        if key not in self._widths:
            m = min(self.cfg.micro_batch, self._size(pop))
            u = self.inputs(step, index, pop, 0, m)
            with torch.no_grad():
                e1, e2 = pop.forward(u), pop.forward(u)
            if e1.ndim != 2 or e1.shape[0] != m:
                raise ValueError(f"population {pop.name!r}: forward must return [m, d] for "
                                 f"{m} inputs, got {tuple(e1.shape)}")
            if not torch.allclose(e1, e2, rtol=0.0, atol=0.0, equal_nan=True):  # NaN: Run's
                raise NondeterministicModelError(                  # NonFiniteError, not this
                    f"population {pop.name!r}: the model returned different outputs for the "
                    f"same inputs (max diff {(e1 - e2).abs().max().item():.3g}); the engine "
                    "needs a deterministic model (no dropout or random layers in the forward "
                    "pass)")
            self._widths[key] = int(e1.shape[1])
        return self._widths[key]

    def ctx(self, step: int, plan: Plan | None = None) -> SolveContext:
        """The :class:`SolveContext` of step ``step`` (its populations must have run)."""
        plan = plan if plan is not None else self.method.plan(step)
        prev = self.prefix(step - 1) if step > 0 and self.store.has(self.prefix(step - 1)) \
            else None
        arrays = {p.name: self.store.array(f"{self.prefix(step)}/{p.name}")
                  for p in plan.populations}
        real = self.store.array("real/embeddings") if self.store.has("real/embeddings") \
            else None
        return SolveContext(self.store, step, self.prefix(step), prev, arrays, real,
                            self.cfg.memory_budget, self.cfg.seed, self.progress, self.compute)

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

    def _mine(self, n_chunks: int) -> list[int]:
        return [c for c in range(n_chunks) if c % self.world == self.rank]

    def _all_reduce_grads(self, player: nn.Module) -> None:
        """Sum the player's gradients over ranks (one flat all-reduce on the parameters'
        device: nccl for CUDA tensors, gloo for CPU ones); no-op in one process."""
        if self.world == 1:
            return
        params = [p for p in player.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        all_reduce(flat, "the all-reduce of the gradients")
        i = 0
        for p in params:
            p.grad.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()

    # ------------------------------------------------------------------ checkpoints
    @staticmethod
    def _ckpt_key(step: int) -> str:
        return f"checkpoints/step-{step}.pt"

    def save_checkpoint(self, step: int) -> None:
        """Every module and optimiser of the method, as they are before step ``step`` (CPU
        tensors: the checkpoint is the same whatever device trained)."""
        buf = io.BytesIO()
        state = {"modules": {k: m.state_dict() for k, m in self.method.modules().items()},
                 "optimizers": {k: o.state_dict()
                                for k, o in self.method.optimizers().items()},
                 "step": step}
        extra = getattr(self.method, "state_dict", None)
        if extra is not None:
            state["method"] = extra()
        torch.save(to_cpu(state), buf)
        self.store.put_bytes(self._ckpt_key(step), buf.getvalue())

    def load_checkpoint(self, step: int) -> bool:
        """Restore the state before step ``step``; False when there is no such checkpoint.

        Read onto the CPU (``map_location``, also for a checkpoint written with CUDA
        tensors): ``load_state_dict`` copies into the modules' parameters on their device and
        casts optimiser state to its parameter's device; the method's own state (ψ, warm
        starts) belongs to Solve, on the CPU."""
        raw = self.store.get_bytes(self._ckpt_key(step))
        if raw is None:
            return False
        self._current = None
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        for k, m in self.method.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.method.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        if "method" in state:
            self.method.load_state_dict(state["method"])
        self._current = step
        return True

    def completed_steps(self) -> int:
        """Number of fully completed steps recorded in the store."""
        k = 0
        while self.store.has(self.prefix(k)) and \
                self.store.group[self.prefix(k)].attrs.get("phase") == "done":
            k += 1
        return k

    def history(self) -> list[StepResult]:
        """Every completed step of the store (also those of earlier, resumed runs), read back
        from the steps' attributes: the solver's metrics, the update's results, timings."""
        return [self._recorded(k) for k in range(self.completed_steps())]

    def _recorded(self, step: int) -> StepResult:
        """Step ``step`` as its attributes record it (Solve's metrics, what the update and
        ``prepare`` stored, the timings)."""
        attrs = dict(self.store.group[self.prefix(step)].attrs)
        extra = {key: v for key, v in attrs.items()
                 if key not in ("metrics", "solved", "phase", "timings")}
        return StepResult(step, {**attrs.get("metrics", {}), **extra},
                          dict(attrs.get("timings", {})))

    # ------------------------------------------------------------------ the three phases
    def embed_real(self) -> zarr.Array | None:
        """Embed the method's static real data once (no grad) into ``real/embeddings``."""
        real = getattr(self.method, "real", None)
        if real is None:
            return None
        E = self.method.real_embedding
        n = int(real.shape[0])
        if self.rank == 0 and not self.store.has("real/embeddings"):
            with torch.no_grad():
                d = int(E(torch.as_tensor(np.asarray(real[:1]), dtype=self.dtype)
                          .to(self.device)).shape[1])
            row_bytes = d * np.dtype(self.cfg.dtype).itemsize
            rows = max(1, min(n, self._chunk_bytes() // row_bytes))
            self.store.require_array("real/embeddings", (n, d), (rows, d), self.cfg.dtype)
        barrier()
        arr = self.store.array("real/embeddings")
        rows, d = arr.chunks[0], arr.shape[1]
        todo = np.flatnonzero(~self.store.done("real/embeddings"))
        task = self._bar("embed real", int(todo.size))
        for c in [int(c) for c in todo if c % self.world == self.rank]:
            lo, hi = c * rows, min(n, (c + 1) * rows)
            x = np.asarray(real[lo:hi])
            _check_finite(x, f"real data rows [{lo}, {hi})")
            with torch.no_grad():
                e = E(torch.as_tensor(x, dtype=self.dtype).to(self.device)).cpu().numpy()
            if e.shape != (hi - lo, d):
                raise ValueError(f"E(real rows [{lo}, {hi})) has shape {e.shape}; expected "
                                 f"{(hi - lo, d)}")
            _check_finite(e, f"real embeddings rows [{lo}, {hi})")
            self.store.write_chunk("real/embeddings", (c, 0), e)
            self._advance(task)
        self._done_bar(task)
        barrier()
        return arr

    def _require_populations(self, step: int, plan: Plan) -> None:
        """Create the step's population arrays (rank 0; disk space checked first)."""
        itemsize = np.dtype(self.cfg.dtype).itemsize
        for index, pop in enumerate(plan.populations):
            b, d = self._size(pop), self._width(step, index, pop)
            rows = self._chunk_rows(pop, d)
            path = f"{self.prefix(step)}/{pop.name}"
            if self.rank == 0:
                if not self.store.has(path):
                    self.store.check_space(self.store.array_bytes((b, d), (rows, d), itemsize),
                                           f"step {step}: Run ({pop.name})")
                self.store.require_array(path, (b, d), (rows, d), self.cfg.dtype)
        barrier()

    def run(self, step: int, plan: Plan | None = None, observe: bool = False
            ) -> RunObserver | None:
        """Run: embeddings of every population of the step, no autograd, chunk by chunk.

        ``observe``: on rank 0, start the solver's :class:`RunObserver` (``Solver.observe``)
        once the arrays exist and show it every chunk this process stores; returned (None
        without one) for :meth:`solve`."""
        plan = plan if plan is not None else self.method.plan(step)
        self._require_populations(step, plan)
        begin = getattr(plan.solver, "observe", None)
        observer = begin(self.ctx(step, plan)) if observe and begin is not None \
            and self.rank == 0 else None
        try:
            self._run(step, plan, observer)
        except BaseException:
            if observer is not None:
                observer.abandon()
            raise
        return observer

    def _run(self, step: int, plan: Plan, observer: RunObserver | None) -> None:
        m = self.cfg.micro_batch
        for index, pop in enumerate(plan.populations):
            b, d = self._size(pop), self._width(step, index, pop)
            rows = self._chunk_rows(pop, d)
            path = f"{self.prefix(step)}/{pop.name}"
            ipath = f"{self.prefix(step)}/" + ("latents" if pop.name == "embeddings"
                                                 else f"{pop.name}_inputs")
            if self.cfg.store_latents and self.rank == 0:
                u0 = self.inputs(step, index, pop, 0, min(m, b))
                self.store.require_array(ipath, (b, u0.shape[1]), (rows, u0.shape[1]),
                                         self.cfg.dtype)
            barrier()
            todo = ~self.store.done(path)
            task = self._bar(f"step {step}: Run {pop.name}", int(todo.sum()) * rows)
            for c in self._mine(todo.size):
                if not todo[c]:
                    continue
                lo, hi = c * rows, min(b, (c + 1) * rows)
                u = self.inputs(step, index, pop, lo, hi)
                if self.cfg.store_latents:   # the inputs too (else regenerated from keys)
                    self.store.write_chunk(ipath, (c, 0),
                                           u.cpu().numpy().astype(self.cfg.dtype))
                out = np.empty((hi - lo, d), dtype=self.cfg.dtype)
                with torch.no_grad():
                    for i in range(0, hi - lo, m):
                        out[i:i + m] = pop.forward(u[i:i + m]).cpu().numpy()
                        self._advance(task, min(m, hi - lo - i))
                _check_finite(out, f"embeddings {pop.name!r} of step {step}, rows [{lo}, {hi})")
                self.store.write_chunk(path, (c, 0), out)
                if observer is not None:
                    out.flags.writeable = False
                    observer.chunk(pop.name, lo, out)
            self._done_bar(task)
        barrier()

    def solve(self, step: int, plan: Plan | None = None,
              observed: RunObserver | None = None) -> dict[str, Any]:
        """Solve: the solver's global pass over the stored populations (rank 0);
        ``observed``: the solver's :class:`RunObserver` of this step's Run, joined first."""
        plan = plan if plan is not None else self.method.plan(step)
        metrics: dict[str, Any] = {}
        group = self.store.group[self.prefix(step)]
        if observed is not None:
            observed.join()
        if self.rank == 0:
            if group.attrs.get("solved"):
                metrics = dict(group.attrs["metrics"])
            else:
                ctx = self.ctx(step, plan)
                ctx.observed = observed
                metrics = plan.solver.solve(ctx)
                self.store.update_attrs(self.prefix(step), {"metrics": metrics, "solved": True})
        barrier(f"the end of step {step}'s Solve (rank 0)", alone=True)
        if self.rank != 0:
            metrics = dict(self.store.group[self.prefix(step)].attrs["metrics"])
        return metrics

    def rerun(self, step: int, plan: Plan | None = None) -> None:
        """ReRun: replayed populations with autograd against the stored solution; accumulates
        the player's gradients (all-reduced over ranks)."""
        plan = plan if plan is not None else self.method.plan(step)
        m = self.cfg.micro_batch
        ctx = self.ctx(step, plan)
        others = [mod for mod in self.method.modules().values() if mod is not plan.player]
        with frozen_parameters(*others):
            for index, pop in enumerate(plan.populations):
                if not pop.replay:
                    continue
                b, emb = self._size(pop), ctx.arrays[pop.name]
                rows = emb.chunks[0]
                loss_fn = plan.solver.rerun_loss(ctx, pop.name, self.dtype)
                chunks = self._mine(-(-b // rows))
                task = self._bar(f"step {step}: ReRun {pop.name}", len(chunks) * rows)
                for c in chunks:
                    lo, hi = c * rows, min(b, (c + 1) * rows)
                    u = self.inputs(step, index, pop, lo, hi)
                    stored = self._load(loss_fn, lo, hi)
                    ref = torch.as_tensor(emb[lo:hi]).to(self.device) if self.cfg.verify \
                        else None
                    for i in range(0, hi - lo, m):
                        e = pop.forward(u[i:i + m])
                        if ref is not None:
                            _verify(e.detach(), ref[i:i + m], self.cfg.verify_rtol, step,
                                    pop.name, lo + i)
                        loss = loss_fn(e, {k: v[i:i + m] for k, v in stored.items()})
                        if loss.requires_grad:
                            loss.backward()
                        self._advance(task, e.shape[0])
                self._done_bar(task)
        self._all_reduce_grads(plan.player)

    def replay(self, step: int, epochs: int, *, stop: Callable[[int, float], bool] | None = None,
               callback: Callable[[int, float], None] | None = None) -> list[float]:
        """Regression against a stored solution: SGD, one optimiser step per micro-batch.

        Where :meth:`rerun` accumulates the whole population's gradient into one step, this
        replays the step's stored pairs (inputs' key, per-sample solution) of the plan's first
        population for ``epochs`` passes, micro-batches in a fresh order each epoch (seeded by
        ``(seed, step, epoch)``), minimising the solver's ReRun loss rescaled to a
        per-micro-batch mean (``loss · b / m``).  Used by FIT (Chen et al.): the generator
        regresses onto the transport map of the generator that ran ``step``.
        ``callback(epoch, mean_loss)`` after each epoch; ``stop(epoch, mean_loss)`` returning
        True ends early.  Returns the per-epoch mean losses.  Under ``torch.distributed`` each
        micro-batch's rows are split over the ranks and their gradients summed before the
        optimiser steps, so every rank takes the steps of one process.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        plan = self.method.plan(step)
        pop, m = plan.populations[0], self.cfg.micro_batch
        b = self._size(pop)
        ctx = self.ctx(step, plan)
        loss_fn = plan.solver.rerun_loss(ctx, pop.name, self.dtype)
        starts = np.arange(0, b, m)
        task = self._bar(f"step {step}: replay", epochs * b)
        losses: list[float] = []
        for epoch in range(epochs):
            order = np.random.default_rng([self.cfg.seed, step, epoch, 0xF17]).permutation(starts)
            total = torch.zeros((), dtype=torch.float64)
            for lo in order:
                lo = int(lo)
                hi = min(b, lo + m)
                n = hi - lo
                # this rank's rows of the micro-batch (all of them in one process)
                mlo, mhi = lo + n * self.rank // self.world, lo + n * (self.rank + 1) // self.world
                plan.optimizer.zero_grad(set_to_none=True)
                if mhi > mlo:
                    u = self.inputs(step, 0, pop, lo, hi)[mlo - lo:mhi - lo]
                    loss = loss_fn(pop.forward(u), self._load(loss_fn, mlo, mhi)) * (b / n)
                    loss.backward()
                    total += float(loss.detach()) * n
                self._all_reduce_grads(plan.player)
                plan.optimizer.step()
                self._advance(task, n)
            all_reduce(total, "the all-reduce of the replay's loss")
            losses.append(float(total) / b)
            if callback is not None:
                callback(epoch, losses[-1])
            if stop is not None and stop(epoch, losses[-1]):
                break
        self._done_bar(task)
        return losses

    # ------------------------------------------------------------------ a step, a run
    def _zero_grads(self) -> None:
        for mod in self.method.modules().values():
            for p in mod.parameters():
                p.grad = None

    def step(self, step: int) -> StepResult:
        """One full step ``step`` (resumes a partially done one): Run, Solve, update.

        A step that raised after it began changing the models is retried from its checkpoint
        (disk or URL stores); an in-memory store has none, and such a retry is refused."""
        if self.rank == 0:
            self.store.group.require_group(self.prefix(step))
            if self._current != step:
                if self.store.in_memory:
                    if self._current is not None or self._changed:
                        raise RuntimeError(
                            f"step {step} cannot start: the models in memory are not the state "
                            f"before it (a step of this in-memory store failed after changing "
                            "them, or another engine trained them); an in-memory store keeps "
                            "no checkpoints: start again, or train with a store on disk to "
                            "resume")
                elif not self.load_checkpoint(step):
                    self.save_checkpoint(step)
                    self._current = step
        barrier(f"step {step}'s checkpoint (rank 0)", alone=True)
        plan = self.method.plan(step)
        self._current, self._changed = None, True   # from here on the models change
        group = self.store.group[self.prefix(step)]
        if group.attrs.get("phase") == "done":
            raise RuntimeError(f"step {step} is already complete in {self.store.url}")
        if self.rank != 0:
            self.load_checkpoint(step)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        if plan.prepare is not None and not group.attrs.get("solved"):
            if self.rank == 0:
                plan.prepare(self, step)
            barrier(f"step {step}'s preparation (rank 0)", alone=True)
            timings["prepare"] = time.perf_counter() - t
            t = time.perf_counter()
        overlap = self.cfg.overlap if self.cfg.overlap is not None \
            else run_leaves_cores(self.device)
        observer = self.run(step, plan, observe=overlap and not group.attrs.get("solved"))
        timings["run"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics = self.solve(step, plan, observer)   # includes waiting for the observer
        timings["solve"] = time.perf_counter() - t
        if observer is not None:
            timings["observer"] = observer.seconds
        t = time.perf_counter()
        if plan.update is not None:
            extra = plan.update(self, step)
        else:
            self._zero_grads()
            self.rerun(step, plan)
            plan.optimizer.step()
            self._zero_grads()
            extra = {}
        timings["rerun"] = time.perf_counter() - t
        finish = getattr(self.method, "finish_step", None)
        if finish is not None:
            finish(step, metrics)
        self._current = step + 1
        if self.rank == 0:
            if not self.store.in_memory:
                self.save_checkpoint(step + 1)
            # one write: "done" never lands without the step's results
            self.store.update_attrs(self.prefix(step),
                                    {"phase": "done", "timings": timings, **extra})
            self._prune(step)
        barrier(f"the end of step {step} (rank 0: checkpoint, pruning)", alone=True)
        return self._recorded(step)

    def _prune(self, step: int) -> None:
        """After step ``step``: delete the arrays and plain keys (not the attributes) of steps
        older than ``keep_steps``, and the checkpoints before the one that resumes the next
        step — those of earlier, interrupted runs too."""
        keep = self.cfg.keep_steps
        upto = step + 1 if keep is None else step + 2 - keep   # steps [_pruned, upto) go
        for j in range(self._pruned, step + 1):
            self.store.delete(self._ckpt_key(j))
            if keep is not None and j < upto and self.store.has(self.prefix(j)):
                self.store.delete_arrays(self.prefix(j))
        self._pruned = max(self._pruned, upto if keep is not None else step + 1)

    def train(self, steps: int, callback: Callable[[StepResult], None] | None = None
              ) -> list[StepResult]:
        """Train until ``steps`` steps are complete, resuming from the store's last state."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        start = self.completed_steps()
        if start > 0 and self._current != start:
            if self.store.in_memory:
                raise RuntimeError(f"the in-memory store has {start} completed steps but this "
                                   "engine's models are not their result (an in-memory store "
                                   "keeps no checkpoints); train them with the engine that "
                                   "trained the earlier steps, or with a store on disk")
            if not self.load_checkpoint(start):
                raise StoreCorruptError(f"{self.store.url} has {start} completed steps but no "
                                        f"checkpoint for step {start} (deleted): it cannot "
                                        "resume; start again with a new --store")
        if start > 0 and self.rank == 0 and not self.store.in_memory:
            self._prune(start - 1)   # finishes the pruning a kill may have interrupted
        stop = getattr(self.method, "stop", None)
        if start > 0 and stop is not None and stop(self.history()):
            return []             # a run that stopped by its method's rule stays stopped
        if getattr(self.method, "real", None) is not None and \
                not self.store.is_complete("real/embeddings"):  # False when absent too
            self.embed_real()
        results: list[StepResult] = []
        task = self._bar("training steps", steps)
        self._advance(task, start)
        for k in range(start, steps):
            res = self.step(k)
            results.append(res)
            if callback is not None:
                callback(res)
            self._advance(task)
            if stop is not None and stop(results):
                break
        self._done_bar(task)
        return results


# --------------------------------------------------------------------------- one generator
class GeneratorMethod:
    """One generator ``G`` matched, through a fixed embedding ``E``, to static real data by a
    solver: the method of Run-Sort-ReRun (:class:`ootrain.methods.rsr.SlicedSolver`) and of
    OTS + FIT (:class:`ootrain.methods.gradual.AssignmentSolver`).

    Every step has one population, ``embeddings`` = ``E(G(z))`` for ``z`` drawn by
    ``latent_sampler`` (default ``N(0, I)`` of the engine's latent width, built on first use);
    the real data [n, D] (numpy or zarr array) is embedded once through ``E`` (``real=None``:
    the solver holds its own targets, as OTS + FIT's does).
    ``generator_spec``/``embedding_spec`` name the models in the fingerprint.
    """

    def __init__(self, generator: nn.Module, embedding: nn.Module, solver: Solver, real: Any,
                 optimizer: torch.optim.Optimizer, latent_sampler: Sampler | None = None, *,
                 latent_dim: int | None = None, generator_spec: str = "custom",
                 embedding_spec: str = "custom") -> None:
        if real is not None and getattr(real, "ndim", None) != 2:
            raise ValueError(f"real data must be a 2-D array [n, D], got shape "
                             f"{getattr(real, 'shape', type(real))}")
        if real is not None and not np.issubdtype(np.dtype(real.dtype), np.floating):
            raise ValueError(f"real data must be floating point, got dtype {real.dtype}")
        self.G, self.E, self.solver, self.real = generator, embedding, solver, real
        self.real_embedding = embedding
        self.optimizer = optimizer
        self.latent_sampler = latent_sampler
        self.latent_dim = latent_dim
        self.specs = (generator_spec, embedding_spec)

    def config(self) -> dict[str, Any]:
        return {"solver": self.solver.config(), "generator": self.specs[0],
                "embedding": self.specs[1],
                "real": None if self.real is None else describe_array(self.real)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.G, "embedding": self.E}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.optimizer}

    def embed(self, z: Tensor) -> Tensor:
        return self.E(self.G(z))

    def sampler(self, latent_dim: int, dtype: str) -> Sampler:
        if self.latent_sampler is None:
            self.latent_sampler = standard_normal(latent_dim, np.dtype(dtype))
        return self.latent_sampler

    def bind(self, config: EngineConfig) -> "GeneratorMethod":
        """Fix the latent sampler from the engine's config (the engine calls it)."""
        self.sampler(config.latent_dim, config.dtype)
        return self

    def plan(self, step: int) -> Plan:
        if self.latent_sampler is None:
            raise RuntimeError("GeneratorMethod needs a latent sampler: pass latent_sampler= "
                               "or call bind(config)")
        pop = Population("embeddings", self.latent_sampler, self.embed)
        return Plan([pop], self.solver, self.optimizer, self.G)


# --------------------------------------------------------------------------- checks
def _check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))
        raise NonFiniteError(f"{what}: {len(bad)} non-finite values (NaN/Inf), first at index "
                             f"{tuple(int(i) for i in bad[0])}; nothing was stored for them; "
                             f"{DIVERGED}")


def _verify(e: Tensor, ref: Tensor, rtol: float, step: int, name: str, row: int) -> None:
    scale = ref.abs().max().clamp_min(1e-12)
    err = (e - ref.to(e.dtype)).abs().max()
    if err > rtol * scale:
        raise NondeterministicModelError(
            f"step {step}: ReRun embeddings {name!r} of rows starting at {row} differ from "
            f"Run's by {err.item():.3g} (relative {(err / scale).item():.3g} > {rtol}); the "
            "model is not deterministic between passes (dropout, batch-norm statistics, or "
            "weights changed between Run and ReRun)")


