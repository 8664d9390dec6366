"""The in-process backend of an in-memory :class:`ootrain.store.Store`: numpy arrays and dict
groups with the part of zarr's interface the store, the engine and the solvers use.

A zarr ``MemoryStore`` costs ~0.5 ms per array operation (each synchronous call hops to
zarr's event-loop thread), which dominates a small step (measured: 85 operations, ~40 ms of
a 66 ms RSR step at b = 1024; ``benchmarks/RESULTS.md``); these objects cost microseconds.
Attributes are kept as JSON round trips, so what a disk store would refuse (non-JSON values)
is refused here too, and no caller can alias a stored value.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np

__all__ = ["MemoryArray", "MemoryGroup"]


class _Attributes:
    """JSON attributes: ``get``, ``[]``, ``update``, ``in``, ``dict(attrs)``."""

    def __init__(self) -> None:
        self._d: dict[str, Any] = {}

    def update(self, values: dict[str, Any]) -> None:
        self._d.update(json.loads(json.dumps(values)))

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def __getitem__(self, key: str) -> Any:
        return json.loads(json.dumps(self._d[key]))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._d else default

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def keys(self) -> Any:
        return self._d.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)


class MemoryArray:
    """A numpy array with zarr's ``shape``/``chunks``/``dtype``/``cdata_shape``, basic and
    orthogonal selection (reads return copies, as zarr's do) and ``attrs``."""

    def __init__(self, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
                 fill_value: Any = 0) -> None:
        self.shape, self.chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
        self.dtype = np.dtype(dtype)
        self._data = np.full(self.shape, fill_value, dtype=self.dtype)
        self.attrs = _Attributes()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def cdata_shape(self) -> tuple[int, ...]:
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array(self._data[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._data[key] = value

    def _orthogonal(self, selection: tuple[Any, ...]) -> tuple[Any, ...]:
        sel = tuple(selection) + (slice(None),) * (self.ndim - len(selection))
        if sum(not isinstance(s, slice) for s in sel) <= 1:
            return sel
        return np.ix_(*[np.arange(n)[s] if isinstance(s, slice) else np.asarray(s)
                        for s, n in zip(sel, self.shape)])

    def get_orthogonal_selection(self, selection: tuple[Any, ...]) -> np.ndarray:
        return np.array(self._data[self._orthogonal(selection)])

    def set_orthogonal_selection(self, selection: tuple[Any, ...], value: Any) -> None:
        self._data[self._orthogonal(selection)] = value


class MemoryGroup:
    """A group: named members (groups and arrays) addressed by ``/``-paths, and ``attrs``."""

    def __init__(self) -> None:
        self._members: dict[str, MemoryGroup | MemoryArray] = {}
        self.attrs = _Attributes()

    def _parent(self, path: str, create: bool) -> tuple["MemoryGroup", str]:
        *parents, name = path.strip("/").split("/")
        group = self
        for p in parents:
            node = group._members.get(p)
            if node is None:
                if not create:
                    raise KeyError(path)
                node = group._members[p] = MemoryGroup()
            if not isinstance(node, MemoryGroup):
                raise KeyError(path)
            group = node
        return group, name

    def __getitem__(self, path: str) -> "MemoryGroup | MemoryArray":
        group, name = self._parent(path, create=False)
        if name not in group._members:
            raise KeyError(path)
        return group._members[name]

    def __delitem__(self, path: str) -> None:
        group, name = self._parent(path, create=False)
        del group._members[name]

    def require_group(self, path: str) -> "MemoryGroup":
        group, name = self._parent(path, create=True)
        node = group._members.setdefault(name, MemoryGroup())
        if not isinstance(node, MemoryGroup):
            raise KeyError(f"{path} is an array")
        return node

    def create_array(self, path: str, *, shape: tuple[int, ...], chunks: tuple[int, ...],
                     dtype: Any, fill_value: Any = 0, **_: Any) -> MemoryArray:
        group, name = self._parent(path, create=True)
        arr = group._members[name] = MemoryArray(shape, chunks, dtype, fill_value)
        return arr

    def members(self) -> Iterator[tuple[str, "MemoryGroup | MemoryArray"]]:
        return iter(list(self._members.items()))
