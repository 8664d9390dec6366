"""Tests for ootrain.sort: in-memory argsort, Dask out-of-core sort/scatter, zarr row sort."""

import glob
import tempfile

import dask.array as da
import numpy as np
import pytest
import zarr

from ootrain import sort


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


def _dask_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {
        "float32": rng.standard_normal(100_000).astype(np.float32),
        "float32_ties": rng.integers(0, 5, 100_000).astype(np.float32),
        "float64": rng.standard_normal(100_000),
        "int32": rng.integers(-1000, 1000, 100_000).astype(np.int32),
    }


@pytest.mark.parametrize("name", list(_dask_cases()))
def test_argsort_dask_matches_numpy_and_scatter_round_trips(name, tmp_path):
    x = _dask_cases()[name]
    values, perm = sort.argsort_dask(da.from_array(x, chunks=30_000), 20_000, str(tmp_path))
    assert values.chunks == perm.chunks == ((20_000,) * 5,)
    assert values.dtype == x.dtype and perm.dtype == np.int64
    values, perm = da.compute(values, perm)
    assert np.array_equal(values, np.sort(x))
    _assert_sorting_perm(x, perm)
    assert glob.glob(str(tmp_path / "*.partd"))  # the shuffle went through partd in tmpdir

    back = sort.scatter_dask(da.from_array(perm, chunks=25_000), da.from_array(values, chunks=25_000), 30_000)
    assert back.chunks == ((30_000, 30_000, 30_000, 10_000),)
    assert np.array_equal(back.compute(), x)


def test_argsort_dask_deterministic_ties():
    x = np.random.default_rng(3).integers(0, 3, 30_000).astype(np.float64)
    runs = [da.compute(*sort.argsort_dask(da.from_array(x, chunks=4_000), 5_000))[1] for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


def test_argsort_dask_nan_raises():
    x = np.random.default_rng(4).standard_normal(10_000).astype(np.float32)
    x[9_000] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sort.argsort_dask(da.from_array(x, chunks=3_000), 2_000)


def test_argsort_dask_cleans_private_spill_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x = da.from_array(np.random.default_rng(5).standard_normal(20_000).astype(np.float32), chunks=5_000)
    values, perm = sort.argsort_dask(x, 5_000)
    da.compute(values, perm)
    assert glob.glob(str(tmp_path / "ootrain-sort-*" / "*.partd"))
    del values, perm
    assert not glob.glob(str(tmp_path / "ootrain-sort-*"))


def test_scatter_dask_2d_and_bad_perm():
    rng = np.random.default_rng(6)
    b = 50_001
    perm = rng.permutation(b)
    values = rng.standard_normal((b, 3)).astype(np.float32)
    perm_d = da.from_array(perm, chunks=12_000)
    out = sort.scatter_dask(perm_d, da.from_array(values, chunks=(9_000, 1)), 10_000)
    assert out.chunks == ((10_000,) * 5 + (1,), (3,))
    expected = np.empty_like(values)
    expected[perm] = values
    assert np.array_equal(out.compute(), expected)

    perm[0] = perm[1]
    bad = sort.scatter_dask(da.from_array(perm, chunks=12_000), da.from_array(values[:, 0]), 10_000)
    with pytest.raises(ValueError, match="permutation"):
        bad.compute()


def test_argsort_dask_with_distributed_client():
    distributed = pytest.importorskip("distributed")
    x = np.random.default_rng(7).standard_normal(40_000).astype(np.float32)
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            values, perm = da.compute(*sort.argsort_dask(da.from_array(x, chunks=10_000), 10_000))
    assert np.array_equal(values, np.sort(x))
    _assert_sorting_perm(x, perm)


def _zarr_pair(tmp_path, shape=(7, 5_000), dtype=np.float32):
    x = np.random.default_rng(8).standard_normal(shape).astype(dtype)
    src = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=shape, dtype=dtype, chunks=(2, 1_000))
    src[:] = x
    dst = zarr.create_array(store=str(tmp_path / "dst.zarr"), shape=shape, dtype=dtype, chunks=(3, 700))
    return x, src, dst


@pytest.mark.parametrize("budget, via_dask", [(300_000, False), (50_000, True)])
def test_sort_rows(tmp_path, monkeypatch, budget, via_dask):
    x, src, dst = _zarr_pair(tmp_path)
    calls = []
    argsort_dask = sort.argsort_dask
    monkeypatch.setattr(sort, "argsort_dask", lambda *a: calls.append(a) or argsort_dask(*a))
    sort.sort_rows(src, dst, budget, progress=False)
    assert np.array_equal(dst[:], np.sort(x, axis=1))
    assert len(calls) == (x.shape[0] if via_dask else 0)


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
    # 2000 float64 per row needs 48 kB in memory > 30 kB budget: rows go through Dask
    sort.sort_zarr(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), 30_000, "proj", progress=False)
    out = zarr.open_array(str(tmp_path / "out.zarr"), path="proj", mode="r")
    assert out.chunks == (1, 500)
    assert np.array_equal(out[:], np.sort(x, axis=1))
