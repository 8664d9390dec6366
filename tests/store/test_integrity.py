"""Store integrity: crash windows of array creation, checksummed chunks, corruption named by
reads and by ``store verify``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ootrain.jobs.store import verify_store
from ootrain.store import Store, StoreCorruptError

CFG = {"run": 1}


def _store(tmp_path) -> Store:
    s = Store(tmp_path / "s", CFG)
    s.require_array("a", (8, 3), (2, 3), "float32")
    for i in range(4):
        s.write_chunk("a", (i, 0), np.full((2, 3), i + 1.0, np.float32))
    return s


def _chunk_file(tmp_path, i: int) -> str:
    return os.path.join(tmp_path, "s", "a", "c", str(i), "0")


def test_kill_between_manifest_and_array_creation_recovers(tmp_path):
    """The manifest is created first: a kill before the array leaves a manifest only, and the
    next require_array creates both again (a kill after the array would have no window)."""
    s = Store(tmp_path / "s", CFG)
    s._create_manifest("a", 4)               # the first of the two writes, then "killed"
    s.group["manifest/a"][1] = 1             # even a stale flag from an older array
    s.release()
    s = Store(tmp_path / "s", CFG)
    assert not s.has("a") and s.done("a").size == 0
    arr = s.require_array("a", (8, 3), (2, 3), "float32")
    assert not s.done("a").any() and arr.shape == (8, 3)
    # an array whose manifest is gone (deleted by hand) gets an empty one: nothing trusted
    del s.group["manifest/a"]
    assert not s.done("a").any() and s.done("a").size == 4
    s.require_array("a", (8, 3), (2, 3), "float32")
    assert s.has("manifest/a") and not s.done("a").any()


@pytest.mark.parametrize("damage", ["random", "finite", "truncate", "delete"])
def test_corrupt_chunk_is_named_by_reads_and_verify(tmp_path, damage):
    s = _store(tmp_path)
    s.release()
    path = _chunk_file(tmp_path, 2)
    raw = open(path, "rb").read()
    if damage == "random":
        bad = np.random.default_rng(0).bytes(len(raw))
    elif damage == "finite":   # a finite value in place of another, checksum unchanged
        bad = np.full((2, 3), 7.0, np.float32).tobytes() + raw[-4:]
    elif damage == "truncate":
        bad = raw[:5]
    if damage == "delete":
        os.remove(path)
    else:
        open(path, "wb").write(bad)
    problems = verify_store(str(tmp_path / "s"))
    assert len(problems) == 1 and "'a' chunk [2, 0]" in problems[0], problems
    s = Store(tmp_path / "s", mode="r")
    np.testing.assert_array_equal(s.array("a")[:4], np.repeat([[1.0], [2.0]], 2, 0).repeat(3, 1))
    with pytest.raises(StoreCorruptError, match=r"array 'a' chunk \[2, 0\]"):
        s.array("a")[3:6]
    with pytest.raises(StoreCorruptError, match=r"array 'a' chunk \[2, 0\]"):
        np.asarray(s.array("a"))


def test_all_fill_chunks_are_stored_so_a_missing_one_is_detected(tmp_path):
    """Chunks equal to the fill value (0) are written too: a flagged chunk always has an
    object, so a missing object means a deleted chunk, not a zero one."""
    s = Store(tmp_path / "s", CFG)
    s.require_array("z", (4,), (2,), "int64")
    s.write_chunk("z", 0, np.zeros(2, np.int64))
    assert s.chunk_exists("z", (0,)) and not s.chunk_exists("z", (1,))
    np.testing.assert_array_equal(s.array("z")[:2], [0, 0])


def test_verify_passes_a_clean_store(tmp_path):
    _store(tmp_path).release()
    assert verify_store(str(tmp_path / "s")) == []
