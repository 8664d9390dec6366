"""The c-transform argmin of semi-discrete OT, with one interface and several backends.

Given queries ``x [B, d]``, targets ``y [N, d]`` and a dual potential ``psi [N]``, the
(hard) c-transform and its argmin are

    value_i = min_j c(x_i, y_j) - psi_j,        idx_i = argmin_j c(x_i, y_j) - psi_j

(ties: the smallest ``j``).  Costs (:class:`Cost`):

    sqeuclidean   c(x, y) = ||x - y||_2^2
    euclidean     c(x, y) = ||x - y||_2
    l1            c(x, y) = sum_k |x_k - y_k|
    lp            c(x, y) = sum_k |x_k - y_k|^p      (p >= 1, *no* p-th root)

Backends of :func:`c_transform`:

- ``torch``: the reference.  Dense cost blocks of at most ``_TORCH_BLOCK`` entries
  (``torch.cdist`` without the GEMM expansion, so costs are evaluated directly), reduced
  with a running (min, argmin); memory ``O((B + N) d + _TORCH_BLOCK)``.
- ``keops``: ``pykeops`` LazyTensor ``.argmin`` for any cost, ``O((B + N) d)`` memory.
  KeOps carries the argmin index in the accumulator of the data dtype (``keopscore``
  ``Min_ArgMin_Reduction_Base``), so float32 indices are exact only below 2^24, and
  pykeops refuses float32 arg-reductions over more than 1.6e7 targets.  Targets are
  therefore reduced in sub-blocks of at most ``KEOPS_MAX_TARGETS[dtype]`` rows (2^23 in
  float32) and the sub-block offset is added in int64.
- ``faiss``: exact flat search (faiss GPU when ``faiss.get_num_gpus() > 0``) on augmented
  vectors.  sqeuclidean:  ``argmin ||x-y||^2 - psi = argmax <x, y> + (psi - ||y||^2)/2``,
  an inner-product search (``IndexFlatIP``) of ``[x, 1]`` against ``[y_j, (psi_j -
  ||y_j||^2)/2]``.  l1 / lp: ``IndexFlat`` with ``METRIC_L1`` / ``METRIC_Lp`` of ``[x, 0]``
  against ``[y_j, (M - psi_j)^(1/p)]``, ``M = max psi`` (the extra coordinate adds
  ``M - psi_j``).  Both sides are centred on the targets' mean first (the costs are
  translation invariant), which reduces float32 cancellation.  Not available for
  ``euclidean``.

FAISS and KeOps may compute in float32; every backend therefore returns a few
*candidates* per target block, their exact values ``c(x_i, y_j) - psi_j`` are recomputed
in torch in the dtype of ``x`` (:meth:`Cost.pairwise`), and the best candidate wins
(smallest index on exact ties).  All backends thus return identical ``value`` for
identical ``idx``; they agree on ``idx`` except on float32 near-ties where the true argmin
is not among the candidates (FAISS keeps ``_FAISS_CANDIDATES = 8`` per block, so ties
among up to 8 duplicated targets still resolve to the smallest index).

``backend="auto"``: ``torch`` for small problems (``B * N <= AUTO_TORCH_ENTRIES = 2^17``:
index building and kernel launch cost more than the dense block there — measured on one CPU
thread, 256 x 256 in d = 2: torch 0.29 ms, faiss 1.4 ms, KeOps 1.5 ms; 512 x 512: 4.5 / 1.4 /
1.6 ms); otherwise ``faiss`` for the costs it supports (sqeuclidean, l1, lp) when faiss is
importable, else ``keops`` when pykeops imports (and compiles: a failure falls back to
``torch`` with a warning), else ``torch``.

Targets are a tensor, a numpy array, a zarr array or the path of one
(:class:`TargetSource`); large sources are read in row blocks and the reduction is
carried block by block.  The soft (entropic) c-transform, with ``eps > 0`` and target
weights ``w`` (uniform by default),

    value_i = -eps log sum_j w_j exp((psi_j - c(x_i, y_j)) / eps),
    P_ij    = w_j exp((psi_j - c(x_i, y_j) - value_i) / eps),     sum_j P_ij = 1,

is :func:`soft_c_transform` (it tends to the hard one as ``eps -> 0``; with uniform
weights it lies in ``[min, min + eps log N]``), with :func:`soft_mass` (``sum_i P_ij``),
:func:`soft_cost` (``sum_j P_ij c(x_i, y_j)``) and :func:`soft_assign` (samples
``j ~ P_i.`` by the Gumbel-max trick, streamable over blocks).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    import zarr

__all__ = [
    "COSTS",
    "BACKENDS",
    "KEOPS_MAX_TARGETS",
    "Cost",
    "parse_cost",
    "TargetSource",
    "as_source",
    "resolve_backend",
    "c_transform",
    "soft_c_transform",
    "soft_mass",
    "soft_cost",
    "soft_assign",
]

COSTS = ("sqeuclidean", "euclidean", "l1", "lp")
BACKENDS = ("auto", "torch", "keops", "faiss")
SOFT_BACKENDS = ("auto", "torch", "keops")

#: Largest number of targets reduced in one KeOps arg-reduction, per dtype (see module doc).
KEOPS_MAX_TARGETS: dict[torch.dtype, int] = {torch.float32: 2**23, torch.float64: 2**52}
AUTO_TORCH_ENTRIES = 2**17    # "auto" picks torch up to this many query x target pairs
_TORCH_BLOCK = 2**22          # entries of one dense cost block of the torch backend
_FAISS_CANDIDATES = 8         # candidates per query and target block, re-ranked exactly
_ZARR_BLOCK_BYTES = 2**26     # default bytes of one row block read from a zarr source


# ----------------------------------------------------------------------------------
# costs
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    """A ground cost ``c(x, y)`` between rows; see the module docstring for the formulas.

    ``p`` is the exponent of ``lp`` (``p >= 1``); it is filled in for the other costs
    (2 for ``sqeuclidean`` / ``euclidean``, 1 for ``l1``) and must not be given for them.
    """

    name: str
    p: float | None = None

    def __post_init__(self) -> None:
        if self.name not in COSTS:
            raise ValueError(f"unknown cost {self.name!r}; expected one of {', '.join(COSTS)}")
        if self.name == "lp":
            p = self.p
            if (isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)
                    or p < 1):
                raise ValueError(f"cost 'lp' needs a finite exponent p >= 1, got p={p!r}")
            object.__setattr__(self, "p", float(p))
        elif self.p is not None:
            raise ValueError(f"cost {self.name!r} takes no exponent p (got p={self.p!r}); "
                             "use Cost('lp', p)")
        else:
            object.__setattr__(self, "p", 1.0 if self.name == "l1" else 2.0)

    def __str__(self) -> str:
        return f"lp:{self.p:g}" if self.name == "lp" else self.name

    @property
    def _norm_p(self) -> float:
        """The ``p`` of the ``torch.cdist`` norm the cost is a function of."""
        return 2.0 if self.name in ("sqeuclidean", "euclidean") else float(self.p)

    def _finish(self, r: Tensor) -> Tensor:
        """Cost from the p-norm ``r`` of ``x - y``."""
        if self.name == "sqeuclidean":
            return r * r
        if self.name == "lp" and self.p != 1.0:
            return r.pow(self.p)
        return r

    def matrix(self, x: Tensor, y: Tensor) -> Tensor:
        """Dense cost matrix ``C[i, j] = c(x_i, y_j)``: ``x [B, d]``, ``y [N, d]`` -> ``[B, N]``.

        Evaluated directly (``torch.cdist`` without the ``||x||^2 - 2<x, y> + ||y||^2``
        expansion), so it is accurate to rounding; differentiable.  Memory ``O(B N)``:
        chunk large inputs (the torch backend of :func:`c_transform` does).
        """
        return self._finish(torch.cdist(x, y, p=self._norm_p,
                                        compute_mode="donot_use_mm_for_euclid_dist"))

    def pairwise(self, x: Tensor, y: Tensor) -> Tensor:
        """Row-aligned costs ``c(x_i, y_i)``: ``x, y [B, d]`` -> ``[B]``.

        Uses the same kernel as :meth:`matrix`, so ``pairwise(x, y[idx])`` equals the
        corresponding entries of ``matrix(x, y)`` bit for bit.
        """
        r = torch.cdist(x[:, None, :], y[:, None, :], p=self._norm_p,
                        compute_mode="donot_use_mm_for_euclid_dist")
        return self._finish(r.reshape(x.shape[0]))


def parse_cost(cost: str | Cost, p: float | None = None) -> Cost:
    """A :class:`Cost` from a ``Cost``, a name (``"sqeuclidean"``, ``"euclidean"``,
    ``"l1"``, ``"lp"`` with ``p``) or ``"lp:<p>"`` (e.g. ``"lp:3"``)."""
    if isinstance(cost, Cost):
        if p is not None and p != cost.p:
            raise ValueError(f"p={p!r} conflicts with the cost {cost}")
        return cost
    if not isinstance(cost, str):
        raise ValueError(f"cost must be a str or Cost, got {type(cost).__name__}")
    name = cost.strip().lower()
    if name.startswith("lp:"):
        try:
            p_str = float(name[3:])
        except ValueError:
            raise ValueError(f"cannot read the exponent of cost {cost!r} (expected 'lp:<p>')") \
                from None
        if p is not None and p != p_str:
            raise ValueError(f"p={p!r} conflicts with the cost {cost!r}")
        return Cost("lp", p_str)
    return Cost(name, p)


# ----------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------
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

    def _read(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` of the (possibly subset) source, as a CPU/device tensor."""
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
            yield start, self._read(start, min(self.n, start + step)).to(device=device,
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


# ----------------------------------------------------------------------------------
# input checks and backend choice
# ----------------------------------------------------------------------------------
def _check_query(x: Tensor, d: int) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape [B, d] with d = {d} (the targets' dimension), "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values (NaN or Inf)")


def _check_psi(psi: Tensor, n: int, x: Tensor) -> Tensor:
    psi = torch.as_tensor(psi)
    if psi.shape != (n,):
        raise ValueError(f"psi must have shape [N] = [{n}], got {tuple(psi.shape)}")
    psi = psi.to(device=x.device, dtype=x.dtype)
    if not bool(torch.isfinite(psi).all()):
        raise ValueError("psi contains non-finite values (NaN or Inf)")
    return psi


def _log_weights(weights: Tensor | None, n: int, x: Tensor) -> Tensor:
    """``log w`` [N] (normalised to sum 1), uniform ``-log N`` when ``weights`` is None."""
    if weights is None:
        return torch.full((n,), -math.log(n), dtype=x.dtype, device=x.device)
    w = torch.as_tensor(weights).to(device=x.device, dtype=torch.float64)
    if w.shape != (n,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) \
            or float(w.sum()) <= 0:
        raise ValueError(f"weights must be a finite, non-negative [N] = [{n}] tensor with a "
                         "positive sum")
    return (w / w.sum()).log().to(x.dtype)


def _check_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


@functools.lru_cache(maxsize=None)
def _faiss_ok() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "IndexFlat")


@functools.lru_cache(maxsize=None)
def _keops_ok() -> bool:
    try:
        from pykeops.torch import LazyTensor
    except Exception:  # ImportError, or a broken compiler setup raising at import
        return False
    return LazyTensor is not None


_KEOPS_BROKEN: list[str] = []   # set when a KeOps call failed under backend="auto"


def resolve_backend(backend: str, cost: Cost, entries: int | None = None) -> str:
    """The concrete backend ``backend`` stands for with ``cost`` on a problem of ``entries``
    query x target pairs (None: large) (see the module doc)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "faiss":
        if cost.name == "euclidean":
            raise ValueError("the faiss backend supports sqeuclidean, l1 and lp costs, "
                             "not euclidean; use backend 'keops' or 'torch'")
        if not _faiss_ok():
            raise ValueError("backend 'faiss' requested but faiss is not installed")
    if backend == "keops" and not _keops_ok():
        raise ValueError("backend 'keops' requested but pykeops cannot be imported")
    if backend != "auto":
        return backend
    if entries is not None and entries <= AUTO_TORCH_ENTRIES:
        return "torch"
    if cost.name != "euclidean" and _faiss_ok():
        return "faiss"
    if _keops_ok() and not _KEOPS_BROKEN:
        return "keops"
    return "torch"


# ----------------------------------------------------------------------------------
# candidate search per target block: LongTensor [B, k] of block-local indices
# ----------------------------------------------------------------------------------
def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, total, size):
        yield a, min(total, a + size)


def _query_rows(n_targets: int, n_queries: int) -> int:
    """Queries per dense block so that a block holds about ``_TORCH_BLOCK`` entries."""
    return max(1, min(n_queries, _TORCH_BLOCK // max(1, min(n_targets, _TORCH_BLOCK))))


def _candidates_torch(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> Tensor:
    """Exact argmin over the block by dense sub-blocks (first index among equal minima)."""
    B, N = x.shape[0], y.shape[0]
    bq = _query_rows(N, B)
    bt = max(1, _TORCH_BLOCK // bq)
    out = torch.empty(B, dtype=torch.long, device=x.device)
    for q0, q1 in _chunks(B, bq):
        best_v = best_i = None
        for t0, t1 in _chunks(N, bt):
            v, i = (cost.matrix(x[q0:q1], y[t0:t1]) - psi[t0:t1]).min(dim=1)
            if best_v is None:
                best_v, best_i = v, i + t0
            else:
                better = v < best_v
                best_v = torch.where(better, v, best_v)
                best_i = torch.where(better, i + t0, best_i)
        out[q0:q1] = best_i
    return out[:, None]


def _keops_cost(cost: Cost, X: Any, Y: Any) -> Any:
    if cost.name == "sqeuclidean":
        return X.sqdist(Y)
    if cost.name == "euclidean":
        return X.sqdist(Y).sqrt()
    if cost.name == "l1":
        return (X - Y).abs().sum(-1)
    p = cost.p
    return ((X - Y).abs() ** (int(p) if float(p).is_integer() else p)).sum(-1)


def _lazy(x: Tensor, y: Tensor, psi: Tensor) -> tuple[Any, Any, Any]:
    from pykeops.torch import LazyTensor
    return (LazyTensor(x.contiguous()[:, None, :]), LazyTensor(y.contiguous()[None, :, :]),
            LazyTensor(psi.contiguous()[None, :, None]))


def _candidates_keops(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> Tensor:
    """KeOps argmin per sub-block of at most ``KEOPS_MAX_TARGETS[dtype]`` targets (so the
    float-carried index is exact); one candidate per sub-block, offsets added in int64."""
    if x.dtype not in KEOPS_MAX_TARGETS:
        raise ValueError(f"the keops backend needs float32 or float64 inputs, got {x.dtype}")
    cands = []
    for t0, t1 in _chunks(y.shape[0], KEOPS_MAX_TARGETS[x.dtype]):
        X, Y, P = _lazy(x, y[t0:t1], psi[t0:t1])
        cands.append((_keops_cost(cost, X, Y) - P).argmin(dim=1).reshape(-1).long() + t0)
    return torch.stack(cands, dim=1)


_FAISS_GPU: list[Any] = []   # lazily created StandardGpuResources


def _faiss_search(index: Any, query: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` ids of an exact flat search, on the GPU when faiss sees one."""
    import faiss
    if faiss.get_num_gpus() > 0:
        try:
            if not _FAISS_GPU:
                _FAISS_GPU.append(faiss.StandardGpuResources())
            return faiss.index_cpu_to_gpu(_FAISS_GPU[0], 0, index).search(query, k)[1]
        except Exception as e:  # e.g. a metric the GPU index lacks: stay on the CPU
            warnings.warn(f"faiss GPU search unavailable ({e}); searching on the CPU",
                          stacklevel=4)
    return index.search(query, k)[1]


def _candidates_faiss(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> Tensor:
    """Top-``_FAISS_CANDIDATES`` of an exact flat search on augmented float32 vectors."""
    import faiss
    center = y.double().mean(0)
    xc, yc, ps = x.double() - center, y.double() - center, psi.double()
    if cost.name == "sqeuclidean":
        base = torch.cat([yc, ((ps - (yc * yc).sum(1)) / 2)[:, None]], 1)
        query = torch.cat([xc, torch.ones_like(xc[:, :1])], 1)
        index = faiss.IndexFlatIP(base.shape[1])
    else:
        extra = ps.max() - ps
        if cost.p != 1.0:
            extra = extra.pow(1.0 / cost.p)
        base = torch.cat([yc, extra[:, None]], 1)
        query = torch.cat([xc, torch.zeros_like(xc[:, :1])], 1)
        index = faiss.IndexFlat(base.shape[1], faiss.METRIC_L1 if cost.p == 1.0
                                else faiss.METRIC_Lp)
        if cost.p != 1.0:
            index.metric_arg = cost.p
    index.add(np.ascontiguousarray(base.cpu().numpy(), dtype=np.float32))
    k = min(_FAISS_CANDIDATES, y.shape[0])
    found = _faiss_search(index, np.ascontiguousarray(query.cpu().numpy(), dtype=np.float32), k)
    cand = torch.from_numpy(found).to(x.device)
    # -1 marks missing results (never with k <= N on a flat index; be safe)
    return torch.where(cand < 0, cand[:, :1], cand)


_CANDIDATES = {"torch": _candidates_torch, "keops": _candidates_keops,
               "faiss": _candidates_faiss}


def _best_exact(x: Tensor, y: Tensor, psi: Tensor, cand: Tensor, cost: Cost
                ) -> tuple[Tensor, Tensor]:
    """Exact ``(value, local index)`` of the best candidate, smallest index among ties."""
    B, k = cand.shape
    if k == 1:
        i = cand[:, 0]
        return cost.pairwise(x, y[i]) - psi[i], i
    flat = cand.reshape(-1)
    v = (cost.pairwise(x.repeat_interleave(k, 0), y[flat]) - psi[flat]).reshape(B, k)
    vmin = v.min(dim=1, keepdim=True).values
    i = torch.where(v == vmin, cand, torch.iinfo(torch.long).max).min(dim=1).values
    return vmin[:, 0], i


# ----------------------------------------------------------------------------------
# the hard c-transform
# ----------------------------------------------------------------------------------
def c_transform(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "sqeuclidean",
                backend: str = "auto", *, block_rows: int | None = None
                ) -> tuple[Tensor, Tensor]:
    """``(idx, value)`` with ``value_i = min_j c(x_i, y_j) - psi_j`` and ``idx_i`` its argmin.

    Args:
        x: ``[B, d]`` floating queries; all computation and ``value`` use its dtype/device.
        y: targets ``[N, d]``: tensor, numpy array, zarr array/path or :class:`TargetSource`
            (reduced block by block, ``block_rows`` rows at a time).
        psi: ``[N]`` dual potential.
        cost: a :class:`Cost` or its name (see :func:`parse_cost`).
        backend: ``"auto"``, ``"torch"``, ``"keops"`` or ``"faiss"`` (module docstring).

    Returns:
        ``idx`` int64 ``[B]`` (ties: smallest ``j``) and ``value`` ``[B]``, recomputed
        exactly in torch from ``idx`` whatever the backend.

    Raises:
        ValueError: bad shapes, dtypes, NaN/Inf, unknown cost or backend.
    """
    cost = parse_cost(cost)
    src = as_source(y, block_rows)
    _check_query(x, src.d)
    psi = _check_psi(psi, src.n, x)
    name = resolve_backend(backend, cost, x.shape[0] * src.n)
    B = x.shape[0]
    best_v = torch.full((B,), math.inf, dtype=x.dtype, device=x.device)
    best_i = torch.zeros(B, dtype=torch.long, device=x.device)
    for off, yb in src.blocks(dtype=x.dtype, device=x.device):
        pb = psi[off:off + yb.shape[0]]
        try:
            cand = _CANDIDATES[name](x, yb, pb, cost)
        except Exception as e:
            if not (backend == "auto" and name == "keops"):
                raise
            warnings.warn(f"KeOps failed ({type(e).__name__}: {e}); backend 'auto' falls back "
                          "to 'torch' from now on", stacklevel=2)
            _KEOPS_BROKEN.append(str(e))
            name = "torch"
            cand = _candidates_torch(x, yb, pb, cost)
        v, i = _best_exact(x, yb, pb, cand, cost)
        better = v < best_v   # strict: earlier blocks (smaller indices) win ties
        best_v = torch.where(better, v, best_v)
        best_i = torch.where(better, i + off, best_i)
    return best_i, best_v


# ----------------------------------------------------------------------------------
# the soft (entropic) c-transform
# ----------------------------------------------------------------------------------
def _resolve_soft_backend(backend: str) -> str:
    if backend not in SOFT_BACKENDS:
        raise ValueError(f"unknown soft backend {backend!r}; expected one of "
                         f"{', '.join(SOFT_BACKENDS)} (faiss has no soft c-transform)")
    if backend == "keops" and not _keops_ok():
        raise ValueError("backend 'keops' requested but pykeops cannot be imported")
    return "torch" if backend == "auto" else backend


def _soft_setup(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost, eps: float,
                weights: Tensor | None, block_rows: int | None
                ) -> tuple[Cost, TargetSource, Tensor, float]:
    cost = parse_cost(cost)
    src = as_source(y, block_rows)
    _check_query(x, src.d)
    psi = _check_psi(psi, src.n, x)
    eps = _check_eps(eps)
    # fold the weights into the potential: a_ij = (psi_j + eps log w_j - c_ij) / eps
    return cost, src, psi + eps * _log_weights(weights, src.n, x), eps


def _soft_torch(x: Tensor, src: TargetSource, phi: Tensor, cost: Cost, eps: float,
                want_mass: bool, want_cost: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(value [B], mass [N] or None, expected cost [B] or None) by dense blocks.

    One pass when all targets are one in-memory block (rows of ``a`` are complete);
    otherwise a first pass for the log-normaliser and a second for the plan.
    """
    B, N = x.shape[0], src.n
    lse = torch.full((B,), -math.inf, dtype=x.dtype, device=x.device)
    mass = torch.zeros(N, dtype=x.dtype, device=x.device) if want_mass else None
    ecost = torch.zeros(B, dtype=x.dtype, device=x.device) if want_cost else None
    one_pass = src.in_memory and (src.block_rows is None or src.block_rows >= N) \
        and N <= _TORCH_BLOCK
    bq = _query_rows(N, B)
    bt = max(1, _TORCH_BLOCK // bq)

    def pieces() -> Iterator[tuple[int, int, int, Tensor, Tensor]]:
        for off, yb in src.blocks(dtype=x.dtype, device=x.device):
            for t0, t1 in _chunks(yb.shape[0], bt):
                for q0, q1 in _chunks(B, bq):
                    c = cost.matrix(x[q0:q1], yb[t0:t1])
                    yield q0, q1, off + t0, c, (phi[off + t0:off + t1] - c) / eps

    def accumulate(q0: int, q1: int, j0: int, c: Tensor, a: Tensor) -> None:
        p = torch.exp(a - lse[q0:q1, None])
        if mass is not None:
            mass[j0:j0 + a.shape[1]] += p.sum(0)
        if ecost is not None:
            ecost[q0:q1] += (p * c).sum(1)

    for q0, q1, j0, c, a in pieces():
        lse[q0:q1] = torch.logaddexp(lse[q0:q1], torch.logsumexp(a, dim=1))
        if one_pass and (want_mass or want_cost):
            accumulate(q0, q1, j0, c, a)
    if not one_pass and (want_mass or want_cost):
        for piece in pieces():
            accumulate(*piece)
    return -eps * lse, mass, ecost


def _soft_keops(x: Tensor, src: TargetSource, phi: Tensor, cost: Cost, eps: float,
                want_mass: bool, want_cost: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """KeOps version of :func:`_soft_torch` (two passes over the blocks)."""
    from pykeops.torch import LazyTensor
    blocks = list(src.blocks(dtype=x.dtype, device=x.device)) if src.in_memory else None

    def it() -> Iterator[tuple[int, Tensor]]:
        return iter(blocks) if blocks is not None else src.blocks(dtype=x.dtype,
                                                                  device=x.device)
    lse = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for off, yb in it():
        X, Y, P = _lazy(x, yb, phi[off:off + yb.shape[0]])
        a = (P - _keops_cost(cost, X, Y)) / eps
        lse = torch.logaddexp(lse, a.logsumexp(dim=1).reshape(-1))
    mass = torch.zeros(src.n, dtype=x.dtype, device=x.device) if want_mass else None
    ecost = torch.zeros_like(lse) if want_cost else None
    if want_mass or want_cost:
        L = LazyTensor(lse.contiguous()[:, None, None])
        for off, yb in it():
            X, Y, P = _lazy(x, yb, phi[off:off + yb.shape[0]])
            c = _keops_cost(cost, X, Y)
            p = ((P - c) / eps - L).exp()
            if mass is not None:
                mass[off:off + yb.shape[0]] = p.sum(dim=0).reshape(-1)
            if ecost is not None:
                ecost += (p * c).sum(dim=1).reshape(-1)
    return -eps * lse, mass, ecost


def _soft(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost, eps: float,
          weights: Tensor | None, backend: str, block_rows: int | None,
          want_mass: bool, want_cost: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    name = _resolve_soft_backend(backend)
    cost, src, phi, eps = _soft_setup(x, y, psi, cost, eps, weights, block_rows)
    run = _soft_keops if name == "keops" else _soft_torch
    return run(x, src, phi, cost, eps, want_mass, want_cost)


def soft_c_transform(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
                     eps: float = 1e-2, *, weights: Tensor | None = None,
                     backend: str = "auto", block_rows: int | None = None) -> Tensor:
    """Entropic c-transform ``value_i = -eps log sum_j w_j exp((psi_j - c(x_i, y_j))/eps)``.

    ``w`` = ``weights`` normalised to sum 1 (uniform ``1/N`` by default, so the result
    lies in ``[min_j c - psi_j, min_j c - psi_j + eps log N]``).  ``eps`` is absolute (in
    cost units).  Backends ``torch`` (= ``auto``) and ``keops``.  Returns ``[B]``.
    """
    return _soft(x, y, psi, cost, eps, weights, backend, block_rows, False, False)[0]


def soft_mass(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
              eps: float = 1e-2, *, weights: Tensor | None = None, backend: str = "auto",
              block_rows: int | None = None) -> Tensor:
    """Expected mass per target ``sum_i P_ij`` of the soft assignment (sums to ``B``): ``[N]``."""
    return _soft(x, y, psi, cost, eps, weights, backend, block_rows, True, False)[1]


def soft_cost(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
              eps: float = 1e-2, *, weights: Tensor | None = None, backend: str = "auto",
              block_rows: int | None = None) -> Tensor:
    """Expected cost per query ``sum_j P_ij c(x_i, y_j)`` of the soft assignment: ``[B]``."""
    return _soft(x, y, psi, cost, eps, weights, backend, block_rows, False, True)[2]


def soft_assign(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
                eps: float = 1e-2, *, weights: Tensor | None = None,
                generator: torch.Generator | None = None,
                block_rows: int | None = None) -> Tensor:
    """Sample ``idx_i ~ P_i.`` (the soft assignment), one pass: Gumbel-max trick.

    ``argmax_j a_ij + G_ij`` with i.i.d. standard Gumbel ``G_ij`` is distributed as
    ``softmax_j a_ij``; the running (max, argmax) is carried over target blocks.  The
    draw is reproducible for a given ``generator`` and block layout.  Torch only.
    Returns int64 ``[B]``.
    """
    cost, src, phi, eps = _soft_setup(x, y, psi, cost, eps, weights, block_rows)
    B = x.shape[0]
    bq = _query_rows(src.n, B)
    bt = max(1, _TORCH_BLOCK // bq)
    best_v = torch.full((B,), -math.inf, dtype=x.dtype, device=x.device)
    best_i = torch.zeros(B, dtype=torch.long, device=x.device)
    for off, yb in src.blocks(dtype=x.dtype, device=x.device):
        for t0, t1 in _chunks(yb.shape[0], bt):
            for q0, q1 in _chunks(B, bq):
                a = (phi[off + t0:off + t1] - cost.matrix(x[q0:q1], yb[t0:t1])) / eps
                u = torch.rand(a.shape, generator=generator, dtype=x.dtype,
                               device=x.device).clamp_min_(torch.finfo(x.dtype).tiny)
                v, i = (a - torch.log(-torch.log(u))).max(dim=1)
                better = v > best_v[q0:q1]
                best_v[q0:q1] = torch.where(better, v, best_v[q0:q1])
                best_i[q0:q1] = torch.where(better, i + off + t0, best_i[q0:q1])
    return best_i
