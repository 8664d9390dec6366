"""The ``ootrain`` command line, end to end on tiny problems."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from ootrain.cli import app
from ootrain.cli.options import parse_bytes
from ootrain.store import Store

runner = CliRunner()


def _train(store, *extra):
    return runner.invoke(app, ["rsr", "train", "--store", str(store), "--data", "gaussian:3",
                               "--n-real", "300", "--latent-dim", "2", "-b", "256", "-m", "32",
                               "-p", "8", "--steps", "2", "--no-progress", *extra])


def test_rsr_train_resume_info_verify(tmp_path):
    store = tmp_path / "run.zarr"
    res = _train(store, "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "out" / "samples.npy").shape == (300, 3)
    assert (tmp_path / "out" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resuming to a larger step count takes only the missing steps
    res = _train(store, "--steps", "3", "--threads", "1")
    assert res.exit_code == 0, res.output
    assert "1 steps this call" in res.output
    info = runner.invoke(app, ["store", "info", str(store)])
    assert info.exit_code == 0 and "steps/2/targets" in info.output
    ok = runner.invoke(app, ["store", "verify", str(store)])
    assert ok.exit_code == 0, ok.output


def test_rsr_train_refuses_other_config_on_same_store(tmp_path):
    store = tmp_path / "run.zarr"
    assert _train(store).exit_code == 0
    res = _train(store, "--seed", "7")
    assert res.exit_code != 0
    assert res.exit_code == 1 and "another configuration" in res.stderr


def test_store_verify_reports_incomplete_arrays(tmp_path):
    with Store(tmp_path / "s", {"a": 1}) as s:
        s.require_array("x", (8, 2), (4, 2), "f4")
        s.write_chunk("x", (0, 0), np.ones((4, 2), "f4"))
    res = runner.invoke(app, ["store", "verify", str(tmp_path / "s")])
    assert res.exit_code == 1
    assert "1 of 2 chunks incomplete" in res.output


def test_store_unlock(tmp_path):
    s = Store(tmp_path / "s", {"a": 1})
    res = runner.invoke(app, ["store", "unlock", str(tmp_path / "s")])
    assert res.exit_code == 0 and "removed lock" in res.output
    s.release()


def test_sort_command(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 5000)).astype(np.float32)
    src = zarr.create_array(tmp_path / "src.zarr", shape=x.shape, chunks=(1, 1000),
                            dtype="float32")
    src[:] = x
    res = runner.invoke(app, ["sort", str(tmp_path / "src.zarr"), str(tmp_path / "dst.zarr"),
                              "--memory-budget", "64KiB", "--no-progress"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "dst.zarr")[:], np.sort(x, axis=1))


def test_rsr_train_rejects_negative_threads(tmp_path):
    res = _train(tmp_path / "run.zarr", "--threads", "-1")
    assert res.exit_code != 0 and "--threads" in res.output


def test_parse_bytes():
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2G") == 2 * 10**9
    assert parse_bytes("1e6") == 10**6
    import typer
    with pytest.raises(typer.BadParameter, match="not a size"):
        parse_bytes("lots")


def test_rsr_train_from_user_zarr_and_factory(tmp_path):
    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    arr = zarr.create_array(tmp_path / "real.zarr", shape=x.shape, chunks=(100, 4),
                            dtype="float32")
    arr[:] = x
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def make_g(in_dim, out_dim):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(in_dim, 16), torch.nn.Tanh(),\n"
        "                               torch.nn.Linear(16, out_dim))\n")
    res = runner.invoke(app, ["rsr", "train", "--store", str(tmp_path / "run.zarr"),
                              "--data", str(tmp_path / "real.zarr"),
                              "--generator", f"{tmp_path / 'mymodels.py'}:make_g",
                              "--embedding", "random-features",
                              "--embedding-args", '{"in_dim": 4, "out_dim": 6, "seed": 1}',
                              "-b", "128", "-m", "16", "-p", "4", "--steps", "1",
                              "--direction-mode", "algorithm2", "-r", "2", "--store-latents",
                              "--mode", "cotangent", "--no-progress"])
    assert res.exit_code == 0, res.output
    s = Store(tmp_path / "run.zarr", mode="r")
    assert s.array("steps/0/latents").shape == (128, 8)
    assert s.array("steps/0/cotangents").shape == (128, 6)
    assert s.array("real/embeddings").shape == (500, 6)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_rsr_train_store_at_a_url(tmp_path, monkeypatch, scheme):
    """--store takes URLs as they are: file:// writes the named folder, memory:// writes no
    folder at all (a Path option used to collapse '//' into a local 'file:' / 'memory:')."""
    monkeypatch.chdir(tmp_path)
    url = f"file://{tmp_path}/s.zarr" if scheme == "file" else "memory://ootrain-cli-test/s.zarr"
    res = _train(url, "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    assert not (tmp_path / f"{scheme}:").exists()
    if scheme == "file":
        assert (tmp_path / "s.zarr" / "zarr.json").is_file()
    res = _train(url, "--steps", "3")        # resumes there
    assert res.exit_code == 0 and "1 steps this call" in res.output, res.output
    s = Store(url, mode="r")
    assert s.group["steps/2"].attrs["phase"] == "done"
