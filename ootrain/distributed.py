"""``torch.distributed`` from the environment ``torchrun`` sets up: one process group per
command, gloo for CPU tensors, and nccl for CUDA tensors where the ranks have GPUs.

Under ``torchrun --nproc_per_node R ... ootrain <method> train ...`` every rank runs the same
command; :func:`from_environment` joins them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, ``LOCAL_RANK``), the engine shards Run and ReRun over them, rank 0 holds the
store's writer lock and runs Solve.

A rank that dies or hangs stops the command: torchrun notices a rank's exit within a second
and stops the others (each prints one ``error:`` line on SIGTERM); a rank that hangs (or a
lost node) is noticed by the others when a collective does not complete within
:data:`TIMEOUT_S` seconds (``OOTRAIN_DIST_TIMEOUT``, default 300), which raise
:class:`RankLostError`; while rank 0 works alone (Solve, OTS, checkpoints, pruning) the
others wait up to :data:`ALONE_TIMEOUT_S` (``OOTRAIN_DIST_ALONE_TIMEOUT``, default 6 h).  The store holds only whole chunks, so the same command resumes it."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["from_environment", "process_group_backend", "quiet_unless_rank0", "rank_world",
           "barrier", "all_reduce", "resolve_device", "DEVICES", "RankLostError", "TIMEOUT_S",
           "ALONE_TIMEOUT_S"]

#: Seconds a collective waits for the other ranks before the command stops.
TIMEOUT_S = float(os.environ.get("OOTRAIN_DIST_TIMEOUT", "300"))
#: Seconds the other ranks wait for work rank 0 does alone (Solve, OTS, checkpoints, pruning),
#: which may outlast :data:`TIMEOUT_S` by far on large populations.
ALONE_TIMEOUT_S = float(os.environ.get("OOTRAIN_DIST_ALONE_TIMEOUT", str(6 * 3600)))
_alone_group: object = None

_RESUME = "rerun the same command to resume from the store"


class RankLostError(RuntimeError):
    """A collective over the ranks did not complete: another rank died, hangs or lost its
    connection."""


def rank_world() -> tuple[int, int]:
    """(rank, world size) under ``torch.distributed``, (0, 1) without it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


#: The device settings :func:`resolve_device` takes (and ``cuda:N``).
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str) -> torch.device:
    """The device a rank trains on: ``auto`` is ``cuda:<LOCAL_RANK>`` (0 without torchrun)
    when torch sees a GPU, else ``cpu``; ``cpu``; ``cuda`` (``cuda:<LOCAL_RANK>``) or
    ``cuda:N``.  ValueError, in one line, for anything else or a GPU that is not there."""
    if not isinstance(spec, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", spec):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {spec!r}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device must be a GPU torch can use, got {spec!r} but torch sees no "
                         f"CUDA device (torch {torch.__version__}, CUDA "
                         f"{torch.version.cuda or 'not built'}); use cpu or auto")
    index = int(spec.split(":")[1]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device must be a GPU of this node, got {spec!r} (GPU {index}) but "
                         f"torch sees {count} GPU(s)")
    return torch.device("cuda", index)


def _collective(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except RuntimeError as e:   # gloo / nccl: a timeout or a closed connection
        rank, world = rank_world()
        with contextlib.suppress(ValueError):   # (not the main thread)
            # this rank reports the loss itself: torchrun's SIGTERM, which the lost rank's
            # death also brings, must not print a second error line over it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # gloo's message starts with its source location: "[.../unbound_buffer.cc:78] Timed out"
        first = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().split("\n")[0])[:200] or \
            type(e).__name__
        raise RankLostError(
            f"rank {rank} of {world}: {what} over the ranks did not complete ({first}): "
            f"another rank died, hangs past OOTRAIN_DIST_TIMEOUT={TIMEOUT_S:g} s "
            f"(OOTRAIN_DIST_ALONE_TIMEOUT={ALONE_TIMEOUT_S:g} s for work rank 0 does alone) or "
            f"lost its connection (its own error, if any, is above); {_RESUME}") from e


def barrier(what: str = "a barrier", alone: bool = False) -> None:
    """Wait for every rank (no-op in one process); :class:`RankLostError` when one is lost.

    ``alone``: the barrier that ends work rank 0 does alone: the others wait up to
    :data:`ALONE_TIMEOUT_S` instead of :data:`TIMEOUT_S`, on a gloo group of its own, made
    by all ranks at their first such barrier; rank 0 itself, arriving when its work is done,
    waits :data:`TIMEOUT_S` for them (gloo's timeout is each process's own), so a rank
    lost while it worked alone is noticed in :data:`TIMEOUT_S`, not hours."""
    global _alone_group
    if rank_world()[1] == 1:
        return
    if not alone:
        _collective(what, dist.barrier)
        return
    if _alone_group is None:
        wait = TIMEOUT_S if rank_world()[0] == 0 else ALONE_TIMEOUT_S
        _alone_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait))
    _collective(what, functools.partial(dist.barrier, group=_alone_group))


def all_reduce(tensor: torch.Tensor, what: str = "an all-reduce") -> None:
    """Sum ``tensor`` over the ranks in place (no-op in one process); :class:`RankLostError`
    when a rank is lost."""
    if rank_world()[1] > 1:
        _collective(what, dist.all_reduce, tensor)


def _stopped(signum: int, frame: object) -> None:
    rank, world = rank_world()
    sys.stderr.write(f"error: rank {rank} of {world} stopped by torchrun (SIGTERM: another rank "
                     f"failed, see its report); {_RESUME}\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def process_group_backend(gpu: bool) -> str:
    """The process group's backends: gloo for CPU tensors always (the engine's gradients and
    flags live on the CPU), nccl for CUDA tensors when the ranks have GPUs (an nccl-only group
    refuses CPU tensors: "No backend type associated with device type cpu", seen on an H200)."""
    return "cpu:gloo,cuda:nccl" if gpu else "gloo"


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
        local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if local >= count:
            raise RuntimeError(f"rank {os.environ.get('RANK', local)} is local rank {local} but "
                               f"this node has {count} GPU(s): give torchrun "
                               f"--nproc_per_node {count} or fewer")
        torch.cuda.set_device(local)
    dist.init_process_group(process_group_backend(gpu), timeout=timedelta(seconds=timeout_s))
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        yield world
    finally:
        global _alone_group
        signal.signal(signal.SIGTERM, previous)
        _alone_group = None
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
