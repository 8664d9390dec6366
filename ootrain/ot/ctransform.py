"""The c-transform argmin of semi-discrete OT, with one interface and several backends.

Given queries ``x [B, d]``, targets ``y [N, d]`` and a dual potential ``psi [N]``, the
(hard) c-transform and its argmin are

    value_i = min_j c(x_i, y_j) - psi_j,        idx_i = argmin_j c(x_i, y_j) - psi_j

(ties: the smallest ``j``).  Costs: the registry of :mod:`ootrain.ot.costs`
(:class:`~ootrain.ot.costs.Cost`, shared with Sinkhorn):

    sqeuclidean   c(x, y) = ||x - y||_2^2
    euclidean     c(x, y) = ||x - y||_2
    l1            c(x, y) = sum_k |x_k - y_k|
    lp            c(x, y) = sum_k |x_k - y_k|^p      (p >= 1, *no* p-th root)
    cosine        c(x, y) = 1 - <x, y> / (|x| |y|)   (rows must be non-zero)

Backends of :func:`c_transform` (the vocabulary of :mod:`ootrain.ot.backends`):

- ``torch``: the reference.  Dense cost blocks of at most ``TORCH_BLOCK`` entries
  (``torch.cdist`` without the GEMM expansion, so costs are evaluated directly), reduced
  with a running (min, argmin); memory ``O((B + N) d + TORCH_BLOCK)``.  For sqeuclidean the
  search runs at GEMM speed: blocks of ``1024`` queries x ``TORCH_BLOCK / 1024`` targets of
  ``||y||^2 - 2 x.y - psi`` (``torch.addmm``) keep a few candidates per query, re-evaluated
  directly, and a rounding bound certifies that the result is the direct argmin's (rows it
  cannot certify are searched directly), so the result is the same.
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
  translation invariant), which reduces float32 cancellation.  cosine: ``argmin 1 -
  <x^, y^> - psi = argmax <[x^, 1], [y^_j, psi_j]>`` (unit rows ``^``), an inner-product
  search.  Not available for ``euclidean``.

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
1.6 ms); otherwise ``faiss`` for the costs it supports (all but euclidean) when faiss is
importable, else ``keops`` when pykeops imports (and compiles: a failure falls back to
``torch`` with a warning), else ``torch``.

Targets are a tensor, a numpy array, a zarr array or the path of one
(:class:`~ootrain.ot.targets.TargetSource`); large sources are read in row blocks and
the reduction is carried block by block (:func:`merge_argmin`); :mod:`ootrain.ot.sharded`
runs it over target shards as Dask tasks, on a cluster too.  The soft (entropic) c-transform, with ``eps > 0`` and target
weights ``w`` (uniform by default),

    value_i = -eps log sum_j w_j exp((psi_j - c(x_i, y_j)) / eps),
    P_ij    = w_j exp((psi_j - c(x_i, y_j) - value_i) / eps),     sum_j P_ij = 1,

is :func:`soft_c_transform` (it tends to the hard one as ``eps -> 0``; with uniform
weights it lies in ``[min, min + eps log N]``), with :func:`soft_mass` (``sum_i P_ij``),
:func:`soft_cost` (``sum_j P_ij c(x_i, y_j)``) and :func:`soft_assign` (samples
``j ~ P_i.`` by the Gumbel-max trick, streamable over blocks); :func:`soft_transform`
gives the value and those statistics in the same passes.

Example::

    >>> import torch
    >>> from ootrain.ot.ctransform import c_transform
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 0.1]]); y = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    >>> c_transform(x, y, torch.zeros(2), "sqeuclidean", "torch")[0]
    tensor([0, 1])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ootrain.ot.backends import (BACKENDS, SOFT_BACKENDS, TORCH_BLOCK, check_backend,
                                 faiss_available, keops_available)
from ootrain.ot.checks import check_eps, check_psi, check_query
from ootrain.ot.costs import Cost, parse_cost
from ootrain.ot.targets import TargetLike, TargetSource, as_source

__all__ = [
    "KEOPS_MAX_TARGETS",
    "AUTO_TORCH_ENTRIES",
    "resolve_backend",
    "c_transform",
    "merge_argmin",
    "soft_c_transform",
    "soft_mass",
    "soft_cost",
    "soft_assign",
    "soft_transform",
    "soft_stats",
]


#: Largest number of targets reduced in one KeOps arg-reduction, per dtype (see module doc).
KEOPS_MAX_TARGETS: dict[torch.dtype, int] = {torch.float32: 2**23, torch.float64: 2**52}
AUTO_TORCH_ENTRIES = 2**17    # "auto" picks torch up to this many query x target pairs
_FAISS_CANDIDATES = 8         # candidates per query and target block, re-ranked exactly
_GEMM_CANDIDATES = 8          # torch sqeuclidean: scores kept per query, re-ranked exactly
_GEMM_QUERIES = 1024          # torch sqeuclidean: queries per GEMM block


# ----------------------------------------------------------------------------------
# input checks and backend choice
# ----------------------------------------------------------------------------------
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


_KEOPS_BROKEN: list[str] = []   # set when a KeOps call failed under backend="auto"


def resolve_backend(backend: str, cost: Cost, entries: int | None = None) -> str:
    """The concrete backend ``backend`` stands for with ``cost`` on a problem of ``entries``
    query x target pairs (None: large) (see the module doc)."""
    check_backend(backend, BACKENDS)
    if backend == "faiss" and cost.name == "euclidean":
        raise ValueError("the faiss backend supports sqeuclidean, l1, lp and cosine costs, "
                         "not euclidean; use backend 'keops' or 'torch'")
    if backend != "auto":
        return backend
    if entries is not None and entries <= AUTO_TORCH_ENTRIES:
        return "torch"
    if cost.name != "euclidean" and faiss_available():
        return "faiss"
    if keops_available() and not _KEOPS_BROKEN:
        return "keops"
    return "torch"


# ----------------------------------------------------------------------------------
# candidate search per target block: LongTensor [B, k] of block-local indices
# ----------------------------------------------------------------------------------
def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(0, total, size):
        yield a, min(total, a + size)


def _query_rows(n_targets: int, n_queries: int) -> int:
    """Queries per dense block so that a block holds about ``TORCH_BLOCK`` entries."""
    return max(1, min(n_queries, TORCH_BLOCK // max(1, min(n_targets, TORCH_BLOCK))))


def _argmin_direct(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> Tensor:
    """Exact argmin ``[B]`` over the block by dense sub-blocks of directly evaluated costs
    (:meth:`Cost.matrix`; first index among equal minima)."""
    B, N = x.shape[0], y.shape[0]
    bq = _query_rows(N, B)
    bt = max(1, TORCH_BLOCK // bq)
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
    return out


def _matmul_roundoff(x: Tensor) -> float:
    """Unit roundoff of ``x``'s matrix products: its dtype's, or TF32's (2^-11) / bf16's
    (2^-8) when float32 products may use them (``torch.get_float32_matmul_precision``)."""
    if x.dtype == torch.float32:
        precision = torch.get_float32_matmul_precision()
        if precision != "highest":
            return 2.0**-8 if precision == "medium" else 2.0**-11
    return torch.finfo(x.dtype).eps / 2


def _candidates_gemm(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> Tensor:
    """Exact sqeuclidean argmin ``[B]`` over the block through GEMMs, certified.

    With ``c`` the targets' mean, ``x' = x - c``, ``y' = y - c`` (the cost is translation
    invariant; centring shrinks the norms and so the rounding), the scores

        s_ij = ||y'_j||^2 - 2 x'_i . y'_j - psi_j = c(x_i, y_j) - psi_j - ||x'_i||^2

    have the c-transform's argmin in ``j``.  They are computed by ``torch.addmm`` in blocks of
    ``bq`` queries x ``bt`` targets (``bq bt <= TORCH_BLOCK`` entries), keeping each query's
    ``_GEMM_CANDIDATES`` smallest (``topk``); the candidates' exact values ``v_i`` (direct
    evaluation, :func:`_best_exact`) pick the best.  Every target left out scored at least
    the ``k``-th kept score ``t_i``; with ``E_i = 2 (d + 4) u ((||x'_i|| + max_j ||y'_j||)^2
    + max |psi|)`` bounding the rounding of a score and of a direct evaluation (``u`` the
    product's unit roundoff), ``v_i - ||x'_i||^2 < t_i - 2 E_i`` proves that no left-out
    target is as good, so the result is the direct argmin's (ties included).  The rows it
    does not prove (near-ties among more than ``k`` targets, duplicates) are searched again
    by :func:`_argmin_direct`.  Memory ``O((B + bt) d + TORCH_BLOCK)`` beyond ``x``.
    """
    B, N = x.shape[0], y.shape[0]
    k = min(_GEMM_CANDIDATES, N)
    center = y.mean(0)
    xc = x - center
    xx = (xc * xc).sum(1)
    bq = min(B, _GEMM_QUERIES, TORCH_BLOCK)
    bt = max(1, TORCH_BLOCK // bq)
    best_s = torch.full((B, k), math.inf, dtype=x.dtype, device=x.device)
    best_j = torch.zeros((B, k), dtype=torch.long, device=x.device)
    ymax = torch.zeros((), dtype=x.dtype, device=x.device)   # max ||y'_j||^2
    for t0, t1 in _chunks(N, bt):
        yc = y[t0:t1] - center
        yy = (yc * yc).sum(1)
        ymax = torch.maximum(ymax, yy.max())
        bias = yy - psi[t0:t1]
        kb = min(k, t1 - t0)
        for q0, q1 in _chunks(B, bq):
            s = torch.addmm(bias, xc[q0:q1], yc.T, alpha=-2)          # [bq, bt]
            v, j = s.topk(kb, dim=1, largest=False, sorted=False)
            v = torch.cat([best_s[q0:q1], v], 1)
            j = torch.cat([best_j[q0:q1], j + t0], 1)
            best_s[q0:q1], pos = v.topk(k, dim=1, largest=False)
            best_j[q0:q1] = j.gather(1, pos)
    value, idx = _best_exact(x, y, psi, best_j, cost)
    if k < N:
        u = _matmul_roundoff(x)
        err = 2 * (x.shape[1] + 4) * u * ((xx.sqrt() + ymax.sqrt()) ** 2 + psi.abs().max())
        bad = ~(value - xx < best_s[:, -1] - 2 * err)
        if bool(bad.any()):
            idx[bad] = _argmin_direct(x[bad], y, psi, cost)
    return idx


def _candidates_torch(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> Tensor:
    """Exact argmin over the block ``[B, 1]`` (first index among equal minima): certified
    GEMMs for sqeuclidean (:func:`_candidates_gemm`), direct dense sub-blocks otherwise."""
    if cost.name == "sqeuclidean" and y.shape[0] > 0 and x.shape[0] > 0:
        return _candidates_gemm(x, y, psi, cost)[:, None]
    return _argmin_direct(x, y, psi, cost)[:, None]


def _lazy(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> tuple[Any, Any, Any]:
    """LazyTensors of the prepared rows (:meth:`Cost.prepare`) and of ``psi``."""
    from pykeops.torch import LazyTensor
    x, y = cost.prepare(x), cost.prepare(y)
    return (LazyTensor(x.contiguous()[:, None, :]), LazyTensor(y.contiguous()[None, :, :]),
            LazyTensor(psi.contiguous()[None, :, None]))


def _candidates_keops(x: Tensor, y: Tensor, psi: Tensor, cost: Cost) -> Tensor:
    """KeOps argmin per sub-block of at most ``KEOPS_MAX_TARGETS[dtype]`` targets (so the
    float-carried index is exact); one candidate per sub-block, offsets added in int64."""
    if x.dtype not in KEOPS_MAX_TARGETS:
        raise ValueError(f"the keops backend needs float32 or float64 inputs, got {x.dtype}")
    cands = []
    for t0, t1 in _chunks(y.shape[0], KEOPS_MAX_TARGETS[x.dtype]):
        X, Y, P = _lazy(x, y[t0:t1], psi[t0:t1], cost)
        cands.append((cost.keops(X, Y) - P).argmin(dim=1).reshape(-1).long() + t0)
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
    if cost.name == "cosine":   # argmin 1 - <x^, y^> - psi = argmax <[x^, 1], [y^, psi]>
        ps = psi.double()
        base = torch.cat([cost.prepare(y.double()), ps[:, None]], 1)
        query = torch.cat([cost.prepare(x.double()), torch.ones_like(ps[:1, None].expand(
            x.shape[0], 1))], 1)
        index = faiss.IndexFlatIP(base.shape[1])
        return _faiss_top(index, base, query, x.device)
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
    return _faiss_top(index, base, query, x.device)


def _faiss_top(index: Any, base: Tensor, query: Tensor, device: torch.device) -> Tensor:
    """Top-``_FAISS_CANDIDATES`` ids of ``query`` rows in ``index`` filled with ``base``."""
    index.add(np.ascontiguousarray(base.cpu().numpy(), dtype=np.float32))
    k = min(_FAISS_CANDIDATES, base.shape[0])
    found = _faiss_search(index, np.ascontiguousarray(query.cpu().numpy(), dtype=np.float32), k)
    cand = torch.from_numpy(found).to(device)
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
    check_query(x, src.d)
    psi = check_psi(psi, src.n, x)
    name = resolve_backend(backend, cost, x.shape[0] * src.n)
    B = x.shape[0]
    best_v = torch.full((B,), math.inf, dtype=x.dtype, device=x.device)
    best_i = torch.zeros(B, dtype=torch.long, device=x.device)
    for off, yb in src.blocks(dtype=x.dtype, device=x.device):
        pb = psi[off:off + yb.shape[0]]
        try:
            cand = _CANDIDATES[name](x, yb, pb, cost)
        except ValueError:   # bad input (e.g. a zero row under cosine), not a KeOps failure
            raise
        except Exception as e:
            if not (backend == "auto" and name == "keops"):
                raise
            warnings.warn(f"KeOps failed ({type(e).__name__}: {e}); backend 'auto' falls back "
                          "to 'torch' from now on", stacklevel=2)
            _KEOPS_BROKEN.append(str(e))
            name = "torch"
            cand = _candidates_torch(x, yb, pb, cost)
        v, i = _best_exact(x, yb, pb, cand, cost)
        best_i, best_v = merge_argmin((best_i, best_v), (i + off, v))
    return best_i, best_v


def merge_argmin(first: tuple[Tensor, Tensor], then: tuple[Tensor, Tensor]
                 ) -> tuple[Tensor, Tensor]:
    """``(idx, value)`` of the c-transform over two disjoint target sets from each one's.

    ``value_i = min(first_i, then_i)``, and ``idx_i`` from ``first`` on ties (strict ``<``):
    with ``first`` over smaller target indices than ``then``, ties keep the smallest index,
    as :func:`c_transform` promises.  Merging partial results over consecutive target
    blocks (or shards) in order therefore gives the c-transform over all of them.

    Args:
        first: ``(idx [B], value [B])`` over the targets with the smaller indices.
        then: ``(idx [B], value [B])`` over the following targets.

    Returns:
        ``(idx [B], value [B])``.
    """
    better = then[1] < first[1]
    return torch.where(better, then[0], first[0]), torch.where(better, then[1], first[1])


# ----------------------------------------------------------------------------------
# the soft (entropic) c-transform
# ----------------------------------------------------------------------------------
def _resolve_soft_backend(backend: str) -> str:
    if not isinstance(backend, str) or backend not in SOFT_BACKENDS:
        raise ValueError(f"unknown soft backend {backend!r}; expected one of "
                         f"{', '.join(SOFT_BACKENDS)} (faiss has no soft c-transform)")
    if backend == "keops" and not keops_available():
        raise ValueError("backend 'keops' requested but pykeops cannot be imported")
    return "torch" if backend == "auto" else backend


def _soft_setup(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost, eps: float,
                weights: Tensor | None, block_rows: int | None
                ) -> tuple[Cost, TargetSource, Tensor, float]:
    cost = parse_cost(cost)
    src = as_source(y, block_rows)
    check_query(x, src.d)
    psi = check_psi(psi, src.n, x)
    eps = check_eps(eps)
    # fold the weights into the potential: a_ij = (psi_j + eps log w_j - c_ij) / eps
    return cost, src, psi + eps * _log_weights(weights, src.n, x), eps


def _soft_torch(x: Tensor, src: TargetSource, phi: Tensor, cost: Cost, eps: float,
                want_mass: bool, want_cost: bool, want_mass2: bool = False
                ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """(value [B], mass [N] or None, expected cost [B] or None, sum_i P_ij^2 [N] or None)
    by dense blocks.

    One pass when all targets are one in-memory block (rows of ``a`` are complete);
    otherwise a first pass for the log-normaliser and a second for the plan.
    """
    B, N = x.shape[0], src.n
    lse = torch.full((B,), -math.inf, dtype=x.dtype, device=x.device)
    mass = torch.zeros(N, dtype=x.dtype, device=x.device) if want_mass else None
    ecost = torch.zeros(B, dtype=x.dtype, device=x.device) if want_cost else None
    mass2 = torch.zeros(N, dtype=x.dtype, device=x.device) if want_mass2 else None
    want_mass = want_mass or want_mass2
    one_pass = src.in_memory and (src.block_rows is None or src.block_rows >= N) \
        and N <= TORCH_BLOCK
    bq = _query_rows(N, B)
    bt = max(1, TORCH_BLOCK // bq)

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
        if mass2 is not None:
            mass2[j0:j0 + a.shape[1]] += (p * p).sum(0)
        if ecost is not None:
            ecost[q0:q1] += (p * c).sum(1)

    for q0, q1, j0, c, a in pieces():
        lse[q0:q1] = torch.logaddexp(lse[q0:q1], torch.logsumexp(a, dim=1))
        if one_pass and (want_mass or want_cost):
            accumulate(q0, q1, j0, c, a)
    if not one_pass and (want_mass or want_cost):
        for piece in pieces():
            accumulate(*piece)
    return -eps * lse, mass, ecost, mass2


def _soft_keops(x: Tensor, src: TargetSource, phi: Tensor, cost: Cost, eps: float,
                want_mass: bool, want_cost: bool, want_mass2: bool = False
                ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """KeOps version of :func:`_soft_torch` (two passes over the blocks)."""
    from pykeops.torch import LazyTensor
    blocks = list(src.blocks(dtype=x.dtype, device=x.device)) if src.in_memory else None

    def it() -> Iterator[tuple[int, Tensor]]:
        return iter(blocks) if blocks is not None else src.blocks(dtype=x.dtype,
                                                                  device=x.device)
    lse = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for off, yb in it():
        X, Y, P = _lazy(x, yb, phi[off:off + yb.shape[0]], cost)
        a = (P - cost.keops(X, Y)) / eps
        lse = torch.logaddexp(lse, a.logsumexp(dim=1).reshape(-1))
    mass = torch.zeros(src.n, dtype=x.dtype, device=x.device) if want_mass else None
    ecost = torch.zeros_like(lse) if want_cost else None
    mass2 = torch.zeros(src.n, dtype=x.dtype, device=x.device) if want_mass2 else None
    if want_mass or want_cost or want_mass2:
        L = LazyTensor(lse.contiguous()[:, None, None])
        for off, yb in it():
            X, Y, P = _lazy(x, yb, phi[off:off + yb.shape[0]], cost)
            c = cost.keops(X, Y)
            p = ((P - c) / eps - L).exp()
            if mass is not None:
                mass[off:off + yb.shape[0]] = p.sum(dim=0).reshape(-1)
            if mass2 is not None:
                mass2[off:off + yb.shape[0]] = (p * p).sum(dim=0).reshape(-1)
            if ecost is not None:
                ecost += (p * c).sum(dim=1).reshape(-1)
    return -eps * lse, mass, ecost, mass2


def soft_transform(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
                   eps: float = 1e-2, *, weights: Tensor | None = None,
                   backend: str = "auto", block_rows: int | None = None,
                   want_mass: bool = False, want_cost: bool = False
                   ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The soft c-transform and, in the same passes, its statistics:
    ``(value [B], mass [N] or None, expected cost [B] or None)``.

    ``value`` is :func:`soft_c_transform`, ``mass`` :func:`soft_mass` (when
    ``want_mass``), the expected cost :func:`soft_cost` (when ``want_cost``); one pass over
    the targets when they are one in-memory block, else two.  Backends ``torch`` (=
    ``auto``) and ``keops``.  :func:`soft_stats` adds the per-target second moments.

    Example::

        >>> import torch
        >>> x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
        >>> v, mass, c = soft_transform(x, y, torch.zeros(7), "l1", 0.1, want_mass=True)
        >>> round(float(mass.sum()), 6), c is None
        (5.0, True)
    """
    return soft_stats(x, y, psi, cost, eps, weights=weights, backend=backend,
                      block_rows=block_rows, want_mass=want_mass, want_cost=want_cost)[:3]


def soft_stats(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
               eps: float = 1e-2, *, weights: Tensor | None = None,
               backend: str = "auto", block_rows: int | None = None,
               want_mass: bool = False, want_cost: bool = False, want_mass2: bool = False
               ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """:func:`soft_transform` plus ``mass2 [N] = sum_i P_ij^2`` (when ``want_mass2``):
    ``(value, mass, expected cost, mass2)``.

    With ``mass`` it gives the sample variance of ``P_ij`` over the queries,
    ``s_j^2 = (mass2_j - mass_j^2 / B) / (B - 1)``, the noise of the soft plan's marginal
    estimate ``mass_j / B`` (:func:`ootrain.ot.semidiscrete.chi2_estimate`).
    """
    name = _resolve_soft_backend(backend)
    cost, src, phi, eps = _soft_setup(x, y, psi, cost, eps, weights, block_rows)
    run = _soft_keops if name == "keops" else _soft_torch
    return run(x, src, phi, cost, eps, want_mass, want_cost, want_mass2)


def soft_c_transform(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
                     eps: float = 1e-2, *, weights: Tensor | None = None,
                     backend: str = "auto", block_rows: int | None = None) -> Tensor:
    """Entropic c-transform ``value_i = -eps log sum_j w_j exp((psi_j - c(x_i, y_j))/eps)``.

    ``w`` = ``weights`` normalised to sum 1 (uniform ``1/N`` by default, so the result
    lies in ``[min_j c - psi_j, min_j c - psi_j + eps log N]``).  ``eps`` is absolute (in
    cost units).  Backends ``torch`` (= ``auto``) and ``keops``.  Returns ``[B]``.
    """
    return soft_transform(x, y, psi, cost, eps, weights=weights, backend=backend,
                          block_rows=block_rows, want_mass=False, want_cost=False)[0]


def soft_mass(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
              eps: float = 1e-2, *, weights: Tensor | None = None, backend: str = "auto",
              block_rows: int | None = None) -> Tensor:
    """Expected mass per target ``sum_i P_ij`` of the soft assignment (sums to ``B``): ``[N]``."""
    return soft_transform(x, y, psi, cost, eps, weights=weights, backend=backend,
                          block_rows=block_rows, want_mass=True, want_cost=False)[1]


def soft_cost(x: Tensor, y: TargetLike, psi: Tensor, cost: str | Cost = "l1",
              eps: float = 1e-2, *, weights: Tensor | None = None, backend: str = "auto",
              block_rows: int | None = None) -> Tensor:
    """Expected cost per query ``sum_j P_ij c(x_i, y_j)`` of the soft assignment: ``[B]``."""
    return soft_transform(x, y, psi, cost, eps, weights=weights, backend=backend,
                          block_rows=block_rows, want_mass=False, want_cost=True)[2]


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
    bt = max(1, TORCH_BLOCK // bq)
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
