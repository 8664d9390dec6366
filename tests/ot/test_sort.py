"""Tests for ootrain.ot.sort: in-memory argsort, out-of-core sort/scatter, zarr row sort."""

import os

import numpy as np
import pytest
import zarr

from ootrain.ot import sort


def _assert_sorting_perm(x: np.ndarray, perm: np.ndarray) -> None:
    assert perm.dtype == np.int64 and perm.shape == x.shape
    assert np.array_equal(np.sort(perm), np.arange(x.shape[0]))
    assert np.array_equal(x[perm], np.sort(x))


def _float32_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tiny = np.finfo(np.float32).smallest_subnormal
    special = np.array([0.0, -0.0, np.inf, -np.inf, tiny, -tiny, 3 * tiny, 1.0, -1.0], np.float32)
    return {
        "random": rng.standard_normal(10_001).astype(np.float32),
        "strided": rng.standard_normal(3_000).astype(np.float32)[::3],
        "ties": rng.integers(-3, 4, 5_000).astype(np.float32),
        "special": np.concatenate([special, rng.permutation(np.repeat(special, 50))]),
        "empty": np.zeros(0, np.float32),
        "single": np.float32([2.5]),
    }


@pytest.mark.parametrize("name", list(_float32_cases()))
def test_argsort_float32(name):
    x = _float32_cases()[name]
    perm = sort.argsort(x)
    _assert_sorting_perm(x, perm)
    assert np.array_equal(sort.argsort(x), perm)  # deterministic


def test_argsort_float32_zero_sign_and_index_order():
    x = np.float32([0.0, -0.0, 1.0, 0.0, -0.0])
    assert sort.argsort(x).tolist() == [1, 4, 0, 3, 2]  # -0 before +0, ties by index


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.int32, np.uint16, np.float16])
def test_argsort_fallback_dtypes(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(4_000) * 50).astype(dtype) if dtype(0.5) else rng.integers(0, 100, 4_000, dtype)
    perm = sort.argsort(x)
    _assert_sorting_perm(x, perm)
    assert np.array_equal(perm, np.argsort(x, kind="stable"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_argsort_nan_raises(dtype):
    x = np.arange(10, dtype=dtype)
    x[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sort.argsort(x)


def test_argsort_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        sort.argsort(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        sort.argsort(np.zeros(3, np.complex64))


def test_row_fits():
    assert sort.row_fits(1_000, 4, 20_000)
    assert not sort.row_fits(1_001, 4, 20_000)
    assert sort.row_fits(1_000, 8, 24_000)


def _external_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {
        "float32": rng.standard_normal(100_000).astype(np.float32),
        "float32_ties": rng.integers(0, 5, 100_000).astype(np.float32),
        "float64": rng.standard_normal(100_000),
        "int32": rng.integers(-1000, 1000, 100_000).astype(np.int32),
    }


def _external(x: np.ndarray, max_bucket: int, buffer: int, scratch: str, block: int = 7_000):
    """Run external_argsort over ``x``; check the yielded ranks are contiguous."""
    blocks = sort.row_blocks(lambda lo, hi: x[lo:hi], x.shape[0], block)
    values, index, expect = [], [], 0
    for r0, v, i in sort.external_argsort(blocks, x.shape[0], x.dtype, max_bucket, buffer, scratch):
        assert r0 == expect and v.shape == i.shape and v.shape[0] <= max(max_bucket, block)
        expect += v.shape[0]
        values.append(v)
        index.append(i)
    assert expect == x.shape[0]
    return values, index


@pytest.mark.parametrize("name", list(_external_cases()))
def test_external_argsort_matches_argsort(name, tmp_path):
    x = _external_cases()[name]
    values, index = _external(x, 10_000, 60_000, str(tmp_path))
    assert len(values) > 5  # really out of core: many buckets
    perm = np.concatenate(index)
    assert np.array_equal(perm, sort.argsort(x))  # same permutation, ties by index
    assert np.array_equal(np.concatenate(values), np.sort(x))
    assert not os.listdir(tmp_path)  # spill files removed



def test_external_argsort_heavy_ties_stream_and_recursion(tmp_path):
    """One value holding 70% of the row exceeds any bucket: it is streamed; a bucket that
    overflows by bad luck (clustered values) is sorted out of core again."""
    rng = np.random.default_rng(11)
    x = np.where(rng.random(60_000) < 0.7, np.float32(1.0), rng.standard_normal(60_000))
    x = x.astype(np.float32)
    x[:3_000] = 1e-3 * rng.standard_normal(3_000)  # a narrow cluster
    values, index = _external(x, 500, 20_000, str(tmp_path))
    assert np.array_equal(np.concatenate(index), sort.argsort(x))


def test_external_argsort_nan_raises(tmp_path):
    x = np.random.default_rng(4).standard_normal(10_000).astype(np.float32)
    x[9_000] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _external(x, 1_000, 10_000, str(tmp_path))


def test_external_argsort_peak_memory_is_the_bucket_not_the_row(tmp_path):
    """tracemalloc peak of sorting 2e6 float32 with 50k buckets: a few MB, not the 8 MB row."""
    import tracemalloc

    x = np.random.default_rng(12).standard_normal(2_000_000).astype(np.float32)
    blocks = sort.row_blocks(lambda lo, hi: x[lo:hi], x.shape[0], 50_000)
    tracemalloc.start()
    for _ in sort.external_argsort(blocks, x.shape[0], x.dtype, 50_000, 400_000, str(tmp_path)):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4_000_000, peak  # the row alone is 8 MB, its int64 permutation 16 MB


def _zarr_pair(tmp_path, shape=(7, 5_000), dtype=np.float32):
    x = np.random.default_rng(8).standard_normal(shape).astype(dtype)
    src = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=shape, dtype=dtype, chunks=(2, 1_000))
    src[:] = x
    dst = zarr.create_array(store=str(tmp_path / "dst.zarr"), shape=shape, dtype=dtype, chunks=(3, 700))
    return x, src, dst


@pytest.mark.parametrize("budget, external", [(300_000, False), (50_000, True)])
def test_sort_rows(tmp_path, monkeypatch, budget, external):
    x, src, dst = _zarr_pair(tmp_path)
    calls = []
    original = sort.external_argsort
    monkeypatch.setattr(sort, "external_argsort", lambda *a, **kw: calls.append(a) or original(*a, **kw))
    sort.sort_rows(src, dst, budget, progress=False)
    assert np.array_equal(dst[:], np.sort(x, axis=1))
    assert len(calls) == (x.shape[0] if external else 0)


def test_sort_rows_errors(tmp_path):
    x, src, dst = _zarr_pair(tmp_path)
    bad_shape = zarr.create_array(store={}, shape=(7, 4_999), dtype=np.float32)
    bad_dtype = zarr.create_array(store={}, shape=x.shape, dtype=np.float64)
    with pytest.raises(ValueError, match="shape"):
        sort.sort_rows(src, bad_shape, 10**6, progress=False)
    with pytest.raises(ValueError, match="dtype"):
        sort.sort_rows(src, bad_dtype, 10**6, progress=False)
    with pytest.raises(ValueError, match="2-D"):
        one_d = zarr.create_array(store={}, shape=(5,), dtype=np.float32)
        sort.sort_rows(one_d, bad_shape, 10**6, progress=False)
    with pytest.raises(ValueError, match="chunk"):
        sort.sort_rows(src, dst, 5_000, progress=False)
    src[3, 17] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sort.sort_rows(src, dst, 10**6, progress=False)


def test_sort_zarr(tmp_path):
    x = np.random.default_rng(9).standard_normal((3, 2_000))
    root = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    root.create_array("proj", shape=x.shape, dtype=x.dtype, chunks=(1, 500))[:] = x
    # 2000 float64 per row needs 48 kB in memory > 30 kB budget: rows are sorted out of core
    sort.sort_zarr(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), 30_000, "proj", progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), path="proj", mode="r")
    assert out.chunks == (1, 500)
    assert np.array_equal(out[:], np.sort(x, axis=1))


@pytest.mark.parametrize("name", list(_float32_cases()))
def test_sort_with_permutation_float32(name):
    x = _float32_cases()[name]
    values, perm = sort.sort_with_permutation(x)
    assert np.array_equal(perm, sort.argsort(x))
    assert np.array_equal(values.view(np.int32), x[perm].view(np.int32))  # bit-exact, -0.0 kept


def test_sort_with_permutation_other_dtypes():
    x = np.random.default_rng(13).integers(-5, 5, 1_000)
    values, perm = sort.sort_with_permutation(x)
    assert np.array_equal(perm, np.argsort(x, kind="stable")) and np.array_equal(values, np.sort(x))
