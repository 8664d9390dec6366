"""``ootrain store``: a store's layout, its verification, and breaking a dead writer's lock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ootrain.store import Store

__all__ = ["ArrayInfo", "StoreInfo", "store_info", "verify_store", "unlock_store",
           "row_blocks"]


@dataclass
class ArrayInfo:
    """One array of a store: its layout and how many of its chunks are complete."""

    name: str
    shape: tuple
    chunks: tuple
    dtype: str
    complete: int
    total: int


@dataclass
class StoreInfo:
    """A store's fingerprint, stored configuration and arrays."""

    fingerprint: str
    config: Any
    arrays: list[ArrayInfo] = field(default_factory=list)


def store_info(path: str) -> StoreInfo:
    """Layout, sizes and completion of every array in the store at ``path`` (opened
    read-only)."""
    s = Store(path, mode="r")
    info = StoreInfo(fingerprint=s.fingerprint, config=s.stored_config)
    for name, arr in s.walk_arrays():
        done = s.done(name)
        info.arrays.append(ArrayInfo(name, tuple(arr.shape), tuple(arr.chunks), str(arr.dtype),
                                     int(done.sum()), int(done.size)))
    return info


def verify_store(path: str, finite: bool = True) -> list[str]:
    """The problems of the store at ``path``, one line each (empty: every array is complete
    and, with ``finite``, free of NaN/Inf; values are read in blocks of whole rows)."""
    s = Store(path, mode="r")
    problems = []
    for name, arr in s.walk_arrays():
        done = s.done(name)
        if not done.all():
            problems.append(f"{name}: {int((~done).sum())} of {done.size} chunks incomplete")
            continue
        if finite:
            bad = sum(int((~np.isfinite(arr[sl])).sum()) for sl in row_blocks(arr))
            if bad:
                problems.append(f"{name}: {bad} non-finite values")
    return problems


def row_blocks(arr: Any, block_bytes: int = 64 << 20) -> Iterator[slice]:
    """Slices of whole rows of ``arr``, about ``block_bytes`` each."""
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    for lo in range(0, arr.shape[0], step):
        yield slice(lo, min(arr.shape[0], lo + step))


def unlock_store(path: str) -> Optional[str]:
    """Remove the writer lock of the store at ``path`` (its writer must be known to be gone);
    returns the removed lock's description, or None when no lock was held."""
    held = Store.break_lock(path)
    return None if held is None else held.describe()
