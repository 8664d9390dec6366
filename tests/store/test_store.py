"""The sample store: manifest, fingerprint, writer lock, disk-full handling."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ootrain.store import DiskFullError, Store, StoreConfigError, StoreLockedError


def test_manifest_flags_only_written_chunks(tmp_path):
    with Store(tmp_path / "s", {"a": 1}) as s:
        s.require_array("x", (10, 3), (4, 3), "f4")
        s.write_chunk("x", (1, 0), np.ones((4, 3), "f4"))
        s.write_chunk("x", (2, 0), np.full((2, 3), 2, "f4"))
        assert s.done("x").tolist() == [False, True, True]
        assert not s.is_complete("x")
        s.write_chunk("x", (0, 0), np.zeros((4, 3), "f4"))
        assert s.is_complete("x")
        np.testing.assert_array_equal(s.array("x")[8:], 2)


def test_write_chunk_rejects_partial_chunk(tmp_path):
    with Store(tmp_path / "s", {"a": 1}) as s:
        s.require_array("x", (10, 3), (4, 3), "f4")
        with pytest.raises(ValueError, match=r"must have shape \(4, 3\)"):
            s.write_chunk("x", (0, 0), np.ones((3, 3), "f4"))


def test_reopen_checks_array_layout(tmp_path):
    with Store(tmp_path / "s", {"a": 1}) as s:
        s.require_array("x", (10, 3), (4, 3), "f4")
        with pytest.raises(StoreConfigError, match="expected"):
            s.require_array("x", (10, 3), (5, 3), "f4")


def test_fingerprint_refuses_other_config_and_names_the_key(tmp_path):
    Store(tmp_path / "s", {"b": 1024, "m": 4}).release()
    with pytest.raises(StoreConfigError, match=r"b: store has 1024, requested 2048"):
        Store(tmp_path / "s", {"b": 2048, "m": 4})
    # same config resumes; overwrite discards
    Store(tmp_path / "s", {"b": 1024, "m": 4}).release()
    with Store(tmp_path / "s", {"b": 2048, "m": 4}, mode="w") as s:
        assert s.stored_config == {"b": 2048, "m": 4}


def test_non_ootrain_group_is_refused(tmp_path):
    import zarr
    zarr.open_group(tmp_path / "g", mode="w")
    with pytest.raises(StoreConfigError, match="not an ootrain store"):
        Store(tmp_path / "g", mode="r")


_HOLDER = textwrap.dedent("""
    import sys, time
    from ootrain.store import Store
    s = Store(sys.argv[1], {"a": 1})
    print("locked", flush=True)
    time.sleep(60)
""")


def test_second_writer_is_refused_and_dead_writer_lock_is_taken_over(tmp_path):
    path = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, path], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}"):
            Store(path, {"a": 1})
    finally:
        proc.kill()
        proc.wait()
    with pytest.warns(UserWarning, match="dead writer"):
        s = Store(path, {"a": 1})
    s.release()


def test_read_only_open_ignores_lock(tmp_path):
    with Store(tmp_path / "s", {"a": 1}) as s:
        s.require_array("x", (2,), (2,), "f8")
        r = Store(tmp_path / "s", mode="r")
        assert r.stored_config == {"a": 1}


def test_break_lock(tmp_path):
    s = Store(tmp_path / "s", {"a": 1})
    held = Store.break_lock(str(tmp_path / "s"))
    assert held is not None and held.pid == os.getpid()
    assert Store.break_lock(str(tmp_path / "s")) is None
    s.release()


def test_disk_full_is_reported_and_chunk_not_flagged(tmp_path, monkeypatch):
    import zarr

    with Store(tmp_path / "s", {"a": 1}) as s:
        s.require_array("x", (8,), (4,), "f4")

        def full(self, *a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(zarr.Array, "__setitem__", full)
        with pytest.raises(DiskFullError, match="disk full"):
            s.write_chunk("x", (0,), np.ones(4, "f4"))
        monkeypatch.undo()
        assert not s.done("x").any()


def test_check_space_refuses_before_work(tmp_path):
    with Store(tmp_path / "s", {"a": 1}) as s:
        with pytest.raises(DiskFullError, match="GiB are free"):
            s.check_space(1 << 62, "a huge step")


def test_fsspec_memory_url(tmp_path):
    url = "memory://ootrain-test-store"
    with Store(url, {"a": 1}) as s:
        s.require_array("x", (6,), (3,), "f8")
        s.write_chunk("x", (1,), np.arange(3.0))
        assert s.done("x").tolist() == [False, True]
        with pytest.raises(StoreLockedError):
            Store(url, {"a": 1})


def test_in_memory_store():
    with Store(None, {"a": 1}) as s:
        assert s.in_memory and s.url == "<memory>"
        assert s.free_bytes() is None
        s.check_space(1 << 62, "anything")  # no file system to refuse on
        s.require_array("x", (6,), (3,), "f8")
        s.write_chunk("x", (0,), np.arange(3.0))
        assert s.done("x").tolist() == [True, False]
        np.testing.assert_array_equal(s.array("x")[:3], np.arange(3.0))
        assert s.stored_config == {"a": 1}
        # two in-memory stores are independent (and no writer lock is involved)
        with Store(None, {"a": 1}) as t:
            assert not t.has("x")
    with pytest.raises(ValueError, match="cannot be opened read-only"):
        Store(None, mode="r")
    with pytest.raises(ValueError, match="needs the run's config"):
        Store(None)


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_plain_keys_and_delete_arrays(tmp_path, where):
    with Store(None if where == "memory" else tmp_path / "s", {"a": 1}) as s:
        assert s.get_bytes("checkpoints/step-0.pt") is None
        s.put_bytes("checkpoints/step-0.pt", b"\x00weights\xff")
        assert s.get_bytes("checkpoints/step-0.pt") == b"\x00weights\xff"
        s.put_bytes("checkpoints/step-0.pt", b"new")
        assert s.get_bytes("checkpoints/step-0.pt") == b"new"
        s.delete("checkpoints/step-0.pt")
        assert s.get_bytes("checkpoints/step-0.pt") is None
        s.delete("checkpoints/absent.pt")  # no error when absent
        # delete_arrays: arrays (nested too) and their manifests go, groups and attributes stay
        g = s.group.require_group("steps/0")
        g.attrs.update({"phase": "done", "metrics": {"loss": 1.5}})
        s.require_array("steps/0/embeddings", (4, 2), (2, 2), "f4")
        s.require_array("steps/0/sub/targets", (4,), (2,), "f8")
        s.require_array("steps/1/embeddings", (4, 2), (2, 2), "f4")
        s.write_chunk("steps/0/embeddings", (0, 0), np.ones((2, 2), "f4"))
        s.delete_arrays("steps/0")
        for p in ("steps/0/embeddings", "steps/0/sub/targets", "manifest/steps/0/embeddings",
                  "manifest/steps/0/sub/targets"):
            assert not s.has(p), p
        assert s.done("steps/0/embeddings").size == 0   # no manifest: no chunks at all
        assert s.has("steps/0")
        assert dict(s.group["steps/0"].attrs) == {"phase": "done", "metrics": {"loss": 1.5}}
        assert s.has("steps/1/embeddings") and s.has("manifest/steps/1/embeddings")
        assert [p for p, _ in s.walk_arrays()] == ["steps/1/embeddings"]
        # an array deleted can be required again, with a fresh manifest
        s.require_array("steps/0/embeddings", (4, 2), (2, 2), "f4")
        assert s.done("steps/0/embeddings").tolist() == [False, False]


def test_describe_array_hashes_all_content():
    import zarr

    from ootrain.engine import describe_array

    x = np.random.default_rng(0).normal(size=(300, 3))
    d = describe_array(x)
    assert d["shape"] == [300, 3] and d["dtype"] == "float64"
    assert d["sha256"] == hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
    # the whole content, read in row blocks: the block size does not matter …
    assert describe_array(x, block_bytes=100)["sha256"] == d["sha256"]
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=x.shape, chunks=(64, 3),
                          dtype=x.dtype)
    z[:] = x
    assert describe_array(z) == d  # … nor does the container
    # … and a change in a middle row (away from the head and the tail) changes the hash
    y = x.copy()
    y[150, 1] += 1e-12
    assert describe_array(y)["sha256"] != d["sha256"]


def test_disk_full_while_taking_the_lock_is_named(tmp_path, monkeypatch):
    """ENOSPC on the lock write (the first write of every writer) is a DiskFullError, not a
    raw OSError; the store is untouched and opens once space is back."""
    import zarr.storage

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.storage.LocalStore, "set_if_not_exists", full)
    with pytest.raises(DiskFullError, match="taking the writer lock"):
        Store(tmp_path / "s", {"a": 1})
    monkeypatch.undo()
    with Store(tmp_path / "s", {"a": 1}) as s:
        assert s.stored_config == {"a": 1}


def _disk_usage(root) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
    return total


@pytest.mark.parametrize("shape,chunks", [((4096, 8), (16, 8)), ((100_000, 4), (50_000, 4))])
def test_array_bytes_covers_what_the_disk_takes(tmp_path, shape, chunks):
    """The space check's estimate includes each chunk's and each flag's object: with small
    chunks the objects, not the data, take the disk (the old estimate was data x 1.05)."""
    with Store(tmp_path / "s", {"a": 1}) as s:
        s.require_array("x", shape, chunks, "f4")
        s.write_region("x", (slice(0, shape[0]), slice(0, shape[1])),
                       np.ones(shape, "f4"))
    used = _disk_usage(tmp_path / "s" / "x") + _disk_usage(tmp_path / "s" / "manifest" / "x")
    est = Store.array_bytes(shape, chunks, 4)
    assert used <= est <= 1.5 * used + 16384, (used, est)


@pytest.mark.parametrize("where", ["local", "memory-url"])
def test_overwrite_keeps_the_writers_lock(tmp_path, where):
    """``mode="w"`` (``--overwrite``) discards the old run but not the new writer's lock:
    zarr's own ``mode="w"`` deleted it, so a second writer was accepted meanwhile."""
    url = str(tmp_path / "s") if where == "local" else "memory://ootrain-overwrite"
    with Store(url, {"a": 1}) as s:
        s.require_array("steps/0/x", (4,), (2,), "f8")
        s.write_chunk("steps/0/x", 0, np.ones(2))
        s.put_bytes("checkpoints/step-0.pt", b"old")
    with Store(url, {"a": 2}, mode="w") as s:
        assert s.stored_config == {"a": 2} and not s.has("steps/0/x")
        assert s.get_bytes("checkpoints/step-0.pt") is None and not s.has("manifest/steps")
        with pytest.raises(StoreLockedError):
            Store(url, {"a": 2})
