"""``ootrain semidiscrete solve`` / ``train`` end to end on tiny problems."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from ootrain.cli import app
from ootrain.ot.semidiscrete import SemiDiscreteOT
from ootrain.store import Store

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _closed_form_1d(y: np.ndarray, p: int) -> float:
    """OT cost from U[0, 1] to the uniform measure on the points ``y`` with cost |x - y|^p:
    the sorted j-th point receives the quantile interval [j/N, (j+1)/N]."""
    ys, n = np.sort(y), len(y)
    a, b = np.arange(n) / n, np.arange(1, n + 1) / n

    def F(u: np.ndarray) -> np.ndarray:  # antiderivative of |u - y|^p in u
        return np.sign(u - ys) * np.abs(u - ys) ** (p + 1) / (p + 1)

    return float((F(b) - F(a)).sum())


def _solve(*args: str):
    return runner.invoke(app, ["semidiscrete", "solve", *args, "--backend", "torch",
                               "--threads", "1", "--no-progress"])


@pytest.mark.parametrize("cost,p", [("sqeuclidean", 2), ("l1", 1)])
def test_solve_uniform_to_20_points_matches_closed_form(tmp_path, cost, p):
    y = np.random.default_rng(0).uniform(0, 1, (20, 1))
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "pot.zarr"
    res = _solve("uniform:1", str(tmp_path / "y.npy"), "--store", str(out), "--cost", cost,
                 "--tol", "0.02", "--max-iter", "2000", "--batch", "4096", "--n-eval", "262144")
    assert res.exit_code == 0, res.output
    exact = _closed_form_1d(y[:, 0], p)
    printed = re.search(r"transport cost ([-0-9.e+]+) ± ([0-9.e+-]+)\s+dual ([-0-9.e+]+)\s+"
                        r"chi2 ([-0-9.e+]+) ± ([0-9.e+-]+) \(floor ([0-9.e+-]+)\)\s+imbalance "
                        r"([0-9.]+)", res.output)
    assert printed, res.output
    cost_est, cost_se, dual_est, chi2, chi2_se, chi2_floor, imbalance = \
        (float(v) for v in printed.groups())
    assert cost_est == pytest.approx(exact, rel=0.05)
    # the dual estimate's noise is ~1 % here (c-transform values spread over the potentials')
    assert dual_est == pytest.approx(exact, rel=0.05)
    assert imbalance < 0.05
    # the cost's standard error is that of a mean of 262144 per-sample costs; the chi^2's
    # noise floor is ~ sqrt(2 (N - 1)) / n_eval, and its standard error at least that
    assert 0 < cost_se < 0.01 * cost_est
    assert chi2_floor == pytest.approx((2 * 19) ** 0.5 / 262144, rel=0.05)
    assert chi2_se >= 0.9 * chi2_floor and chi2 < 0.02
    # the potentials load back, with the summary, and give the same map
    arr = zarr.open_group(str(out), mode="r")["potentials"]
    summary = dict(arr.attrs)["solve"]
    assert summary["transport_cost"] == pytest.approx(cost_est, rel=1e-5)
    assert summary["chi2"] == pytest.approx(chi2, rel=1e-3, abs=1e-9)
    assert summary["transport_cost_noise"] == pytest.approx(cost_se, rel=1e-1)
    assert summary["n_targets"] == 20 and summary["iterations"] > 0
    ot = SemiDiscreteOT(torch.from_numpy(y), cost=cost).load(str(out))  # float64 as saved
    np.testing.assert_array_equal(ot.potentials.numpy(), np.asarray(arr[:]))
    # gauge: fit leaves sum_j nu_j psi_j = 0 (uniform nu: the mean), up to rounding
    psi = np.asarray(arr[:])
    assert abs(psi.mean()) <= 1e-12 * max(1.0, np.abs(psi).max())
    x = torch.rand(65536, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert ot.cost(x) == pytest.approx(exact, rel=0.05)
    # the recorded transport cost is that of the saved map: the fresh load's cost on fresh
    # samples agrees within the two estimates' noise (262144 and 65536 samples)
    per = ot.cost_per_sample(x)
    noise = float(per.std()) * (1 / 262144 + 1 / 65536) ** 0.5
    assert abs(float(per.mean()) - summary["transport_cost"]) < 5 * noise, \
        (float(per.mean()), summary["transport_cost"], noise)


def test_solve_default_stop_is_certified_chi2(tmp_path):
    """Without --tol / --chi2-tol the solver's default chi^2 stop applies; --chi2-tol sets it;
    the table shows the chi^2 and the cost with their noise floors."""
    from ootrain.ot.semidiscrete import DEFAULT_CHI2_TOL
    y = np.random.default_rng(2).uniform(0, 1, (16, 1))
    np.save(tmp_path / "y.npy", y)
    for extra, want in (((), DEFAULT_CHI2_TOL), (("--chi2-tol", "0.004"), 0.004)):
        out = tmp_path / f"pot{len(extra)}.zarr"
        res = _solve("uniform:1", str(tmp_path / "y.npy"), "--store", str(out),
                     "--n-eval", "8192", *extra)
        assert res.exit_code == 0, res.output
        assert "marginal χ²" in res.output and "noise floor" in res.output
        assert "(standard error)" in res.output
        assert "1-D quantiles of" in res.output          # 1-D sqeuclidean: the quantile method
        assert "mismatch ≤" in res.output                # its bound (99 %), either stop
        summary = dict(zarr.open_group(str(out), mode="r")["potentials"].attrs)["solve"]
        assert summary["certified"] and summary["method"] == "quantile"
        assert summary["chi2_fit"] + 2 * summary["chi2_noise_fit"] <= want


def test_solve_empirical_source_zarr_target_and_named_array(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "src.npy", rng.normal(size=(500, 2)).astype(np.float32))
    tgt = zarr.create_array(str(tmp_path / "tgt.zarr"), shape=(40, 2), chunks=(16, 2),
                            dtype="float32")
    tgt[:] = rng.normal(size=(40, 2)).astype(np.float32)
    out = tmp_path / "out.zarr"
    res = _solve(str(tmp_path / "src.npy"), str(tmp_path / "tgt.zarr"), "--store", str(out),
                 "--name", "psi", "--cost", "lp:3", "--max-iter", "30", "--batch", "256",
                 "--n-eval", "2048")
    assert res.exit_code == 0, res.output
    assert "empirical distribution of 500 rows" in res.output
    psi = zarr.open_group(str(out), mode="r")["psi"]
    assert psi.shape == (40,) and np.isfinite(psi[:]).all()
    assert dict(psi.attrs)["semidiscrete"]["cost"] == "lp:3"
    # gauge: sum_j nu_j psi_j = 0 (uniform nu), up to the stored dtype's rounding
    v = np.asarray(psi[:], dtype=np.float64)
    assert abs(v.mean()) <= 1e-5 * np.abs(v).max(), (v.mean(), np.abs(v).max())
    # the recorded transport cost is that of the saved map: a fresh load's cost over all 500
    # source rows (the exact mean of the empirical source) within the 2048-draw noise
    src = torch.from_numpy(np.load(tmp_path / "src.npy")).double()
    ot = SemiDiscreteOT(torch.from_numpy(np.asarray(tgt[:])).double(), cost="lp:3") \
        .load(str(out), "psi")
    per = ot.cost_per_sample(src)
    recorded = dict(psi.attrs)["solve"]["transport_cost"]
    assert abs(float(per.mean()) - recorded) < 5 * float(per.std()) / 2048 ** 0.5, \
        (float(per.mean()), recorded)


@pytest.mark.parametrize("spec", ["gaussian:3", "uniform:2", "ring8", "npy"])
def test_data_samplers_draw_from_the_callers_rng(tmp_path, spec):
    """``data_sampler(spec)`` follows ``draw(k, rng)``: the draws are a function of the
    caller's numpy Generator (same seed, same rows; the sampler holds no state)."""
    from ootrain.data import data_sampler
    if spec == "npy":
        np.save(tmp_path / "s.npy", np.arange(40, dtype=np.float32).reshape(20, 2))
        spec = str(tmp_path / "s.npy")
    draw, d, _ = data_sampler(spec, torch.float64)
    a = draw(50, np.random.default_rng(4))
    assert a.shape == (50, d) and a.dtype == torch.float64
    assert torch.equal(a, draw(50, np.random.default_rng(4)))
    assert not torch.equal(a, draw(50, np.random.default_rng(5)))


def test_solve_rejects_bad_input(tmp_path):
    np.save(tmp_path / "y.npy", np.zeros((5, 1), np.float32) + np.arange(5)[:, None])
    res = _solve("gaussian:2", str(tmp_path / "y.npy"), "--store", str(tmp_path / "o.zarr"))
    assert res.exit_code != 0 and "dimension 2" in res.output
    res = _solve("uniform:x", str(tmp_path / "y.npy"), "--store", str(tmp_path / "o.zarr"))
    assert res.exit_code != 0 and "uniform:D" in res.output
    res = _solve("uniform:1", "ring8", "--store", str(tmp_path / "o.zarr"))
    assert res.exit_code != 0 and "--n-target" in res.output


def _train(store, *extra):
    return runner.invoke(app, ["semidiscrete", "train", "--store", str(store),
                               "--data", "digits", "--n-real", "100", "--latent-dim", "4",
                               "--generator-args", '{"hidden": [32]}', "-b", "128", "-m", "32",
                               "--fit-epochs", "2", "--ots-batch", "128",
                               "--ots-max-iter", "20", "--threads", "1", "--no-progress",
                               *extra])


def test_train_two_rounds_writes_outputs_and_resumes(tmp_path):
    store, out = tmp_path / "run.zarr", tmp_path / "out"
    res = _train(store, "--rounds", "2", "--alpha-stop", "10", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "2 rounds this call" in res.output
    x = np.load(out / "samples.npy")
    assert x.shape == (100, 64) and 0 <= x.min() and x.max() <= 1  # sigmoid output (digits)
    assert (out / "samples.png").read_bytes()[:8] == PNG_MAGIC
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["transport_cost"] > 0 and r["fit_losses"] for r in rounds)
    # asking for 3 rounds runs only the missing one
    res = _train(store, "--rounds", "3", "--alpha-stop", "10")
    assert res.exit_code == 0, res.output
    assert "1 rounds this call, 3 in store" in res.output
    s = Store(store, mode="r")
    assert s.group["steps/2"].attrs["phase"] == "done"
    assert s.array("steps/2/assignments").shape == (128,)
    # another FIT setting on the same store is refused
    res = _train(store, "--rounds", "3", "--fit-epochs", "3")
    assert res.exit_code != 0 and res.exit_code == 1 and "another configuration" in res.stderr


def test_train_non_alternating_2d(tmp_path):
    res = runner.invoke(app, ["semidiscrete", "train", "--store", str(tmp_path / "s"),
                              "--data", "ring8", "--n-real", "64", "--latent-dim", "2",
                              "-b", "64", "-m", "32", "--rounds", "2", "--fit-epochs", "1",
                              "--no-alternate", "--cost", "sqeuclidean", "--ots-batch", "64",
                              "--ots-max-iter", "10", "--threads", "1", "--no-progress",
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    rounds = json.loads((tmp_path / "out" / "rounds.json").read_text())
    assert len(rounds) == 1 and len(rounds[0]["fit_losses"]) == 2  # one map, 2 x 1 epochs
    assert (tmp_path / "out" / "samples.png").read_bytes()[:8] == PNG_MAGIC
