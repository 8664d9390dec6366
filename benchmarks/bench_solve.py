"""Solve throughput of the out-of-core sliced solver vs sorting the same projections in memory.

For each population size b, a local store in a temporary directory holds b generated embeddings
[b, d] and n real embeddings [n, d] (float32, random).  Then, side by side in one process:

- ``SlicedSolver.solve`` (targets mode) through the in-memory sort path (a memory budget that holds
  a whole row) — project both populations on k directions (zarr write), per direction read the
  row, sort, compute exact quantile targets, write targets;
- the same through the Dask out-of-core path (a small memory budget, so every row goes through
  ``sort.argsort_dask`` + ``sort.scatter_dask``), with ``--k-dask`` directions;
- references in memory, on the same projection values ([k, b] generated and [k, n] real, float32,
  already in RAM — no I/O, no projection): ``np.sort`` of both (the "physical-ish" limit: sorting
  the values is the least any exact Solve has to do), ``np.argsort`` of both, and the engine's
  packed-key ``sort.argsort`` of the generated rows plus ``np.sort`` of the real ones (what the
  in-memory path actually sorts).

Throughput is in elements/s with elements = b × k (generated projected values per step), for
every line, so ratios compare the same work.  The solver breakdown (project / align / other) is
measured by timing wrappers around ``ootrain.rsr._project`` and ``ootrain.rsr._align_row``.

    /work/venv/bin/python benchmarks/bench_solve.py                       # b = 10^6, 10^7
    /work/venv/bin/python benchmarks/bench_solve.py --b 20000 --k 4 --k-dask 1 --repeats 1  # smoke
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

from ootrain import rsr, sort  # noqa: E402
from ootrain.engine import SolveContext  # noqa: E402
from ootrain.store import Store  # noqa: E402

_TIMES: dict[str, float] = defaultdict(float)


def _timed(name: str, fn):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            _TIMES[name] += time.perf_counter() - t
    return wrapper


# time the solver's pieces by wrapping the module functions it calls (whichever exist: the
# solver's internals are being reworked, so be tolerant of names)
rsr._project = _timed("project", rsr._project)
for _name in ("_align_rows", "_align_row", "_align_row_dask"):
    if hasattr(rsr, _name):
        setattr(rsr, _name, _timed("align", getattr(rsr, _name)))


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


def run_solver(store: Store, emb, real, k: int, budget: int, tag: str, rep: int) -> dict:
    prefix = f"solve/{tag}{rep}"
    ctx = SolveContext(store, step=rep, prefix=prefix, previous=None, embeddings=emb, real=real,
                       chunk_rows=emb.chunks[0], memory_budget=budget, seed=0)
    store.group.require_group(prefix)
    _TIMES.clear()
    t = time.perf_counter()
    metrics = rsr.SlicedSolver(n_directions=k).solve(ctx)
    total = time.perf_counter() - t
    out = {"total": total, "project": _TIMES["project"], "align": _TIMES["align"],
           "loss": metrics["loss"]}
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
    ap.add_argument("--k-dask", type=int, default=2, help="directions, Dask path")
    ap.add_argument("--budget", type=int, default=4 << 30, help="in-memory path budget, bytes")
    ap.add_argument("--dask-budget", type=int, default=16 << 20, help="Dask path budget, bytes")
    ap.add_argument("--chunk-bytes", type=int, default=16 << 20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dask-repeats", type=int, default=1)
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the solver's torch ops (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)

    print(machine_header("Solve throughput (sliced solver) vs in-memory sorts",
                         ["benchmarks/bench_solve.py"] + (argv if argv is not None else sys.argv[1:])))
    print(f"- setup: d={args.d}, k={args.k} (in-memory path, references), k_dask={args.k_dask} "
          f"(Dask path), n_real={'b' if args.n is None else args.n}, float32, targets mode; "
          f"in-memory budget {human_bytes(args.budget)}, Dask budget "
          f"{human_bytes(args.dask_budget)}; medians of {args.repeats} (Dask: "
          f"{args.dask_repeats}); elements = b × k")
    print()
    rows, detail = [], []
    for b in args.b:
        n = args.n or b
        k, kd = args.k, args.k_dask
        tmp = tempfile.mkdtemp(prefix="bench-solve-", dir=args.tmpdir)
        try:
            store = Store(os.path.join(tmp, "store"), {"bench": "solve", "b": b, "n": n})
            chunk_rows = max(1, args.chunk_bytes // (4 * args.d))
            t = time.perf_counter()
            fill(store, "gen/embeddings", b, args.d, chunk_rows, 1, 0.0)
            fill(store, "real/embeddings", n, args.d, chunk_rows, 2, 0.5)
            emb, real = store.array("gen/embeddings"), store.array("real/embeddings")
            print(f"- b={b}: wrote {human_bytes((b + n) * args.d * 4)} of embeddings in "
                  f"{time.perf_counter() - t:.1f} s (setup, untimed); load {loadavg()}", flush=True)
            if not sort.row_fits(b, 4, args.budget) or not sort.row_fits(n, 8, args.budget):
                print(f"  note: b={b} does not fit the in-memory budget; that path uses Dask too")
            if sort.row_fits(b, 4, args.dask_budget):
                print(f"  note: b={b} fits the Dask budget; the 'Dask' path sorts in memory")

            P, R = projections(emb, real, k, seed=3)
            el = b * k
            ref_sort = time_it(lambda: (np.sort(P, axis=1), np.sort(R, axis=1)), args.repeats)
            ref_arg = time_it(lambda: (np.argsort(P, axis=1), np.argsort(R, axis=1)), args.repeats)
            sort.argsort(P[0, :1000])  # numba JIT / cache load outside the timing
            ref_pack = time_it(lambda: ([sort.argsort(r) for r in P], np.sort(R.astype(np.float64),
                                                                             axis=1)),
                               args.repeats)
            del P, R
            mem = [run_solver(store, emb, real, k, args.budget, "mem", r)
                   for r in range(args.repeats)]
            m_tot = median([x["total"] for x in mem])
            m_proj = median([x["project"] for x in mem])
            m_align = median([x["align"] for x in mem])
            dk = [run_solver(store, emb, real, kd, args.dask_budget, "dask", r)
                  for r in range(args.dask_repeats)] if kd > 0 else []
            load = loadavg().split(",")[0]
            rows += [
                [b, "np.sort (values, gen + real, in RAM)", k, ref_sort, el / ref_sort, 1.0, load],
                [b, "np.argsort (gen + real, in RAM)", k, ref_arg, el / ref_arg,
                 ref_arg / ref_sort, load],
                [b, "sort.argsort packed (gen) + np.sort f64 (real), in RAM", k, ref_pack,
                 el / ref_pack, ref_pack / ref_sort, load],
                [b, "SlicedSolver.solve, in-memory path (zarr store)", k, m_tot, el / m_tot,
                 m_tot / ref_sort, load],
            ]
            detail.append([b, "in-memory", k, m_proj, m_align, m_tot - m_proj - m_align, m_tot])
            if dk:
                d_tot = median([x["total"] for x in dk])
                d_proj = median([x["project"] for x in dk])
                d_align = median([x["align"] for x in dk])
                eld = b * kd
                rows.append([b, f"SlicedSolver.solve, Dask path (budget "
                             f"{human_bytes(args.dask_budget)})", kd, d_tot, eld / d_tot,
                             (d_tot / kd) / (ref_sort / k), load])
                detail.append([b, "Dask", kd, d_proj, d_align, d_tot - d_proj - d_align, d_tot])
            print(f"  done b={b}: np.sort {ref_sort:.2f} s, solve in-memory {m_tot:.2f} s"
                  + (f", Dask {d_tot:.2f} s (k={kd})" if dk else "") + f"; load {loadavg()}",
                  flush=True)
            store.release()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(["b", "what", "k", "time (s)", "elements/s", "time per direction / np.sort's",
                 "1-min load"], rows))
    print()
    print("Solver breakdown (seconds, medians): project = both populations projected and written "
          "as [k, b] rows; align = per direction read row, sort, quantile targets, write targets "
          "(Dask: whole shuffle); other = directions, distances, manifest bookkeeping.")
    print()
    print(table(["b", "path", "k", "project", "align (sort + targets)", "other", "total"], detail))
    print()
    print(f"- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
