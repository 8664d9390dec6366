"""The sample sort of the engine (buckets in the store, Dask tasks): the same order as
``ootrain.ot.sort.argsort`` (ties by index), resumable at task granularity, nothing in
``$TMPDIR``, buckets bounded by the plan."""

import numpy as np
import pytest

from ootrain.engine.compute import Compute
from ootrain.engine.samplesort import SampleSort
from ootrain.ot.sort import argsort
from ootrain.store import Store


def _rows(kind: str, dtype, k: int = 3, n: int = 2003) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "normal":
        return rng.normal(size=(k, n)).astype(dtype)
    if kind == "ties":   # few distinct values, both signs of zero
        x = rng.integers(-2, 3, size=(k, n)).astype(dtype)
        x[x == 0] = np.where(rng.random(int((x == 0).sum())) < 0.5, -0.0, 0.0)
        return x
    return np.full((k, n), 1.5, dtype)   # one value everywhere


def _sort(tmp_path, x: np.ndarray, budget: int, rows: int = 250, compute=None):
    store = Store(str(tmp_path / "s.zarr"), {"test": 1})
    k, n = x.shape
    ss = SampleSort(store, "sort", k=k, n=n, rows=rows, dtype=x.dtype, budget=budget,
                    min_bucket=16)
    compute = compute or Compute(workers=2)
    ss.choose_splitters(lambda idx: x[:, idx], np.random.default_rng(0))
    ss.partition(compute, lambda lo, hi: x[:, lo:hi])
    return store, ss, compute


class _Ranks:
    """A rank map giving each sample its rank (stats: the count and Σ rank)."""

    def __call__(self, j, r0, xs):
        r = np.arange(r0, r0 + xs.shape[0], dtype=np.float64)
        return r, np.array([xs.shape[0], r.sum()])


class _Collect:
    def __init__(self, path):
        self.path = path

    def __call__(self, lo, hi, out):
        np.save(f"{self.path}/{lo}.npy", out)


def _collected(path, n, rows):
    return np.concatenate([np.load(f"{path}/{lo}.npy") for lo in range(0, n, rows)], axis=1)


@pytest.mark.parametrize("kind", ["normal", "ties", "constant"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranks_equal_argsort_and_sorted_rows_equal_np_sort(tmp_path, kind, dtype):
    x = _rows(kind, dtype)
    store, ss, compute = _sort(tmp_path, x, budget=2**15)
    assert ss.n_buckets > 4
    ss.sort(compute)
    for j in range(x.shape[0]):
        np.testing.assert_array_equal(ss.sorted_row(j, 0, x.shape[1]), np.sort(x[j]))
        np.testing.assert_array_equal(ss.sorted_row(j, 17, 1400), np.sort(x[j])[17:1400])
    np.testing.assert_allclose(ss.stats(), (x.astype(np.float64) ** 2).sum(axis=1))
    out = tmp_path / "out"
    out.mkdir()
    ss.map_ranks(compute, _Ranks(), 2, _Collect(out), np.float64)
    ranks = _collected(out, x.shape[1], 250)
    for j in range(x.shape[0]):
        expect = np.empty(x.shape[1])
        # ±0 compare equal here (ties by index), as they do in a float comparison
        expect[argsort(x[j] + dtype(0))] = np.arange(x.shape[1])
        np.testing.assert_array_equal(ranks[j], expect)
    np.testing.assert_array_equal(ss.mapped_stats(2)[:, 0], x.shape[1])


def test_a_tiny_budget_still_gets_buckets_of_min_bucket_values(tmp_path):
    store = Store(str(tmp_path / "s.zarr"), {"test": 1})
    ss = SampleSort(store, "sort", k=4, n=10**6, rows=4096, dtype=np.float32, budget=4096)
    assert ss.n_buckets == 10**6 // 4096


def test_buckets_stay_near_their_planned_size(tmp_path):
    x = _rows("ties", np.float32, k=2, n=20_000)
    store, ss, _ = _sort(tmp_path, x, budget=2**16, rows=1000)
    per = ss._counts().sum(axis=0)          # [B, k]: a bucket task holds per[p].sum()
    assert ss.n_buckets >= 16
    assert per.max() <= 1.5 * x.shape[1] / ss.n_buckets


def test_the_buckets_live_in_the_store_not_in_tmpdir(tmp_path, monkeypatch):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    x = _rows("normal", np.float32)
    store, ss, compute = _sort(tmp_path, x, budget=2**15)
    ss.sort(compute)
    assert list(tmp.iterdir()) == []
    assert {"records", "counts", "sorted", "splitters"} <= set(store.group["sort"].array_keys())
    ss.delete()
    assert list(store.group["sort"].array_keys()) == []


def test_an_interrupted_sort_resumes_without_redoing_finished_tasks(tmp_path):
    x = _rows("normal", np.float64, n=3000)
    calls = []

    class Produce:
        def __call__(self, lo, hi):
            calls.append(lo)
            if lo == 2000 and calls.count(2000) == 1:
                raise OSError("killed")
            return x[:, lo:hi]

    store = Store(str(tmp_path / "s.zarr"), {"test": 1})
    ss2 = SampleSort(store, "again", k=3, n=3000, rows=250, dtype=np.float64, budget=2**15,
                     min_bucket=16)
    ss2.choose_splitters(lambda idx: x[:, idx], np.random.default_rng(0))
    with pytest.raises(OSError, match="killed"):
        ss2.partition(Compute(workers=1), Produce())
    done_before = len(calls) - 1
    ss2.partition(Compute(workers=1), Produce())
    assert len(calls) - done_before - 1 == 12 - done_before   # only the chunks not stored
    out = tmp_path / "out"
    out.mkdir()

    class FailOnce(_Collect):
        failed = []

        def __call__(self, lo, hi, t):
            if lo == 500 and not self.failed:
                self.failed.append(lo)
                raise OSError("killed")
            super().__call__(lo, hi, t)

    with pytest.raises(OSError, match="killed"):
        ss2.map_ranks(Compute(workers=1), _Ranks(), 2, FailOnce(out), np.float64)
    gathered = np.array([(out / f"{lo}.npy").exists() for lo in range(0, 3000, 250)])
    assert 0 < gathered.sum() < 12
    ss2.map_ranks(Compute(workers=1), _Ranks(), 2, _Collect(out), np.float64,
                  gathered=gathered)
    ranks = _collected(out, 3000, 250)
    np.testing.assert_array_equal(ranks[1][argsort(x[1])], np.arange(3000))


def test_nan_is_refused_with_a_clear_error(tmp_path):
    x = _rows("normal", np.float32)
    x[1, 1234] = np.nan
    store = Store(str(tmp_path / "s.zarr"), {"test": 1})
    ss = SampleSort(store, "sort", k=3, n=x.shape[1], rows=250, dtype=x.dtype, budget=2**15)
    ss.choose_splitters(lambda idx: np.nan_to_num(x[:, idx]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        ss.partition(Compute(workers=1), lambda lo, hi: x[:, lo:hi])


def test_a_sort_resumed_under_another_budget_keeps_its_plan(tmp_path):
    x = _rows("normal", np.float32, n=3000)
    store, ss, compute = _sort(tmp_path, x, budget=2**15, rows=250)
    again = SampleSort(store, "sort", k=3, n=3000, rows=1000, dtype=np.float32, budget=2**20,
                       min_bucket=16)
    fresh = SampleSort(store, "other", k=3, n=3000, rows=1000, dtype=np.float32, budget=2**20,
                       min_bucket=16)
    assert (fresh.rows, fresh.n_buckets) != (ss.rows, ss.n_buckets)   # the budget's plan
    assert (again.rows, again.n_buckets) == (ss.rows, ss.n_buckets)   # the stored one
    again.sort(compute)
    np.testing.assert_array_equal(again.sorted_row(2, 0, 3000), np.sort(x[2]))


def test_stored_splitters_are_kept_by_a_resumed_sort(tmp_path):
    """A sort resumed after its splitters were stored keeps them (another draw would move the
    buckets under the chunks already partitioned).  It used to fail for k > 1 rows: the
    splitters' one chunk was checked as if each of the k rows were a task's chunk
    ("cannot reshape array of size 1 into shape (3,newaxis)")."""
    x = _rows("normal", np.float64, n=3000)
    store, ss, compute = _sort(tmp_path, x, budget=2**15)
    assert ss.n_buckets > 1
    stored = store.array("sort/splitters")[:], store.array("sort/splitter_index")[:]
    again = SampleSort(store, "sort", k=3, n=3000, rows=250, dtype=np.float64, budget=2**15,
                       min_bucket=16)
    again.choose_splitters(lambda idx: x[:, idx], np.random.default_rng(1))   # another draw
    np.testing.assert_array_equal(store.array("sort/splitters")[:], stored[0])
    np.testing.assert_array_equal(store.array("sort/splitter_index")[:], stored[1])
    again.partition(compute, lambda lo, hi: x[:, lo:hi])
    again.sort(compute)
    np.testing.assert_array_equal(again.sorted_row(1, 0, 3000), np.sort(x[1]))
