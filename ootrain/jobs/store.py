"""``ootrain store``: a store's layout, its verification, and breaking a dead writer's lock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ootrain.data import row_blocks
from ootrain.jobs.common import InputError
from ootrain.store import Store, StoreCorruptError, StoreError

__all__ = ["ArrayInfo", "StoreInfo", "StepsInfo", "store_info", "verify_store",
           "repair_store", "RepairReport", "unlock_store", "node_kind", "open_store", "RESUME_HINT"]

#: How to resume an interrupted run.
RESUME_HINT = ("rerun the same `ootrain <method> train ...` command (with the same --store) "
               "to resume it")


def node_kind(path: str, name: Optional[str] = None) -> Optional[str]:
    """"array", "group" or None (nothing there) for the zarr node at ``path`` (/``name``)."""
    import zarr

    try:
        node = zarr.open(path, mode="r", path=name or "")
    except Exception:   # zarr raises several types for "nothing here"
        return None
    return "array" if isinstance(node, zarr.Array) else "group"


def open_store(path: str) -> Store:
    """The store at ``path``, read-only; a missing or foreign one is a usage error."""
    if node_kind(path) is None:
        raise InputError(f"no ootrain store at {path}: check the path (a store is the --store "
                         "folder of a training command)")
    try:
        return Store(path, mode="r")
    except StoreError as e:
        raise InputError(str(e)) from None


@dataclass
class StepsInfo:
    """The training steps of a store: how many are complete, the phase of an unfinished one
    (None: none), the writer lock (None: not held) and the command that created it."""

    completed: int
    unfinished: Optional[int] = None
    unfinished_phase: Optional[str] = None
    lock: Optional[str] = None
    command: Optional[list] = None


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
    steps: Optional[StepsInfo] = None


def store_info(path: str) -> StoreInfo:
    """Layout, sizes and completion of every array in the store at ``path`` (opened
    read-only)."""
    s = open_store(path)
    info = StoreInfo(fingerprint=s.fingerprint, config=s.stored_config,
                     steps=steps_info(s, path))
    for name, arr in s.walk_arrays():
        done = s.done(name)
        info.arrays.append(ArrayInfo(name, tuple(arr.shape), tuple(arr.chunks), str(arr.dtype),
                                     int(done.sum()), int(done.size)))
    return info


def verify_store(path: str, finite: bool = True) -> list[str]:
    """The problems of the store at ``path``, one line each (empty: every array is complete,
    every chunk passes its checksum and exists, with ``finite`` no value is NaN/Inf, and every
    plain key (checkpoints) matches its sha256; values are read in blocks of whole rows)."""
    s = open_store(path)
    problems = []
    for name, _ in s.walk_arrays():
        done = s.done(name)
        if not done.all():
            problems.append(f"{name}: {int((~done).sum())} of {done.size} chunks incomplete "
                            f"({RESUME_HINT})")
            continue
        arr, bad = s.array(name), 0
        try:
            for sl in row_blocks(arr):
                block = arr[sl]
                if finite and block.dtype.kind in "fc":
                    bad += int((~np.isfinite(block)).sum())
        except StoreCorruptError as e:
            problems.append(str(e))
            continue
        if bad:
            problems.append(f"{name}: {bad} non-finite values")
    problems.extend(s.damaged_keys().values())
    return problems


@dataclass
class RepairReport:
    """What :func:`repair_store` did, one line per array or key, and whether the run can
    resume (False: a checkpoint it resumes from is damaged)."""

    actions: list[str] = field(default_factory=list)
    resumable: bool = True


def _step_of(name: str) -> Optional[int]:
    parts = name.split("/")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "steps" and parts[1].isdigit() \
        else None


def repair_store(path: str) -> RepairReport:
    """Make a store with damaged chunks or keys resumable (it takes the writer lock).

    - a damaged chunk (missing, failing its checksum, undecodable) of the real data's
      embeddings or of an unfinished step: its flag is cleared, and that step's Solve is
      marked undone, so the resumed run computes them again (the same values: every pass is
      deterministic);
    - a damaged array or key (``regulariser.pt``) of a finished step: deleted (a resumed run
      does not read it, and it cannot be recomputed without that step's models);
    - a damaged checkpoint: deleted when the run does not resume from it, else the run cannot
      resume (``resumable`` False) and the store is left as it is."""
    config = open_store(path).stored_config
    report = RepairReport()
    with Store(path, config) as s:
        done = {k for k in _step_numbers(s)
                if s.group[f"steps/{k}"].attrs.get("phase") == "done"}
        resume_from = f"checkpoints/step-{len(done)}.pt"

        def redo(step: Optional[int]) -> None:
            if step is not None:
                s.update_attrs(f"steps/{step}", {"solved": False})

        for name, _ in list(s.walk_arrays()):
            bad = s.damaged(name)
            if not bad.size:
                continue
            step = _step_of(name)
            if step in done:
                s.delete_array(name)
                report.actions.append(f"{name}: {bad.size} damaged chunks; deleted (step "
                                      f"{step} is finished: not needed to resume)")
            else:
                s.unflag(name, bad)
                redo(step)
                report.actions.append(f"{name}: {bad.size} damaged chunks; marked incomplete, "
                                      "recomputed on resume")
        for key in s.damaged_keys():
            if key == resume_from:
                report.resumable = False
                report.actions.append(f"{key}: damaged, and the run resumes from it: it cannot "
                                      "resume; start again with a new --store")
                continue
            step = _step_of(key)
            s.delete(key)
            if step is not None and step not in done:
                redo(step)
            report.actions.append(f"{key}: damaged; deleted" + (
                "" if step is None or step in done else ", recomputed on resume"))
    return report


def unlock_store(path: str) -> Optional[str]:
    """Remove the writer lock of the store at ``path`` (its writer must be known to be gone);
    returns the removed lock's description, or None when no lock was held."""
    held = Store.break_lock(path)
    return None if held is None else held.describe()


def _step_numbers(s: Store) -> list[int]:
    try:
        group = s.group["steps"]
    except KeyError:
        return []
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = [name for name, _ in group.members()]
    return sorted(int(n) for n in names if n.isdigit())


def steps_info(s: Store, path: str) -> StepsInfo:
    """Completed steps, the phase of an unfinished one, the lock holder and the command."""
    completed, unfinished, phase = 0, None, None
    for k in _step_numbers(s):
        attrs = s.group[f"steps/{k}"].attrs
        if attrs.get("phase") == "done":
            completed += 1
        elif unfinished is None:
            unfinished = k
            phase = ("solved (interrupted in its ReRun / update)" if attrs.get("solved")
                     else "not solved (interrupted in its Run / Solve)")
    lock = None
    try:
        held = Store.read_lock(path)
        lock = None if held is None else held.describe()
    except Exception:   # a lock that cannot be read is reported as none
        lock = None
    return StepsInfo(completed=completed, unfinished=unfinished, unfinished_phase=phase,
                     lock=lock, command=s.group.attrs["ootrain"].get("command"))
