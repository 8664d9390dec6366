"""Tests of ootrain.ot.ctransform: every backend against brute force, streaming, ties, the KeOps
index-exactness chunking, the soft (entropic) c-transform, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr

import ootrain.ot.ctransform as am
from ootrain.ot.backends import keops_available
from ootrain.ot.costs import Cost, parse_cost
from ootrain.ot.targets import TargetSource
from ootrain.ot.ctransform import (
    c_transform,
    resolve_backend,
    soft_assign,
    soft_c_transform,
    soft_cost,
    soft_mass,
)

F64 = torch.float64
COSTS = ["sqeuclidean", "euclidean", "l1", "lp:3", "lp:1.5", "cosine"]
FAISS_COSTS = ["sqeuclidean", "l1", "lp:3", "lp:1.5", "cosine"]
# KeOps compiles one module per formula and dtype (~5 s each on a cold cache): the fast
# suite covers two costs, the slow suite the rest.
KEOPS_FAST = ["sqeuclidean", "l1", "cosine"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def problem(seed: int = 0, b: int = 300, n: int = 200, d: int = 3, dtype=F64):
    g = gen(seed)
    x = torch.randn(b, d, generator=g, dtype=F64)
    y = torch.randn(n, d, generator=g, dtype=F64)
    psi = torch.rand(n, generator=g, dtype=F64)
    return x.to(dtype), y.to(dtype), psi.to(dtype)


def brute(x, y, psi, cost):
    """Reference: dense cost matrix minus psi, first index of the minimum."""
    v, i = (parse_cost(cost).matrix(x, y) - psi).min(dim=1)
    return i, v


def backend_params():
    out = []
    for c in COSTS:
        out.append(pytest.param(c, "torch", id=f"{c}-torch"))
        if c in FAISS_COSTS:
            out.append(pytest.param(c, "faiss", id=f"{c}-faiss"))
        marks = () if c in KEOPS_FAST else (pytest.mark.slow,)
        out.append(pytest.param(c, "keops", id=f"{c}-keops", marks=marks))
    return out


@pytest.fixture(autouse=True)
def _keops_cache(monkeypatch, tmp_path_factory):
    import os
    if "KEOPS_CACHE_FOLDER" not in os.environ:
        monkeypatch.setenv("KEOPS_CACHE_FOLDER", str(tmp_path_factory.getbasetemp() / "keops"))


# ----------------------------------------------------------------------------------
# costs
# ----------------------------------------------------------------------------------
def test_cost_formulas():
    x, y, _ = problem(1, b=7, n=5)
    diff = x[:, None, :] - y[None, :, :]
    ref = {
        "sqeuclidean": (diff**2).sum(-1),
        "euclidean": (diff**2).sum(-1).sqrt(),
        "l1": diff.abs().sum(-1),
        "lp:3": (diff.abs() ** 3).sum(-1),
        "lp:1.5": (diff.abs() ** 1.5).sum(-1),
    }
    for name, want in ref.items():
        cost = parse_cost(name)
        torch.testing.assert_close(cost.matrix(x, y), want, rtol=1e-12, atol=1e-12)
        # pairwise uses the same kernel: bit-identical to the matrix entries
        j = torch.arange(5).repeat(2)[:7]
        assert torch.equal(cost.pairwise(x, y[j]), cost.matrix(x, y)[torch.arange(7), j])


def test_parse_cost_forms():
    assert parse_cost("sqeuclidean") == Cost("sqeuclidean")
    assert parse_cost("L1") == Cost("l1") and Cost("l1").p == 1.0
    assert parse_cost("lp:3") == Cost("lp", 3) == parse_cost("lp", p=3)
    assert str(Cost("lp", 2.5)) == "lp:2.5"
    c = Cost("euclidean")
    assert parse_cost(c) is c


@pytest.mark.parametrize("bad, match", [
    (lambda: parse_cost("cosinus"), "unknown cost"),
    (lambda: Cost("cosine", 2), "takes no exponent"),
    (lambda: parse_cost("lp"), "p >= 1"),
    (lambda: parse_cost("lp:0.5"), "p >= 1"),
    (lambda: parse_cost("lp:abc"), "exponent"),
    (lambda: Cost("l1", 2), "takes no exponent"),
    (lambda: parse_cost(3), "str or Cost"),
])
def test_bad_costs(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


# ----------------------------------------------------------------------------------
# hard c-transform: backends vs brute force
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cost, backend", backend_params())
def test_backend_matches_brute_force(cost, backend):
    x, y, psi = problem(2)
    ref_i, ref_v = brute(x, y, psi, cost)
    idx, value = c_transform(x, y, psi, cost, backend)
    assert idx.dtype == torch.long and value.dtype == F64
    assert torch.equal(idx, ref_i)
    if cost == "cosine":   # pairwise (a dot product) vs matrix (a GEMM): equal to rounding
        torch.testing.assert_close(value, ref_v, rtol=0, atol=1e-14)
    else:
        assert torch.equal(value, ref_v)   # values are recomputed with the reference kernel


@pytest.mark.parametrize("backend", ["faiss", "keops"])
def test_float32_values_within_tolerance(backend):
    """float32 GEMM/KeOps paths: the returned value is the exact (float32) cost of the
    returned index and within a tight tolerance of the true minimum."""
    x, y, psi = problem(3, b=500, n=400, d=3, dtype=torch.float32)
    ref_i, ref_v = brute(x, y, psi, "sqeuclidean")
    idx, value = c_transform(x, y, psi, "sqeuclidean", backend)
    assert value.dtype == torch.float32
    exact = parse_cost("sqeuclidean").pairwise(x, y[idx]) - psi[idx]
    assert torch.equal(value, exact)
    torch.testing.assert_close(value, ref_v, rtol=1e-5, atol=1e-5)
    assert (idx == ref_i).float().mean() > 0.99


def test_auto_rule():
    assert resolve_backend("auto", Cost("sqeuclidean")) == "faiss"
    assert resolve_backend("auto", Cost("l1")) == "faiss"
    # euclidean has no faiss path: KeOps when it imports (and has not failed to compile), else torch
    assert resolve_backend("auto", Cost("euclidean")) == \
        ("keops" if keops_available() and not am._KEOPS_BROKEN else "torch")
    assert resolve_backend("auto", Cost("sqeuclidean"), entries=256 * 256) == "torch"
    assert resolve_backend("auto", Cost("sqeuclidean"), entries=1024 * 1024) == "faiss"
    x, y, psi = problem(4)
    for cost in COSTS:
        if resolve_backend("auto", parse_cost(cost)) == "keops" and cost not in KEOPS_FAST:
            continue   # avoid a cold KeOps compile in the fast suite
        assert torch.equal(c_transform(x, y, psi, cost)[0], brute(x, y, psi, cost)[0])


def test_torch_chunking(monkeypatch):
    """Dense blocks far smaller than B x N give the same result."""
    monkeypatch.setattr(am, "TORCH_BLOCK", 64)
    x, y, psi = problem(5, b=130, n=170)
    for cost in ["sqeuclidean", "l1"]:
        idx, value = c_transform(x, y, psi, cost, "torch")
        ref_i, ref_v = brute(x, y, psi, cost)
        assert torch.equal(idx, ref_i) and torch.equal(value, ref_v)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_keops_target_subblocks_add_offsets(monkeypatch, dtype):
    """KeOps carries the argmin index in the float accumulator, so float32 indices are
    exact only below 2^24 (pykeops refuses > 1.6e7 targets in float32).  The backend
    reduces sub-blocks of at most KEOPS_MAX_TARGETS[dtype] targets and adds the offset in
    int64; a 2^24-target test is too big for the fast suite, so the same logic is checked
    with sub-blocks of 7 targets."""
    assert am.KEOPS_MAX_TARGETS[torch.float32] < 1.6e7 <= 2**24
    monkeypatch.setitem(am.KEOPS_MAX_TARGETS, dtype, 7)
    x, y, psi = problem(6, b=50, n=60, dtype=dtype)
    y = torch.cat([y, y])           # exact ties across sub-blocks: smallest index wins
    psi = torch.cat([psi, psi])
    idx, value = c_transform(x, y, psi, "sqeuclidean", "keops")
    ref_i, ref_v = brute(x, y, psi, "sqeuclidean")
    assert torch.equal(idx, ref_i) and bool((idx < 60).all())
    torch.testing.assert_close(value, ref_v)


@pytest.mark.slow
def test_keops_float32_indices_beyond_2_pow_24():
    """The real scale: 2^24 + 8 float32 targets (3 sub-blocks), minima at indices that
    float32 cannot represent (2^24 + 1) or that sit just past a sub-block boundary."""
    n = 2**24 + 8
    y = torch.full((n, 1), 10.0)
    x = torch.tensor([[0.0], [5.0]])
    y[2**24 + 1] = 0.0
    y[2**23 + 2] = 5.0
    idx, value = c_transform(x, y, torch.zeros(n), "sqeuclidean", "keops")
    assert idx.tolist() == [2**24 + 1, 2**23 + 2] and value.tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------------
# ties
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "faiss", "keops"])
def test_ties_smallest_index(backend, tmp_path):
    x, y, psi = problem(7, b=100, n=40)
    y3, psi3 = torch.cat([y, y, y]), torch.cat([psi, psi, psi])   # every minimum is tied 3x
    idx, _ = c_transform(x, y3, psi3, "sqeuclidean", backend)
    assert torch.equal(idx, brute(x, y, psi, "sqeuclidean")[0])
    # symmetric exact tie: x = 0 between y = -1 and y = +1 (l1 and sqeuclidean)
    # (d = 3 and two queries, so KeOps reuses the formulas compiled above)
    x0 = torch.zeros(2, 3, dtype=F64)
    yy = torch.tensor([[3.0, 0, 0], [1.0, 0, 0], [-1.0, 0, 0], [1.0, 0, 0]], dtype=F64)
    for cost in ["sqeuclidean", "l1"]:
        idx0 = c_transform(x0, yy, torch.zeros(4, dtype=F64), cost, backend)[0]
        assert idx0.tolist() == [1, 1]
    # streamed blocks that split the copies
    if backend != "keops":
        arr = zarr.create_array(tmp_path / "y.zarr", shape=y3.shape, chunks=(25, 3),
                                dtype="float64")
        arr[:] = y3.numpy()
        idx_s, _ = c_transform(x, TargetSource(arr, block_rows=25), psi3, "sqeuclidean", backend)
        assert torch.equal(idx_s, idx)


# ----------------------------------------------------------------------------------
# target sources and streaming
# ----------------------------------------------------------------------------------
def test_target_source_blocks_and_take(tmp_path):
    _, y, _ = problem(8, n=103)
    arr = zarr.create_array(tmp_path / "y.zarr", shape=y.shape, chunks=(10, 3), dtype="float64")
    arr[:] = y.numpy()
    for data in [y, y.numpy(), arr, str(tmp_path / "y.zarr")]:
        src = TargetSource(data, block_rows=20)
        assert (src.n, src.d, src.dtype) == (103, 3, F64)
        blocks = list(src.blocks())
        assert [o for o, _ in blocks] == list(range(0, 103, 20))
        assert torch.equal(torch.cat([b for _, b in blocks]), y)
        idx = torch.tensor([[5, 99], [0, 5]])
        assert torch.equal(src.take(idx), y[idx])
        sub = src.subset(np.array([1, 4, 50, 102]))
        assert torch.equal(sub.tensor(), y[[1, 4, 50, 102]])
        assert torch.equal(sub.take(torch.tensor([3, 0])), y[[102, 1]])
    # default zarr blocks are whole chunks
    # (~64 MiB: 2**26 // (3 * 8 bytes) = 2796202 rows, down to whole 10-row chunks)
    assert TargetSource(arr).default_block_rows() == 2796200


@pytest.mark.parametrize("cost, backend", [("sqeuclidean", "torch"), ("sqeuclidean", "faiss"),
                                           ("l1", "faiss"), ("euclidean", "torch")])
def test_streamed_zarr_equals_in_memory(cost, backend, tmp_path):
    x, y, psi = problem(9, n=230)
    arr = zarr.create_array(tmp_path / "y.zarr", shape=y.shape, chunks=(16, 3), dtype="float64")
    arr[:] = y.numpy()
    mem_i, mem_v = c_transform(x, y, psi, cost, backend)
    for block_rows in [16, 48, 1000]:
        i, v = c_transform(x, arr, psi, cost, backend, block_rows=block_rows)
        assert torch.equal(i, mem_i) and torch.equal(v, mem_v)
    i, v = c_transform(x, str(tmp_path / "y.zarr"), psi, cost, backend, block_rows=32)
    assert torch.equal(i, mem_i)


# ----------------------------------------------------------------------------------
# soft c-transform
# ----------------------------------------------------------------------------------
def soft_reference(x, y, psi, cost, eps, w=None):
    n = y.shape[0]
    logw = torch.full((n,), -math.log(n), dtype=F64) if w is None else (w / w.sum()).log()
    a = (psi - parse_cost(cost).matrix(x, y)) / eps + logw
    lse = torch.logsumexp(a, dim=1)
    p = torch.exp(a - lse[:, None])
    return -eps * lse, p


@pytest.mark.parametrize("cost", ["l1", "sqeuclidean"])
def test_soft_matches_dense_reference(cost, tmp_path):
    x, y, psi = problem(10, b=120, n=90)
    eps = 0.3
    w = torch.rand(90, generator=gen(1), dtype=F64) + 0.5
    for weights in [None, w]:
        ref_v, p = soft_reference(x, y, psi, cost, eps, weights)
        torch.testing.assert_close(soft_c_transform(x, y, psi, cost, eps, weights=weights), ref_v)
        torch.testing.assert_close(soft_mass(x, y, psi, cost, eps, weights=weights), p.sum(0))
        torch.testing.assert_close(soft_cost(x, y, psi, cost, eps, weights=weights),
                                   (p * parse_cost(cost).matrix(x, y)).sum(1))
    # streamed (two passes over zarr blocks) equals in memory (one pass)
    arr = zarr.create_array(tmp_path / "y.zarr", shape=y.shape, chunks=(20, 3), dtype="float64")
    arr[:] = y.numpy()
    src = TargetSource(arr, block_rows=40)
    ref_v, _ = soft_reference(x, y, psi, cost, eps)
    torch.testing.assert_close(soft_c_transform(x, src, psi, cost, eps), ref_v)
    torch.testing.assert_close(soft_mass(x, src, psi, cost, eps), soft_mass(x, y, psi, cost, eps))


def test_soft_tends_to_hard():
    x, y, psi = problem(11)
    hard = c_transform(x, y, psi, "l1", "torch")[1]
    for eps in [1e-1, 1e-2, 1e-3]:
        soft = soft_c_transform(x, y, psi, "l1", eps)
        assert bool((soft >= hard - 1e-12).all())
        assert bool((soft <= hard + eps * math.log(200) + 1e-12).all())


def test_soft_assign_samples_the_plan():
    x, y, psi = problem(12, b=3, n=6)
    eps = 0.5
    _, p = soft_reference(x, y, psi, "l1", eps)
    reps = 20000
    xr = x.repeat_interleave(reps, 0)
    idx = soft_assign(xr, y, psi, "l1", eps, generator=gen(0)).reshape(3, reps)
    freq = torch.stack([torch.bincount(r, minlength=6) for r in idx]).double() / reps
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / reps)
    # reproducible with the same generator
    assert torch.equal(soft_assign(x, y, psi, "l1", eps, generator=gen(3)),
                       soft_assign(x, y, psi, "l1", eps, generator=gen(3)))


@pytest.mark.slow
def test_soft_keops_matches_torch():
    x, y, psi = problem(13)
    for fn in [soft_c_transform, soft_mass, soft_cost]:
        torch.testing.assert_close(fn(x, y, psi, "l1", 0.2, backend="keops"),
                                   fn(x, y, psi, "l1", 0.2, backend="torch"))


# ----------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------
def test_bad_input_errors(tmp_path):
    x, y, psi = problem(14, b=10, n=8)
    nan_y = y.clone()
    nan_y[3, 1] = float("nan")
    nan_x = x.clone()
    nan_x[0, 0] = float("inf")
    cases = [
        (lambda: c_transform(x[:, :2], y, psi), r"x must have shape \[B, d\] with d = 3"),
        (lambda: c_transform(x, y, psi[:5]), r"psi must have shape \[N\] = \[8\]"),
        (lambda: c_transform(x, nan_y, psi), "targets contain non-finite"),
        (lambda: c_transform(nan_x, y, psi), "x contains non-finite"),
        (lambda: c_transform(x, y, psi * float("nan")), "psi contains non-finite"),
        (lambda: c_transform(x, y, psi, "cosinus"), "unknown cost"),
        (lambda: c_transform(x * 0, y, psi, "cosine"), "non-zero rows"),
        (lambda: c_transform(x, y * 0, psi, "cosine", "torch"), "non-zero rows"),
        (lambda: c_transform(x, y, psi, backend="cuda"), "unknown backend"),
        (lambda: c_transform(x, y, psi, "euclidean", "faiss"), "not euclidean"),
        (lambda: c_transform(x.long(), y, psi), "floating dtype"),
        (lambda: c_transform(x, y[None], psi), "2-D"),
        (lambda: c_transform(x, y[:0], psi[:0]), "non-empty"),
        (lambda: c_transform(x, [[1.0]], psi), "targets must be"),
        (lambda: soft_c_transform(x, y, psi, "l1", 0.0), "eps must be"),
        (lambda: soft_mass(x, y, psi, "l1", 0.1, backend="faiss"), "faiss has no soft"),
        (lambda: soft_c_transform(x, y, psi, "l1", 0.1, weights=-torch.ones(8)), "weights"),
        (lambda: TargetSource(y, block_rows=0), "block_rows"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
    arr = zarr.create_array(tmp_path / "y.zarr", shape=y.shape, chunks=(4, 3), dtype="float64")
    arr[:] = nan_y.numpy()
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or Inf\) in rows \[0, 4\)"):
        c_transform(x, TargetSource(arr, block_rows=4), psi, "sqeuclidean", "torch")


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("kind", ["gaussian", "grid"])
def test_torch_sqeuclidean_gemm_equals_direct_argmin(dtype, kind):
    """The GEMM candidate search of the torch backend returns the argmin of the directly
    evaluated costs, first index among ties: Gaussian points (d = 64, several target
    blocks) and an integer grid with duplicated targets, where exact ties abound and the
    rows its rounding bound cannot certify are searched directly."""
    g = torch.Generator().manual_seed(3)
    if kind == "gaussian":
        x, y = torch.randn(300, 64, generator=g), torch.randn(20000, 64, generator=g)
        psi = 0.1 * torch.randn(20000, generator=g)
    else:
        x = torch.randint(0, 3, (300, 3), generator=g).float()
        y = torch.randint(0, 3, (2000, 3), generator=g).float()
        y[100:200] = y[0]
        psi = torch.zeros(2000)
    x, y, psi = x.to(dtype), y.to(dtype), psi.to(dtype)
    cost = parse_cost("sqeuclidean")
    ref = np.argmin((cost.matrix(x, y) - psi).numpy(), axis=1)   # first index among ties
    idx, val = c_transform(x, y, psi, cost, "torch")
    assert np.array_equal(idx.numpy(), ref)
    assert torch.equal(val, cost.pairwise(x, y[idx]) - psi[idx])
