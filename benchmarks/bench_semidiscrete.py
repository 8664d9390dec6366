"""Semi-discrete OT solvers side by side (issue 13): the marginal χ² error against solver time
(curves, PNG), and the time, samples, argmin evaluations and peak RSS each method needs to
reach χ² ≤ 0.05 and χ² ≤ 0.01, every method judged by the same external χ² check.

Problem: source ``mu`` = standard Gaussian in ``d`` (a sampler), targets = ``N`` points drawn
from a seeded Gaussian mixture (8 components, centres ~ N(0, I), std 0.5), uniform weights
``nu_j = 1 / N``, cost ``sqeuclidean`` (``||x - y||^2``; ``--cost l1`` as an option, not for
OTT).  Grid ``--n`` × ``--d`` (default N = 10^3, 10^4, 10^5, d = 2, 16, 64), targets
``--targets`` (default 0.05 and 0.01).  Methods (``--methods``):

- ``ootrain``: ``SemiDiscreteOT(Y, cost).fit(sampler, chi2_tol=target)`` with every other
  argument at its default (backend ``auto``, its own batch, step and checks), except
  ``max_iter`` (10^12: the time cap below is the budget) and the progress bar (off).  It
  **stops on its own certificate** (its unbiased χ² estimate on fresh samples plus 2 standard
  errors ≤ ``chi2_tol``), so it runs once per target, and its time, samples and argmin
  evaluations include what its own checks cost.  Its final potential is then measured by the
  external check below (reported; a run "reaches" the target when it stopped certified and that
  external estimate is ≤ the target).
- ``ootrain-oracle``: the same averaged stochastic ascent with its own checks off (``check_every`` = 10^12, ``chi2_tol`` = 1e-12), its
  average ``psi_bar`` (read from the solver's frame inside the sampler callback: no restart)
  stopped by the external check at iterations 1, 2, 3, … growing by ``--check-ratio`` (1.25).
  It needs the solver's ``check_every`` and a local ``psi_bar``; where the solver no longer has
  them the row reports the error.
- ``pot``: ``ot.semidiscrete.solve_semidiscrete(Y, sampler_source=callable, metric=...,
  batch_size=32, max_iter=∞, log=True)`` with all its defaults (``lr0 = sqrt(N × batch)``,
  ``t^-2/3`` decay, DRAG regularisation ``0.1 / sqrt(t)``, Polyak averaging), numpy float32
  (``POT_BACKEND_DISABLE_JAX=1``, else POT imports jax where it is installed, +130 MiB RSS).
  Its batch is its own default 32 (``--pot-batch``): with ``lr0`` growing as ``sqrt(batch)``,
  batch 4096 makes the first iterates blow up.  It has no stopping rule, so one call runs and
  its Polyak average ``g_avg`` (what a call with ``max_iter`` = that many iterations returns;
  read from the solver's frame inside the sampler callback, no restart) is checked at
  iterations ``N / batch`` (about N samples), then growing by ``--check-ratio``: oracle
  stopping, favourable to POT; its time to a target is exact for the iterate that passed,
  which may have been reached up to 25 % earlier.
- ``ott``: OTT-JAX's ``ott.solvers.linear.semidiscrete.SemidiscreteSolver`` (``pip install
  ott-jax``, the ``bench`` extra; "not installed" otherwise) on
  ``SemidiscretePointCloud(jax.random.normal, Y, epsilon=0)`` with uniform weights: cost
  ``SqEuclidean`` (its default, ``||x - y||^2``, as ours), epsilon 0 = the unregularised problem
  (its default ``epsilon=None`` is entropic, a different problem).  OTT has no default optimizer
  / batch / iteration count: its semidiscrete tutorial's ``optax.sgd(0.1)`` and
  ``batch_size=128`` are used (``--ott-optimizer``, ``--ott-lr``, ``--ott-batch``; 0 = ootrain's
  ``default_batch(N)``); ``num_iterations`` = 10^6, a cap that does not bind; every other
  argument at its default (``potential_ema=0.99``, its own χ² check every 1000 iterations on 16
  × batch samples, ``threshold=1e-3``, constant epsilon schedule).  Its solution ``g_ema`` (what
  ``SemidiscreteOutput.g`` returns) is checked on the same grid as POT's, and at most ~2 s of
  solver time apart; its own stop (its χ² ≤ threshold, or a non-finite loss) ends the run, with
  one last external check there.  Its jitted loop cannot be interrupted, so ``run_ott`` rebuilds
  ``__call__``'s loop from the public ``SemidiscreteSolver.step`` (same keys, same error
  schedule and stop rule; bit-identical to ``__call__`` on N = 50, 2500 iterations, ott-jax
  0.6.0) as a ``while_loop`` run in segments up to each check, the state carried over: no
  restart.  JAX compilation (one executable, ahead of time) is a one-time start-up cost,
  reported as ``compile_s`` and not charged.  With ``--threads 1`` XLA gets
  ``--xla_cpu_multi_thread_eigen=false`` (one thread).

External check (the same for every method): the marginal χ² error ``sum_j (p_j - nu_j)^2 /
nu_j`` of the hard map ``argmin_j c(x, y_j) - psi_j`` (``ootrain.ot.ctransform.c_transform``,
backend auto; OTT's ``g`` and POT's potential are ``psi``), estimated without bias by
``ootrain.ot.semidiscrete.chi2_estimate(counts, counts, m, nu)`` (for the hard map the sums of
squares are the counts) on prefixes of one fixed, seeded evaluation sample (the same points
for every method and check: common random numbers).  Target ``t`` is decided on the prefix of
``m_t`` points, the smallest whose standard error for a perfectly balanced map,
``chi2_floor(nu, m_t) ≈ sqrt(2 N) / m_t``, is at most ``f × t`` (``f`` = ``--floor-frac``, 1/4;
capped at ``--eval-max``): m ≈ 3.8e3 / 1.8e4 at N = 10^3 and 3.6e4 / 1.8e5 at N = 10^5 for
the 0.05 / 0.01 targets.  A target counts as **reached at the first check whose estimate on
its prefix is ≤ the target** (the estimate, not estimate + 2 s.e.: an oracle stop; the s.e.
is printed, ≤ f × target near the target; taking the first check below the target favours a
lucky draw by about one s.e. at most).  A check pursues the loosest target not reached yet,
then, once that one is reached, the next on its longer prefix; on the way, at 4096, 8192, …
points, it gives up as soon as ``chi2 − 2 s.e. >`` the target pursued (then it is clearly not
met; the check is recorded with its prefix size and flagged ``early``), so checks far from
the targets cost a few thousand points.  The L1 imbalance ``||nu − P_hat||_1`` of the same
counts is recorded too (biased up by its noise floor ``sqrt(2 (N − 1) / (π m))``, printed:
0.19 at N = 10^3 and 0.59 at N = 10^5 on the 0.01 prefixes, so only a coarse extra).  Each run
ends with one check of its final potential on the longest prefix (own-stop runs: their own
target's), with the transport cost and the dual value.

What is charged: solver time only, with the source sampling (float32 Gaussians: torch's in
ootrain's callback, numpy's in POT's, ``jax.random.normal`` inside OTT's loop), excluding the
external checks (the clock is paused and the RSS sampler ignores them), the process start,
imports and JAX compilation.  Samples = source points the solver drew (its own checks included);
argmin evaluations = source points whose c-transform (argmin over the N targets, or POT's soft
weights) the solver computed, its own checks included: counted for ootrain by wrapping the
``ootrain.ot.ctransform`` / ``ootrain.ot.sharded`` functions the ``ootrain`` modules call (so
repeated assignments of the same sample count each time), ``iterations × batch`` for POT,
``iterations × batch + (its checks) × 16 × batch`` for OTT (its checks assign each sample twice;
counted once); cost evaluations = argmin evaluations × N.  Peak RSS is sampled every 5 ms during
solver time (peak and peak minus the RSS before the solver started: imports, targets, the
evaluator's warm-up).

Runs: each (method, N, d) — and each target for ``ootrain`` — is a fresh subprocess under a
watchdog (``--mem-limit`` RSS, ``--wall-limit`` wall seconds incl. evaluation, default 6 ×
``--max-seconds`` + 600; an oracle-stopped run killed by it keeps the trace of its checks so
far, printed by the child after each one).  Oracle-stopped methods run until the tightest target
is reached or ``--max-seconds`` (default 300) of charged time (tested at each sampler call, so
one iteration may overshoot); ootrain's own-stop runs until their certificate or that cap.
``--skip-after-fail`` skips a method at larger N (same d) once it reached no target.  Solver
threads ``--threads`` (torch, faiss, BLAS, XLA; default 1), evaluation threads
``--eval-threads``; both recorded in the output.  Output: per-run lines, one markdown table per
target (with the time ratio to the better anchor, POT or OTT: issue 13's aim is ≥ 10× faster
than it at N ≥ 10^4, never slower), a table of runs; ``--json PATH`` (settings, machine, every
run with its full trace: each check's charged time, χ², s.e., sample size, samples, argmin
evaluations, peak RSS; rewritten after each run), ``--csv PATH`` (the traces, one row per check,
``kind`` = external, and ootrain's own checks, ``kind`` = own) and ``--plot PATH.png`` (one
panel per (N, d): χ² against charged seconds, both log, per oracle-stopped method, lines at the
targets, ootrain's own-stop runs as markers at (its time, external χ²), hollow where the run did
not reach its target).  ``--from-json PATH`` re-makes the tables (and ``--plot``) of a saved run
without running anything.

    python benchmarks/bench_semidiscrete.py --json sd.json --csv sd.csv --plot sd.png  # full grid
    python benchmarks/bench_semidiscrete.py --n 1000 --d 2 16 --max-seconds 60 \\
        --json sd.json --plot sd.png                                            # smoke (~5 min)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import inspect
import json
import math
import os
import sys
import threading
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (human_bytes, loadavg, machine_header, run_watched,  # noqa: E402
                     set_threads, table)

METHODS = ("ootrain", "ootrain-oracle", "pot", "ott")
ANCHORS = ("pot", "ott")
POT_METRIC = {"sqeuclidean": "sqeuclidean", "l1": "cityblock"}

# ==================================================================== child: one run
class _Stop(Exception):
    """Raised from inside a solver's sampler callback to end its run."""


def make_targets(n: int, d: int, seed: int) -> np.ndarray:
    """``[n, d]`` float32 from an 8-component Gaussian mixture (centres ~ N(0, I), std 0.5)."""
    rng = np.random.default_rng([seed, n, d])
    centres = rng.standard_normal((8, d))
    comp = rng.integers(0, 8, size=n)
    return (centres[comp] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


def eval_size(n: int, target: float, frac: float, cap: int) -> int:
    """Smallest ``m`` (to 1 %) with ``chi2_floor(nu, m) <= frac * target``, at most ``cap``."""
    import torch
    from ootrain.ot.semidiscrete import chi2_floor

    nu = torch.full((n,), 1.0 / n, dtype=torch.float64)
    m = max(2, math.ceil(math.sqrt(2 * max(n - 1, 1)) / (frac * target)))
    while chi2_floor(nu, m) > frac * target:
        m = math.ceil(m * 1.01)
    return min(m, cap)


class Meter:
    """Charged (solver) time and peak RSS of solver phases; ``pause()`` excludes a block."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.t0 = 0.0
        self.excluded = 0.0
        self.solver = False
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = False
        self._th = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop:
            if self.solver:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def start(self) -> None:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = self.proc.memory_info().rss
        self._th.start()
        self.t0 = time.perf_counter()
        self.solver = True

    def stop(self) -> float:
        t = self.charged()
        self.solver = False
        self._stop = True
        return t

    def charged(self) -> float:
        return time.perf_counter() - self.t0 - self.excluded

    @contextlib.contextmanager
    def pause(self):
        t = time.perf_counter()
        self.solver = False
        try:
            yield
        finally:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.excluded += time.perf_counter() - t
            self.solver = True


class Evaluator:
    """The external check: unbiased marginal χ² (and L1 imbalance) of a potential's hard map
    on prefixes of one fixed evaluation sample, regenerated chunk by chunk from a seed (no
    memory held between checks).  ``sizes[t]``: the prefix that decides target ``t``."""

    CHUNK = 4096        # rows per seeded chunk = the first prefix tested
    CALL = 1 << 16      # rows per c_transform call

    def __init__(self, y, cost: str, sizes: dict[float, int], seed: int,
                 threads: tuple[int, int]):
        import torch
        from ootrain.ot.costs import parse_cost
        from ootrain.ot.ctransform import c_transform
        from ootrain.ot.semidiscrete import chi2_estimate, chi2_floor
        self.torch, self.c_transform, self.cost = torch, c_transform, parse_cost(cost)
        self.chi2_estimate, self.chi2_floor = chi2_estimate, chi2_floor
        self.y, self.n, self.d = y, y.shape[0], y.shape[1]
        self.nu = torch.full((self.n,), 1.0 / self.n, dtype=torch.float64)
        self.sizes, self.m, self.seed = sizes, max(sizes.values()), seed
        self.eval_threads, self.solver_threads = threads
        self.pairs = 0.0   # c-transform pairs evaluated (reported)

    def floor(self, m: int) -> float:
        """Standard error of a perfectly balanced map's χ² estimate on ``m`` points."""
        return self.chi2_floor(self.nu, m)

    def l1_floor(self, m: int) -> float:
        """Mean L1 imbalance of a perfectly balanced map on ``m`` points (uniform nu)."""
        return math.sqrt(2 * max(self.n - 1, 0) / (math.pi * m))

    def _chunk(self, k: int):
        g = self.torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        return self.torch.randn(self.CHUNK, self.d, generator=g)

    def _rows(self, a: int, b: int):
        k0, k1 = a // self.CHUNK, (b - 1) // self.CHUNK
        x = self.torch.cat([self._chunk(k) for k in range(k0, k1 + 1)])
        return x[a - k0 * self.CHUNK:b - k0 * self.CHUNK]

    def warm_up(self) -> None:
        """First call of the backend (imports, faiss / KeOps set-up) outside any clock."""
        self.c_transform(self._chunk(0)[:1024], self.y, self.torch.zeros(self.n), self.cost,
                         "auto")

    def check(self, psi, pending=(), *, m_full: int | None = None,
              want_cost: bool = False) -> dict:
        """Decide the ``pending`` targets (loosest first) on prefixes of the sample.

        Target ``t`` is decided on the prefix ``sizes[t]``: reached when the estimate there is
        ``<= t`` (then the next, tighter one is pursued on a longer prefix), else the check
        ends.  On the way, at 4096, 8192, … points, the check gives up (``early``) as soon as
        ``chi2 - 2 s.e. >`` the target pursued.  Without ``pending``, ``m_full`` points
        (default: the largest size) are measured.  Returns the estimate on the last prefix
        measured and ``decided`` = {target: (chi2, s.e., m)} for the targets reached."""
        torch = self.torch
        psi = torch.as_tensor(np.asarray(psi, dtype=np.float32)) if not isinstance(
            psi, torch.Tensor) else psi.detach().to(torch.float32).cpu()
        pend = sorted(pending, reverse=True)
        m_all = max(self.sizes[t] for t in pend) if pend else (m_full or self.m)
        stops, t = set(self.sizes[t] for t in pend) | {m_all}, self.CHUNK
        while t < m_all:
            stops.add(t)
            t *= 2
        counts = torch.zeros(self.n, dtype=torch.float64)
        m, cost_sum, value_sum, early, decided = 0, 0.0, 0.0, False, {}
        set_threads(self.eval_threads)
        try:
            for stop in sorted(stops):
                while m < stop:
                    b = min(stop, m + self.CALL)
                    x = self._rows(m, b)
                    idx, value = self.c_transform(x, self.y, psi, self.cost, "auto")
                    counts += torch.bincount(idx, minlength=self.n).to(torch.float64)
                    if want_cost:
                        cost_sum += float(self.cost.pairwise(x, self.y[idx]).double().sum())
                        value_sum += float(value.double().sum())
                    self.pairs += x.shape[0] * float(self.n)
                    m = b
                if not pend:
                    continue
                c2, se = self.chi2_estimate(counts, counts, m, self.nu)
                while pend and m >= self.sizes[pend[0]] and c2 <= pend[0]:
                    decided[pend.pop(0)] = (c2, se, m)
                if not pend:
                    break
                if m >= self.sizes[pend[0]]:          # decided: not reached
                    break
                if c2 - 2 * se > pend[0]:
                    early = True
                    break
        finally:
            set_threads(self.solver_threads)
        chi2, se = self.chi2_estimate(counts, counts, m, self.nu)
        out = {"chi2": chi2, "se": se, "m": m, "early": early, "floor": self.floor(m),
               "l1": float((counts / m - self.nu).abs().sum()), "l1_floor": self.l1_floor(m),
               "decided": decided}
        if want_cost:
            out["cost"] = cost_sum / m
            out["dual"] = value_sum / m + float(psi.double().mean())   # uniform nu
        return out


class Recorder:
    """The external checks of one oracle-stopped run: its trace (every check) and, per
    target, the first check that reached it.  After each check a partial result line is
    printed, so that a run killed by the watchdog keeps its trace."""

    def __init__(self, args, ev: Evaluator, meter: Meter):
        self.targets = sorted(set(args.targets), reverse=True)
        self.ev, self.meter = ev, meter
        self.trace: list[dict] = []
        self.hit: dict[float, dict] = {}
        self.psi = None

    def pending(self) -> list[float]:
        return [t for t in self.targets if t not in self.hit]

    def done(self) -> bool:
        return not self.pending()

    def check(self, psi, *, iterations: int, samples: int, argmin: int) -> None:
        t, peak = self.meter.charged(), self.meter.peak
        with self.meter.pause():
            r = self.ev.check(psi, self.pending())
            e = {"t": t, "chi2": r["chi2"], "se": r["se"], "m": r["m"], "early": r["early"],
                 "l1": r["l1"], "iterations": iterations, "samples": samples,
                 "argmin": argmin, "peak": peak}
            self.trace.append(e)
            self.psi = psi
            for tg, (c2, se, m) in r["decided"].items():
                self.hit[tg] = {**e, "chi2": c2, "se": se, "m": m}
            print(json.dumps({"partial": True, "charged": t, "trace": self.trace,
                              "hit": {f"{k:g}": v for k, v in self.hit.items()}}), flush=True)


class ArgminCounter:
    """Counts the source rows passed to the c-transform functions (those of
    ``ootrain.ot.ctransform`` and ``ootrain.ot.sharded``) that the other loaded ``ootrain``
    modules call: the solver's argmin evaluations.  The evaluator holds the unwrapped
    function, so the external checks are not counted."""

    SOURCES = ("ootrain.ot.ctransform", "ootrain.ot.sharded")

    def __init__(self) -> None:
        self.rows = 0
        self.wrapped: list[str] = []

    def install(self) -> None:
        import torch

        def wrap(f):
            def counted(*a, **k):
                x = a[0] if a else k.get("x")
                if isinstance(x, torch.Tensor) and x.ndim == 2:
                    self.rows += int(x.shape[0])
                return f(*a, **k)
            counted.__wrapped__ = f
            return counted

        for mname, mod in list(sys.modules.items()):
            if not mname.startswith("ootrain") or mname in self.SOURCES or mod is None:
                continue
            for name, f in list(vars(mod).items()):
                if (inspect.isfunction(f) and f.__module__ in self.SOURCES
                        and not name.startswith(("check", "parse", "resolve"))):
                    setattr(mod, name, wrap(f))
                    self.wrapped.append(f"{mname}.{name}")


def _frame_with(name: str) -> dict:
    """Locals of the nearest caller frame that has a local ``name`` (the solver's loop)."""
    f = sys._getframe(2)
    while f is not None and name not in f.f_locals:
        f = f.f_back
    if f is None:
        raise RuntimeError(f"no solver frame with a local {name!r} (solver internals changed)")
    return f.f_locals


def run_pot(args, y: np.ndarray, rec: Recorder, meter: Meter, st: dict) -> None:
    from ot.semidiscrete import solve_semidiscrete

    d = y.shape[1]
    rng = np.random.default_rng([args.seed, 1, y.shape[0], d])
    nxt = [max(1, math.ceil(y.shape[0] / args.pot_batch))]   # first check: ~N samples drawn

    def sampler(b: int) -> np.ndarray:
        st["iterations"] = done = st["calls"]          # iterations completed before this call
        st["calls"] += 1
        over = meter.charged() > args.max_seconds
        if done >= nxt[0] or over:
            loc = _frame_with("g_avg")
            g = np.array(loc["g_avg"], copy=True)       # average of iterates 1..done
            rec.check(g, iterations=done, samples=st["samples"], argmin=st["samples"])
            if rec.done() or over:
                raise _Stop
            nxt[0] = max(done + 1, math.ceil(done * args.check_ratio))
        st["samples"] += b
        return rng.standard_normal((b, d), dtype=np.float32)

    meter.start()
    try:
        solve_semidiscrete(y, sampler_source=sampler, metric=POT_METRIC[args.cost],
                           max_iter=10**12, batch_size=args.pot_batch, log=True)
    except _Stop:
        pass
    st["argmin"] = st["samples"]


def ott_batch(args, n: int) -> int:
    """OTT's batch: ``--ott-batch`` (its tutorial's 128), or 0 for ootrain's
    ``default_batch(N)``."""
    if args.ott_batch:
        return args.ott_batch
    from ootrain.ot.semidiscrete import default_batch
    return default_batch(n)


def run_ott(args, y: np.ndarray, rec: Recorder, meter: Meter, st: dict) -> None:
    """OTT-JAX's ``SemidiscreteSolver`` driven segment by segment with its own ``step``.

    ``SemidiscreteSolver.__call__`` is one jitted ``while_loop`` (``fixpoint_iter``) that stops
    only on its own chi² criterion; its ``callback`` (a ``jax.debug.callback`` per iteration)
    cannot end it, and ``g_init`` restarts the optimizer's state and the EMA.  So the loop is
    rebuilt from the solver's public ``step`` exactly as ``__call__`` runs it (same keys
    ``fold_in(rng, it)``, ``compute_error`` on the last iteration of each block of
    ``error_eval_every``, on ``rng_error``; the same stop: error ≤ threshold or a non-finite
    loss, tested after each block), as one jitted ``while_loop`` up to a traced ``stop``: the
    state (potential, EMA, optimizer state) carries over between segments, so nothing restarts
    and nothing is charged twice.  It is compiled ahead of time (one executable for every
    segment length), before the clock starts: compilation is reported apart (``compile_s``),
    not charged.  The solution OTT returns is ``g_ema`` (``SemidiscreteOutput.g =
    state.g_ema``); that is what is checked."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import optax
    from ott.geometry import semidiscrete_pointcloud as sdpc
    from ott.problems.linear import semidiscrete_linear_problem as sdlp
    from ott.solvers.linear import semidiscrete as sd

    if args.cost != "sqeuclidean":
        raise ValueError("the OTT adapter supports --cost sqeuclidean only")
    n, d = y.shape
    batch = ott_batch(args, n)
    # SqEuclidean (OTT's default cost) = ||x - y||^2, no 1/2: the same cost as ours.  epsilon 0:
    # the unregularised problem (hard assignments), as in OTT's semidiscrete tutorial.
    geom = sdpc.SemidiscretePointCloud(jr.normal, jnp.asarray(y), epsilon=0.0)
    prob = sdlp.SemidiscreteLinearProblem(geom)                 # uniform weights
    solver = sd.SemidiscreteSolver(num_iterations=args.ott_num_iterations, batch_size=batch,
                                   optimizer=getattr(optax, args.ott_optimizer)(args.ott_lr))
    rng, rng_error = jr.split(jr.key(args.seed * 7 + n + d), 2)    # as __call__ splits its rng
    every = solver.error_eval_every
    per_check = solver.error_num_repeats * (solver.error_batch_size or batch)
    g0 = jnp.zeros(n, dtype=jnp.float32)
    cap = solver.num_iterations
    state = sd.SemidiscreteState(                              # as __call__ initialises it
        it=jnp.array(0), epsilon=jnp.asarray(jnp.nan, jnp.float32), g=g0, g_ema=jnp.copy(g0),
        opt_state=solver.optimizer.init(g0),
        losses=jnp.full((cap,), jnp.inf, jnp.float32),
        grad_norms=jnp.full((cap,), jnp.inf, jnp.float32),
        errors=jnp.full(math.ceil(cap / every), jnp.inf, jnp.float32))

    def own_stop(s):     # __call__'s cond_fn, tested after each block of `every` iterations
        k = jnp.maximum(s.it, 1)
        done = (solver.threshold >= jnp.abs(s.errors[k // every - 1])) | ~jnp.isfinite(
            s.losses[k - 1])
        return (s.it > 0) & (s.it % every == 0) & done

    def advance(s, stop):
        def body(s):
            return solver.step(jr.fold_in(rng, s.it), s, prob,
                               compute_error=(s.it % every) == every - 1, rng_error=rng_error)
        return jax.lax.while_loop(lambda s: (s.it < stop) & ~own_stop(s), body, s)

    t = time.perf_counter()
    run = jax.jit(advance, donate_argnums=0).lower(state, jnp.asarray(1)).compile()
    stopped = jax.jit(own_stop).lower(state).compile()
    st["compile_s"] = time.perf_counter() - t

    meter.start()
    done, nxt, per_it = 0, max(1, math.ceil(n / batch)), None
    while True:
        stop = nxt
        if per_it is not None:          # segments of at most ~2 s, none far past the time cap
            left = max(0.0, args.max_seconds - meter.charged())
            stop = min(stop, done + 1 + int(min(1.02 * left, 2.0) / per_it))
        stop = min(stop, cap)
        t = meter.charged()
        state = run(state, jnp.asarray(stop))
        g = np.array(state.g_ema)                  # blocks until the segment is done
        per_it = (meter.charged() - t) / max(1, stop - done)
        done = int(state.it)
        st["iterations"] = done
        st["samples"] = st["argmin"] = done * batch + (done // every) * per_check
        own = bool(stopped(state))       # OTT's own rule (chi² <= threshold, or a NaN loss)
        rec.check(g, iterations=done, samples=st["samples"], argmin=st["argmin"])
        if own:
            st["own_stop"] = True
            return
        if (rec.done() or meter.charged() > args.max_seconds or done >= cap
                or not np.isfinite(g).all()):
            return
        if done >= nxt:
            nxt = max(done + 1, math.ceil(done * args.check_ratio))


def run_ootrain_oracle(args, y: np.ndarray, rec: Recorder, meter: Meter, st: dict,
                       counter: ArgminCounter) -> None:
    import torch
    from ootrain.ot.semidiscrete import SemiDiscreteOT

    n, d = y.shape
    g = torch.Generator().manual_seed(args.seed * 7 + n + d)
    params = inspect.signature(SemiDiscreteOT.fit).parameters
    if "check_every" not in params:
        raise RuntimeError("fit has no check_every: its own checks cannot be switched off")
    # its own checks never happen (check_every beyond any run); its tolerance never binds
    kw = {"check_every": 10**12, "max_iter": 10**12, "rng": args.seed,
          ("chi2_tol" if "chi2_tol" in params else "tol"): 1e-12}
    if "progress" in params:
        kw["progress"] = False
    if args.batch:
        kw["batch"] = args.batch
    nxt = [1]

    def sampler(k: int, rng):
        # the project's convention is draw(k, rng); the draws stay on the torch stream ``g``
        # (rng unused) so that runs remain comparable with earlier results
        loc = _frame_with("psi_bar")
        done = loc.get("it", 1) - 1                       # iterations completed
        st["iterations"] = done
        over = meter.charged() > args.max_seconds
        if done >= nxt[0] or over:
            bar = loc["psi_bar"].clone()                   # the average of iterates 1..done
            rec.check(bar, iterations=done, samples=st["samples"], argmin=counter.rows)
            if rec.done() or over:
                raise _Stop
            nxt[0] = max(done + 1, math.ceil(done * args.check_ratio))
        st["samples"] += k
        return torch.randn(k, d, generator=g)

    meter.start()
    solver = SemiDiscreteOT(torch.from_numpy(y), args.cost)     # defaults: backend auto
    try:
        solver.fit(sampler, **kw)
        raise RuntimeError("fit returned (its max_iter or a check stopped it)")
    except _Stop:
        pass
    st["argmin"] = counter.rows


class _TimedHistory(list):
    """``SemiDiscreteOT.history`` that stamps each record with the charged time."""

    def __init__(self, meter: Meter) -> None:
        super().__init__()
        self.meter = meter

    def append(self, rec) -> None:
        if isinstance(rec, dict):
            rec["t"] = self.meter.charged()
        super().append(rec)


def run_ootrain(args, y: np.ndarray, ev: Evaluator, meter: Meter, st: dict,
                counter: ArgminCounter) -> None:
    """``fit(sampler, chi2_tol=target)`` with its defaults, stopped by its own certificate."""
    import torch
    from ootrain.ot.semidiscrete import SemiDiscreteOT

    n, d = y.shape
    g = torch.Generator().manual_seed(args.seed * 7 + n + d)
    params = inspect.signature(SemiDiscreteOT.fit).parameters

    def sampler(k: int, rng):
        if meter.charged() > args.max_seconds:
            with contextlib.suppress(RuntimeError):   # the average so far, where it is a local
                st["psi"] = _frame_with("psi_bar")["psi_bar"].clone()
            raise _Stop
        st["samples"] += k
        return torch.randn(k, d, generator=g)

    kw = {"chi2_tol": args.own_target, "max_iter": 10**12, "rng": args.seed}
    if "progress" in params:
        kw["progress"] = False
    if args.batch:
        kw["batch"] = args.batch
    meter.start()
    solver = SemiDiscreteOT(torch.from_numpy(y), args.cost)     # defaults: backend auto
    solver.history = _TimedHistory(meter)
    try:
        solver.fit(sampler, **kw)
        st["time"] = meter.charged()
        st["own_stop"] = True
        st["psi"] = solver.potentials
    except _Stop:
        pass
    st["argmin"] = counter.rows
    hist = [h for h in solver.history if isinstance(h, dict)]
    keep = ("t", "iteration", "chi2", "chi2_noise", "imbalance", "samples", "early",
            "certified")
    st["own_history"] = [{k: h[k] for k in keep if k in h} for h in hist]
    if hist:
        st["iterations"] = hist[-1].get("iteration", 0)
        st["certified"] = bool(hist[-1].get("certified", False)) and st["own_stop"]
        st["own_chi2"], st["own_se"] = hist[-1].get("chi2"), hist[-1].get("chi2_noise")


T_START = time.perf_counter()


def child(args: argparse.Namespace) -> None:
    if args.method == "ott":           # before jax is imported: CPU only, --threads 1 = 1 thread
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if args.threads == 1:
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                       " --xla_cpu_multi_thread_eigen=false").strip()
    import torch

    set_threads(args.threads)
    if args.method == "pot":
        import ot.semidiscrete  # noqa: F401  (import before the RSS baseline)
    elif args.method == "ott":
        import ott.solvers.linear.semidiscrete  # noqa: F401
    import ootrain.ot.semidiscrete  # noqa: F401  (the evaluator's estimator)
    n, d = args.child_n, args.child_d
    y = make_targets(n, d, args.seed)
    sizes = {t: eval_size(n, t, args.floor_frac, args.eval_max) for t in args.targets}
    m = max(sizes.values())
    ev = Evaluator(torch.from_numpy(y), args.cost, sizes, args.seed + 12345,
                   (args.eval_threads, args.threads))
    ev.warm_up()
    counter = ArgminCounter()
    if args.method.startswith("ootrain"):
        counter.install()
    meter = Meter()
    rec = Recorder(args, ev, meter)
    st = {"calls": 0, "iterations": 0, "samples": 0, "argmin": 0, "time": None, "psi": None,
          "own_stop": False, "certified": False}
    status = "ok"
    try:
        if args.method == "pot":
            run_pot(args, y, rec, meter, st)
        elif args.method == "ott":
            run_ott(args, y, rec, meter, st)
        elif args.method == "ootrain-oracle":
            run_ootrain_oracle(args, y, rec, meter, st, counter)
        else:
            run_ootrain(args, y, ev, meter, st, counter)
    except Exception as e:   # report, do not crash the benchmark
        status = f"error: {type(e).__name__}: {e}"[:160]
    charged = meter.stop()
    res = {"charged": charged, "iterations": st["iterations"], "samples": st["samples"],
           "argmin": st["argmin"], "peak": meter.peak, "base": meter.base, "eval_m": m,
           "eval_sizes": {f"{t:g}": v for t, v in sizes.items()}, "eval_floor": ev.floor(m),
           "threads": args.threads, "eval_threads": args.eval_threads,
           "trace": rec.trace, "checks": len(rec.trace),
           "hit": {f"{t:g}": e for t, e in rec.hit.items()}}
    if args.method.startswith("ootrain"):
        res["argmin_wrapped"] = counter.wrapped
        res["argmin_counted"] = counter.rows >= st["samples"] > 0
    psi = st["psi"] if st["psi"] is not None else rec.psi
    if psi is not None:
        # the final potential on the prefix of the run's own target (own stop), else on all
        r = ev.check(psi, m_full=sizes.get(args.own_target, m), want_cost=True)
        res["final"] = {k: r[k] for k in ("chi2", "se", "m", "floor", "l1", "l1_floor", "cost",
                                          "dual")}
    if args.own_target is not None:                # ootrain's own stop
        res.update(own_target=args.own_target, own_stop=st["own_stop"],
                   certified=st["certified"], own_chi2=st.get("own_chi2"),
                   own_se=st.get("own_se"), own_history=st.get("own_history", []))
        reached = st["certified"] and "final" in res and \
            res["final"]["chi2"] <= args.own_target
        res["reached"] = bool(reached)
        if reached:
            res["time"] = st["time"]
        if status != "ok":
            pass
        elif not st["own_stop"]:
            status = f"time cap ({args.max_seconds:g} s)"
        elif not st["certified"]:
            status = "returned uncertified"
        elif not reached:
            status = f"own stop; external χ² {res['final']['chi2']:.3g} > {args.own_target:g}"
        else:
            status = "own stop"
    elif status == "ok":
        hit = [f"{t:g}" for t in rec.targets if t in rec.hit]
        status = ("reached " + ", ".join(hit) if hit else "reached none") + (
            "; stopped itself" if st["own_stop"] else
            "" if rec.done() else f"; time cap ({args.max_seconds:g} s)")
    res["status"] = status
    res["eval_pairs"] = ev.pairs
    res["eval_s"] = time.perf_counter() - meter.t0 - charged   # checks + final evaluation
    res["startup_s"] = meter.t0 - T_START
    if "compile_s" in st:
        res["compile_s"] = st["compile_s"]                  # included in startup_s
    print(json.dumps(res))


# ==================================================================== parent
def run_one(args, method: str, n: int, d: int, own_target: float | None) -> dict:
    """Run one child under the memory / wall watchdog; return its JSON (or the kill reason)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--method", method,
           "--child-n", str(n), "--child-d", str(d)]
    if own_target is not None:
        cmd += ["--own-target", repr(own_target)]
    cmd += ["--targets"] + [repr(t) for t in args.targets]
    for k in ("cost", "batch", "pot_batch", "ott_batch", "ott_optimizer", "ott_lr",
              "ott_num_iterations", "max_seconds", "floor_frac", "eval_max", "eval_threads",
              "threads", "seed", "check_ratio"):
        if getattr(args, k) is not None:
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(max(args.threads, args.eval_threads))  # BLAS pools; torch/faiss set per phase
    if method == "pot":   # numpy's BLAS cannot be switched per phase: POT runs on --threads
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(args.threads)
        # POT's backend module imports jax when it is installed (+130 MiB RSS, unused: numpy)
        env.setdefault("POT_BACKEND_DISABLE_JAX", "1")
    w = run_watched(cmd, env, args.mem_limit, args.wall_limit)
    peak, wall = w["peak"], w["wall"]
    last = None
    for line in reversed(w["lines"]):
        with contextlib.suppress(ValueError):
            last = json.loads(line)
            break
    status = None
    if w["killed"] == "memory":
        status = (f"memory limit (RSS {human_bytes(w['rss'])} > "
                  f"{human_bytes(args.mem_limit)})")
    elif w["killed"] == "wall":
        status = f"wall limit ({args.wall_limit:g} s incl. evaluation)"
    elif w["returncode"] != 0 or last is None or last.get("partial"):
        status = f"crashed (rc {w['returncode']}): {w['err_tail'][:120]}"
    if status is not None:       # keep the trace of the checks done before the end
        res = {"status": status, "peak": peak}
        if last is not None and last.get("partial"):
            res.update(trace=last["trace"], hit=last["hit"], charged=last["charged"],
                       checks=len(last["trace"]))
    else:
        res = last
        res["watch_peak"] = peak     # the watchdog's peak (evaluation included)
    res["wall"] = wall
    return res


def at_target(r: dict, target: float) -> dict | None:
    """What a run reports for ``target``: time, samples, argmin, peak, χ², s.e. (None: not
    reached).  Own-stop runs report their stop; oracle runs the first check at the target."""
    if r.get("own_target") is not None:
        if r["own_target"] != target or not r.get("reached"):
            return None
        f = r["final"]
        return {"t": r["time"], "samples": r["samples"], "argmin": r["argmin"],
                "peak": r["peak"], "chi2": f["chi2"], "se": f["se"]}
    return r.get("hit", {}).get(f"{target:g}")


def rows_for(results: list[dict], n: int, d: int, target: float) -> list[tuple[str, dict]]:
    """(row name, run) for ``target`` at (n, d): one run per method (own-stop: its run for
    that target)."""
    out = []
    for r in results:
        if r["n"] != n or r["d"] != d:
            continue
        if r.get("own_target") is not None and r["own_target"] != target:
            continue
        out.append((r["name"], r))
    return out


def fmt_time(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def ratio_to_anchor(r: dict, hit: dict | None, anchors: list[tuple[dict, dict | None]]
                    ) -> str:
    """Time ratio to the better anchor (POT, OTT) that reached the target, or a bound."""
    reached = [h["t"] for a, h in anchors if h is not None]
    ran = [a.get("charged") for a, h in anchors if h is None and a.get("charged")]
    if not anchors:
        return "—"
    if reached:
        best = min(reached)
        if hit is not None:
            return f"{hit['t'] / best:.3g}"
        return f"> {r['charged'] / best:.3g}" if r.get("charged") else "—"
    if hit is not None and ran:                 # no anchor reached: they took > min(ran)
        return f"< {hit['t'] / min(ran):.3g}"
    return "—"


def target_table(results: list[dict], ns, ds, target: float) -> str:
    rows = []
    for d in ds:
        for n in ns:
            runs = rows_for(results, n, d, target)
            anchors = [(r, at_target(r, target)) for name, r in runs if name in ANCHORS]
            for name, r in runs:
                h = at_target(r, target)
                chi2 = "—"
                if h is not None:
                    chi2 = f"{h['chi2']:.3g} ± {h['se']:.2g}"
                elif r.get("final"):
                    chi2 = f"(final {r['final']['chi2']:.3g} ± {r['final']['se']:.2g})"
                if h is None and r.get("charged") is not None:
                    t = f"> {r['charged']:.3g}"
                else:
                    t = fmt_time(h["t"] if h else None)
                ratio = ratio_to_anchor(r, h, anchors)
                argmin = "—" if h is None else f"{h['argmin']:.3g}"
                if h is not None and r.get("argmin_counted") is False:
                    argmin = "≥ " + argmin
                rows.append([n, d, name, t, ratio,
                             "—" if h is None else f"{h['samples']:.3g}", argmin,
                             "—" if h is None else f"{h['argmin'] * n:.3g}",
                             human_bytes(h["peak"]) if h else human_bytes(r["peak"])
                             if r.get("peak") else "—",
                             chi2, r.get("status", "?")])
    return table(["N", "d", "method", "time (s)", "÷ better anchor", "samples",
                  "argmin evals", "cost evals", "peak RSS", "χ² ± s.e. (external)", "status"],
                 rows)


def runs_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        f = r.get("final") or {}
        fin = f"{f['chi2']:.3g} ± {f['se']:.2g} (floor {f['floor']:.2g})" if f else "—"
        l1 = f"{f['l1']:.3g} ({f['l1_floor']:.2g})" if f else "—"
        own = "—"
        if r.get("own_target") is not None:
            own = f"≤ {r['own_target']:g}"
            if r.get("own_chi2") is not None:
                own += f": {r['own_chi2']:.3g} ± {r['own_se']:.2g}"
        rows.append([r["n"], r["d"], r["name"], own, fmt_time(r.get("charged")),
                     r.get("iterations", "—"),
                     f"{r['samples']:.3g}" if r.get("samples") is not None else "—",
                     f"{r['argmin']:.3g}" if r.get("argmin") is not None else "—",
                     r.get("checks", "—"),
                     human_bytes(r["peak"]) if r.get("peak") else "—",
                     human_bytes(r["peak"] - r["base"]) if r.get("base") else "—",
                     fin, l1, f"{f['cost']:.4g}" if f else "—",
                     f"{r['eval_s']:.3g}" if "eval_s" in r else "—",
                     f"{r['wall']:.3g}" if "wall" in r else "—", r.get("status", "?")])
    return table(["N", "d", "method", "own stop (its χ² ± s.e.)", "charged s", "iterations",
                  "samples", "argmin evals", "ext. checks", "peak RSS", "peak − before",
                  "final χ² ± s.e. (floor)", "L1 (floor)", "cost", "eval s", "wall s",
                  "status"], rows)


def plot(path: str, results: list[dict], ns, ds, targets) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = list(dict.fromkeys(r["name"] for r in results))
    colors = {nm: plt.get_cmap("tab10")(i % 10) for i, nm in enumerate(names)}
    tg = sorted(set(targets), reverse=True)
    marks = {t: mk for t, mk in zip(tg, "os^Dv")}
    lo = min(tg) / 20                        # estimates below this (or <= 0) drawn at it
    fig, axes = plt.subplots(len(ds), len(ns), figsize=(max(7.0, 3.9 * len(ns)),
                                                        0.6 + 3.0 * len(ds)),
                             squeeze=False, sharey=True)
    for i, d in enumerate(ds):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            for t in tg:
                ax.axhline(t, color="0.45", ls="--", lw=0.8)
            for r in results:
                if r["n"] != n or r["d"] != d:
                    continue
                c = colors[r["name"]]
                if r.get("own_target") is not None:
                    f = r.get("final")
                    if f is None or not r.get("charged"):
                        continue
                    x = r["time"] if r.get("time") is not None else r["charged"]
                    ax.plot([x], [max(f["chi2"], lo)], marks.get(r["own_target"], "o"),
                            color=c, mec="k", mew=0.7, ms=7,
                            fillstyle="full" if r.get("reached") else "none")
                    continue
                tr = [e for e in r.get("trace", []) if e["t"] > 0]
                if tr:
                    ax.plot([e["t"] for e in tr], [max(e["chi2"], lo) for e in tr], "-",
                            color=c, lw=1.2, marker=".", ms=3)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_ylim(lo * 0.8, None)
            ax.set_title(f"N = {n}, d = {d}", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
    handles = []
    for nm in names:
        own = any(r["name"] == nm and r.get("own_target") is not None for r in results)
        if own:
            for t in tg:
                handles.append(Line2D([], [], ls="", marker=marks[t], color=colors[nm], mec="k",
                                      mew=0.7, label=f"{nm}: own stop at χ² ≤ {t:g}"))
        else:
            handles.append(Line2D([], [], color=colors[nm], marker=".", label=f"{nm} (trace)"))
    handles.append(Line2D([], [], color="0.45", ls="--", lw=0.8, label="targets"))
    fig.supxlabel("charged solver seconds (external checks excluded)", fontsize=9)
    fig.supylabel("marginal χ² (external estimate)", fontsize=9)
    fig.suptitle(f"semi-discrete OT: marginal χ² vs solver time (estimates ≤ {lo:.2g} drawn "
                 f"at {lo:.2g}; hollow marker: own stop not reaching its target)", fontsize=9)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_outputs(args, header: dict, results: list[dict]) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": results}, f, indent=1)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            # kind: "external" = this script's check; "own" = ootrain's own check (its estimate
            # on its own fresh samples: m = its sample count, l1 = its imbalance)
            w.writerow(["kind", "method", "n", "d", "own_target", "t", "chi2", "se", "m",
                        "early", "l1", "iterations", "samples", "argmin", "peak"])
            for r in results:
                for e in r.get("trace", []):
                    w.writerow(["external", r["name"], r["n"], r["d"], "", e["t"], e["chi2"],
                                e["se"], e["m"], int(e["early"]), e["l1"], e["iterations"],
                                e["samples"], e["argmin"], e["peak"]])
                for h in r.get("own_history", []):   # ootrain's own checks (its estimates)
                    w.writerow(["own", r["name"], r["n"], r["d"], r.get("own_target"), h.get("t"),
                                h.get("chi2"), h.get("chi2_noise"), h.get("samples"),
                                int(bool(h.get("early"))), h.get("imbalance"),
                                h.get("iteration"), "", "", ""])


def report(results: list[dict], ns, ds, targets, check_ratio: float) -> None:
    """The per-target tables, the runs table and their legend."""
    for t in targets:
        print(f"\nTo χ² ≤ {t:g} (external estimate ≤ {t:g}; time = charged solver seconds):\n")
        print(target_table(results, ns, ds, t))
    print("\nRuns:\n")
    print(runs_table(results))
    print(f"\n- time: charged solver time (sampling included, external checks excluded); '> t' = "
          "not reached within the run. ootrain stops on its own certificate (one run "
          "per target; its checks' samples are charged and counted) and is then measured by the "
          "external check; ootrain-oracle, pot and ott are stopped by the external check (first "
          f"check with estimate ≤ target, on a ×{check_ratio:g} iteration grid; ott also "
          "at ≤ 2 s intervals and at its own stop; JAX compilation not charged). '÷ better "
          "anchor' = time ratio to the faster of pot and ott ('< r': no anchor reached it, "
          "bound from their run time). argmin evals = source points whose c-transform the "
          "solver computed (own checks included; '≥': the counter missed some); cost evals = "
          "argmin evals × N. Peak RSS during solver time, up to that point for oracle runs.")


def report_saved(args) -> None:
    """``--from-json``: the tables (and ``--plot``) of a saved run."""
    with open(args.from_json) as f:
        saved = json.load(f)
    header, results = saved["header"], saved["results"]
    st = header["settings"]
    print(header["markdown"])
    print(f"- (tables re-made from {args.from_json}; load at the end {header.get('load_end')})")
    ns = sorted({r["n"] for r in results})
    ds = list(dict.fromkeys(r["d"] for r in results))
    targets = sorted(set(st["targets"]), reverse=True)
    if args.plot:
        plot(args.plot, results, ns, ds, targets)
    report(results, ns, ds, targets, st["check_ratio"])
    if args.plot:
        print(f"- wrote {args.plot}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                    help="target counts")
    ap.add_argument("--d", type=int, nargs="+", default=[2, 16, 64])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--cost", default="sqeuclidean", choices=sorted(POT_METRIC))
    ap.add_argument("--targets", "--target", type=float, nargs="+", default=[0.05, 0.01],
                    help="marginal χ² levels to reach")
    ap.add_argument("--batch", type=int, default=None,
                    help="samples per iteration (ootrain; default: its own)")
    ap.add_argument("--pot-batch", type=int, default=32,
                    help="POT batch_size (default: POT's own, 32; see the module doc)")
    ap.add_argument("--ott-batch", type=int, default=128,
                    help="OTT batch_size (it has no default; its tutorial's 128; 0: ootrain's\n"
                         "default_batch(N))")
    ap.add_argument("--ott-optimizer", default="sgd", choices=("sgd", "adam"),
                    help="OTT optimizer (OTT has no default; its tutorial: optax.sgd(0.1))")
    ap.add_argument("--ott-lr", type=float, default=0.1, help="OTT optimizer learning rate")
    ap.add_argument("--ott-num-iterations", type=int, default=10**6,
                    help="OTT num_iterations (a cap: sizes its loss / error histories)")
    ap.add_argument("--max-seconds", "--time-limit", dest="max_seconds", type=float,
                    default=300.0, help="charged solver seconds per run")
    ap.add_argument("--mem-limit", type=float, default=8 * 2**30, help="bytes of RSS")
    ap.add_argument("--wall-limit", type=float, default=None,
                    help="wall seconds per run incl. evaluation (default 6 × max-seconds + 600)")
    ap.add_argument("--floor-frac", type=float, default=1 / 4,
                    help="standard error of a balanced map's χ² estimate on the evaluation\n"
                         "sample, as a fraction of the smallest target")
    ap.add_argument("--eval-max", type=int, default=1 << 23, help="cap on the evaluation sample m")
    ap.add_argument("--eval-threads", type=int, default=1,
                    help="threads of the (uncharged) evaluation; 2 OpenMP threads on this loaded\n"
                         "2-core machine made faiss 2-5x slower than 1")
    ap.add_argument("--check-ratio", type=float, default=1.25,
                    help="growth of the external check grid (iterations)")
    ap.add_argument("--threads", type=int, default=1, help="solver threads (torch, faiss, BLAS)")
    ap.add_argument("--skip-after-fail", action="store_true",
                    help="skip a method at larger N (same d) once it reached no target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write settings and every run (with traces)")
    ap.add_argument("--csv", default=None, help="write the traces, one row per check")
    ap.add_argument("--plot", default=None, help="PNG of χ² against charged seconds")
    ap.add_argument("--from-json", default=None,
                    help="run nothing: print the tables of (and --plot) a JSON written by --json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="ootrain", help=argparse.SUPPRESS)
    ap.add_argument("--own-target", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-d", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.from_json:
        report_saved(args)
        return
    if args.wall_limit is None:
        args.wall_limit = 6 * args.max_seconds + 600
    header_md = machine_header("semi-discrete OT: ootrain vs POT vs OTT-JAX (marginal χ²)",
                               sys.argv)
    print(header_md)
    try:
        import ot
        pot_v = ot.__version__
    except ImportError:
        pot_v = "not installed"
    from importlib.metadata import PackageNotFoundError, version
    try:
        ott_v, ott_missing = f"ott-jax {version('ott-jax')} (jax {version('jax')})", None
    except PackageNotFoundError:
        ott_v = ott_missing = "not installed (ott-jax missing: pip install ott-jax)"
    targets = sorted(set(args.targets), reverse=True)
    args.targets = targets
    ns, ds = sorted(set(args.n)), list(dict.fromkeys(args.d))
    m_eval = {n: {t: eval_size(n, t, args.floor_frac, args.eval_max) for t in targets}
              for n in ns}
    print(f"- POT {pot_v}; OTT: {ott_v}, optax.{args.ott_optimizer}({args.ott_lr:g}), batch "
          f"{args.ott_batch or 'default_batch(N)'}, epsilon 0, g_ema checked")
    print(f"- cost {args.cost}; targets χ² ≤ {', '.join(f'{t:g}' for t in targets)}; "
          "evaluation prefixes m deciding each target: " + "; ".join(
              f"N={n}: " + ", ".join(f"{m_eval[n][t]} ({t:g})" for t in targets) for n in ns)
          + f" (s.e. of a balanced map ≤ {args.floor_frac:g} × the target); limits: "
          f"{args.max_seconds:g} s charged solver time, {human_bytes(args.mem_limit)} RSS, "
          f"{args.wall_limit:g} s wall; solver threads {args.threads}, evaluation threads "
          f"{args.eval_threads} (not charged)\n")
    header = {"markdown": header_md, "argv": sys.argv, "pot": pot_v, "ott": ott_v,
              "eval_m": {str(n): {f"{t:g}": v for t, v in m_eval[n].items()}
                                                     for n in ns},
              "settings": {k: v for k, v in vars(args).items()
                           if k not in ("child", "method", "own_target",
                                        "child_n", "child_d")},
              "blas_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",
                                                          "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS")},
              "child_blas_threads": max(args.threads, args.eval_threads),
              "load_start": loadavg()}
    results: list[dict] = []
    jobs: list[tuple[str, float | None]] = []   # method, own target
    for m in args.methods:
        jobs += [(m, t) for t in targets] if m == "ootrain" else [(m, None)]
    for d in ds:
        failed: dict[str, int] = {}
        for n in ns:
            for m, t in jobs:
                name = m
                base = {"name": name, "method": m, "n": n, "d": d, "own_target": t}
                if m == "ott" and ott_missing is not None:
                    results.append({**base, "status": ott_missing})
                    continue
                if args.skip_after_fail and name in failed:
                    results.append({**base, "status": f"skipped (no target reached at "
                                                      f"N={failed[name]})"})
                    continue
                r = {**base, **run_one(args, m, n, d, t)}
                results.append(r)
                hits = [f"{tt:g}" for tt in targets if at_target(r, tt) is not None]
                if t is not None:
                    hits = [f"{t:g}"] if r.get("reached") else []
                if not hits and (t is None or t == targets[0]):
                    failed.setdefault(name, n)
                extra = ""
                if "startup_s" in r:
                    extra = (f"charged {r['charged']:.3g} s + start-up {r['startup_s']:.2g} s"
                             + (f" (JAX compilation {r['compile_s']:.2g} s)"
                                if "compile_s" in r else "")
                             + f" + evaluation {r['eval_s']:.2g} s, ")
                times = ", ".join(f"χ² ≤ {tt:g} at {at_target(r, tt)['t']:.3g} s"
                                  for tt in targets if at_target(r, tt) is not None) or "—"
                fin = r.get("final")
                fin = f"; final χ² {fin['chi2']:.3g} ± {fin['se']:.2g}" if fin else ""
                print(f"  d={d} N={n} {name}" + (f" (own stop χ² ≤ {t:g})" if t else "")
                      + f": {r.get('status')}; {times}{fin}; {extra}wall {r['wall']:.3g} s; "
                      f"peak RSS {human_bytes(r.get('peak', 0))}; load {loadavg()}", flush=True)
                write_outputs(args, header, results)
    header["load_end"] = loadavg()
    write_outputs(args, header, results)
    if args.plot:
        plot(args.plot, results, ns, ds, targets)
    report(results, ns, ds, targets, args.check_ratio)
    print(f"- load average at the end: {header['load_end']}")
    for p in (args.json, args.csv, args.plot):
        if p:
            print(f"- wrote {p}")


if __name__ == "__main__":
    main()
