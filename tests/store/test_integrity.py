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


@pytest.mark.parametrize("damage", ["flip", "truncate", "unframed"])
def test_corrupt_plain_key_is_named_by_reads_and_verify(tmp_path, damage):
    """Checkpoints are framed with their sha256: a flipped byte, a truncation or bytes written
    without the frame are refused by the read and by verify, never unpickled."""
    s = _store(tmp_path)
    s.put_bytes("checkpoints/step-0.pt", b"weights" * 100)
    assert s.get_bytes("checkpoints/step-0.pt") == b"weights" * 100
    s.release()
    path = os.path.join(tmp_path, "s", "checkpoints", "step-0.pt")
    raw = bytearray(open(path, "rb").read())
    if damage == "flip":
        raw[-10] ^= 0x01
    elif damage == "truncate":
        raw = raw[:40]
    else:
        raw = b"weights" * 100
    open(path, "wb").write(bytes(raw))
    problems = verify_store(str(tmp_path / "s"))
    assert len(problems) == 1 and "'checkpoints/step-0.pt' is corrupt" in problems[0], problems
    with pytest.raises(StoreCorruptError, match="step-0.pt.*sha256.*ootrain store repair"):
        Store(tmp_path / "s", mode="r").get_bytes("checkpoints/step-0.pt")


def test_deleted_manifest_entry_makes_the_chunk_incomplete(tmp_path):
    """A deleted flag object reads as "not done": verify reports the chunk incomplete and a
    resumed run writes it again; nothing is trusted that no flag vouches for."""
    _store(tmp_path).release()
    os.remove(os.path.join(tmp_path, "s", "manifest", "a", "c", "1"))
    s = Store(tmp_path / "s", mode="r")
    assert s.done("a").tolist() == [True, False, True, True]
    problems = verify_store(str(tmp_path / "s"))
    assert len(problems) == 1 and "a: 1 of 4 chunks incomplete" in problems[0], problems


@pytest.mark.parametrize("where", ["chunk", "flag", "checkpoint"])
def test_repair_marks_damage_incomplete_or_refuses(tmp_path, where):
    from ootrain.jobs.store import repair_store

    s = _store(tmp_path)
    s.group.require_group("steps/0")
    s.require_array("steps/0/x", (4,), (2,), "float64")
    s.write_region("steps/0/x", (slice(0, 4),), np.ones(4))
    s.update_attrs("steps/0", {"solved": True, "metrics": {"loss": 1.0}})
    s.put_bytes("checkpoints/step-0.pt", b"state")
    s.release()
    root = os.path.join(tmp_path, "s")
    if where == "chunk":
        open(os.path.join(root, "steps", "0", "x", "c", "1"), "wb").write(b"junk")
    elif where == "flag":
        open(os.path.join(root, "manifest", "a", "c", "2"), "wb").write(b"\x07")
    else:
        open(os.path.join(root, "checkpoints", "step-0.pt"), "wb").write(b"state")
    report = repair_store(root)
    s = Store(root, mode="r")
    if where == "checkpoint":   # step 0 resumes from it: nothing can rebuild it
        assert not report.resumable and "cannot resume" in report.actions[0]
        return
    assert report.resumable and len(report.actions) == 1, report.actions
    if where == "chunk":
        assert s.done("steps/0/x").tolist() == [True, False]
        assert s.group["steps/0"].attrs["solved"] is False   # Solve runs again
    else:
        assert s.done("a").tolist() == [True, True, False, True]
    problems = verify_store(root)
    assert len(problems) == 1 and "incomplete" in problems[0], problems
    assert repair_store(root).actions == []


def test_update_attrs_is_one_write(tmp_path, monkeypatch):
    """zarr's ``attrs.update`` writes once per key (a kill between them marked a step done
    without its results); ``Store.update_attrs`` writes them together."""
    import zarr.storage

    s = Store(tmp_path / "s", CFG)
    s.group.require_group("steps/0")
    writes = []
    original = zarr.storage.LocalStore.set

    async def counting(self, key, value, *a, **kw):
        writes.append(key)
        return await original(self, key, value, *a, **kw)
    monkeypatch.setattr(zarr.storage.LocalStore, "set", counting)
    s.update_attrs("steps/0", {"phase": "done", "timings": {"run": 1.0}, "fit_losses": [1.0]})
    assert writes == ["steps/0/zarr.json"]
    assert dict(Store(tmp_path / "s", mode="r").group["steps/0"].attrs) == {
        "phase": "done", "timings": {"run": 1.0}, "fit_losses": [1.0]}
