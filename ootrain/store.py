"""The sample store: one zarr v3 group per training run, local path or any fsspec URL.

Layout (every array is a plain zarr v3 array; attributes are JSON)::

    <root>/                      attrs["ootrain"] = {"format": 2, "fingerprint": sha256, "config": {...}}
    <root>/ootrain.lock          a plain key (not a zarr node): {"host", "pid", "token", "since"}
    <root>/real/embeddings       [n, d]   embeddings of the real data, computed once
    <root>/steps/<k>/            one group per engine step k; attrs: "metrics" (the solver's),
                                 "solved", "phase" ("done" when complete), "timings", and what the
                                 method's update / prepare recorded (e.g. "fit_losses")
        <population>             [b, d]   embeddings of each population, written by Run
                                          ("embeddings" for one generator; "x", "x2", "y", "y2"
                                          for OT-GAN; "pairs", "fake", "real" for WGAN-GP)
        latents, <pop>_inputs    [b, z]   only with ``store_latents``; otherwise regenerated from
                                          the counter-based key (seed, step, population,
                                          micro-batch index)
        directions, targets, cotangents/<pop>, ...   written by the solver
        regulariser.pt           a plain key: POT-GAN's forest after its Solve
    <root>/checkpoints/step-<k>.pt   plain key: every model and optimiser before step k
    <root>/manifest/<path>       [n_chunks] uint8, 1 where the chunk of array <path> is complete

Plain keys (checkpoints, ``regulariser.pt``) are framed: ``b"ootrain-sha256\n"``, the 32-byte
sha256 of the payload, then the payload (``torch.save`` bytes, read with ``weights_only=True``);
a read checks the digest.  Chunks and flags carry zarr v3's ``crc32c`` codec.

Chunks are written whole by one writer and only then flagged in the manifest, so a run killed at
any point resumes at chunk granularity and never trusts a half-written chunk.  Zarr writes each
chunk object atomically (a local store writes a temporary file and renames it; object stores put
whole objects), so a flagged chunk is always a complete one.  The manifest has one object per
flag, so distributed ranks that write disjoint chunks never race on it.

A store is bound to the configuration that created it through a fingerprint (sha256 of the
canonical JSON of the config): opening it with another config is refused with the differing keys.
A lock key refuses a second writer; a lock left by a dead process on the same host is taken over.
Release it by using the store as a context manager (or calling :meth:`Store.release`); there is
deliberately no ``__del__``, since blocking I/O during garbage collection can deadlock zarr's
event-loop thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import socket
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import zarr
import zarr.storage
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ootrain._memory import MemoryGroup

FORMAT_VERSION = 2          # 2: checksummed chunks, flags and plain keys
#: The frame of a plain key: this magic, the sha256 of the payload, the payload.
PLAIN_MAGIC = b"ootrain-sha256\n"
LOCK_KEY = "ootrain.lock"
#: What one stored object takes at least on a local file system (one block).
OBJECT_BYTES = 4096

#: The command line of the running ``ootrain`` command (set by the CLI): a store it creates
#: keeps it in ``attrs["ootrain"]["command"]`` (outside the fingerprint), so ``ootrain store
#: info`` can say which command resumes the run.
COMMAND: list[str] | None = None


class StoreError(RuntimeError):
    """Base class of store errors."""


class StoreLockedError(StoreError):
    """Another live process holds the store's writer lock."""


class StoreConfigError(StoreError, ValueError):
    """The store was created by a different configuration."""


class StoreCorruptError(StoreError):
    """A chunk fails its checksum, cannot be decoded, or is flagged complete but missing."""


class DiskFullError(StoreError, OSError):
    """The store's file system ran out of space (``errno`` ENOSPC; ``str()`` the message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno, self.strerror = code, message

    def __str__(self) -> str:
        return str(self.strerror)


def fingerprint(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON form of ``config`` (sorted keys, no whitespace)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The differing leaves of two configs, one ``dotted.key: store has X, requested Y`` each."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(f"{key}: store has {a.get(k, '<absent>')!r}, requested "
                           f"{b.get(k, '<absent>')!r}")
            else:
                out.extend(_config_diff(a[k], b[k], key))
        return out
    if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
        return [f"{prefix or '<config>'}: store has {a!r}, requested {b!r}"]
    return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


@dataclass
class Lock:
    """The writer lock's content."""

    host: str
    pid: int
    token: str
    since: float

    def describe(self) -> str:
        return (f"pid {self.pid} on host {self.host!r} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}")


class Store:
    """A run's zarr v3 group with its manifest, fingerprint and writer lock.

    Parameters
    ----------
    url:
        Local path or fsspec URL of the group; ``None`` for a store in memory: in-process
        arrays with the same interface (:mod:`ootrain._memory`), gone with the object.
    config:
        JSON-serialisable dict of everything that determines the stored data (population size,
        micro-batch, seeds, model specs, solver settings...). ``None`` opens an existing store
        read-only without checking the fingerprint (inspection).
    mode:
        ``"a"`` create or resume (default), ``"w"`` overwrite, ``"r"`` read-only.
    lock:
        Take the writer lock (refuses a second writer). Ignored in read-only mode.
    """

    def __init__(self, url: str | os.PathLike[str] | None,
                 config: dict[str, Any] | None = None, mode: str = "a",
                 lock: bool = True) -> None:
        self.in_memory = url is None
        self.url = "<memory>" if url is None else os.fspath(url)
        self.mode = mode
        self.config = config
        self._lock: Lock | None = None
        if mode not in ("a", "w", "r"):
            raise ValueError(f"mode must be 'a', 'w' or 'r', got {mode!r}")
        if self.in_memory and mode == "r":
            raise ValueError("a store in memory cannot be opened read-only (it has no content)")
        if mode == "r":
            self.group = zarr.open_group(self.url, mode="r")
            self._check_format(None)
            return
        if config is None:
            raise ValueError("a writable store needs the run's config (for its fingerprint)")
        if self.in_memory:   # in-process arrays (ootrain._memory): no zarr round trips
            self.group = MemoryGroup()
            self._bytes: dict[str, bytes] = {}
            self.group.attrs["ootrain"] = {"format": FORMAT_VERSION,
                                           "fingerprint": fingerprint(config), "config": config}
            return
        self._zstore = _open_zstore(self.url)
        if lock:
            with _disk_full(self.url, "taking the writer lock"):
                self._acquire_lock()
        try:
            with _disk_full(self.url, "creating the store"):
                self._open_or_create(config)
        except BaseException:
            self.release()
            raise

    def _open_or_create(self, config: dict[str, Any]) -> None:
        if self.mode == "w" or not self._exists():
            meta = {"format": FORMAT_VERSION, "fingerprint": fingerprint(config),
                    "config": config}
            if COMMAND is not None:
                meta["command"] = list(COMMAND)
            if self.mode == "w":
                self._clear()
            # the group and its identity in one write: a kill never leaves a group that is
            # not an ootrain store
            self.group = zarr.open_group(self._zstore, mode="a", attributes={"ootrain": meta})
        else:
            self.group = zarr.open_group(self._zstore, mode="a")
            self._check_format(config)

    def _clear(self) -> None:
        """Delete everything but this writer's lock (zarr's ``mode="w"`` deletes the lock too,
        letting a second writer in): the flags first, the root's identity last, so a kill
        midway leaves the old store's identity (refused without ``--overwrite``) over
        leftovers no flag vouches for, never flags of another run."""
        async def names() -> list[str]:
            return [k async for k in self._zstore.list_dir("")]
        rest = [n.rstrip("/") for n in sync(names())]
        for name in sorted(rest, key=lambda n: (n != "manifest", n == "zarr.json")):
            if name == LOCK_KEY:
                continue
            if name == "zarr.json":
                sync(self._zstore.delete(name))
            else:
                sync(self._zstore.delete_dir(name))

    # ----------------------------------------------------------------- identity and locking
    def _exists(self) -> bool:
        try:
            zarr.open_group(self._zstore, mode="r")
            return True
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return False

    def _check_format(self, config: dict[str, Any] | None) -> None:
        meta = self.group.attrs.get("ootrain")
        if meta is None:
            raise StoreConfigError(f"{self.url} is a zarr group but not an ootrain store "
                                   "(no 'ootrain' attribute); pass another --store")
        if meta.get("format") != FORMAT_VERSION:
            raise StoreConfigError(f"{self.url} has store format {meta.get('format')}, "
                                   f"this ootrain reads format {FORMAT_VERSION}; resume it "
                                   "with the ootrain version that wrote it, or use a new --store")
        if config is not None and meta["fingerprint"] != fingerprint(config):
            diff = "; ".join(_config_diff(meta["config"], config)) or "fingerprint differs"
            raise StoreConfigError(
                f"store {self.url} was written by another configuration ({diff}); rerun with "
                "the same options, use a new --store, or pass --overwrite to discard it")

    def _read_lock(self) -> Lock | None:
        buf = sync(self._zstore.get(LOCK_KEY, prototype=default_buffer_prototype()))
        if buf is None:
            return None
        return Lock(**json.loads(buf.to_bytes()))

    def _write_lock(self, lock: Lock, exclusive: bool) -> bool:
        buf = default_buffer_prototype().buffer.from_bytes(json.dumps(lock.__dict__).encode())
        if exclusive:
            sync(self._zstore.set_if_not_exists(LOCK_KEY, buf))
        else:
            sync(self._zstore.set(LOCK_KEY, buf))
        current = self._read_lock()
        return current is not None and current.token == lock.token

    def _acquire_lock(self) -> None:
        if _is_local(self.url):
            os.makedirs(self.url.removeprefix("file://"), exist_ok=True)
        mine = Lock(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time())
        if self._write_lock(mine, exclusive=True):
            self._lock = mine
            return
        held = self._read_lock()
        if held is not None and held.host == mine.host and not _pid_alive(held.pid):
            warnings.warn(f"taking over the lock of {self.url} left by a dead writer "
                          f"({held.describe()})", stacklevel=3)
            if self._write_lock(mine, exclusive=False):
                self._lock = mine
                return
            held = self._read_lock()
        where = held.describe() if held else "an unknown writer"
        raise StoreLockedError(
            f"store {self.url} is being written by {where}; a second writer would corrupt it. "
            f"Wait for it, or if that process is gone for good run "
            f"`ootrain store unlock {self.url}`.")

    def release(self) -> None:
        """Release the writer lock if this object holds it (idempotent)."""
        if self._lock is None or self.in_memory:
            return
        held = self._read_lock()
        if held is not None and held.token == self._lock.token:
            sync(self._zstore.delete(LOCK_KEY))
        self._lock = None

    @staticmethod
    def read_lock(url: str) -> Lock | None:
        """The writer lock of the store at ``url`` (None when nobody holds it)."""
        buf = sync(_open_zstore(os.fspath(url)).get(LOCK_KEY, prototype=default_buffer_prototype()))
        return None if buf is None else Lock(**json.loads(buf.to_bytes()))

    @staticmethod
    def break_lock(url: str) -> Lock | None:
        """Remove a stale writer lock; returns what it held. Only for a writer known to be gone."""
        held = Store.read_lock(url)
        if held is not None:
            sync(_open_zstore(os.fspath(url)).delete(LOCK_KEY))
        return held

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ----------------------------------------------------------------- arrays and manifest
    @property
    def fingerprint(self) -> str:
        return self.group.attrs["ootrain"]["fingerprint"]

    @property
    def stored_config(self) -> dict[str, Any]:
        return self.group.attrs["ootrain"]["config"]

    def require_array(self, path: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                      dtype: Any) -> "CheckedArray":
        """Create ``path`` (or reopen it, checking shape/chunks/dtype) with its manifest.

        The manifest is created first, all chunks unflagged, and the array after it: a kill
        between the two writes leaves a manifest without its array (both are created again on
        the next call) or an array without flags (its chunks are rewritten), never a flag
        without its chunk.  Chunks carry a crc32c checksum, and are written even when they
        equal the fill value, so that a flagged chunk always has an object."""
        dtype = np.dtype(dtype)
        arr = self._node(path)
        if arr is not None:
            if (tuple(arr.shape) != tuple(shape) or tuple(arr.chunks) != tuple(chunks)
                    or arr.dtype != dtype):
                raise StoreConfigError(
                    f"array {path!r} in {self.url} has shape {arr.shape}, chunks {arr.chunks}, "
                    f"dtype {arr.dtype}; expected {tuple(shape)}, {tuple(chunks)}, {dtype} "
                    "(changed by hand or by another ootrain version): use a new --store")
            if self._node(f"manifest/{path}") is None:      # killed before the manifest
                self._create_manifest(path, int(np.prod(arr.cdata_shape)))
            return CheckedArray(self, path, arr)
        self._create_manifest(path, _n_chunks(shape, chunks))
        arr = self.group.create_array(path, shape=shape, chunks=chunks, dtype=dtype,
                                      fill_value=0, compressors=_checksum_codecs(self),
                                      overwrite=True)
        return CheckedArray(self, path, arr)

    def _create_manifest(self, path: str, n_chunks: int) -> None:
        self.group.create_array(f"manifest/{path}", shape=(n_chunks,), chunks=(1,),
                                dtype="uint8", fill_value=0, compressors=_checksum_codecs(self),
                                overwrite=True)

    def _node(self, path: str) -> Any:
        try:
            return self.group[path]
        except KeyError:
            return None

    def array(self, path: str) -> "CheckedArray":
        """The array ``path``; its reads raise :class:`StoreCorruptError` naming the array and
        the chunk when a chunk fails its checksum, cannot be decoded, or is flagged complete
        but missing."""
        return CheckedArray(self, path, self.group[path])

    def has(self, path: str) -> bool:
        return self._node(path) is not None

    def _manifest(self, path: str) -> "CheckedArray":
        return CheckedArray(self, f"manifest/{path}", self.group[f"manifest/{path}"])

    def done(self, path: str) -> np.ndarray:
        """Boolean flags [n_chunks] (C order over the chunk grid) of completed chunks (all
        False when the array or its manifest is missing)."""
        arr = self._node(path)
        if arr is None:
            return np.zeros(0, dtype=bool)
        if self._node(f"manifest/{path}") is None:
            return np.zeros(int(np.prod(arr.cdata_shape)), dtype=bool)
        return self._manifest(path)[:].astype(bool)

    def chunk_exists(self, path: str, coords: tuple[int, ...]) -> bool:
        """Whether the chunk object at grid position ``coords`` of ``path`` exists."""
        return self.chunks_exist(path, [coords])[0]

    def chunks_exist(self, path: str, coords: list[tuple[int, ...]]) -> list[bool]:
        """Whether the chunk objects at grid positions ``coords`` of ``path`` exist (asked
        concurrently: one round trip's latency for all of them)."""
        if self.in_memory or not coords:
            return [True] * len(coords)
        import asyncio
        meta, store = self.group[path].metadata, self.group.store

        async def ask() -> list[bool]:
            return list(await asyncio.gather(*(
                store.exists(f"{path}/{meta.encode_chunk_key(tuple(int(i) for i in c))}")
                for c in coords)))
        return sync(ask())

    def damaged(self, path: str) -> np.ndarray:
        """C-order indices of the chunks of ``path`` whose flag is set (or unreadable) but
        whose object is missing, fails its checksum or cannot be decoded (every flagged chunk
        is read)."""
        arr, flags = self.group[path], self._node(f"manifest/{path}")
        bad: list[int] = []
        if flags is None:
            return np.zeros(0, dtype=np.int64)
        for flat, coords in enumerate(itertools.product(*(range(n) for n in arr.cdata_shape))):
            try:
                if not flags[flat]:
                    continue
            except Exception:   # noqa: BLE001 (a corrupt flag object: not a trusted "done")
                bad.append(flat)
                continue
            try:
                arr[_chunk_region(arr, coords)]
                present = self.chunk_exists(path, coords)
            except Exception:   # noqa: BLE001 (any decoding failure)
                present = False
            if not present:
                bad.append(flat)
        return np.asarray(bad, dtype=np.int64)

    def is_complete(self, path: str) -> bool:
        flags = self.done(path)
        return flags.size > 0 and bool(flags.all())

    def write_chunk(self, path: str, chunk_index: tuple[int, ...] | int, value: np.ndarray) -> None:
        """Write one whole chunk of ``path`` (its position in the chunk grid), then flag it."""
        idx = (chunk_index,) if isinstance(chunk_index, int) else tuple(chunk_index)
        self.write_region(path, _chunk_region(self.group[path], idx), value)

    def write_region(self, path: str, region: tuple[slice, ...], value: np.ndarray) -> None:
        """Write a chunk-aligned region of ``path`` (whole chunks only), then flag its chunks.

        The chunks are written concurrently, and flagged complete in the manifest only after all
        of them are written.  Raises :class:`DiskFullError` (nothing flagged) when the file
        system is full.
        """
        arr = self.group[path]
        if not self.in_memory:   # a runtime setting, not stored: chunks equal to the fill
            arr = arr.with_config({"write_empty_chunks": True})   # value are written too
        ranges = []
        for sl, c, s in zip(region, arr.chunks, arr.shape):
            if sl.start % c or (sl.stop % c and sl.stop != s) or not 0 <= sl.start < sl.stop <= s:
                raise ValueError(f"region {region} of {path!r} is not made of whole chunks "
                                 f"(chunks {arr.chunks}, shape {arr.shape})")
            ranges.append(np.arange(sl.start // c, -(-sl.stop // c)))
        expected = tuple(sl.stop - sl.start for sl in region)
        if tuple(value.shape) != expected:
            raise ValueError(f"region {region} of {path!r} must have shape {expected}, "
                             f"got {tuple(value.shape)}")
        flat = np.ravel_multi_index(np.meshgrid(*ranges, indexing="ij"), arr.cdata_shape).ravel()
        with _disk_full(self.url, f"writing {path!r} {region} (completed chunks are kept)"):
            arr[region] = value
            self._manifest(path).set_orthogonal_selection((flat,), 1)

    # ----------------------------------------------------------------- plain keys
    def update_attrs(self, path: str, values: dict[str, Any]) -> None:
        """Merge ``values`` into the attributes of the group or array ``path`` in one write.

        zarr's ``attrs.update`` writes the node's metadata once per key, so a process killed
        between two of them leaves some keys new and some old (a step marked done without its
        results); this writes them all or none."""
        node = self.group[path] if path else self.group
        if self.in_memory:
            node.attrs.update(values)
            return
        with _disk_full(self.url, f"writing the attributes of {path or 'the store'!r}"):
            node.update_attributes(values)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under the plain key ``key`` (not a zarr node: e.g. a checkpoint), in
        one object framed with its sha256 (see the module docstring)."""
        if self.in_memory:
            self._bytes[key] = bytes(data)
            return
        framed = PLAIN_MAGIC + hashlib.sha256(data).digest() + bytes(data)
        with _disk_full(self.url, f"writing {key!r}"):
            sync(self._zstore.set(key, default_buffer_prototype().buffer.from_bytes(framed)))

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes under the plain key ``key``, or None; :class:`StoreCorruptError` when
        their checksum does not match."""
        if self.in_memory:
            return self._bytes.get(key)
        raw = sync(self.group.store.get(key, prototype=default_buffer_prototype()))
        if raw is None:
            return None
        raw = raw.to_bytes()
        head, n = len(PLAIN_MAGIC), len(PLAIN_MAGIC) + 32
        if not raw.startswith(PLAIN_MAGIC) or len(raw) < n or \
                hashlib.sha256(raw[n:]).digest() != raw[head:n]:
            raise StoreCorruptError(
                f"store {self.url}: {key!r} is corrupt (its sha256 does not match: "
                f"{len(raw)} bytes); run `ootrain store repair {self.url}`, which says whether "
                "the run can resume")
        return raw[n:]

    def damaged_keys(self) -> dict[str, str]:
        """The plain keys whose checksum does not match, each with its error's message."""
        damaged = {}
        for key in self.plain_keys():
            try:
                self.get_bytes(key)
            except StoreCorruptError as e:
                damaged[key] = str(e)
        return damaged

    def plain_keys(self) -> list[str]:
        """Every plain key of the store except the lock (checkpoints, ``regulariser.pt``)."""
        if self.in_memory:
            return sorted(self._bytes)

        async def keys() -> list[str]:
            return [k async for k in self.group.store.list()]
        return sorted(k for k in sync(keys()) if k != LOCK_KEY and "." in k.rsplit("/", 1)[-1]
                      and not k.endswith(("zarr.json", ".partial")))   # .partial: a local
        # write's temporary file that a kill left before its rename (never read)

    def delete(self, key: str) -> None:
        """Remove the plain key ``key`` (no error when absent)."""
        if self.in_memory:
            self._bytes.pop(key, None)
            return
        sync(self._zstore.delete(key))

    def delete_arrays(self, path: str) -> None:
        """Delete every array and plain key under the group ``path``, and the arrays'
        manifests; the group and its attributes stay."""
        self._delete_plain_keys(path)
        group = self.group[path]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            members = [(name, node) for name, node in group.members()]
        for name, node in members:
            sub = f"{path}/{name}"
            if isinstance(node, (zarr.Group, MemoryGroup)):
                self.delete_arrays(sub)
                continue
            self.delete_array(sub)

    def delete_array(self, path: str) -> None:
        """Delete the array ``path`` and its manifest: the flags first, so a kill in between
        leaves chunks no flag vouches for (rewritten or deleted later), never a flag whose
        chunk is gone."""
        if self.has(f"manifest/{path}"):
            del self.group[f"manifest/{path}"]
        del self.group[path]

    def unflag(self, path: str, flat: np.ndarray) -> None:
        """Mark the chunks ``flat`` (C-order indices over the chunk grid) of ``path``
        incomplete: a resumed run writes them again."""
        manifest = self.group[f"manifest/{path}"]
        if self.in_memory:
            manifest.set_orthogonal_selection((np.asarray(flat, dtype=np.int64),), 0)
            return
        for i in np.asarray(flat, dtype=np.int64):   # a missing flag object reads as 0
            key = manifest.metadata.encode_chunk_key((int(i),))
            sync(self._zstore.delete(f"manifest/{path}/{key}"))

    def _delete_plain_keys(self, path: str) -> None:
        """The plain keys (e.g. ``steps/3/regulariser.pt``) directly under ``path``."""
        prefix = path.rstrip("/") + "/"
        if self.in_memory:
            for key in [k for k in self._bytes if k.startswith(prefix) and "/" not in
                        k[len(prefix):]]:
                del self._bytes[key]
            return

        async def keys() -> list[str]:
            return [k async for k in self._zstore.list_dir(prefix)]
        for name in sync(keys()):
            name = name.rstrip("/")
            if name != "zarr.json" and "." in name and not self.has(f"{path}/{name}"):
                sync(self._zstore.delete(prefix + name))

    def walk_arrays(self) -> Iterator[tuple[str, zarr.Array]]:
        """All data arrays (not manifests), depth first, with their paths."""
        def rec(g: zarr.Group, prefix: str) -> Iterator[tuple[str, zarr.Array]]:
            with warnings.catch_warnings():  # the lock key is not a zarr node
                warnings.simplefilter("ignore")
                members = sorted(g.members(), key=lambda kv: kv[0])
            for name, node in members:
                path = f"{prefix}{name}"
                if path == "manifest":
                    continue
                if isinstance(node, (zarr.Group, MemoryGroup)):
                    yield from rec(node, path + "/")
                else:
                    yield path, node
        yield from rec(self.group, "")

    def free_bytes(self) -> int | None:
        """Free space of the store's file system (None for remote and in-memory stores)."""
        if self.in_memory or not _is_local(self.url):
            return None
        import shutil
        return shutil.disk_usage(self.url.removeprefix("file://")).free

    @staticmethod
    def array_bytes(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> int:
        """Disk an array of the store takes: its data plus, per chunk, the chunk's object
        and its manifest flag, each at least ``OBJECT_BYTES`` (a file-system block), and
        the two metadata documents."""
        n_chunks = _n_chunks(shape, chunks)
        data = int(np.prod(shape, dtype=np.int64)) * itemsize
        # per chunk: its object's block and 4 checksum bytes, and its flag's block
        return data + n_chunks * (2 * OBJECT_BYTES + 4) + 2 * OBJECT_BYTES

    def check_space(self, needed: int, what: str) -> None:
        """Refuse to start work that cannot fit on disk (local stores)."""
        free = self.free_bytes()
        if free is not None and needed > free:
            raise DiskFullError(errno.ENOSPC, f"{what} needs {needed / 2**30:.2f} GiB in "
                                f"{self.url} but only {free / 2**30:.2f} GiB are free; free "
                                "space and rerun the same command to resume (completed work "
                                "is kept)")


@contextlib.contextmanager
def _disk_full(url: str, what: str) -> Iterator[None]:
    """Turn the file system's ``ENOSPC`` into :class:`DiskFullError` naming ``what``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, _KeyDiskFull) or (e.errno == errno.ENOSPC
                                           and not isinstance(e, DiskFullError)):
            raise DiskFullError(errno.ENOSPC, f"disk full while {what} in {url}; free space "
                                "and rerun the same command to resume") from e
        raise


def _chunk_region(arr: Any, coords: tuple[int, ...]) -> tuple[slice, ...]:
    """The region of ``arr`` that its chunk at grid position ``coords`` covers."""
    return tuple(slice(i * c, min((i + 1) * c, n))
                 for i, c, n in zip(coords, arr.chunks, arr.shape))


def _n_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    """Chunks in the grid of an array of ``shape`` cut in ``chunks``."""
    return int(np.prod([-(-int(n) // int(c)) for n, c in zip(shape, chunks)]))


def _checksum_codecs(store: Store) -> Any:
    """Bytes codecs of the store's arrays: a crc32c checksum per chunk (none in memory)."""
    if store.in_memory:
        return None
    from zarr.codecs import Crc32cCodec
    return [Crc32cCodec()]


def _chunk_ranges(arr: Any, selection: Any) -> list[Any] | None:
    """The chunk-grid indices a basic or orthogonal selection (ints, slices with step 1,
    Ellipsis, 1-D integer arrays) of ``arr`` touches, per dimension; None for other
    selections."""
    sel = selection if isinstance(selection, tuple) else (selection,)
    if any(s is Ellipsis for s in sel):
        i = sel.index(Ellipsis)
        sel = sel[:i] + (slice(None),) * (len(arr.shape) - len(sel) + 1) + sel[i + 1:]
    sel = sel + (slice(None),) * (len(arr.shape) - len(sel))
    out = []
    for s_, c, n in zip(sel, arr.chunks, arr.shape):
        if isinstance(s_, (int, np.integer)):
            i = int(s_) % n if n else 0
            out.append(range(i // c, i // c + 1))
        elif isinstance(s_, slice) and s_.step in (None, 1):
            lo, hi, _ = s_.indices(n)
            out.append(range(lo // c, -(-hi // c)) if hi > lo else range(0))
        elif isinstance(s_, np.ndarray) and s_.ndim == 1 and s_.dtype.kind in "iu":
            out.append([int(i) for i in np.unique((s_ % n) // c)] if n else [])
        else:
            return None
    return out


class CheckedArray:
    """A store array (:meth:`Store.array`) whose reads name the array and chunk that fail.

    Every attribute but indexing is the zarr array's.  A read that fails (checksum mismatch,
    truncated or undecodable chunk) is retried chunk by chunk to find the bad ones; a basic
    selection is also checked for chunks flagged complete in the manifest whose object is
    missing (zarr would return the fill value for them)."""

    def __init__(self, store: Store, path: str, arr: Any) -> None:
        self._store, self._path, self._arr = store, path, arr

    def __getattr__(self, name: str) -> Any:
        return getattr(self._arr, name)

    @property
    def store_path(self) -> str:
        """The array's path in its store."""
        return self._path

    def __len__(self) -> int:
        return len(self._arr)

    def __repr__(self) -> str:
        return f"<store array {self._path!r} {self._arr.shape} {self._arr.dtype}>"

    def __setitem__(self, selection: Any, value: Any) -> None:
        self._arr[selection] = value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, selection: Any) -> Any:
        try:
            out = self._arr[selection]
        except Exception as e:
            raise self._locate(selection, e) from e
        self._check_present(selection)
        return out

    def get_orthogonal_selection(self, selection: Any) -> Any:
        """zarr's orthogonal selection, checked as :meth:`__getitem__` checks."""
        try:
            out = self._arr.get_orthogonal_selection(selection)
        except Exception as e:
            raise self._locate(selection, e) from e
        self._check_present(selection)
        return out

    def _chunks(self, selection: Any) -> list[tuple[int, ...]]:
        ranges = _chunk_ranges(self._arr, selection)
        if ranges is None:
            ranges = [range(n) for n in self._arr.cdata_shape]
        return list(itertools.product(*ranges))

    def _locate(self, selection: Any, error: Exception) -> Exception:
        bad = []
        for coords in self._chunks(selection):
            try:
                self._arr[_chunk_region(self._arr, coords)]
            except Exception as e:   # noqa: PERF203 (the slow path, after a failure)
                bad.append((coords, e))
        if not bad:
            return error
        coords, e = bad[0]
        more = f" (and {len(bad) - 1} more chunks)" if len(bad) > 1 else ""
        return StoreCorruptError(
            f"store {self._store.url}: array {self._path!r} chunk {list(coords)} is corrupt "
            f"({type(e).__name__}: {e}){more}; run `ootrain store repair {self._store.url}`, "
            "then the same command to resume")

    def _check_present(self, selection: Any) -> None:
        if self._store.in_memory or self._path.startswith("manifest/"):
            return
        ranges = _chunk_ranges(self._arr, selection)
        manifest = None if ranges is None else self._store._node(f"manifest/{self._path}")
        if manifest is None:
            return
        coords = list(itertools.product(*ranges))
        if not coords:
            return
        flat = np.ravel_multi_index(tuple(np.array(coords).T), self._arr.cdata_shape)
        flags = manifest.get_coordinate_selection(flat)
        flagged = [c for c, f in zip(coords, flags) if f]
        for c, present in zip(flagged, self._store.chunks_exist(self._path, flagged)):
            if not present:
                raise StoreCorruptError(
                    f"store {self._store.url}: array {self._path!r} chunk {list(c)} is "
                    "flagged complete but its object is missing; run `ootrain store repair "
                    f"{self._store.url}`, then the same command to resume")


class _FullDiskNamed(zarr.storage.WrapperStore):
    """The zarr store of a writer: a write that finds the disk full (``ENOSPC``) raises
    :class:`DiskFullError` naming the key, wherever it comes from (zarr's metadata writes
    too); the callers' :func:`_disk_full` contexts add what was being written."""

    async def set(self, key: str, value: Any) -> None:
        try:
            await self._store.set(key, value)
        except OSError as e:
            _raise_if_full(e, key, self._store)
            raise

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        try:
            await self._store.set_if_not_exists(key, value)
        except OSError as e:
            _raise_if_full(e, key, self._store)
            raise


class _KeyDiskFull(DiskFullError):
    """A full disk named by the key only (a :func:`_disk_full` context says more)."""


def _raise_if_full(e: OSError, key: str, where: Any) -> None:
    if e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
        raise _KeyDiskFull(errno.ENOSPC, f"disk full writing {key!r} in {where}; free space "
                            "and rerun the same command to resume") from e


def _open_zstore(url: str) -> zarr.abc.store.Store:
    if _is_local(url):
        return _FullDiskNamed(zarr.storage.LocalStore(url.removeprefix("file://")))
    return _FullDiskNamed(zarr.storage.FsspecStore.from_url(url))
