"""Benchmark the sort layer (ootrain.sort) against NumPy and PyTorch on the same data.

    python benchmarks/bench_sort.py [--n 10000000] [--partition-size N] [--repeats 3]

Prints the machine header shared by the benchmarks (date, machine, versions, code
state, load) and a markdown table: seconds (best of ``--repeats``),
elements/s, speed relative to ``np.sort`` (values only, the practical ceiling)
and the peak extra resident memory while each method ran (RSS sampled every
2 ms by a psutil thread, minus the RSS just before).  Every method's output is
checked against ``np.sort`` outside the timed region.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import dask
import dask.array as da
import numpy as np
import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import loadavg, machine_header, table  # noqa: E402

from ootrain.sort import argsort, argsort_dask, scatter_dask  # noqa: E402


class PeakRSS:
    """Context manager: peak process RSS above the entry RSS, in bytes, sampled in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.extra = 0

    def __enter__(self) -> PeakRSS:
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.extra = max(self.peak, self.process.memory_info().rss) - self.base


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, int, object]:
    """Best wall time over ``repeats`` runs, the largest peak extra RSS, and the last result."""
    best, extra, result = float("inf"), 0, None
    for _ in range(repeats):
        result = None
        with PeakRSS() as rss:
            start = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - start)
        extra = max(extra, rss.extra)
    return best, extra, result


def dask_sort(x: np.ndarray, partition_size: int) -> tuple[np.ndarray, np.ndarray]:
    """argsort_dask end to end (planning passes + disk shuffle), results gathered to NumPy."""
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        values, perm = argsort_dask(da.from_array(x, chunks=partition_size), partition_size, tmp)
        return da.compute(values, perm)


def dask_scatter(perm: np.ndarray, values: np.ndarray, partition_size: int) -> np.ndarray:
    """scatter_dask of rank-ordered values back to sample order, gathered to NumPy."""
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="threads"):
        perm_d = da.from_array(perm, chunks=partition_size)
        values_d = da.from_array(values, chunks=partition_size)
        return scatter_dask(perm_d, values_d, partition_size, tmp).compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="elements per row")
    parser.add_argument("--partition-size", type=int, default=None, help="Dask partition size (default n/10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the best time is reported")
    args = parser.parse_args()
    n = args.n
    partition_size = args.partition_size or max(1, n // 10)

    print(machine_header("ootrain.sort vs np.sort / np.argsort / torch.sort"))
    print(f"- data: n = {n:,} float32 standard normal; Dask partition size {partition_size:,}; "
          f"time = best of {args.repeats}; peak extra RSS sampled every 2 ms\n", flush=True)

    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    expected = np.sort(x)
    xt = torch.from_numpy(x)
    argsort(x[:10])  # load the numba kernels outside the timings

    def check_values(values) -> None:
        assert np.array_equal(np.asarray(values), expected)

    def check_perm(perm) -> None:
        check_values(x[np.asarray(perm)])

    methods = [  # (name, threads, run, check)
        ("np.sort (values only)", 1, lambda: np.sort(x), check_values),
        ("np.argsort", 1, lambda: np.argsort(x), check_perm),
        ("torch.sort (values + indices)", torch.get_num_threads(), lambda: torch.sort(xt),
         lambda r: check_values(r.values) or check_perm(r.indices)),
        ("ootrain.sort.argsort (packed keys)", 1, lambda: argsort(x), check_perm),
        (f"ootrain.sort.argsort_dask (disk shuffle, {-(-n // partition_size)} partitions)", os.cpu_count(),
         lambda: dask_sort(x, partition_size), lambda r: check_values(r[0]) or check_perm(r[1])),
    ]
    rows = []
    for name, threads, run, check in methods:
        seconds, extra, result = measure(run, args.repeats)
        check(result)
        rows.append((name, threads, seconds, extra))
    perm = result[1]  # from argsort_dask, the last method
    del result
    seconds, extra, result = measure(lambda: dask_scatter(perm, expected, partition_size), args.repeats)
    assert np.array_equal(result, x)
    rows.append(("ootrain.sort.scatter_dask (disk shuffle)", os.cpu_count(), seconds, extra))

    base = rows[0][2]
    print(table(["method", "threads", "time (s)", "M elem/s", "vs np.sort", "peak extra RSS (MiB)"],
                [(name, threads, seconds, n / seconds / 1e6, f"{base / seconds:.3f}x", round(extra / 2**20))
                 for name, threads, seconds, extra in rows]))
    print(f"\nload average (1, 5, 15 min) at end: {loadavg()}")


if __name__ == "__main__":
    main()
