"""``torch.distributed`` from the environment ``torchrun`` sets up: one process group per
command, gloo on CPU and nccl on GPU.

Under ``torchrun --nproc_per_node R ... ootrain <method> train ...`` every rank runs the same
command; :func:`from_environment` joins them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, ``LOCAL_RANK``), the engine shards Run and ReRun over them, rank 0 holds the
store's writer lock and runs Solve.  A rank that dies is noticed by the others within
``timeout`` (a collective that does not complete raises), and the command stops."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["from_environment", "quiet_unless_rank0", "TIMEOUT_S"]

#: Seconds a collective waits for the other ranks before the command stops.
TIMEOUT_S = float(os.environ.get("OOTRAIN_DIST_TIMEOUT", "300"))


@contextmanager
def from_environment(timeout_s: float = TIMEOUT_S) -> Iterator[int]:
    """Join the process group ``torchrun`` describes in the environment for the duration of
    the block (nothing without ``WORLD_SIZE`` > 1, or when a group exists already); yields
    the world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return
    gpu = torch.cuda.is_available() and "LOCAL_RANK" in os.environ
    if gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if gpu else "gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield world
    finally:
        dist.destroy_process_group()


@contextmanager
def quiet_unless_rank0() -> Iterator[None]:
    """Standard output of ranks other than 0 discarded (one report per command); their
    errors and warnings (standard error) stay."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield
