"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for torch and faiss in a module: their two OpenMP pools otherwise
    contend on 2 cores (small searches alternating with torch work ran up to 5x slower).
    Restored afterwards.  Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import faiss
    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="session")
def dask_cluster():
    """A real ``dask.distributed`` cluster: a scheduler and 2 worker processes on localhost
    (``LocalCluster``), reached at its ``scheduler_address``."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=40) as cluster:
        yield cluster
