"""Where Solve's task graphs run: Dask, on this machine's cores or on a ``dask.distributed``
cluster.

A solver writes its Solve as Dask tasks over the store's chunks — the fast kernels (numpy,
numba, FAISS, KeOps) run inside the tasks — and hands them to :meth:`Compute.run`
(``dask.delayed`` objects) or :meth:`Compute.get` (a plain task graph, for thousands of tasks).
Tasks read and write the store through :class:`StoreArray` references: in this process they
use the run's open store; sent to a ``dask.distributed`` worker they reopen it by its URL
(so the store must be a path every worker sees or an object-store URL, not in memory) and
write under the run's writer lease, chunks flagged in its manifest as the run's own writes
are.

* ``Compute()`` (the default): Dask's local threaded scheduler on the usable cores; BLAS,
  OpenMP and numba run one thread per task while it runs (no oversubscription).
* ``Compute("tcp://host:8786")``: a ``dask.distributed.Client`` connected to that scheduler
  (``dask scheduler`` and ``dask worker`` processes, or a ``LocalCluster``), for the block of
  :meth:`Compute.session` or until :meth:`Compute.close`.
* ``Compute(workers=1)``: one task at a time in this thread (Dask's synchronous scheduler).

Example
-------
>>> import dask
>>> from ootrain.engine.compute import Compute
>>> Compute(workers=2).run([dask.delayed(sum)([1, 2]), dask.delayed(max)(3, 4)])
[3, 4]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dask
import dask.local
import dask.threaded
import numpy as np
import torch
from dask.callbacks import Callback
from torch import Tensor

from ootrain.store import Store
from ootrain.threads import available_cpus, threads

__all__ = ["Compute", "StoreArray"]


class Compute:
    """A Dask scheduler for Solve: local threads (default), synchronous (``workers=1``) or a
    ``dask.distributed`` cluster at ``address``.

    Args:
        address: a ``dask.distributed`` scheduler's address (``tcp://host:8786``); None: this
            process.
        workers: concurrent tasks of the local scheduler (default: the usable cores); ignored
            with ``address`` (the cluster's workers decide).
    """

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.address = address
        self.workers = workers if workers is not None else available_cpus()
        self._client: Any = None

    def __repr__(self) -> str:
        where = self.address if self.address else f"{self.workers} local threads"
        return f"Compute({where})"

    @property
    def distributed(self) -> bool:
        """Whether tasks run in other processes (a ``dask.distributed`` cluster)."""
        return self.address is not None

    def client(self) -> Any:
        """The ``dask.distributed.Client`` of ``address`` (connected on first use)."""
        if self._client is None:
            from distributed import Client
            try:
                self._client = Client(self.address, timeout="10s", set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise ConnectionError(f"no Dask scheduler answers at {self.address} ({e}); "
                                      "start one (`dask scheduler`, then `dask worker "
                                      f"{self.address}`) or drop --dask-address") from e
        return self._client

    def close(self) -> None:
        """Disconnect from the cluster (nothing to do for the local schedulers)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    @contextmanager
    def session(self) -> Iterator["Compute"]:
        """The block in which this scheduler is used; disconnects at the end."""
        try:
            yield self
        finally:
            self.close()

    def task_budget(self, budget: int) -> int:
        """Bytes one task may hold of a Solve's ``budget``: all of it on a cluster (each worker
        process has its own memory), ``budget / workers`` on the local threads, which run
        ``workers`` tasks at once in this process."""
        return int(budget) if self.distributed else max(1, int(budget) // self.workers)

    def check_store(self, store: Store) -> None:
        """Refuse a store the cluster's workers cannot open (one in memory)."""
        if self.distributed and store.in_memory:
            raise ValueError(f"Solve on the Dask cluster at {self.address} needs a store its "
                             "workers can open: pass a path they all see or an object-store "
                             "URL, not the in-memory store")

    def run(self, tasks: Sequence[Any], done: Callable[[int], None] | None = None
            ) -> list[Any]:
        """Compute ``tasks`` (``dask.delayed`` objects, sharing their dependencies) with this
        scheduler; their results, in order.  ``done(i)`` is called in this process as task
        ``i`` finishes (progress bars)."""
        tasks = list(tasks)
        if not tasks:
            return []
        if self.distributed:
            client = self.client()
            with client.as_current():
                return self._gather(client.compute(tasks), done)
        return self._local(lambda **kw: dask.compute(*tasks, **kw), [t.key for t in tasks],
                           done)

    def get(self, graph: Mapping[Any, Any], keys: Sequence[Any],
            done: Callable[[int], None] | None = None) -> list[Any]:
        """Compute the ``keys`` of a task graph in Dask's plain format (``{key: (function,
        *args)}``, args naming other keys, lists of them too): for graphs of thousands of
        tasks, which ``dask.delayed`` builds in quadratic time.  Keys must be unique to the
        computation (a cluster keeps results by key).  ``done`` as in :meth:`run`."""
        keys = list(keys)
        if not keys:
            return []
        if self.distributed:
            client = self.client()
            with client.as_current():
                return self._gather(client.get(dict(graph), keys, sync=False), done)

        def compute(scheduler: str, **kw: Any) -> list[Any]:
            get = dask.threaded.get if scheduler == "threads" else dask.local.get_sync
            return get(dict(graph), keys, **kw)
        return self._local(compute, keys, done)

    @staticmethod
    def _gather(futures: list[Any], done: Callable[[int], None] | None) -> list[Any]:
        from distributed import as_completed
        index = {f.key: i for i, f in enumerate(futures)}
        for f in as_completed(futures):
            if f.status == "error":
                f.result()   # raises the task's exception here
            if done is not None:
                done(index[f.key])
        return [f.result() for f in futures]

    def _local(self, compute: Callable[..., Any], keys: list[Any],
               done: Callable[[int], None] | None) -> list[Any]:
        index = {k: i for i, k in enumerate(keys)}

        class _Done(Callback):
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
                if done is not None and key in index:
                    done(index[key])

        if self.workers == 1:
            with _Done():
                return list(compute(scheduler="synchronous"))
        with threads(1), _Done():   # each task's BLAS/OpenMP/numba on one thread
            return list(compute(scheduler="threads", num_workers=self.workers))


class StoreArray:
    """A store array as a task sees it: ``.array()`` reads (checked, like
    :meth:`Store.array`), ``.write_region`` writes whole chunks and flags them.  For reading
    it is also array-like (``shape``, ``dtype``, ``chunks``, ``[...]``,
    ``get_orthogonal_selection``), so that e.g. a :class:`~ootrain.ot.targets.TargetSource`
    can wrap it and be sent to the tasks.

    In the process that made it, the run's open store serves both; pickled to another process
    (a ``dask.distributed`` worker) it carries the store's URL and config, and reopens the store
    there without taking the writer lock (the run holds it for all of its writers)."""

    def __init__(self, store: Store, path: str) -> None:
        self.url, self.config, self.path = store.url, store.config, path
        self._store: Store | None = store

    def __getstate__(self) -> dict[str, Any]:
        if self._store is not None and self._store.in_memory:
            raise ValueError("an in-memory store cannot be sent to another process")
        return {"url": self.url, "config": self.config, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.config, self.path = state["url"], state["config"], state["path"]
        self._store = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = _reopen(self.url, _frozen(self.config))
        return self._store

    def array(self) -> Any:
        return self.store.array(self.path)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array().shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array().dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array().chunks)

    def __getitem__(self, key: Any) -> Any:
        return self.array()[key]

    def get_orthogonal_selection(self, selection: Any) -> Any:
        return self.array().get_orthogonal_selection(selection)

    def rows(self, lo: int, hi: int, dtype: torch.dtype) -> Tensor:
        """The rows ``[lo, hi)`` as a tensor of ``dtype`` (a task's block of queries)."""
        return torch.as_tensor(np.asarray(self.array()[lo:hi]), dtype=dtype)

    def write_region(self, region: tuple[slice, ...], value: Any) -> None:
        self.store.write_region(self.path, region, value)


def _frozen(config: Any) -> Any:
    """A hashable view of a JSON-like config (the cache key of :func:`_reopen`)."""
    import json
    return json.dumps(config, sort_keys=True)


@functools.lru_cache(maxsize=8)
def _reopen(url: str, config_json: str) -> Store:
    """One store per worker process and URL, opened without the writer lock."""
    import json
    config = json.loads(config_json)
    return Store(url, config, mode="a", lock=False) if config is not None \
        else Store(url, mode="r")
