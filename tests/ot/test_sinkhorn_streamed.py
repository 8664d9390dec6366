"""Tests of ootrain.ot.sinkhorn.sinkhorn_streamed (and energy_distance_streamed): equal to the
in-memory Sinkhorn and its envelope gradients, read from zarr v3 / memmap, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from ootrain.ot.sinkhorn import (
    cost_gradients,
    energy_distance,
    energy_distance_gradients,
    energy_distance_streamed,
    sinkhorn,
    sinkhorn_streamed,
)

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def points(seed: int = 0, n: int = 83, m: int = 57, d: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(m, d, generator=g, dtype=F64) * 0.7 + 0.5
    return x, y


def to_zarr(tmp_path, name: str, t: torch.Tensor, chunk: int = 16):
    arr = zarr.create_array(store=str(tmp_path / f"{name}.zarr"), shape=tuple(t.shape),
                            chunks=(chunk, t.shape[1]), dtype="float64")
    arr[:] = t.numpy()
    return arr


@pytest.mark.parametrize("cost, eps, source", [("sqeuclidean", 0.5, "numpy"),
                                              ("cosine", 0.2, "zarr")])
def test_equals_in_memory_sinkhorn(tmp_path, cost, eps, source):
    """Potentials, <P, C>, iterations and both sides' gradients equal the in-memory path
    (float64), blocks of 10 rows (dividing neither n = 83 nor m = 57), read from zarr v3 or
    numpy."""
    x, y = points()
    ref = sinkhorn(x, y, eps, cost, tol=1e-10)
    gx, gy = cost_gradients(x, y, ref)
    if source == "zarr":
        xs, ys = to_zarr(tmp_path, "x", x), to_zarr(tmp_path, "y", y)
    else:
        xs, ys = x.numpy(), y.numpy()
    res = sinkhorn_streamed(xs, ys, eps, cost, tol=1e-10, block_rows=10, dtype=F64)
    assert ref.converged and res.converged and res.iterations == ref.iterations
    torch.testing.assert_close(res.f, ref.f, rtol=0, atol=1e-11)
    torch.testing.assert_close(res.g, ref.g, rtol=0, atol=1e-11)
    assert res.cost == pytest.approx(float(ref.cost), rel=1e-12, abs=1e-13)
    assert res.dual == pytest.approx(float(ref.dual), rel=1e-12, abs=1e-13)
    assert res.marginal_error <= 1e-10
    torch.testing.assert_close(res.gradient("x"), gx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.gradient("y"), gy, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.gradient("x", 7, 41), gx[7:41], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.gradient("y", 50, 57), gy[50:57], rtol=1e-10, atol=1e-12)
    assert res.gradient("x", 3, 3).shape == (0, 3)


def test_numpy_memmap_tensor_and_warm_start(tmp_path):
    x, y = points(1, n=40, m=35)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64,
                                   shape=tuple(x.shape))
    mm[:] = x.numpy()
    mm.flush()
    xr = np.load(tmp_path / "x.npy", mmap_mode="r")
    a = sinkhorn_streamed(xr, y, 0.05, "cosine", tol=1e-9, block_rows=7)
    b = sinkhorn_streamed(x, y.numpy(), 0.05, "cosine", tol=1e-9, block_rows=40)
    torch.testing.assert_close(a.f, b.f, rtol=0, atol=1e-12)
    warm = sinkhorn_streamed(x, y, 0.05, "cosine", tol=1e-9, block_rows=7, init=a)
    assert warm.converged and warm.iterations <= 2
    f32 = sinkhorn_streamed(x.float(), y.float(), 0.05, "cosine", tol=1e-4, block_rows=9)
    assert f32.f.dtype == torch.float32 and f32.converged
    assert f32.cost == pytest.approx(a.cost, rel=1e-4)


def test_energy_distance_streamed():
    """Value and the four cotangents equal the in-memory energy distance's."""
    g = torch.Generator().manual_seed(2)
    pops = [torch.randn(n, 3, generator=g, dtype=F64) + s
            for n, s in ((30, 0.0), (26, 0.0), (28, 0.4), (33, 0.4))]
    ref = energy_distance(*pops, eps=0.1, cost="cosine", tol=1e-10)
    grads = energy_distance_gradients(*pops, ref)
    arrays = [t.numpy() for t in pops]
    res = energy_distance_streamed(*arrays, eps=0.1, cost="cosine", tol=1e-10, block_rows=8)
    assert res.converged
    assert res.value == pytest.approx(float(ref.value), rel=1e-10, abs=1e-12)
    for name, t, gref in zip(("x", "x2", "y", "y2"), pops, grads):
        torch.testing.assert_close(res.cotangents[name](0, t.shape[0]), gref, rtol=1e-9,
                                   atol=1e-12)
    torch.testing.assert_close(res.cotangent("y", 5, 9), grads[2][5:9], rtol=1e-9, atol=1e-12)


def test_bad_input(tmp_path):
    x, y = points(3, n=20, m=15)
    nan_x = x.clone()
    nan_x[13, 1] = float("nan")
    arr = to_zarr(tmp_path, "nan", nan_x, chunk=5)
    zero_y = y.clone()
    zero_y[9] = 0
    ok = sinkhorn_streamed(x, y, 0.5, "sqeuclidean", tol=1e-6, block_rows=4)
    cases = [
        (lambda: sinkhorn_streamed(arr, y, 0.5, block_rows=4), r"x contains non-finite .* rows \[12, 16\)"),
        (lambda: sinkhorn_streamed(x, y[:, :2], 0.5), "same dimension d"),
        (lambda: sinkhorn_streamed(x, y, 0.5, block_rows=0), "block_rows must be an integer >= 1"),
        (lambda: sinkhorn_streamed(x, y, 0.5, block_rows=2.5), "block_rows"),
        (lambda: sinkhorn_streamed(x, zero_y, 0.5, "cosine", block_rows=4), r"y has a zero row \(index 9\)"),
        (lambda: sinkhorn_streamed(x[0], y, 0.5), "2-D"),
        (lambda: sinkhorn_streamed(x.long(), y, 0.5), "floating dtype"),
        (lambda: sinkhorn_streamed([[1.0]], y, 0.5), "must be a torch.Tensor"),
        (lambda: sinkhorn_streamed(x, y, 0.0), "eps must be"),
        (lambda: sinkhorn_streamed(x, y, 0.5, "l7"), "unknown cost"),
        (lambda: sinkhorn_streamed(x, y, 0.5, dtype=torch.float16), "dtype must be"),
        (lambda: sinkhorn_streamed(x, y, 0.5, init=(ok.f[:3], ok.g)), "init potentials"),
        (lambda: ok.gradient("z", 0, 1), "side must be"),
        (lambda: ok.gradient("x", 5, 30), r"0 <= lo <= hi <= 20"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
