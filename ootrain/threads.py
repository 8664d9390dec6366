"""Thread pools (torch intra-op, BLAS/OpenMP, numba), set together for a block of work.

ootrain's models are tiny (micro-batches of 4-4096 rows, widths <= 128), so a step is a few
small kernels: extra threads mostly add synchronisation, and on a small machine that is shared
(another process, a pipeline in the background) an oversubscribed pool makes every kernel wait
for a descheduled thread.  On the 2-core shared machine of issue 16, ``otgan train -b 200
--steps 100`` took 421.6 s at torch's default (2 threads) and 39.1 s at 1 thread; see
``benchmarks/RESULTS.md`` ("Thread defaults") for the per-command measurements behind
:func:`default_threads`.

* :func:`default_threads` -- the count to use where ootrain runs;
* :func:`apply_threads` -- set torch, BLAS/OpenMP (threadpoolctl) and numba to one count, and
  make it the process's setting (what the CLI's ``--threads`` calls);
* :func:`threads` -- the same for a block, restoring every pool after; ``threads(None)`` (what
  the library's trainers use by default) follows the process's setting: the last
  :func:`apply_threads`, else ``OOTRAIN_THREADS``, else :func:`default_threads`;
* :func:`one_thread` -- ``threads(1)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["default_threads", "physical_cores", "available_cpus", "apply_threads", "process_setting",
           "current_threads", "threads", "one_thread", "MAX_DEFAULT_THREADS"]

#: Upper bound of :func:`default_threads` on big machines (tiny models stop scaling early).
MAX_DEFAULT_THREADS = 8

#: Environment variable: the process's thread setting (a positive count, or 0 for "leave the
#: pools as they are", i.e. torch's / the libraries' defaults).
ENV = "OOTRAIN_THREADS"

#: The process's setting made by :func:`apply_threads` (None: not made; 0: leave pools as is).
_process_setting: int | None = None


def _env_setting() -> int | None:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        n = int(text)
    except ValueError:
        return None
    return n if n >= 0 else None


def process_setting() -> int:
    """The count a library call with ``threads=None`` uses: the last :func:`apply_threads`, else
    ``OOTRAIN_THREADS``, else :func:`default_threads`; 0 means "leave the pools as they are"."""
    if _process_setting is not None:
        return _process_setting
    env = _env_setting()
    return default_threads() if env is None else env


def available_cpus() -> int:
    """Logical CPUs this process may run on: affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    try:  # cgroup v2 quota ("max 100000" when unlimited)
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once).

    Reads ``/proc/cpuinfo`` ("physical id", "core id") for the CPUs in the affinity mask; falls
    back to psutil, then to the logical count.  Capped by :func:`available_cpus` (cgroup quota).
    """
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        allowed = None
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            proc, phys = None, "0"
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    proc, phys = int(value), "0"
                elif key == "physical id":
                    phys = value
                elif key == "core id" and proc is not None and (allowed is None or proc in allowed):
                    cores.add((phys, value))
    except (OSError, ValueError):
        cores = set()
    n = len(cores)
    if not n:
        try:
            import psutil

            n = psutil.cpu_count(logical=False) or 0
        except Exception:  # pragma: no cover
            n = 0
    return max(1, min(n or available_cpus(), available_cpus()))


def default_threads() -> int:
    """The intra-op thread count that is fast where ootrain runs.

    Rule (measured, ``benchmarks/RESULTS.md``, "Thread defaults"):

    * ``OOTRAIN_THREADS`` if set to a positive integer (0 there is handled by
      :func:`process_setting`: pools left as they are);
    * 1 on a machine with <= 2 physical cores available to the process -- there the tiny
      models gain nothing from a second thread and lose up to ~10x when the machine is shared;
    * otherwise the physical cores available (affinity, cgroup quota; hyper-threads counted
      once), minus one left for the data loader / OS, at most :data:`MAX_DEFAULT_THREADS`.
    """
    env = _env_setting()
    if env:
        return env
    cores = physical_cores()
    if cores <= 2:
        return 1
    return max(1, min(cores - 1, MAX_DEFAULT_THREADS))


def _numba_max() -> int | None:
    try:
        import numba
    except Exception:  # pragma: no cover - numba is a dependency
        return None
    return int(numba.config.NUMBA_NUM_THREADS)


def current_threads() -> dict[str, Any]:
    """The pools' current sizes: ``{"torch": n, "blas": {...}, "openmp": {...}, "numba": n}``."""
    out: dict[str, Any] = {"torch": torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            out.setdefault(pool["user_api"], {})[pool.get("internal_api", "?") + ":"
                                                 + os.path.basename(pool["filepath"])] = \
                pool["num_threads"]
    except Exception:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    try:
        import numba

        out["numba"] = numba.get_num_threads()
    except Exception:  # pragma: no cover
        pass
    return out


def apply_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads, the BLAS/OpenMP pools and numba's to ``n``, for the process.

    ``None``: :func:`default_threads`; ``0``: leave every pool as it is (torch's and the
    libraries' own defaults).  Either way the choice becomes the process's setting, which the
    library's trainers (``threads=None``) then follow instead of :func:`default_threads`.
    numba's count is capped at ``NUMBA_NUM_THREADS`` (fixed when numba starts); torch's inter-op
    pool can only be set before its first use and is left alone.  Returns the count applied
    (0 when left as is).
    """
    global _process_setting
    n = default_threads() if n is None else int(n)
    if n < 0:
        raise ValueError(f"threads must be >= 0 (0: leave the pools as they are), got {n}")
    _process_setting = n
    if n == 0:
        return 0
    torch.set_num_threads(n)
    top = _numba_max()  # imports numba first: it loads an OpenMP runtime threadpoolctl must see
    if top is not None:
        import numba

        numba.set_num_threads(max(1, min(n, top)))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # BLAS and OpenMP, process-wide
    except Exception:  # pragma: no cover
        pass
    return n


@contextmanager
def threads(n: int | None = None) -> Iterator[int]:
    """Run a block with ``n`` threads in every pool.

    ``None``: :func:`process_setting` (the CLI's ``--threads``, else ``OOTRAIN_THREADS``, else
    :func:`default_threads`); ``0``: leave the pools as they are.  Restores torch's, each BLAS/OpenMP library's and numba's previous sizes on exit.  Yields the
    count in effect (torch's).
    """
    if n is not None and n < 0:
        raise ValueError(f"threads must be >= 0 (0 leaves the pools as they are), got {n}")
    n = process_setting() if n is None else int(n)
    if n == 0:
        yield torch.get_num_threads()
        return
    before_torch = torch.get_num_threads()
    before_numba = None
    top = _numba_max()  # imports numba first: it loads an OpenMP runtime threadpoolctl must see
    if top is not None:
        import numba

        before_numba = numba.get_num_threads()
        numba.set_num_threads(max(1, min(n, top)))
    limiter = None
    try:
        from threadpoolctl import ThreadpoolController

        limiter = ThreadpoolController().limit(limits=n)  # restore_original_limits() undoes it
    except Exception:  # pragma: no cover
        limiter = None
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before_torch)
        if limiter is not None:
            limiter.restore_original_limits()
        if before_numba is not None:
            import numba

            numba.set_num_threads(before_numba)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run with one thread in every pool (torch, BLAS/OpenMP, numba), restoring them on exit.

    The pipelines' models are tiny (micro-batches of 4-4096 rows, widths <= 128): extra threads
    cannot help and, on a busy 2-core machine, oversubscription made steps ~10x slower.
    """
    with threads(1):
        yield
