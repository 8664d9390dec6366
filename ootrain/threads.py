"""torch's intra-op thread count, set for a block of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["one_thread"]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch with one intra-op thread, restoring the previous setting on exit.

    The pipelines' models are tiny (micro-batches of 4-4096 rows, widths ≤ 128): extra threads
    cannot help and, on a busy 2-core machine, oversubscription made steps ~10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
