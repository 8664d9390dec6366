"""Entropic OT (Sinkhorn) between two point clouds: ootrain vs GeomLoss vs POT, same problem.

Problem (the same inputs for every method): ``x [n, d]`` standard Gaussian, ``y [m, d]``
(``m = n``) from a seeded 8-component Gaussian mixture (centres ~ N(0, I), std 0.5), uniform
weights, float32, cost ``C_ij = ||x_i - y_j||^2`` (no 1/2), temperature ``eps = --eps-rel ×
mean_ij C_ij`` (the mean cost, computed exactly in O((n + m) d); default 0.05), i.e.

    min_{P 1 = a, P^T 1 = b} <P, C> + eps KL(P | a b^T),   P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps).

Methods (one solver thread each: ``set_threads(1)`` and ``OMP/MKL/OPENBLAS_NUM_THREADS=1``):

- ``ootrain``: ``ootrain.ot.sinkhorn.sinkhorn(x, y, eps, tol=--tol, max_iter=--max-iter)`` with
  its defaults (eps-scaling 0.5, 2 iterations per stage; backend ``auto``: dense torch below
  2^22 entries, i.e. n <= 2048 here, KeOps above).  It stops when ``||P 1 - a||_1 <= tol``.
- ``ootrain@s``: the same, with ``tol`` = the marginal error (row + column, below) that
  GeomLoss reached with scaling ``s`` at the same n (online run, else tensorized): ootrain
  stopped at GeomLoss's accuracy.  Its ratio column compares it with that GeomLoss run.
- ``geomloss-tensorized@s`` / ``geomloss-online@s``: ``SamplesLoss("sinkhorn", p=2,
  blur=sqrt(eps / 2), scaling=s, debias=False, backend=..., potentials=True)(x, y)``.
  GeomLoss's p = 2 cost is ``||x - y||^2 / 2`` and its temperature is ``blur^p``; halving the
  cost and the temperature gives the same plan, so ``eps_geomloss = eps / 2`` (``blur =
  sqrt(eps / 2)``) and ``f = 2 F``, ``g = 2 G``.  GeomLoss has **no tolerance**: it anneals
  ``eps`` from ``diameter^2`` to ``blur^2`` by ``s^2`` per iteration (symmetric, averaged
  updates), then does one last extrapolation step, and stops; its accuracy is set by ``s``
  (``--geomloss-scaling``, default 0.5 = GeomLoss's default, and 0.9).  Iterations =
  ``len(epsilon_schedule) + 2`` (the initialisation, the schedule, the extrapolation).
  ``tensorized`` holds dense ``[n, m]`` matrices (C_xy and C_yx), ``online`` uses KeOps.
- ``pot-log`` / ``pot-log-torch``: ``ot.sinkhorn2(a, b, ot.dist(x, y), eps,
  method="sinkhorn_log", stopThr=tol / sqrt(n), numItermax=--max-iter, log=True)`` on numpy
  float32 arrays (POT's ordinary use: scipy's logsumexp) / on the same torch float32 tensors
  (torch's logsumexp, the kernel ootrain's dense path uses).  The dense cost matrix is built
  inside the timing.  POT checks the **L2** norm of the column marginal error every 10
  iterations; ``stopThr = tol / sqrt(n)`` guarantees an L1 error <= tol (Cauchy-Schwarz; for
  a spread-out residual it is ~25 % stricter than L1 <= tol).  No eps-scaling (POT's
  ``sinkhorn_epsilon_scaling`` is not log-domain).  ``sinkhorn2`` = ``sinkhorn`` + ``<P, M>``.
- ``pot-lazy``: ``ot.bregman.empirical_sinkhorn2(x, y, eps, isLazy=True, batchSize=100,
  stopThr=tol, numIterMax=--max-iter, log=True)`` (numpy float32): POT's blocked solver in
  O((n + m) d + 100 m) memory; it recomputes each block of C every pass and checks the L1
  row marginal error every 10 iterations.

Measured per (method, n), each in a **fresh subprocess** (so its peak RSS is its own): the
wall time of the solve (after a warm-up solve on 256 points that compiles the KeOps formulas
and loads the code; median of ``--repeats`` when one solve takes < 2 s, else 1 run), its
process CPU time (median; with one thread this is the work done and much less sensitive than
wall time to other jobs on a shared machine, so **ratios and floors use CPU time**), iterations, peak RSS sampled every 5 ms during the
solves minus the RSS before them (after imports, inputs and warm-up, ``malloc_trim``), and,
**not charged**, from each method's returned potentials ``(f, g)`` (converted to the
convention above), by one blocked float64 torch pass over ``C`` (row blocks of 2^22 entries):
the marginal error ``||P 1 - a||_1 + ||P^T 1 - b||_1`` (Sinkhorn-type solvers make one of the
two ~0: the side updated last), ``<P, C>`` with the exact cost, the same definition for all.
Each method's own returned value is also printed: ootrain ``result.cost`` = ``<P, C>``, POT's
``<P, M>`` (its ``M`` from the GEMM expansion, float32), GeomLoss's ``<a, F> + <b, G>`` × 2
(its entropic dual, not ``<P, C>``).

Physical reference, per n: one bare log-sum-exp pass ``lse_j(k_j - C_ij / eps)`` over the
n × m problem, dense torch (``C`` precomputed; when it fits the memory limit) and KeOps, one
thread; ``floor`` = passes × the faster of the two, with passes counted per method (2 per
iteration, plus: ootrain 1 stopping pass and 1 ``<P, C>`` pass; GeomLoss none; POT one check
pass per 10 iterations and 1 for ``<P, M>``).  ``÷ floor`` = CPU time / floor says how far a
method is from ``iterations × per-pass cost`` (below 1: its passes are cheaper than the bare
reference pass, e.g. POT's precomputed ``-C / eps``; per-pass costs are not exactly equal).
The reference is measured in its own process per n (CPU time; median of up to
``--repeats`` passes).

Limits: a case is skipped when the previous n of the same method predicts (CPU time ∝ n²,
extra memory ∝ n² for dense methods, ∝ n for the others) more than ``--time-limit`` CPU
seconds or ``--mem-limit`` bytes, or when it failed at a smaller n; the parent kills a child
whose RSS exceeds ``--mem-limit`` or whose wall time exceeds 3 × ``--time-limit`` + 120 s.

    /work/venv/bin/python benchmarks/bench_sinkhorn.py                   # default (~19 min*)
    /work/venv/bin/python benchmarks/bench_sinkhorn.py --quick           # smoke (< 1 min)
    /work/venv/bin/python benchmarks/bench_sinkhorn.py --d 16 --n 1000 3000            # ~4 min
    /work/venv/bin/python benchmarks/bench_sinkhorn.py --eps-rel 0.01 --n 1000 3000    # ~6 min

(*) on the 2-core machine shared with other jobs (load ~4), one solver thread: every method
runs at n = 10^3, 3·10^3, 10^4; at 3·10^4 and 10^5 every case is a predicted skip (> 100 CPU
s or > 6 GiB) and only the reference pass runs (46 s at 10^5: one KeOps pass over 10^10
pairs; a solve needs ~100 of them, i.e. a GPU).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (human_bytes, loadavg, machine_header, run_watched,  # noqa: E402
                     set_threads, table)

BASE_METHODS = ("ootrain", "ootrain@", "geomloss-tensorized", "geomloss-online", "pot-log",
                "pot-log-torch", "pot-lazy")
DENSE_KIND = {"geomloss-tensorized", "pot-log", "pot-log-torch"}   # hold [n, m] matrices
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ==================================================================== problem and evaluator
def make_problem(n: int, d: int, seed: int):
    """``x`` Gaussian, ``y`` 8-component mixture (float32 torch) and the mean cost."""
    import torch
    g = torch.Generator().manual_seed(seed * 1_000_003 + n * 101 + d)
    x = torch.randn(n, d, generator=g)
    centres = torch.randn(8, d, generator=g)
    y = centres[torch.randint(0, 8, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    x64, y64 = x.double(), y.double()
    mean_cost = float((x64 ** 2).sum(1).mean() + (y64 ** 2).sum(1).mean()
                      - 2 * x64.mean(0) @ y64.mean(0))
    return x, y, mean_cost


def evaluate(x, y, f, g, eps: float) -> dict:
    """Marginal errors and ``<P, C>`` of ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)``
    (uniform ``a``, ``b``), by row blocks in float64 torch; exact (non-GEMM) squared distances."""
    import torch
    n, m = x.shape[0], y.shape[0]
    x64, y64 = x.double(), y.double()
    f64 = torch.as_tensor(f).reshape(-1).double()
    g64 = torch.as_tensor(g).reshape(-1).double()
    shift = -math.log(n) - math.log(m)
    rows = torch.empty(n, dtype=torch.float64)
    cols = torch.zeros(m, dtype=torch.float64)
    pc = 0.0
    blk = max(1, (1 << 22) // m)
    with torch.no_grad():
        for i in range(0, n, blk):
            C = torch.cdist(x64[i:i + blk], y64, compute_mode="donot_use_mm_for_euclid_dist") ** 2
            P = torch.exp((f64[i:i + blk, None] + g64[None, :] - C) / eps + shift)
            rows[i:i + blk] = P.sum(1)
            cols += P.sum(0)
            pc += float((P * C).sum())
    row_err = float((rows - 1.0 / n).abs().sum())
    col_err = float((cols - 1.0 / m).abs().sum())
    mass = float(rows.sum())
    dual = float(f64.mean() + g64.mean()) - eps * (mass - 1)
    return {"row_err": row_err, "col_err": col_err, "err": row_err + col_err, "pc": pc,
            "mass": mass, "dual": dual}


# ==================================================================== child: one (method, n)
class Sampler:
    """Peak RSS of this process, sampled every 5 ms while running."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = False
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop = True
        self._th.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def make_solver(method: str, x, y, eps: float, args, tol: float):
    """A closure running one solve and returning ``(f, g, iterations, passes, own value,
    extra)`` in the module doc's convention (potentials of the full cost, plan from them)."""
    n, m = x.shape[0], y.shape[0]
    if method == "ootrain":
        from ootrain.ot.sinkhorn import sinkhorn

        def solve():
            r = sinkhorn(x, y, eps, tol=tol, max_iter=args.max_iter)
            value = float(r.cost)
            return (r.f, r.g, r.iterations, 2 * r.iterations + 2, value,
                    {"backend": r.backend, "own_err": r.marginal_error})
        return solve
    if method.startswith("geomloss-"):
        from geomloss import SamplesLoss
        from geomloss._legacy.sinkhorn_divergence import epsilon_schedule, max_diameter
        backend = method.split("-", 1)[1]
        blur = math.sqrt(eps / 2)
        n_sched = len(epsilon_schedule(2, max_diameter(x, y), blur, args.scaling))

        def solve():
            loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=args.scaling, debias=False,
                               backend=backend, potentials=True)
            F, G = loss(x, y)
            f, g = 2 * F.reshape(-1), 2 * G.reshape(-1)
            value = float(f.mean() + g.mean())
            return f, g, n_sched + 2, 2 * (n_sched + 2), value, {}
        return solve
    import numpy as np
    import ot
    if method in ("pot-log", "pot-log-torch"):
        if method == "pot-log":
            xs, ys = x.numpy(), y.numpy()
            a, b = np.full(n, 1.0 / n, np.float32), np.full(m, 1.0 / m, np.float32)
        else:
            import torch
            xs, ys = x, y
            a, b = torch.full((n,), 1.0 / n), torch.full((m,), 1.0 / m)

        def solve():
            M = ot.dist(xs, ys)
            value, log = ot.sinkhorn2(a, b, M, eps, method="sinkhorn_log",
                                      stopThr=tol / math.sqrt(n), numItermax=args.max_iter,
                                      log=True, warn=False)
            it = int(log["niter"]) + 1
            f = eps * (np.asarray(log["log_u"], dtype=np.float64) + math.log(n))
            g = eps * (np.asarray(log["log_v"], dtype=np.float64) + math.log(m))
            return f, g, it, 2 * it + math.ceil(it / 10) + 1, float(value), {}
        return solve
    if method == "pot-lazy":
        xs, ys = x.numpy(), y.numpy()

        def solve():
            value, log = ot.bregman.empirical_sinkhorn2(
                xs, ys, eps, isLazy=True, batchSize=args.pot_batch, stopThr=tol,
                numIterMax=args.max_iter, log=True, warn=False)
            it = int(log["niter"]) + 1
            f = eps * (np.asarray(log["u"], dtype=np.float64) + math.log(n))
            g = eps * (np.asarray(log["v"], dtype=np.float64) + math.log(m))
            return f, g, it, 2 * it + it // 10 + 1, float(value), {}
        return solve
    raise ValueError(method)


def child_ref(args) -> dict:
    """CPU seconds of one bare log-sum-exp pass, dense torch and KeOps, over the n x m
    problem (median of up to ``--repeats`` passes while they take < 2 s in all)."""
    import torch
    from pykeops.torch import LazyTensor
    n, d = args.child_n, args.child_d
    x, y, mean_cost = make_problem(n, d, args.seed)
    s = 1.0 / (args.eps_rel * mean_cost)

    def timed(fn) -> float:
        ts: list[float] = []
        while len(ts) < args.repeats and sum(ts) < 2.0:
            t = time.process_time()
            fn()
            ts.append(time.process_time() - t)
        return statistics.median(ts)

    def keops_lse(xx, yy):
        k = torch.zeros(yy.shape[0])
        X, Y = LazyTensor(xx[:, None, :]), LazyTensor(yy[None, :, :])
        K = LazyTensor(k[None, :, None]) - X.sqdist(Y) * LazyTensor(torch.tensor([s]))
        return lambda: K.logsumexp(dim=1)

    out = {}
    if 5 * 4 * n * n <= args.mem_limit:                  # C + ~4 temporaries
        C = torch.cdist(x, y) ** 2
        k = torch.zeros(n)
        torch.logsumexp(k[None, :] - C * s, dim=1)       # warm-up (allocations)
        out["dense"] = timed(lambda: torch.logsumexp(k[None, :] - C * s, dim=1))
        del C
    keops_lse(x[:256], y[:256])()                        # compile
    out["keops"] = timed(keops_lse(x, y))
    return out


def child(args) -> None:
    set_threads(args.threads)
    import torch
    if args.method == "ref":
        print(json.dumps({"status": "ok", **child_ref(args)}))
        return
    n, d = args.child_n, args.child_d
    x, y, mean_cost = make_problem(n, d, args.seed)
    eps = args.eps_rel * mean_cost
    tol = args.child_tol if args.child_tol is not None else args.tol
    base_method = args.method.split("@")[0]
    # warm-up on 256 points, same code path (KeOps compiles here; ootrain's auto backend
    # forced to what it picks at this n)
    wx, wy, wc = make_problem(256, d, args.seed + 1)
    if base_method == "ootrain":
        from ootrain.ot.sinkhorn import DENSE_MAX_ENTRIES, sinkhorn
        bk = "torch" if n * n <= DENSE_MAX_ENTRIES else "keops"
        float(sinkhorn(wx, wy, args.eps_rel * wc, tol=1e-2, backend=bk).cost)
    else:
        make_solver(base_method, wx, wy, args.eps_rel * wc, args, max(tol, 1e-2))()
    solve = make_solver(base_method, x, y, eps, args, tol)
    sampler = Sampler()
    times, cpus = [], []
    out = None
    with torch.no_grad():
        while len(times) < args.repeats and (not times or times[0] < 2.0):
            c0, t0 = time.process_time(), time.perf_counter()
            out = solve()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    sampler.stop()
    f, g, iters, passes, value, extra = out
    t_eval = time.perf_counter()
    set_threads(args.eval_threads)
    ev = evaluate(x, y, f, g, eps)
    res = {"status": "ok", "time": statistics.median(times), "times": times,
           "cpu": statistics.median(cpus), "cpu_ratio": sum(cpus) / sum(times), "iterations": iters, "passes": passes,
           "value": value, "peak": sampler.peak, "base": sampler.base, "eps": eps,
           "tol": tol, "eval_s": time.perf_counter() - t_eval, **ev, **extra}
    print(json.dumps(res))


# ==================================================================== parent
def run_one(args, method: str, n: int, d: int, scaling: float | None = None,
            tol: float | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--method", method,
           "--child-n", str(n), "--child-d", str(d)]
    for k in ("eps_rel", "tol", "max_iter", "repeats", "threads", "eval_threads", "seed",
              "pot_batch", "mem_limit"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    if scaling is not None:
        cmd += ["--scaling", str(scaling)]
    if tol is not None:
        cmd += ["--child-tol", repr(tol)]
    env = dict(os.environ)
    for k in THREAD_VARS:
        env[k] = str(args.threads)
    wall_limit = 3 * args.time_limit + 120
    w = run_watched(cmd, env, args.mem_limit, wall_limit)
    wall, peak = w["wall"], w["peak"]
    if w["killed"] == "memory":
        return {"status": f"killed: RSS {human_bytes(w['rss'])} > limit "
                          f"{human_bytes(args.mem_limit)}", "wall": wall, "peak": peak,
                "failed": True}
    if w["killed"] == "wall":
        return {"status": f"killed: wall > {wall_limit:g} s", "wall": wall, "peak": peak,
                "failed": True}
    if w["returncode"] != 0 or not w["lines"]:
        return {"status": f"crashed (rc {w['returncode']}): {w['err_tail'][:90]}",
                "wall": wall, "failed": True}
    res = json.loads(w["lines"][-1])
    res["wall"] = wall
    if res.get("cpu", 0) > args.time_limit:
        res["status"] = f"over the time limit ({args.time_limit:g} CPU s)"
        res["failed"] = True
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000],
                    help="n = m (increasing)")
    ap.add_argument("--d", type=int, nargs="+", default=[2])
    ap.add_argument("--eps-rel", type=float, default=0.05, help="eps = eps_rel × mean cost")
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="L1 marginal error for ootrain and POT")
    ap.add_argument("--geomloss-scaling", type=float, nargs="+", default=[0.5, 0.9])
    ap.add_argument("--methods", nargs="+", default=list(BASE_METHODS), choices=BASE_METHODS,
                    help="'ootrain@' = ootrain at GeomLoss's reached error (one per scaling)")
    ap.add_argument("--max-iter", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3, help="solves per case when one takes < 2 s")
    ap.add_argument("--time-limit", type=float, default=100.0,
                    help="CPU seconds per solve (predicted from the previous n: skip)")
    ap.add_argument("--mem-limit", type=float, default=6 * 2**30, help="bytes of RSS per case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-threads", type=int, default=1, help="(not charged) evaluation")
    ap.add_argument("--pot-batch", type=int, default=100, help="POT lazy batchSize (its default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: --n 500, one repeat, time limit 20 s")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="ootrain", help=argparse.SUPPRESS)
    ap.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-d", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-tol", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scaling", type=float, default=0.5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.n, args.repeats, args.time_limit = [500], 1, 20.0
    set_threads(args.threads)
    print(machine_header("Sinkhorn: ootrain vs GeomLoss vs POT", sys.argv))
    vers = []
    for mod in ("ot", "geomloss", "pykeops"):
        try:
            vers.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            vers.append(f"{mod} not installed")
    print(f"- {', '.join(vers)}; eps = {args.eps_rel:g} × mean cost; tol {args.tol:g} (L1); "
          f"GeomLoss scaling {', '.join(f'{s:g}' for s in args.geomloss_scaling)}; "
          f"threads {args.threads}; limits {args.time_limit:g} CPU s per solve, "
          f"{human_bytes(args.mem_limit)} RSS\n", flush=True)
    ns = sorted(set(args.n))
    rows, ref_rows = [], []
    for d in args.d:
        hist: dict[str, tuple[int, dict]] = {}      # case key -> (n, result) of its last run
        failed: dict[str, int] = {}
        for n in ns:
            ref = run_one(args, "ref", n, d)
            t_dense, t_keops = ref.get("dense"), ref.get("keops")
            cands = [t for t in (t_dense, t_keops) if t]
            t_pass = min(cands) if cands else None
            ref_rows.append([n, d, f"{t_dense:.4g}" if t_dense else "skipped (memory)",
                             f"{t_keops:.4g}" if t_keops else ref.get("status", "?"),
                             f"{t_pass / n / n * 1e9:.3g}" if t_pass else "—"])
            print(f"  d={d} n={n} reference pass: dense {t_dense} s, keops {t_keops} s; load "
                  f"{loadavg()}", flush=True)
            results: dict[str, dict] = {}
            cases: list[tuple[str, str, float | None]] = []   # key, method, scaling
            for m in args.methods:
                if m.startswith("geomloss"):
                    cases += [(f"{m}@{s:g}", m, s) for s in args.geomloss_scaling]
            if "ootrain" in args.methods:
                cases.append(("ootrain", "ootrain", None))
            if "ootrain@" in args.methods:
                cases += [(f"ootrain@{s:g}", "ootrain", s) for s in args.geomloss_scaling]
            cases += [(m, m, None) for m in args.methods if m.startswith("pot")]
            for key, method, s in cases:
                tol = None
                skip = None
                if key in failed:
                    skip = f"skipped: failed at n = {failed[key]}"
                elif key in hist:
                    pn, pr = hist[key]
                    pt = pr["cpu"] * (n / pn) ** 2
                    extra = max(pr["peak"] - pr["base"], 0)
                    pm = pr["base"] + extra * ((n / pn) ** 2 if method in DENSE_KIND else n / pn)
                    if pm > args.mem_limit:
                        skip = f"skipped: needs ~{human_bytes(pm)}"
                    elif pt > args.time_limit:
                        skip = f"skipped: predicted ~{pt:.3g} CPU s"
                elif method in DENSE_KIND and 4.0 * n * n > args.mem_limit:
                    skip = f"skipped: needs > {human_bytes(4.0 * n * n)}"
                if skip is None and key.startswith("ootrain@"):
                    gl = results.get(f"geomloss-online@{s:g}") or results.get(
                        f"geomloss-tensorized@{s:g}")
                    if gl is None or gl.get("err") is None:
                        skip = "skipped: no GeomLoss result at this n"
                    else:
                        tol = gl["err"]
                if skip:
                    r = {"status": skip}
                else:
                    r = run_one(args, method, n, d,
                                scaling=s if method.startswith("geomloss") else None, tol=tol)
                    if r.get("failed"):
                        failed[key] = n
                    elif r.get("time") is not None:
                        hist[key] = (n, r)
                results[key] = r
                print(f"  d={d} n={n} {key}: {r['status']}"
                      + (f"; {r['time']:.3g} s wall, {r['cpu']:.3g} s CPU, "
                         f"{r['iterations']} it, err {r['err']:.3g} (row {r['row_err']:.2g}, "
                         f"col {r['col_err']:.2g}), <P,C> {r['pc']:.6g}, own value "
                         f"{r['value']:.6g}, peak-base {human_bytes(r['peak'] - r['base'])}, "
                         f"eval {r['eval_s']:.2g} s" if r.get("time") is not None else "")
                      + f"; load {loadavg()}", flush=True)
            for key, method, s in cases:
                r = results[key]
                if key.startswith("geomloss"):
                    refk = f"ootrain@{s:g}"
                else:
                    refk = "ootrain"
                ref_r = results.get(refk, {})
                ratio = "—"
                if key != refk and r.get("cpu") and ref_r.get("cpu"):
                    ratio = f"{r['cpu'] / ref_r['cpu']:.3g} (vs {refk})"
                if r.get("time") is None:
                    rows.append([n, d, key, "—", "—", "—", "—", "—", "—", "—", "—", "—",
                                 r["status"]])
                    continue
                floor = r["passes"] * t_pass if t_pass else None
                name = key + (f" ({r['backend']})" if r.get("backend") else "")
                stop = f"tol {r['tol']:.3g}" if not key.startswith("geomloss") else "schedule"
                rows.append([n, d, name, f"{r['time']:.3g}", f"{r['cpu']:.3g}", ratio,
                             r["iterations"], f"{r['cpu'] / floor:.2f}" if floor else "—",
                             f"{r['err']:.2g}", f"{r['pc']:.5g}", f"{r['value']:.5g}",
                             human_bytes(max(r["peak"] - r["base"], 0)),
                             stop if r["status"] == "ok" else r["status"]])
    print()
    print(table(["n", "d", "method", "wall (s)", "CPU (s)", "÷ ootrain (CPU)", "iterations",
                 "÷ floor (CPU)", "marginal err (L1 row+col)", "<P, C>", "own value",
                 "peak − base RSS", "stop / status"], rows))
    print()
    print("Physical reference: CPU seconds of one bare log-sum-exp pass over the n × m "
          "problem (one thread); floor = passes × the faster:\n")
    print(table(["n", "d", "dense torch (s)", "KeOps (s)", "ns / pair (faster)"], ref_rows))
    print(f"\n- eps = {args.eps_rel:g} × mean cost; ootrain and POT stop on tol = {args.tol:g} "
          "(POT dense: L2 column error <= tol/sqrt(n)); GeomLoss runs its annealing schedule "
          "(no tolerance); ootrain@s stops at the error GeomLoss@s reached, and the GeomLoss "
          "rows' ratio is against it.  Ratios and floors use process CPU time (one thread; "
          "less sensitive to other jobs than wall time, which is also given; wall is the "
          "median over repeats, CPU the median CPU).  own value: ootrain <P, C>; POT <P, M>; "
          "GeomLoss 2 (<a, F> + <b, G>) (its dual).  peak − base RSS: during the solves, after "
          "imports, inputs and warm-up.")
    print(f"- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
