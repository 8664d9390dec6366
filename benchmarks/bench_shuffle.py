"""The data movement of the out-of-core sort: the engine's sample sort (buckets in the store)
against Dask's P2P shuffle, on the same ``dask.distributed`` cluster.

Both sort ``k`` rows of ``b`` float32 values (projections, generated once into a store on
disk, chunks of ``--rows`` samples) by (value, index), end to end from the stored values to
sorted rows on disk, on one ``LocalCluster`` (``--workers`` processes, 1 thread each, BLAS /
numba / OpenMP at 1 thread):

- **samplesort**: :class:`ootrain.engine.samplesort.SampleSort` (splitters from a sample,
  partition tasks per stored chunk, bucket tasks that sort and write the sorted rows into the
  store), with ``--budget`` per task;
- **p2p**: ``dask.dataframe`` over the same stored chunks (one partition per chunk: columns
  ``key`` = row ``<< 32`` | order key of the value, and ``index``), ``sort_values("key",
  shuffle_method="p2p")`` — Dask's own sample sort (quantiles, then the P2P shuffle, then a
  sort per partition) — written with ``to_parquet`` to the same disk.

Each is checked against ``np.sort`` of the rows.  Reported: wall time, the ratio to ``np.sort``
of the same values in RAM on 1 thread, and peak RSS of every worker process (psutil, sampled
every 20 ms).

    .venv/bin/python benchmarks/bench_shuffle.py --b 1000000 --k 16
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import human_bytes, loadavg, machine_header, table  # noqa: E402

from ootrain.engine.compute import Compute, StoreArray  # noqa: E402
from ootrain.engine.samplesort import SampleSort  # noqa: E402
from ootrain.store import Store  # noqa: E402


class _Rows:
    """``produce(lo, hi)``: the stored values of samples [lo, hi) of every row."""

    def __init__(self, ref: StoreArray) -> None:
        self.ref = ref

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        return np.asarray(self.ref.array()[:, lo:hi])


def _frame(ref: StoreArray, lo: int, hi: int):
    """The P2P side's partition of samples [lo, hi): packed (row, value) keys and indices."""
    import pandas as pd
    v = np.asarray(ref.array()[:, lo:hi])
    bits = v.view(np.int32).astype(np.int64)
    bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)   # order key, >= 0
    key = (np.arange(v.shape[0], dtype=np.int64)[:, None] << 32) | bits
    idx = np.broadcast_to(np.arange(lo, hi, dtype=np.int64), v.shape)
    return pd.DataFrame({"key": key.ravel(), "index": idx.ravel()})


class _Peak:
    """Peak RSS of the cluster's worker processes, sampled in a thread."""

    def __init__(self, pids: list[int]) -> None:
        import psutil
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = [0] * len(pids)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, p in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
                except Exception:   # noqa: BLE001 (a process gone)
                    pass
            time.sleep(0.02)

    def __enter__(self) -> "_Peak":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--b", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--rows", type=int, default=65536, help="samples per stored chunk")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", type=int, default=256 << 20, help="bytes per task (samplesort)")
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args(argv)
    os.environ.update({k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                        "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    print(machine_header("Out-of-core sort: sample sort with buckets in the store vs Dask P2P "
                         "shuffle", ["benchmarks/bench_shuffle.py"]
                         + (argv if argv is not None else sys.argv[1:])))
    b, k = args.b, args.k
    tmp = tempfile.mkdtemp(prefix="bench-shuffle-", dir=args.tmpdir)
    rows_out = []
    try:
        store = Store(os.path.join(tmp, "store"), {"bench": "shuffle", "b": b, "k": k})
        store.require_array("values", (k, b), (k, args.rows), np.float32)
        rng = np.random.default_rng(0)
        for c, lo in enumerate(range(0, b, args.rows)):
            store.write_chunk("values", (0, c), rng.standard_normal(
                (k, min(b, lo + args.rows) - lo), dtype=np.float32))
        x = store.array("values")[:]
        t = time.perf_counter()
        ref = np.sort(x, axis=1)
        t_np = time.perf_counter() - t
        print(f"- b={b}, k={k} float32 ({human_bytes(x.nbytes)}), chunks of {args.rows} "
              f"samples; LocalCluster of {args.workers} processes x 1 thread; samplesort "
              f"budget {human_bytes(args.budget)} per task; np.sort in RAM {t_np:.2f} s; "
              f"load {loadavg()}", flush=True)
        del x
        ref_values = StoreArray(store, "values")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, memory_limit=0) as cluster, \
                Client(cluster) as client:
            pids = list(client.run(os.getpid).values())
            compute = Compute(cluster.scheduler_address)
            # ---- the engine's sample sort
            for rep in range(2):
                ss = SampleSort(store, f"ss{rep}", k=k, n=b, rows=args.rows,
                                dtype=np.float32, budget=args.budget)
                with _Peak(pids) as peak:
                    t = time.perf_counter()
                    ss.choose_splitters(lambda idx: np.asarray(
                        store.array("values").get_orthogonal_selection((slice(None), idx))),
                        np.random.default_rng(rep))
                    ss.partition(compute, _Rows(ref_values))
                    ss.sort(compute)
                    wall = time.perf_counter() - t
                for j in (0, k - 1):
                    np.testing.assert_array_equal(ss.sorted_row(j, 0, b), ref[j])
                ss.delete()
            rows_out.append(["samplesort (buckets in the store)", ss.n_buckets, wall,
                             wall / t_np, human_bytes(max(peak.peak))])
            print(f"  samplesort: {wall:.2f} s, {ss.n_buckets} buckets, worker peak RSS "
                  f"{human_bytes(max(peak.peak))}; load {loadavg()}", flush=True)
            # ---- Dask's sort_values through the P2P shuffle
            meta = _frame(ref_values, 0, 0)
            parts = [dask.delayed(_frame)(ref_values, lo, min(b, lo + args.rows))
                     for lo in range(0, b, args.rows)]
            for rep in range(2):
                out = os.path.join(tmp, f"p2p{rep}")
                df = dd.from_delayed(parts, meta=meta)
                with _Peak(pids) as peak, dask.config.set({"dataframe.shuffle.method": "p2p"}):
                    t = time.perf_counter()
                    df.sort_values("key", shuffle_method="p2p").to_parquet(out)
                    wall = time.perf_counter() - t
                got = dd.read_parquet(out).compute()
                keys = got["key"].to_numpy()
                assert np.all(np.diff(keys) >= 0)
                first = keys[keys >> 32 == 0] & 0xFFFFFFFF
                bits = (first - (1 << 31)).astype(np.int64)
                bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits).astype(np.int32)
                np.testing.assert_array_equal(bits.view(np.float32), ref[0])
                shutil.rmtree(out, ignore_errors=True)
            nparts = df.npartitions
            rows_out.append([f"dask sort_values, P2P shuffle, to_parquet", nparts, wall,
                             wall / t_np, human_bytes(max(peak.peak))])
            print(f"  p2p: {wall:.2f} s, worker peak RSS {human_bytes(max(peak.peak))}; "
                  f"load {loadavg()}", flush=True)
        store.release()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("Second of two runs each (the first warms numba's and Dask's caches).")
    print()
    print(table(["what", "buckets / partitions", "wall (s)", "/ np.sort in RAM (1 thread)",
                 "peak RSS of a worker"], rows_out))
    print(f"\n- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
