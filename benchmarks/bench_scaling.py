"""RSR step time against torchrun ranks and Dask workers, per stage, through the CLI.

Each configuration runs ``ootrain rsr train`` (``gaussian:D`` real data of b rows, an MLP
generator latent → hidden → hidden → D, sliced W2 with k directions, targets mode) for
``--steps`` steps in a fresh store, and reads the per-stage times the engine records in every
step's attributes (``run``, ``solve``, ``rerun``).  The first step is left out (JIT and cache
warm-up); the table has the medians of the others.

Configurations: ranks R ∈ ``--ranks`` (``torchrun --nproc_per_node R``, gloo, each rank
``--threads cores / R``) × Solve on Dask's local threads (all cores, the default) or on a
``dask.distributed`` ``LocalCluster`` of W ∈ ``--workers`` worker processes (1 thread each),
reached by ``--dask-address``.  All runs are on this machine: ranks and workers share its cores,
so these numbers measure overheads and what two cores give, not a cluster.

    python benchmarks/bench_scaling.py                                    # b = 200000
    python benchmarks/bench_scaling.py --b 20000 --k 8 --steps 2          # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import loadavg, machine_header, table  # noqa: E402


def _timings(store: str, steps: int) -> dict[str, float]:
    from ootrain.store import Store

    st = Store(store, mode="r")
    rows = [dict(st.group[f"steps/{k}"].attrs["timings"]) for k in range(1, steps)]
    return {stage: statistics.median(r[stage] for r in rows) for stage in ("run", "solve",
                                                                           "rerun")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--b", type=int, default=200_000)
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    from distributed import LocalCluster

    print(machine_header("RSR step vs torchrun ranks and Dask workers (per stage)",
                         ["benchmarks/bench_scaling.py"] + (argv if argv is not None
                                                            else sys.argv[1:])))
    print(f"- setup: b={args.b}, m={args.m}, k={args.k}, D={args.d}, MLP {args.latent}→"
          f"{args.hidden}→{args.hidden}→{args.d}, float32, targets mode, {args.steps} steps "
          f"(medians of steps 1..{args.steps - 1}); each rank --threads {args.cores} / ranks")
    print()
    gen = json.dumps({"hidden": [args.hidden, args.hidden]})
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-scaling-")
    try:
        configs = [(r, None) for r in args.ranks] + [(r, w) for r in args.ranks
                                                     for w in args.workers]
        for ranks, workers in configs:
            cluster = None if workers is None else LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=40)
            try:
                store = os.path.join(tmp, f"r{ranks}-w{workers}.zarr")
                launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                          str(ranks)] if ranks > 1 else [sys.executable]
                cmd = [*launch, "-m", "ootrain.cli", "rsr", "train", "--store", store,
                       "--data", f"gaussian:{args.d}", "--n-real", str(args.b),
                       "--latent-dim", str(args.latent), "--generator-args", gen,
                       "-b", str(args.b), "-m", str(args.m), "-p", str(args.k),
                       "--steps", str(args.steps), "--threads", str(max(1, args.cores // ranks)),
                       "--no-progress", "--out", os.path.join(tmp, "out")]
                if cluster is not None:
                    cmd += ["--dask-address", cluster.scheduler_address]
                load0 = loadavg().split(",")[0]
                t = time.perf_counter()
                res = subprocess.run(cmd, capture_output=True, text=True)
                wall = time.perf_counter() - t
                if res.returncode != 0:
                    raise SystemExit(f"ranks={ranks} workers={workers}: "
                                     f"{res.stderr[-2000:]}")
                tm = _timings(store, args.steps)
                step = sum(tm.values())
                solve_on = "local threads (all cores)" if workers is None else \
                    f"LocalCluster, {workers} worker process(es)"
                rows.append([ranks, solve_on, tm["run"], tm["solve"], tm["rerun"], step,
                             wall, f"{load0} → {loadavg().split(',')[0]}"])
                print(f"  ranks={ranks} Solve on {solve_on}: step {step:.2f} s "
                      f"(run {tm['run']:.2f}, solve {tm['solve']:.2f}, rerun {tm['rerun']:.2f})",
                      flush=True)
            finally:
                if cluster is not None:
                    cluster.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(["torchrun ranks", "Solve on", "run (s)", "solve (s)", "rerun (s)",
                 "step (s)", f"command wall, {args.steps} steps (s)", "1-min load"], rows))
    print()
    print(f"- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
