"""Benchmark the sort layer (ootrain.ot.sort) against NumPy, PyTorch and Dask on the same data.

    python benchmarks/bench_sort.py [--n 10000000] [--budget 268435456] [--repeats 3]
                                    [--block N] [--scratch DIR]

One float32 row of ``--n`` standard-normal values, sorted by:

- in memory: ``np.sort`` (values only, the practical ceiling), ``np.argsort``, ``torch.sort``
  (values + indices) and the engine's packed-key ``ootrain.ot.sort.argsort``;
- out of core under ``--budget`` bytes: ``ootrain.ot.sort.external_argsort`` (sample sort through
  spill files in ``--scratch``; bucket size and spill buffer from ``sort.plan_external(budget,
  SORT_BYTES_PER_ELEMENT + 2 × 4)``, input read ``--block`` elements at a time through
  ``sort.row_blocks``), all buckets copied into a preallocated output (the engine's Solve
  uses the task-graph sample sort of ``ootrain.engine.samplesort`` instead:
  ``bench_shuffle.py``);
- the alternative a user would pick for an out-of-core sort: ``dask.dataframe``
  ``sort_values(shuffle_method="disk")`` (partd spill files) on ``dd.from_dask_array`` of the same
  array with partitions of the external sort's bucket size, threaded scheduler, ``.compute()``
  to pandas then NumPy (values and original positions = the index).

Prints the machine header shared by the benchmarks (date, machine, versions, code state,
load) and a markdown table: seconds (best of ``--repeats``), elements/s, speed relative to
``np.sort``, and the peak extra resident memory while each method ran (RSS sampled every 2 ms
by a psutil thread, minus the RSS just before, taken after ``gc.collect()`` and glibc
``malloc_trim(0)`` so that heap pages freed by an earlier method cannot hide a later one's).
The external methods' preallocated outputs are allocated and touched before the measurement,
so their peak is the method's own working memory; every other method's peak includes the
output it returns (Dask: n × 12 B of values + index, printed below the table).  Every method's
output is checked against ``np.sort`` / the input outside the timed region.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import human_bytes, loadavg, machine_header, table  # noqa: E402

from ootrain.ot import sort  # noqa: E402
from ootrain.ot.sort import argsort  # noqa: E402


def _malloc_trim() -> None:
    """glibc ``malloc_trim(0)`` where available (returns free heap pages to the OS)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: peak process RSS above the entry RSS, in bytes, sampled in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.extra = 0

    def __enter__(self) -> PeakRSS:
        # hand freed heap memory back first, or a method could reuse pages an earlier one left
        # resident and show (almost) no extra RSS
        gc.collect()
        _malloc_trim()
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




def external_sort(x: np.ndarray, block: int, max_bucket: int, buffer_bytes: int, scratch: str,
                  out_values: np.ndarray, out_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """external_argsort of ``x`` read ``block`` at a time; buckets copied into the outputs."""
    blocks = sort.row_blocks(lambda lo, hi: x[lo:hi], x.shape[0], block)
    end = 0
    for r0, values, index in sort.external_argsort(blocks, x.shape[0], x.dtype, max_bucket,
                                                   buffer_bytes, scratch):
        assert r0 == end, (r0, end)
        end = r0 + values.shape[0]
        out_values[r0:end] = values
        out_index[r0:end] = index
    assert end == x.shape[0], (end, x.shape[0])
    return out_values, out_index


def dask_sort_values(x: np.ndarray, partition_size: int, scratch: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """dask.dataframe sort_values with the disk (partd) shuffle, computed to NumPy: the sorted
    values and their original positions (the index of ``from_dask_array``)."""
    with tempfile.TemporaryDirectory(prefix="bench-sort-dask-", dir=scratch) as tmp, \
            dask.config.set(scheduler="threads", temporary_directory=tmp):
        ddf = dd.from_dask_array(da.from_array(x, chunks=partition_size), columns=["v"])
        df = ddf.sort_values("v", shuffle_method="disk").compute()
        return df["v"].to_numpy(), df.index.to_numpy()


def touched(n: int, dtype: type) -> np.ndarray:
    """A preallocated output whose pages are already resident (so they do not count in a peak)."""
    out = np.empty(n, dtype=dtype)
    out.fill(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="elements per row")
    parser.add_argument("--budget", type=int, default=256 << 20,
                        help="memory budget of the out-of-core sort, bytes (default 256 MiB)")
    parser.add_argument("--block", type=int, default=None,
                        help="elements read / added at a time by the external methods "
                             "(default budget / 128 bytes)")
    parser.add_argument("--scratch", default=None,
                        help="directory for spill files (default: the system temporary one)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the best time is reported")
    args = parser.parse_args()
    n = args.n
    scratch = args.scratch or tempfile.gettempdir()
    max_bucket, buffer_bytes = sort.plan_external(args.budget, sort.SORT_BYTES_PER_ELEMENT + 2 * 4)
    block = max(1, min(n, args.block or args.budget // 128))
    partition_size = min(n, max_bucket)
    npart = -(-n // partition_size)

    print(machine_header("ootrain.ot.sort vs np.sort / np.argsort / torch.sort / dask sort_values"))
    print(f"- data: n = {n:,} float32 standard normal; time = best of {args.repeats}; "
          f"peak extra RSS sampled every 2 ms")
    print(f"- out of core: budget {human_bytes(args.budget)} -> max_bucket {max_bucket:,} "
          f"elements, spill buffer {human_bytes(buffer_bytes)}, block {block:,} elements"
          + (" (n <= max_bucket: external_argsort sorts in one in-memory bucket)"
             if n <= max_bucket else "")
          + f"; Dask: {npart} partitions of {partition_size:,}; scratch {scratch}\n", flush=True)

    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    expected = np.sort(x)
    xt = torch.from_numpy(x)
    argsort(x[:10])  # load the numba kernels outside the timings
    out_values, out_index = touched(n, np.float32), touched(n, np.int64)

    def check_values(values) -> None:
        assert np.array_equal(np.asarray(values), expected)

    def check_perm(perm) -> None:
        check_values(x[np.asarray(perm)])

    def check_pair(r) -> None:
        check_values(r[0])
        check_perm(r[1])

    ext = f"budget {human_bytes(args.budget)}"
    methods = [  # (name, threads, run, check)
        ("np.sort (values only)", 1, lambda: np.sort(x), check_values),
        ("np.argsort", 1, lambda: np.argsort(x), check_perm),
        ("torch.sort (values + indices)", torch.get_num_threads(), lambda: torch.sort(xt),
         lambda r: check_values(r.values) or check_perm(r.indices)),
        ("ootrain.ot.sort.argsort (packed keys)", 1, lambda: argsort(x), check_perm),
        (f"ootrain.ot.sort.external_argsort ({ext}, into preallocated output)", 1,
         lambda: external_sort(x, block, max_bucket, buffer_bytes, scratch, out_values, out_index),
         check_pair),
        (f"dask.dataframe sort_values, disk shuffle ({npart} partitions, .compute())",
         os.cpu_count(), lambda: dask_sort_values(x, partition_size, scratch), check_pair),
    ]
    rows = []
    for name, threads, run, check in methods:
        seconds, extra, result = measure(run, args.repeats)
        check(result)
        del result
        rows.append((name, threads, seconds, extra))
        print(f"  {name}: {seconds:.3f} s, peak extra RSS {human_bytes(extra)}", flush=True)

    base = rows[0][2]
    print()
    print(table(["method", "threads", "time (s)", "M elem/s", "vs np.sort", "peak extra RSS (MiB)"],
                [(name, threads, seconds, n / seconds / 1e6, f"{base / seconds:.3f}x", round(extra / 2**20))
                 for name, threads, seconds, extra in rows]))
    print(f"\n- Dask's peak includes its computed output (values + int64 index: "
          f"{human_bytes(12 * n)}) and pandas copies; the external methods write into outputs "
          "preallocated and touched before the measurement.")
    print(f"- load average (1, 5, 15 min) at end: {loadavg()}")


if __name__ == "__main__":
    main()
