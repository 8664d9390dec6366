"""Solve throughput of the sliced solver, in memory and out of core, vs sorting the same projections in RAM.

For each population size b, a local store in a temporary directory holds b generated embeddings
[b, d] and n real embeddings [n, d] (float32, random).  Then, side by side in one process:

- ``SlicedSolver.solve`` (targets mode) through the in-memory path: a memory budget (``--budget``,
  default the smallest whole MiB for which ``rsr.plan_pass`` gives all k directions in one pass)
  under which ``rsr._align_in_memory`` projects both populations chunk by chunk (zarr read,
  nothing stored but the targets), sorts every row (packed-key ``sort.argsort`` for the
  generated rows, ``np.sort`` in place for the real ones), computes exact quantile targets and
  writes them;
- the same through the out-of-core path with ``--k-ext`` directions under ``--ext-budget``
  (default 64 MiB): ``rsr._align_sample_sort``, two sample sorts whose buckets live in the store
  (``ootrain.engine.samplesort``): partition tasks project each stored chunk and write its
  records by bucket, real bucket tasks sort, generated bucket tasks sort and map ranks to
  quantile targets, gather tasks put the targets back in sample order.  ``rsr.plan_pass`` is
  forced to 0 for this run, so the path is measured even where the rows would fit the budget
  (the table says "forced");
- references in memory, on the same projection values ([k, b] generated and [k, n] real, float32,
  already in RAM: no I/O, no projection): ``np.sort`` of both (the "physical-ish" limit: sorting
  the values is the least any exact Solve has to do), ``np.argsort`` of both, and the engine's
  packed-key ``sort.argsort`` of the generated rows plus ``np.sort`` of the real ones (what the
  in-memory path sorts).

Throughput is in elements/s with elements = b × k (generated projected values per step) for
every line, so ratios compare the same work.  The solver breakdown is measured by timing
wrappers around the functions the solver calls: in memory, project = ``rsr._project_block``
and align = ``rsr._align_row``; out of core, the sample sort's task functions (partition,
sort, map, gather); other = directions, distances, manifest bookkeeping.

    /work/venv/bin/python benchmarks/bench_solve.py                       # b = 10^6, 10^7
    /work/venv/bin/python benchmarks/bench_solve.py --b 200000 --k 4 --k-ext 1 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import human_bytes, loadavg, machine_header, median, table  # noqa: E402

from ootrain.methods import rsr  # noqa: E402

from ootrain.ot import sort  # noqa: E402
from ootrain.engine import samplesort  # noqa: E402
from ootrain.engine.compute import Compute  # noqa: E402
from ootrain.engine.core import SolveContext  # noqa: E402
from ootrain.store import Store  # noqa: E402

_TIMES: dict[str, float] = defaultdict(float)
_FORCE_EXTERNAL = False


def _timed(name: str, fn):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            _TIMES[name] += time.perf_counter() - t
    return wrapper


# Time the solver's pieces by wrapping the module functions it calls (looked up as rsr globals at
# call time, so replacing the module attributes is enough).
# The Dask tasks' times are task-seconds (summed over concurrent workers); the passes' wall
# time is _align_in_memory's.
_plan_pass = rsr.plan_pass
rsr._project_block = _timed("project_block", rsr._project_block)
rsr._align_row = _timed("align_row", rsr._align_row)
rsr._align_in_memory = _timed("align_in_memory", rsr._align_in_memory)
rsr._align_sample_sort = _timed("align_sample_sort", rsr._align_sample_sort)
for _stage in ("partition", "sort", "map", "gather"):
    setattr(samplesort, f"_{_stage}_task", _timed(_stage, getattr(samplesort, f"_{_stage}_task")))
rsr.plan_pass = lambda *a, **kw: 0 if _FORCE_EXTERNAL else _plan_pass(*a, **kw)


def in_memory_budget(b: int, n: int, k: int, itemsize: int, chunk_bytes: int) -> int:
    """Smallest whole MiB for which plan_pass gives all k directions in one pass."""
    mib = 1 << 20
    lo = mib
    while _plan_pass(b, n, k, itemsize, chunk_bytes, lo) < k:
        lo *= 2
    hi, lo = lo, lo // 2  # plan_pass(lo) < k <= plan_pass(hi); bisect in MiB
    while hi - lo > mib:
        mid = (lo + hi) // 2 // mib * mib
        if _plan_pass(b, n, k, itemsize, chunk_bytes, mid) >= k:
            hi = mid
        else:
            lo = mid
    return hi


def fill(store: Store, path: str, rows: int, d: int, chunk_rows: int, seed: int,
         shift: float) -> None:
    store.require_array(path, (rows, d), (chunk_rows, d), np.float32)
    rng = np.random.default_rng(seed)
    for c, lo in enumerate(range(0, rows, chunk_rows)):
        hi = min(rows, lo + chunk_rows)
        store.write_chunk(path, (c, 0), rng.standard_normal((hi - lo, d), dtype=np.float32)
                          + np.float32(shift))


def drop(store: Store, prefix: str) -> None:
    root = store.url
    for p in (os.path.join(root, prefix), os.path.join(root, "manifest", prefix)):
        shutil.rmtree(p, ignore_errors=True)


def run_solver(store: Store, emb, real, k: int, budget: int, tag: str, rep: int,
               external: bool, workers: int) -> dict:
    global _FORCE_EXTERNAL
    prefix = f"solve/{tag}{workers}-{rep}"
    # the stored arrays under their engine names: Solve's tasks read them by path
    ctx = SolveContext(store, step=rep, prefix=prefix, previous=None,
                       arrays={"embeddings": emb}, real=real, memory_budget=budget, seed=0,
                       compute=Compute(workers=workers))
    store.group.require_group(prefix)
    _TIMES.clear()
    _FORCE_EXTERNAL = external
    try:
        t = time.perf_counter()
        metrics = rsr.SlicedSolver(n_directions=k).solve(ctx)
        total = time.perf_counter() - t
    finally:
        _FORCE_EXTERNAL = False
    if external:
        assert _TIMES["align_sample_sort"] > 0 and _TIMES["align_in_memory"] == 0, dict(_TIMES)
        project, align = _TIMES["partition"], _TIMES["sort"] + _TIMES["map"]
    else:
        assert _TIMES["align_in_memory"] > 0 and _TIMES["align_sample_sort"] == 0, dict(_TIMES)
        project, align = _TIMES["project_block"], _TIMES["align_row"]
    out = {"total": total, "project": project, "align": align, "loss": metrics["loss"],
           "gather": _TIMES["gather"]}
    drop(store, prefix)
    return out


def projections(emb, real, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[k, b] and [k, n] float32 projections held in memory (not timed)."""
    rng = np.random.default_rng(seed)
    om = rng.standard_normal((emb.shape[1], k))
    om /= np.linalg.norm(om, axis=0)
    out = []
    for arr in (emb, real):
        p = np.empty((k, arr.shape[0]), dtype=np.float32)
        rows = arr.chunks[0]
        for lo in range(0, arr.shape[0], rows):
            p[:, lo:lo + rows] = (arr[lo:lo + rows] @ om.astype(np.float32)).T
        out.append(p)
    return out[0], out[1]


def _sort_rows_threads(P: np.ndarray, R: np.ndarray, workers: int) -> None:
    """np.sort of every row, rows spread over a thread pool (np.sort releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(np.sort, [*P, *R]))


def time_it(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return median(ts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--b", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--n", type=int, default=None, help="real samples (default: same as b)")
    ap.add_argument("--d", type=int, default=64, help="embedding width")
    ap.add_argument("--k", type=int, default=16, help="directions, in-memory path + references")
    ap.add_argument("--k-ext", type=int, default=2, help="directions, out-of-core path (0: skip)")
    ap.add_argument("--budget", type=int, default=None,
                    help="in-memory path budget, bytes (default: the smallest whole MiB for "
                         "which rsr.plan_pass gives all k directions in one pass)")
    ap.add_argument("--ext-budget", type=int, default=64 << 20,
                    help="out-of-core path budget, bytes (default 64 MiB)")
    ap.add_argument("--chunk-bytes", type=int, default=16 << 20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ext-repeats", type=int, default=1)
    ap.add_argument("--tmpdir", default=None,
                    help="directory of the store (the sample sort's buckets live in it) "
                         "(default: the system temporary directory)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="Dask local workers of the solver (each a run; BLAS 1 thread a task)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the solver's torch ops (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    if args.tmpdir:
        os.makedirs(args.tmpdir, exist_ok=True)

    print(machine_header("Solve throughput (sliced solver, in memory and out of core) vs in-memory sorts",
                         ["benchmarks/bench_solve.py"] + (argv if argv is not None else sys.argv[1:])))
    print(f"- setup: d={args.d}, k={args.k} (in-memory path, references), k_ext={args.k_ext} "
          f"(out-of-core path), n_real={'b' if args.n is None else args.n}, float32, targets mode; "
          f"in-memory budget {'auto' if args.budget is None else human_bytes(args.budget)}, "
          f"out-of-core budget {human_bytes(args.ext_budget)}; store in "
          f"{args.tmpdir or tempfile.gettempdir()}; medians of {args.repeats} (out of core: {args.ext_repeats}); "
          "elements = b × k")
    print()
    rows, detail = [], []
    for b in args.b:
        n = args.n or b
        k, ke = args.k, args.k_ext
        tmp = tempfile.mkdtemp(prefix="bench-solve-", dir=args.tmpdir)
        try:
            store = Store(os.path.join(tmp, "store"), {"bench": "solve", "b": b, "n": n})
            chunk_rows = max(1, args.chunk_bytes // (4 * args.d))
            t = time.perf_counter()
            fill(store, "gen/embeddings", b, args.d, chunk_rows, 1, 0.0)
            fill(store, "real/embeddings", n, args.d, chunk_rows, 2, 0.5)
            emb, real = store.array("gen/embeddings"), store.array("real/embeddings")
            chunk_bytes = emb.chunks[0] * args.d * 4
            budget = args.budget or in_memory_budget(b, n, k, 4, chunk_bytes)
            g = _plan_pass(b, n, k, 4, chunk_bytes, budget)
            g_ext = _plan_pass(b, n, ke, 4, chunk_bytes, args.ext_budget) if ke else 0
            forced = g_ext > 0
            print(f"- b={b}: wrote {human_bytes((b + n) * args.d * 4)} of embeddings in "
                  f"{time.perf_counter() - t:.1f} s (setup, untimed); in-memory budget "
                  f"{human_bytes(budget)} -> plan_pass {g} of k={k} directions per pass"
                  + ("" if not ke else f"; out-of-core budget {human_bytes(args.ext_budget)} -> "
                     f"plan_pass {g_ext}" + (" (rows would fit: external path forced)"
                                             if forced else " (external)"))
                  + f"; load {loadavg()}", flush=True)
            if g == 0:
                print("  note: the in-memory budget gives plan_pass 0: that path runs out of core")
            elif g < k:
                print(f"  note: the in-memory path runs {-(-k // g)} passes")

            P, R = projections(emb, real, k, seed=3)
            el = b * k
            ref_sort = time_it(lambda: (np.sort(P, axis=1), np.sort(R, axis=1)), args.repeats)
            ref_arg = time_it(lambda: (np.argsort(P, axis=1), np.argsort(R, axis=1)), args.repeats)
            sort.argsort(P[0, :1000])  # numba JIT / cache load outside the timing
            ref_pack = time_it(lambda: ([sort.argsort(r) for r in P], np.sort(R, axis=1)),
                               args.repeats)
            ref_sort2 = time_it(lambda: _sort_rows_threads(P, R, 2), args.repeats)
            P = R = None  # free them before the solver runs
            load = loadavg().split(",")[0]
            rows += [
                [b, "np.sort (values, gen + real, in RAM), 1 thread", k, ref_sort, el / ref_sort,
                 1.0, load],
                [b, "np.sort (values, gen + real, in RAM), rows over 2 threads", k, ref_sort2,
                 el / ref_sort2, ref_sort2 / ref_sort, load],
                [b, "np.argsort (gen + real, in RAM)", k, ref_arg, el / ref_arg,
                 ref_arg / ref_sort, load],
                [b, "sort.argsort packed (gen) + np.sort (real), in RAM", k, ref_pack,
                 el / ref_pack, ref_pack / ref_sort, load],
            ]
            for w in args.workers:
                ref = ref_sort if w == 1 else ref_sort2
                mem = [run_solver(store, emb, real, k, budget, "mem", r, external=False,
                                  workers=w) for r in range(args.repeats)]
                m_tot = median([x["total"] for x in mem])
                m_proj = median([x["project"] for x in mem])
                m_align = median([x["align"] for x in mem])
                load = loadavg().split(",")[0]
                rows.append([b, f"SlicedSolver.solve, in-memory path, Dask {w} worker(s) "
                             f"(budget {human_bytes(budget)}, {-(-k // g) if g else 0} "
                             "pass(es), zarr store)", k, m_tot, el / m_tot, m_tot / ref, load])
                detail.append([b, "in memory", w, k, m_proj, m_align, "-", m_tot])
                ext = [run_solver(store, emb, real, ke, args.ext_budget, "ext", r,
                                  external=True, workers=w)
                       for r in range(args.ext_repeats)] if ke > 0 else []
                if ext:
                    e_tot = median([x["total"] for x in ext])
                    e_proj = median([x["project"] for x in ext])
                    e_align = median([x["align"] for x in ext])
                    e_gather = median([x["gather"] for x in ext])
                    rows.append([b, f"SlicedSolver.solve, out-of-core path, Dask {w} worker(s) "
                                 f"(budget {human_bytes(args.ext_budget)}"
                                 f"{', forced' if forced else ''})", ke, e_tot, b * ke / e_tot,
                                 (e_tot / ke) / (ref / k), loadavg().split(",")[0]])
                    detail.append([b, "out of core", w, ke, e_proj, e_align, e_gather, e_tot])
            print(f"  done b={b}: np.sort {ref_sort:.2f} s; load {loadavg()}", flush=True)
            store.release()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(["b", "what", "k", "time (s)", "elements/s", "time per direction / np.sort's "
                 "(same threads)", "1-min load"], rows))
    print()
    print("Solver breakdown (seconds, medians; project and align are task-seconds, summed "
          "over Dask's concurrent workers).  In memory: project = rsr._project_block tasks "
          "(both populations read and projected per stored chunk), align = rsr._align_row "
          "tasks (gather a direction's row, sort, quantile targets).  Out of core: project = "
          "the sample sorts' partition tasks (project a stored chunk, bucket it, write its "
          "records), align = bucket tasks (real: sort; generated: sort, quantile targets, "
          "records by destination chunk), gather = gather tasks (targets back in sample "
          "order, written).  Wall = the Solve.")
    print()
    print(table(["b", "path", "Dask workers", "k", "project (task-s)", "align (task-s)",
                 "gather (task-s)", "wall"], detail))
    print()
    print(f"- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
