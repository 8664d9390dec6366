"""Semi-discrete OT solvers side by side: time and memory to the same marginal error, and the
largest N each handles within a time and a memory limit.

Problem: source ``mu`` = standard Gaussian in ``d`` (a sampler), targets = ``N`` points drawn
from a seeded Gaussian mixture (8 components, centres ~ N(0, I), std 0.5), uniform weights,
cost ``sqeuclidean`` (``--cost l1`` as an option).  Methods:

- ``ootrain``: ``SemiDiscreteOT(targets, cost).fit(sampler, tol=target)`` with all defaults
  (backend ``auto``, batch ``default_batch(N)``, Adam directions, ``t^-2/3`` step, iterate
  averaging): it **stops on its own certificate**, so its time and samples include what a user
  pays for it (its checks draw and assign fresh samples).
- ``ootrain-oracle``: the same solver with its own checks switched off (``check_every`` beyond
  the run), stopped by the external check below applied to its average ``psi_bar`` at
  iterations 1, 2, 3, … growing by ``--check-ratio``: the same stopping rule as POT's.
- ``pot``: ``ot.semidiscrete.solve_semidiscrete(Y, sampler_source=callable, metric=...,
  batch_size=32, max_iter=∞, log=True)`` with all its defaults (``lr0 = sqrt(N × batch)``,
  ``t^-2/3`` decay, DRAG regularisation ``0.1 / sqrt(t)``, Polyak averaging), numpy float32
  (the dtype of ours; ``POT_BACKEND_DISABLE_JAX=1``, else POT imports jax where it is installed,
  +130 MiB RSS).  Its batch is its own default 32 (``--pot-batch``), not ours: with the
  default ``lr0`` growing as ``sqrt(batch)``, batch 4096 makes the first iterates blow up and
  the Polyak average never recovers (N = 300, d = 2: error 0.93 after 1.6e7 samples, vs 0.14
  after 1.3e5 samples at batch 32).  It has no stopping rule, so one call runs and its Polyak average
  ``g_avg`` (exactly what a call with ``max_iter`` = that many iterations returns; read from
  the solver's frame inside the sampler callback, no restart, no warm start) is checked at
  iterations 1, 2, 3, … growing by ``--check-ratio`` (1.25): oracle stopping, favourable to
  POT; its time to error is exact for the iterate that passed, which may have been reached up
  to 25 % earlier.
- ``ott``: OTT-JAX's ``ott.solvers.linear.semidiscrete.SemidiscreteSolver`` (where installed:
  ``pip install ott-jax``; this script installs nothing, and reports "not installed"
  otherwise) on ``SemidiscretePointCloud(jax.random.normal, Y, epsilon=0)`` with uniform
  weights: cost ``SqEuclidean`` (its default, ``||x - y||^2``, no 1/2, as ours; sqeuclidean
  only), epsilon 0 = the unregularised problem (its default ``epsilon=None`` is entropic, a
  different problem).  OTT has no default optimizer / batch / iteration count: its
  semidiscrete tutorial's ``optax.sgd(0.1)`` and ``batch_size=128`` are used
  (``--ott-optimizer``, ``--ott-lr``, ``--ott-batch``; 0 = ootrain's ``default_batch(N)``);
  ``num_iterations`` = 10^6, a cap that does not bind; every other argument at its default
  (``potential_ema=0.99``, its chi² check every 1000 iterations on 16 × batch samples,
  ``threshold=1e-3``, constant epsilon schedule).  Its solution ``g_ema`` (what
  ``SemidiscreteOutput.g`` returns) is checked on the same ×``--check-ratio`` grid as above;
  its own stop (chi² ≤ threshold) is kept.  Its jitted loop cannot be interrupted (its
  ``callback`` is a ``jax.debug.callback`` that cannot end it; ``g_init`` restarts the
  optimizer and the EMA), so ``run_ott`` rebuilds ``__call__``'s loop from the public
  ``SemidiscreteSolver.step`` (same keys, same error schedule and stop rule; bit-identical to
  ``__call__`` on N = 50) as a ``while_loop`` run in segments up to each check, the state
  carried over: no restart.  JAX compilation (one executable, ahead of time) is a one-time
  start-up cost, reported as ``compile_s`` and not charged.  With ``--threads 1`` XLA gets
  ``--xla_cpu_multi_thread_eigen=false`` (one thread).

Marginal error: ``||nu - P_hat||_1`` of the hard assignments ``argmin_j c(x, y_j) - psi_j``,
computed for every method the same way (``ootrain.ot.ctransform.c_transform``, backend auto) on a
fixed, seeded evaluation sample of ``M = 2 N / (pi (f target)^2)`` source points (``f`` =
``--floor-frac``, 1/3), so the noise floor ``sqrt(2 N / (pi M))`` = ``f × target``; capped at
``--eval-max`` (the floor printed per row says where that cap bites).  The estimate is biased
upwards (``E ≥`` the true error, ``≤`` true + floor), so "measured ≤ target" means reached.
To keep evaluation affordable, a check first measures prefixes of 2^16, 2^17, … points and gives
up as soon as ``error − 1.1 floor(prefix) > target`` (then the true error is above the
target); evaluation runs with ``--eval-threads`` and is **not charged**: the solver clock is
paused and the RSS sampler ignores it.

Each (method, N) runs in a fresh subprocess: the child charges only solver time (sampling the
source included, evaluation excluded) and stops at ``--time-limit`` of charged time (checked
once per iteration, so one iteration may overshoot); its RSS is sampled every 5 ms during
solver time (peak, and peak minus the RSS before the solver started: imports, targets and the
evaluator's warm-up); the parent kills it when its RSS exceeds ``--mem-limit`` or its wall time
``--wall-limit``.  Per method, N goes through ``--n`` in increasing order; after the first
failure the method is probed from its last success upwards by ×4 (below the failing N), and after
passing every listed N it is probed ×4 beyond (up to ``--probe-max``).

    /work/venv/bin/python benchmarks/bench_semidiscrete.py               # default (~45 min)
    /work/venv/bin/python benchmarks/bench_semidiscrete.py --d 2 16 --n 1000 --time-limit 30  # ~8 min
    /work/venv/bin/python benchmarks/bench_semidiscrete.py --n 1000 --d 2 --time-limit 10 \
        --target 0.2 --no-probe                                          # smoke (< 2 min)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
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
POT_METRIC = {"sqeuclidean": "sqeuclidean", "l1": "cityblock"}


# ==================================================================== child: one (method, N)
class _Stop(Exception):
    """Raised from inside a solver's sampler callback to end its run."""


def make_targets(n: int, d: int, seed: int) -> np.ndarray:
    """``[n, d]`` float32 from an 8-component Gaussian mixture (centres ~ N(0, I), std 0.5)."""
    rng = np.random.default_rng([seed, n, d])
    centres = rng.standard_normal((8, d))
    comp = rng.integers(0, 8, size=n)
    return (centres[comp] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


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
    """Marginal error (and transport cost) of a potential on a fixed evaluation sample,
    regenerated chunk by chunk from a seed (so it takes no memory between checks)."""

    CHUNK = 1 << 16

    def __init__(self, y, cost: str, target: float, m: int, seed: int, threads: tuple[int, int]):
        import torch
        from ootrain.ot.costs import parse_cost
        from ootrain.ot.ctransform import c_transform
        self.torch, self.c_transform, self.cost = torch, c_transform, parse_cost(cost)
        self.y, self.n, self.d = y, y.shape[0], y.shape[1]
        self.target, self.m, self.seed = target, m, seed
        self.eval_threads, self.solver_threads = threads
        self.pairs = 0.0   # c-transform pairs evaluated (reported)

    def floor(self, m: int) -> float:
        return math.sqrt(2 * self.n / (math.pi * m))

    def _x(self, k: int):
        g = self.torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        return self.torch.randn(self.CHUNK, self.d, generator=g)

    def _threads(self, k: int) -> None:
        set_threads(k)

    def error(self, psi, *, full: bool = False, want_cost: bool = False,
              m_max: int | None = None) -> dict:
        torch = self.torch
        psi = torch.as_tensor(np.asarray(psi, dtype=np.float32)) if not isinstance(
            psi, torch.Tensor) else psi.detach().to(torch.float32).cpu()
        m_all = min(self.m, m_max or self.m)
        counts = torch.zeros(self.n, dtype=torch.float64)
        m, k, cost_sum, value_sum, test_at = 0, 0, 0.0, 0.0, min(m_all, self.CHUNK)
        self._threads(self.eval_threads)
        try:
            while m < m_all:
                x = self._x(k)[:m_all - m]
                idx, value = self.c_transform(x, self.y, psi, self.cost, "auto")
                counts += torch.bincount(idx, minlength=self.n).to(torch.float64)
                if want_cost:
                    cost_sum += float(self.cost.pairwise(x, self.y[idx]).double().sum())
                    value_sum += float(value.double().sum())
                m += x.shape[0]
                k += 1
                self.pairs += x.shape[0] * float(self.n)
                if not full and test_at <= m < m_all:
                    e = float((counts / m - 1.0 / self.n).abs().sum())
                    if e - 1.1 * self.floor(m) > self.target:
                        return {"error": e, "m": m, "floor": self.floor(m), "early": True}
                    test_at *= 2
        finally:
            self._threads(self.solver_threads)
        e = float((counts / m - 1.0 / self.n).abs().sum())
        out = {"error": e, "m": m, "floor": self.floor(m), "early": False}
        if want_cost:
            out["cost"] = cost_sum / m
            out["dual"] = value_sum / m + float(psi.double().mean())   # uniform nu
        return out


def _frame_of(name: str):
    f = sys._getframe(2)
    while f is not None and f.f_code.co_name != name:
        f = f.f_back
    if f is None:
        raise RuntimeError(f"solver frame {name!r} not found (solver internals changed)")
    return f


def run_pot(args, y: np.ndarray, ev: Evaluator, meter: Meter, st: dict) -> None:
    from ot.semidiscrete import solve_semidiscrete

    d = y.shape[1]
    rng = np.random.default_rng([args.seed, 1, y.shape[0], d])
    nxt = [max(1, math.ceil(y.shape[0] / args.pot_batch))]   # first check: ~N samples drawn

    def sampler(b: int) -> np.ndarray:
        st["iterations"] = done = st["calls"]          # iterations completed before this call
        st["calls"] += 1
        over = meter.charged() > args.time_limit
        if done >= nxt[0] or over:
            t = meter.charged()
            loc = _frame_of("solve_semidiscrete").f_locals
            if "g_avg" not in loc:
                raise RuntimeError("POT internals changed: no g_avg in solve_semidiscrete")
            g = np.array(loc["g_avg"], copy=True)       # average of iterates 1..done
            with meter.pause():
                r = ev.error(g)
            st["checks"] += 1
            st["psi"] = g
            if r["error"] <= args.target:
                st["time"], st["reached"] = t, True
                raise _Stop
            if over:
                raise _Stop
            nxt[0] = max(done + 1, math.ceil(done * args.check_ratio))
        return rng.standard_normal((b, d), dtype=np.float32)

    meter.start()
    try:
        solve_semidiscrete(y, sampler_source=sampler, metric=POT_METRIC[args.cost],
                           max_iter=10**12, batch_size=args.pot_batch, log=True)
    except _Stop:
        pass


def ott_batch(args, n: int) -> int:
    """OTT's batch: ``--ott-batch`` (its tutorial's 128), or 0 for ootrain's ``default_batch(N)``."""
    if args.ott_batch:
        return args.ott_batch
    from ootrain.ot.semidiscrete import default_batch
    return default_batch(n)


def run_ott(args, y: np.ndarray, ev: Evaluator, meter: Meter, st: dict) -> None:
    """OTT-JAX's ``SemidiscreteSolver`` driven segment by segment with its own ``step``.

    ``SemidiscreteSolver.__call__`` is one jitted ``while_loop`` (``fixpoint_iter``) that stops
    only on its own chi² criterion; its ``callback`` (a ``jax.debug.callback`` per iteration)
    cannot end it, and ``g_init`` restarts Adam's moments and the EMA.  So the loop is rebuilt
    from the solver's public ``step`` exactly as ``__call__`` runs it (same keys
    ``fold_in(rng, it)``, same chi² error every ``error_eval_every`` iterations on
    ``rng_error``; checked bit-identical to ``__call__`` on a small problem), as one jitted
    ``while_loop`` up to a traced ``stop``: the state (potential, EMA, Adam state) carries over
    between segments, so nothing restarts and nothing is charged twice.  It is compiled ahead
    of time (one executable for every segment length), before the clock starts: compilation is
    reported apart (``compile_s``), not charged.  The solution OTT returns is ``g_ema``
    (``SemidiscreteOutput.g = state.g_ema``); that is what is checked."""
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
    done, nxt, per_it = 0, 1, None
    while True:
        stop = nxt
        if per_it is not None:          # do not run a segment far past the time limit
            left = max(0.0, args.time_limit - meter.charged())
            stop = min(stop, done + 1 + int(min(1.02 * left, 2.0) / per_it))  # segments ≤ ~2 s
        stop = min(stop, cap)
        t = meter.charged()
        state = run(state, jnp.asarray(stop))
        g = np.array(state.g_ema)                  # blocks until the segment is done
        tc = meter.charged()
        per_it = (tc - t) / max(1, stop - done)
        done = int(state.it)
        st["iterations"] = done
        st["check_samples"] = (done // every) * solver.error_num_repeats * (
            solver.error_batch_size or batch)     # OTT's own chi² checks (charged)
        st["psi"] = g
        if bool(stopped(state)):         # OTT's own rule (chi² <= threshold, or a NaN loss)
            st["time"], st["own_stop"] = tc, True
            return
        with meter.pause():
            r = ev.error(g)
        st["checks"] += 1
        if r["error"] <= args.target:
            st["time"], st["reached"] = tc, True
            return
        if tc > args.time_limit or done >= cap or not np.isfinite(g).all():
            return
        if done >= nxt:
            nxt = max(done + 1, math.ceil(done * args.check_ratio))


def run_ootrain(args, y: np.ndarray, ev: Evaluator, meter: Meter, st: dict, oracle: bool) -> None:
    import torch
    from ootrain.ot.semidiscrete import SemiDiscreteOT

    n, d = y.shape
    g = torch.Generator().manual_seed(args.seed * 7 + n + d)
    nxt = [1]

    def sampler(k: int, rng):
        # the project's convention is draw(k, rng); the draws stay on the torch stream ``g``
        # (rng unused) so that runs remain comparable with those in RESULTS.md
        st["calls"] += 1
        over = meter.charged() > args.time_limit
        loc = _frame_of("_ascend").f_locals
        done = loc.get("it", 1) - 1 if "psi_bar" in loc else 0   # iterations completed
        st["iterations"] = done
        if (oracle and done >= nxt[0]) or over:
            t = meter.charged()
            bar = loc["psi_bar"].clone()                   # the average of iterates 1..done
            st["psi"] = bar
            if oracle:
                with meter.pause():
                    r = ev.error(bar)
                st["checks"] += 1
                if r["error"] <= args.target:
                    st["time"], st["reached"] = t, True
                    raise _Stop
                nxt[0] = max(done + 1, math.ceil(done * args.check_ratio))
            if over:
                raise _Stop
        return torch.randn(k, d, generator=g)

    meter.start()
    solver = SemiDiscreteOT(torch.from_numpy(y), args.cost)     # defaults: backend auto
    # the oracle never checks itself (check_every beyond any run); otherwise fit's own rule
    kw = {"tol": 1e-12, "check_every": 10**12} if oracle else {"tol": args.target}
    if args.batch:
        kw["batch"] = args.batch
    try:
        solver.fit(sampler, max_iter=10**12, rng=args.seed, **kw)
        st["time"] = meter.charged()
        st["iterations"] = solver.history[-1]["iteration"]
        st["check_samples"] = sum(h["samples"] for h in solver.history)
        st["psi"] = solver.potentials
        st["own_stop"] = True
    except _Stop:
        pass


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
    else:
        import ootrain.ot.semidiscrete  # noqa: F401
    n, d = args.child_n, args.child_d
    y = make_targets(n, d, args.seed)
    yt = torch.from_numpy(y)
    m = min(args.eval_max, math.ceil(2 * n / (math.pi * (args.floor_frac * args.target) ** 2)))
    ev = Evaluator(yt, args.cost, args.target, m, args.seed + 12345,
                   (args.eval_threads, args.threads))
    ev.error(torch.zeros(n), m_max=1024)          # warm-up: imports, faiss/keops set-up
    meter = Meter()
    st = {"calls": 0, "iterations": 0, "checks": 0, "reached": False, "time": None,
          "psi": None, "own_stop": False}
    status = "ok"
    try:
        if args.method == "pot":
            run_pot(args, y, ev, meter, st)
        elif args.method == "ott":
            run_ott(args, y, ev, meter, st)
        else:
            run_ootrain(args, y, ev, meter, st, oracle=args.method == "ootrain-oracle")
    except Exception as e:   # report, do not crash the benchmark
        status = f"error: {type(e).__name__}: {e}"[:120]
    charged = meter.stop()
    if args.method == "pot":
        batch = args.pot_batch
    elif args.method == "ott":
        batch = ott_batch(args, n)
    else:
        from ootrain.ot.semidiscrete import default_batch
        batch = args.batch or default_batch(n)
    res = {"charged": charged, "iterations": st["iterations"],
           "samples": st["iterations"] * batch + st.get("check_samples", 0),
           "peak": meter.peak, "base": meter.base, "checks": st["checks"], "m": m,
           "floor": ev.floor(m), "status": status}
    if st["psi"] is not None:
        reached_or_own = st["reached"] or st["own_stop"]
        r = ev.error(st["psi"], full=True, want_cost=True,
                     m_max=None if reached_or_own else args.eval_fail_max)
        res.update(error=r["error"], cost=r["cost"], dual=r["dual"], eval_m=r["m"],
                   eval_floor=r["floor"])
        if st["own_stop"]:
            st["reached"] = r["error"] <= args.target
            res["status"] = "own stop" + ("" if st["reached"] else
                                          f"; external error {r['error']:.3g} > target")
    if st["reached"]:
        res["time"] = st["time"]
    elif status == "ok" and not st["own_stop"]:
        res["status"] = f"time limit ({args.time_limit:g} s)"
    res["reached"] = bool(st["reached"])
    res["eval_pairs"] = ev.pairs
    res["eval_s"] = time.perf_counter() - meter.t0 - charged   # checks + final evaluation
    res["startup_s"] = meter.t0 - T_START
    if "compile_s" in st:
        res["compile_s"] = st["compile_s"]                  # included in startup_s
    print(json.dumps(res))


# ==================================================================== parent
def run_one(args, method: str, n: int, d: int) -> dict:
    """Run one child under the memory / wall watchdog; return its JSON (or the kill reason)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--method", method,
           "--child-n", str(n), "--child-d", str(d)]
    for k in ("cost", "target", "batch", "pot_batch", "ott_batch", "ott_optimizer", "ott_lr",
              "ott_num_iterations",
              "time_limit", "floor_frac", "eval_max", "eval_fail_max", "eval_threads", "threads",
              "seed", "check_ratio"):
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
    if w["killed"] == "memory":
        return {"status": f"memory limit (RSS {human_bytes(w['rss'])} > "
                          f"{human_bytes(args.mem_limit)})", "peak": peak, "wall": wall,
                "reached": False}
    if w["killed"] == "wall":
        return {"status": f"wall limit ({args.wall_limit:g} s incl. evaluation)", "peak": peak,
                "wall": wall, "reached": False}
    if w["returncode"] != 0 or not w["lines"]:
        return {"status": f"crashed (rc {w['returncode']}): {w['err_tail'][:80]}", "peak": peak,
                "wall": wall, "reached": False}
    res = json.loads(w["lines"][-1])
    res["wall"] = wall
    return res


def fmt_row(n: int, d: int, method: str, r: dict, ref: dict | None, probe: bool) -> list:
    def num(k, f="{:.3g}"):
        return f.format(r[k]) if r.get(k) is not None else "—"
    if r.get("reached"):
        tte = f"{r['time']:.3g}"
    elif "charged" in r and r["charged"] is not None and "iterations" in r:
        tte = f"> {r['charged']:.3g}"
    else:
        tte = "—"
    ratio = "—"
    if ref is not None and ref.get("reached"):
        if r.get("reached"):
            ratio = f"{r['time'] / ref['time']:.3g}"
        elif "charged" in r:
            ratio = f"> {r['charged'] / ref['time']:.3g}"
    elif ref is not None and r.get("reached") and ref.get("charged"):
        ratio = f"< {r['time'] / ref['charged']:.3g}"
    err = num("error")
    if r.get("error") is not None and r.get("eval_floor") is not None:
        err += f" (floor {r['eval_floor']:.2g})"
    return [f"{n}" + (" (probe)" if probe else ""), d, method, tte, ratio,
            num("iterations", "{}"), num("samples", "{:.3g}"),
            human_bytes(r["peak"]) if r.get("peak") else "—",
            human_bytes(r["peak"] - r["base"]) if r.get("base") else "—",
            err, num("cost", "{:.4g}"), num("dual", "{:.4g}"), r.get("status", "?")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000],
                    help="target counts (increasing; each method stops at its first failure)")
    ap.add_argument("--d", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--cost", default="sqeuclidean", choices=sorted(POT_METRIC))
    ap.add_argument("--target", type=float, default=0.1, help="marginal error ||nu - P||_1 to reach")
    ap.add_argument("--batch", type=int, default=None,
                    help="samples per iteration (ootrain; default: its own default_batch(N))")
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
    ap.add_argument("--time-limit", type=float, default=120.0, help="charged solver seconds")
    ap.add_argument("--mem-limit", type=float, default=8 * 2**30, help="bytes of RSS")
    ap.add_argument("--wall-limit", type=float, default=None,
                    help="wall seconds per child incl. evaluation (default 4 × time limit + 300)")
    ap.add_argument("--floor-frac", type=float, default=1 / 3,
                    help="evaluation noise floor as a fraction of the target")
    ap.add_argument("--eval-max", type=int, default=1 << 23, help="cap on the evaluation sample M")
    ap.add_argument("--eval-fail-max", type=int, default=1 << 19,
                    help="evaluation sample of the final error of a run that did not reach")
    ap.add_argument("--eval-threads", type=int, default=1,
                    help="threads of the (uncharged) evaluation; 2 OpenMP threads on this loaded\n"
                         "2-core machine made faiss 2-5x slower than 1")
    ap.add_argument("--check-ratio", type=float, default=1.25, help="POT check grid growth")
    ap.add_argument("--threads", type=int, default=1, help="solver threads (torch, faiss, BLAS)")
    ap.add_argument("--no-probe", action="store_true", help="no ×4 largest-N probe")
    ap.add_argument("--probe-max", type=int, default=10**7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="ootrain", help=argparse.SUPPRESS)
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-d", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.wall_limit is None:
        args.wall_limit = 4 * args.time_limit + 300
    print(machine_header("semi-discrete OT: ootrain vs POT vs OTT-JAX", sys.argv))
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
    print(f"- POT {pot_v}; OTT: {ott_v}, optax.{args.ott_optimizer}({args.ott_lr:g}), batch "
          f"{args.ott_batch or 'default_batch(N)'}, epsilon 0, g_ema checked")
    print(f"- cost {args.cost}; target marginal error {args.target:g}; batch "
          f"{args.batch or 'default_batch(N)'} (POT {args.pot_batch}); limits: {args.time_limit:g} s charged solver "
          f"time, {human_bytes(args.mem_limit)} RSS; solver threads {args.threads}, evaluation "
          f"threads {args.eval_threads} (not charged)\n")
    ns = sorted(set(args.n))
    rows, best, fail = [], {}, {}
    for d in args.d:
        results: dict[tuple[str, int], dict] = {}
        methods = [m for m in args.methods if m != "ott" or ott_missing is None]
        if "ott" in args.methods and ott_missing is not None:
            rows.append(["—", d, "ott", "—", "—", "—", "—", "—", "—", "—", "—", "—", ott_missing])
            best[("ott", d)], fail[("ott", d)] = None, ott_missing
        alive = set(methods)

        def record(m: str, n: int, probe: bool) -> None:
            r = run_one(args, m, n, d)
            results[(m, n)] = r
            tte = f"{r['time']:.3g} s" if r.get("reached") else "—"
            extra = (f"charged {r['charged']:.3g} s + start-up {r['startup_s']:.2g} s"
                     + (f" (JAX compilation {r['compile_s']:.2g} s)" if "compile_s" in r else "")
                     + f" + evaluation {r['eval_s']:.2g} s, " if "charged" in r else "")
            print(f"  d={d} N={n} {m}: {r.get('status')}; time to error {tte}; {extra}wall "
                  f"{r['wall']:.3g} s; peak RSS {human_bytes(r.get('peak', 0))}; load "
                  f"{loadavg()}", flush=True)
            rows.append(fmt_row(n, d, m, r, results.get(("ootrain", n)) if m != "ootrain"
                                else None, probe))
            if r.get("reached"):
                best[(m, d)] = max(best.get((m, d)) or 0, n)
            else:
                fail[(m, d)] = f"{r.get('status')} at N={n}"

        for n in ns:                           # the listed N, methods side by side
            for m in methods:
                if m in alive:
                    record(m, n, False)
                    if not results[(m, n)].get("reached"):
                        alive.discard(m)
        if not args.no_probe:                  # ×4 probe of the largest N handled
            for m in methods:
                ok = best.get((m, d))
                if ok is None:
                    continue
                stop = min([n for n in ns if not results.get((m, n), {}).get("reached", True)]
                           or [args.probe_max + 1])
                n = ok * 4
                while n < stop and n <= args.probe_max:
                    record(m, n, True)
                    if not results[(m, n)].get("reached"):
                        break
                    n *= 4
    print()
    print(table(["N", "d", "method", "time to error (s)", "÷ ootrain", "iterations",
                 "samples", "peak RSS", "peak − RSS before", "final error (eval floor)",
                 "transport cost", "dual", "status"], rows))
    print()
    lr = []
    for (m, d) in sorted({k for k in list(best) + list(fail)}, key=lambda k: (k[1], k[0])):
        b = best.get((m, d))
        lr.append([m, d, b if b is not None else "none", fail.get((m, d), "—")])
    print("Largest N handled within the limits (time to error ≤ "
          f"{args.time_limit:g} s, RSS ≤ {human_bytes(args.mem_limit)}):\n")
    print(table(["method", "d", "largest N reaching the target", "first failure"], lr))
    print(f"\n- time to error: charged solver time (sampling included, evaluation excluded). "
          f"ootrain stops on its own certificate; ootrain-oracle and pot are stopped by the "
          f"external check (POT's iterate checked on a ×{args.check_ratio:g} iteration grid), "
          "ott too (its g_ema, same grid; its own chi² stop kept; JAX compilation not charged). "
          "'> t' = not reached within the limit; '÷ ootrain' = time ratio to the ootrain row. "
          "transport cost = mean c(x, T(x)) of the hard map on the evaluation sample (optimal "
          "for the marginal it reaches, very sensitive to the remaining imbalance); dual = "
          "its estimate of h(psi) = E[min_j c - psi_j] + <nu, psi> (<= W_c in expectation).")
    print(f"- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
