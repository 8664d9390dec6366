"""Targets ``y [N, d]`` of the OT kernels: in memory or in a zarr array, read in row blocks.

:class:`TargetSource` wraps a tensor, a numpy array (viewed without copy), a zarr array or
the path of one; :meth:`TargetSource.blocks` yields ``(offset, y[offset:offset + rows])``
in order, so a kernel reduces over targets block by block with ``O(rows d)`` memory
whatever ``N``.  NaN/Inf are refused (in-memory data once, zarr blocks as they are read).

Example::

    >>> import torch
    >>> from ootrain.ot.targets import as_source
    >>> src = as_source(torch.zeros(10, 3), block_rows=4)
    >>> [(off, b.shape[0]) for off, b in src.blocks()]
    [(0, 4), (4, 4), (8, 2)]
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import zarr

__all__ = ["TargetLike", "TargetSource", "as_source"]

_ZARR_BLOCK_BYTES = 2**26     # default bytes of one row block read from a zarr source


def _torch_dtype(dtype: Any) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype


TargetLike = Union[Tensor, np.ndarray, "zarr.Array", str, os.PathLike, "TargetSource"]


class TargetSource:
    """Targets ``y [N, d]``: a tensor, a numpy array, a zarr array or its path.

    In-memory data (tensor / numpy, viewed without copy) is checked for NaN/Inf once and
    yielded as one block by default; a zarr array is read in row blocks (by default whole
    zarr chunks totalling about 64 MiB) and each block is checked when read.  ``rows``
    (sorted int64 indices) restricts a zarr source to a subset of its rows.
    """

    def __init__(self, data: TargetLike, block_rows: int | None = None,
                 rows: np.ndarray | None = None) -> None:
        if isinstance(data, TargetSource):
            block_rows = block_rows or data.block_rows
            rows, data = data.rows if rows is None else rows, data.data
        if isinstance(data, (str, os.PathLike)):
            import zarr
            data = zarr.open_array(os.fspath(data), mode="r")
        if isinstance(data, np.ndarray):
            if not data.flags.writeable:
                data = data.copy()
            data = torch.from_numpy(data)
        self.in_memory = isinstance(data, Tensor)
        if not self.in_memory and not (hasattr(data, "shape") and hasattr(data, "dtype")
                                       and hasattr(data, "get_orthogonal_selection")):
            raise ValueError("targets must be a torch.Tensor, numpy array, zarr array or zarr "
                             f"path, got {type(data).__name__}")
        shape = tuple(data.shape)
        if len(shape) != 2:
            raise ValueError(f"targets must be 2-D [N, d], got shape {shape}")
        dtype = data.dtype if self.in_memory else _torch_dtype(data.dtype)
        if not dtype.is_floating_point:
            raise ValueError(f"targets must have a floating dtype, got {dtype}")
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"targets must be non-empty, got shape {shape}")
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if rows.ndim != 1 or rows.size == 0 or (np.diff(rows) <= 0).any() \
                    or rows[0] < 0 or rows[-1] >= shape[0]:
                raise ValueError("rows must be a non-empty, strictly increasing array of "
                                 f"indices in [0, {shape[0]})")
            if self.in_memory:
                data, rows = data[torch.from_numpy(rows).to(data.device)], None
                shape = tuple(data.shape)
        if self.in_memory and not bool(torch.isfinite(data).all()):
            raise ValueError("targets contain non-finite values (NaN or Inf)")
        self.data, self.rows, self.dtype = data, rows, dtype
        self.n = shape[0] if rows is None else int(rows.size)
        self.d = shape[1]
        if block_rows is not None and (isinstance(block_rows, bool) or block_rows < 1):
            raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}")
        self.block_rows = block_rows

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        kind = "tensor" if self.in_memory else "zarr"
        return f"TargetSource({kind}, n={self.n}, d={self.d}, dtype={self.dtype})"

    def default_block_rows(self) -> int:
        """Rows per block: everything for in-memory data, ~64 MiB of whole chunks for zarr."""
        if self.in_memory:
            return self.n
        chunk = int(self.data.chunks[0])
        per = max(1, _ZARR_BLOCK_BYTES // (self.d * np.dtype(self.data.dtype).itemsize))
        return max(chunk, per // chunk * chunk)

    def read(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of the (possibly subset) source, as one CPU/device tensor
        (a view of in-memory data; a zarr source's rows read now and checked for NaN/Inf)."""
        if self.in_memory:
            return self.data[start:stop]
        if self.rows is None:
            block = np.asarray(self.data[start:stop])
        else:
            block = np.asarray(self.data.get_orthogonal_selection(
                (self.rows[start:stop], slice(None))))
        t = torch.from_numpy(np.ascontiguousarray(block))
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"targets contain non-finite values (NaN or Inf) in rows "
                             f"[{start}, {stop}) of {self!r}")
        return t

    def blocks(self, block_rows: int | None = None, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(offset, y[offset:offset + rows])`` over the source, in order."""
        step = block_rows or self.block_rows or self.default_block_rows()
        for start in range(0, self.n, step):
            yield start, self.read(start, min(self.n, start + step)).to(device=device,
                                                                        dtype=dtype)

    def take(self, idx: Tensor, *, dtype: torch.dtype | None = None,
             device: torch.device | str | None = None) -> Tensor:
        """Rows ``y[idx]`` (any shape of int64 ``idx``) -> ``[*idx.shape, d]``."""
        idx = torch.as_tensor(idx)
        if self.in_memory:
            out = self.data[idx.to(self.data.device)]
        else:
            flat = idx.reshape(-1).cpu().numpy()
            uniq, inv = np.unique(flat, return_inverse=True)
            if uniq.size and (uniq[0] < 0 or uniq[-1] >= self.n):
                raise IndexError(f"target index out of range [0, {self.n})")
            rows = uniq if self.rows is None else self.rows[uniq]
            block = np.asarray(self.data.get_orthogonal_selection((rows, slice(None))))
            out = torch.from_numpy(np.ascontiguousarray(block))[torch.from_numpy(inv)]
            out = out.reshape(*idx.shape, self.d)
        return out.to(device=device if device is not None else idx.device, dtype=dtype)

    def subset(self, rows: np.ndarray) -> "TargetSource":
        """The targets of the sorted indices ``rows`` (gathered now if in memory)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.rows is not None:
            rows = self.rows[rows]
        return TargetSource(self.data, self.block_rows, rows)

    def tensor(self, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """All targets as one tensor (reads a zarr source entirely)."""
        return torch.cat([b for _, b in self.blocks(dtype=dtype, device=device)])


def as_source(y: TargetLike, block_rows: int | None = None) -> TargetSource:
    """``y`` as a :class:`TargetSource` (returned unchanged if it already is one)."""
    if isinstance(y, TargetSource) and block_rows is None:
        return y
    return TargetSource(y, block_rows)
