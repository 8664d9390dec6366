"""The sharded c-transform (``ootrain.ot.sharded``) against the unsharded one, on a
``dask.distributed`` ``LocalCluster``, targets read from a zarr array on disk.

For ``B`` queries and ``N`` targets in ``d`` dimensions (float32), measured side by side in
one run, each on worker processes with one thread (``threads_per_worker=1``, torch and
faiss/OpenMP set to 1 thread, ``OMP_NUM_THREADS=1``: recorded from the workers):

- ``unsharded``: one task on one worker runs ``c_transform`` over all ``N`` targets (streamed
  from zarr in its default ~64 MiB blocks) — what an OTS+FIT Solve task does today;
- ``sharded, 1 worker`` and ``sharded, 2 workers``: ``sharded_c_transform`` with a per-task
  shard budget (``--shard-mib``), one task per target shard and one merge task
  (``--workers`` sets the cluster sizes).

Reported: wall time, target pairs per second, shards, and the peak RSS of each worker
process (sampled every 5 ms from this process with psutil) above its RSS just before the
call (after a warm-up call and ``malloc_trim``), against the shard's bytes.  The sharded
indices are checked equal to the unsharded ones.

    .venv/bin/python benchmarks/bench_sharded_argmin.py                     # ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_sharded_argmin.py --n 20000 --B 256   # smoke
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import human_bytes, loadavg, machine_header, set_threads, table  # noqa: E402

from ootrain.engine.compute import Compute  # noqa: E402
from ootrain.ot.ctransform import c_transform  # noqa: E402
from ootrain.ot.sharded import plan_shards, sharded_c_transform  # noqa: E402
from ootrain.ot.targets import TargetSource  # noqa: E402


def _worker_setup() -> dict[str, object]:
    """On a worker: one thread for torch and faiss, memory trimmed; its thread settings."""
    set_threads(1)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    import faiss
    return {"torch": torch.get_num_threads(), "faiss_omp": faiss.omp_get_max_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _unsharded(x: torch.Tensor, path: str, psi: torch.Tensor, backend: str) -> torch.Tensor:
    return c_transform(x, TargetSource(path), psi, "sqeuclidean", backend)[0]


class PeakRSS:
    """Peak RSS of some processes above their RSS at the start, sampled every 5 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.base = [p.memory_info().rss for p in self.procs]
        self.peak = list(self.base)
        self._stop = False
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop:
            for k, p in enumerate(self.procs):
                self.peak[k] = max(self.peak[k], p.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()

    def above(self) -> list[int]:
        return [p - b for p, b in zip(self.peak, self.base)]


def measure(client, compute: Compute, fn) -> tuple[float, list[int], object]:
    """Wall time, per-worker peak RSS above baseline, and the result of ``fn()``."""
    client.run(_worker_setup)
    pids = list(client.run(os.getpid).values())
    with PeakRSS(pids) as rss:
        t = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t
    return wall, rss.above(), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--B", type=int, default=1024, help="queries")
    ap.add_argument("--shard-mib", type=float, default=16.0,
                    help="per-task shard budget (MiB of float32 target rows)")
    ap.add_argument("--chunk-rows", type=int, default=16384, help="zarr chunk rows")
    ap.add_argument("--backend", default="faiss")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="LocalCluster sizes of the sharded runs (the unsharded runs on the first)")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"    # inherited by the worker processes
    set_threads(1)
    import zarr
    from distributed import Client, LocalCluster

    print(machine_header("sharded c-transform argmin (LocalCluster)", sys.argv))
    budget = int(args.shard_mib * 2**20)
    work = tempfile.mkdtemp(prefix="bench_sharded_", dir=args.workdir)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.B, args.d, generator=gen)
    rows, settings = [], {}
    try:
        paths = {}
        for n in args.n:   # targets on disk, written chunk by chunk
            paths[n] = os.path.join(work, f"y{n}.zarr")
            arr = zarr.create_array(paths[n], shape=(n, args.d),
                                    chunks=(args.chunk_rows, args.d), dtype="f4")
            for a in range(0, n, args.chunk_rows):
                b = min(n, a + args.chunk_rows)
                arr[a:b] = torch.randn(b - a, args.d, generator=gen).numpy()
        for workers in args.workers:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=":0", silence_logs=40) as cluster, \
                    Client(cluster) as client, Compute(cluster.scheduler_address).session() \
                    as compute:
                settings[workers] = next(iter(client.run(_worker_setup).values()))
                small = paths[min(args.n)]
                psi0 = torch.zeros(min(args.n))
                sharded_c_transform(x[:8], small, psi0, backend=args.backend,
                                    budget=budget, compute=compute)   # warm-up: imports
                for n in args.n:
                    psi = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(n))
                    shards = len(plan_shards(TargetSource(paths[n]), budget, torch.float32))
                    if workers == args.workers[0]:
                        wall, peaks, ref = measure(client, compute, lambda: client.submit(
                            _unsharded, x, paths[n], psi, args.backend, pure=False).result())
                        rows.append([n, "unsharded (1 task)", 1, "—", wall, args.B * n / wall,
                                     " / ".join(human_bytes(p) for p in peaks), "—"])
                        settings[("ref", n)] = ref
                    wall, peaks, (idx, _) = measure(client, compute, lambda: sharded_c_transform(
                        x, paths[n], psi, backend=args.backend, budget=budget, compute=compute))
                    same = torch.equal(idx, settings[("ref", n)])
                    rows.append([n, f"sharded, {workers} worker(s)", workers, shards, wall,
                                 args.B * n / wall,
                                 " / ".join(human_bytes(p) for p in peaks),
                                 "yes" if same else "NO"])
                    print(f"- N={n}, {workers} worker(s): {wall:.2f} s, load {loadavg()}",
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nB = {args.B} queries, d = {args.d}, float32 targets in zarr chunks of "
          f"{args.chunk_rows} rows ({human_bytes(args.chunk_rows * args.d * 4)}), backend "
          f"{args.backend}; shard budget {human_bytes(budget)} "
          f"({budget // (args.d * 4)} rows before chunk rounding).")
    print("Worker thread settings: " + "; ".join(f"{w} worker(s): {settings[w]}"
                                                 for w in args.workers) + ".\n")
    print(table(["N", "run", "workers", "shards", "time (s)", "pairs/s",
                 "peak RSS above baseline, per worker", "idx = unsharded"], rows))


if __name__ == "__main__":
    main()
