"""Bad input gives one readable line, the right exit code (2 usage, 1 run failure), no
traceback (unless ``--debug``), and creates no store or output folder."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from typer.testing import CliRunner

from ootrain.cli import app
from ootrain.store import Store

runner = CliRunner()

RSR = ["rsr", "train", "--store", "s.zarr", "--out", "o", "--no-progress", "--data",
       "gaussian:2", "--n-real", "64", "--latent-dim", "2", "-b", "64", "-m", "32", "-p", "4",
       "--steps", "1"]


def _check(res, code, text):
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("warning:")]
    assert lines == [lines[0]] and lines[0].startswith("error: "), res.stderr
    assert text in lines[0]
    assert "Traceback" not in res.output
    assert not os.path.exists("s.zarr") and not os.path.exists("o")


@pytest.fixture
def files(tmp_path):
    np.save("nan.npy", np.array([[1.0, np.nan], [2.0, 3.0]] * 50, dtype=np.float32))
    np.save("one.npy", np.arange(100, dtype=np.float32))
    np.save("three.npy", np.zeros((10, 2, 2), dtype=np.float32))
    return tmp_path


@pytest.mark.parametrize("args,text", [
    (["--data", "nan.npy"], "--data: 50 non-finite values (NaN/Inf)"),
    (["--data", "one.npy"], "must be 2-D [n, d], got shape (100,)"),
    (["--data", "three.npy"], "must be 2-D [n, d], got shape (10, 2, 2)"),
    (["--data", "missing.npy"], "--data 'missing.npy': [Errno 2] No such file"),
    (["-m", "128"], "--micro-batch/-m 128 exceeds --population/-b 64; pass -m <= -b"),
    (["-b", "0"], "--population/-b must be a positive integer, got 0"),
    (["--optimizer", "foo"], "--optimizer: optimizer must be 'adam' or 'sgd', got 'foo'"),
    (["--generator", "nomod:f"], "--generator 'nomod:f': model spec 'nomod:f': cannot import"),
    (["--steps", "-1"], "--steps must be an integer >= 0, got -1"),
    # option-parsing errors (raised by Typer's vendored click, before the command runs)
    (["--steps", "abc"], "Invalid value for '--steps'"),
    (["--bogus"], "No such option: --bogus"),
])
def test_rsr_bad_input_is_one_line_usage_error(files, args, text):
    _check(runner.invoke(app, [*RSR, *args]), 2, text)


#: Each command's base arguments (tiny runs writing s.zarr and o/).
BASE = {
    "semidiscrete": ["semidiscrete", "train", "--store", "s.zarr", "--out", "o", "--no-progress",
                     "--data", "gaussian:2", "--n-real", "64", "-b", "64", "-m", "32",
                     "--rounds", "1"],
    "otgan": ["otgan", "train", "--store", "s.zarr", "--out", "o", "--no-progress", "--steps",
              "1", "-b", "16"],
    "potgan": ["potgan", "train", "--store", "s.zarr", "--out", "o", "--no-progress", "--steps",
               "1", "-b", "16"],
    "solve": ["semidiscrete", "solve", "gaussian:2", "ring8", "--n-target", "16", "--store",
              "s.zarr", "--no-progress"],
}

#: (command, extra arguments, text of the one-line error); all exit 2 and create nothing.
BAD = [
    *[(cmd, ["--data", f], text) for cmd in ("semidiscrete", "otgan", "potgan")
      for f, text in (("nan.npy", "50 non-finite values (NaN/Inf) in rows [0, 100), first at "
                                  "row 0; clean or drop them and rerun"),
                      ("one.npy", "must be 2-D [n, d], got shape (100,)"),
                      ("three.npy", "must be 2-D [n, d], got shape (10, 2, 2)"),
                      ("missing.npy", "[Errno 2] No such file"))],
    *[(cmd, ["-m", "32"], "--micro-batch/-m 32 exceeds --population/-b 16; pass -m <= -b")
      for cmd in ("otgan", "potgan")],
    *[(cmd, ["-b", "0"], "--population/-b must be a positive integer, got 0")
      for cmd in ("semidiscrete", "otgan")],
    ("potgan", ["-b", "0"], "--population/-b must be an integer >= 2, got 0"),
    ("otgan", ["-b", "1"], "--population/-b (size of each of X, X', Y, Y') must be an integer "
                           ">= 2, got 1"),
    ("otgan", ["--steps", "-1"], "--steps must be an integer >= 0, got -1"),
    ("potgan", ["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    ("semidiscrete", ["--rounds", "-1"], "--rounds must be an integer >= 0, got -1"),
    ("otgan", ["--eps", "-1"], "--eps must be a finite number > 0"),
    ("otgan", ["--warm-start-method", "foo"], "--warm-start-method must be one of ctransform, "
                                              "index, got 'foo'"),
    ("otgan", ["--lr-gen", "0"], "--lr-gen must be a finite number > 0, got 0.0"),
    ("potgan", ["--pot-weight", "-1"], "--pot-weight must be a finite number >= 0"),
    ("potgan", ["--method", "gan"], "--method must be one of"),
    ("potgan", ["--bandwidth", "0"], "--bandwidth must be > 0, got 0.0"),
    ("potgan", ["--ema", "1"], "--ema must be in [0, 1), got 1.0"),
    ("potgan", ["--matching", "foo"], "--matching must be one of argmin, exact, got 'foo'"),
    ("semidiscrete", ["--optimizer", "foo"], "--optimizer: optimizer must be 'adam' or 'sgd'"),
    ("semidiscrete", ["--generator", "nomod:f"], "--generator 'nomod:f': model spec 'nomod:f': "
                                                 "cannot import"),
    ("semidiscrete", ["--cost", "foo"], "--cost: unknown cost 'foo'; expected one of"),
    ("solve", ["--cost", "foo"], "--cost: unknown cost 'foo'; expected one of"),
    ("solve", ["--backend", "foo"], "--backend: unknown backend 'foo'"),
    ("solve", ["--tol", "-1"], "--tol must be a finite number > 0, got -1.0"),
]


@pytest.mark.parametrize("cmd,args,text", BAD, ids=[f"{c}{' '.join(a)}" for c, a, _ in BAD])
def test_bad_input_is_one_line_usage_error(files, cmd, args, text):
    _check(runner.invoke(app, [*BASE[cmd], *args]), 2, text)


def test_solve_bad_targets(files):
    for target, text in (("nan.npy", "non-finite"), ("one.npy", "must be 2-D [n, d]"),
                         ("missing.npy", "target 'missing.npy': [Errno 2] No such file")):
        args = ["semidiscrete", "solve", "gaussian:2", target, "--store", "s.zarr"]
        _check(runner.invoke(app, args), 2, text)


def test_sort_into_existing_destination_and_on_a_group():
    a = zarr.create_array("src.zarr", shape=(2, 10), chunks=(1, 10), dtype="f4")
    a[:] = 1
    zarr.create_array("dst.zarr", shape=(2, 10), chunks=(1, 10), dtype="f4")
    zarr.open_group("grp.zarr", mode="w").create_array("x", shape=(2, 10), dtype="f4")
    _check(runner.invoke(app, ["sort", "src.zarr", "dst.zarr", "--no-progress"]), 2,
           "DST dst.zarr already exists; sort never overwrites")
    _check(runner.invoke(app, ["sort", "grp.zarr", "d2.zarr", "--no-progress"]), 2,
           "SRC grp.zarr is a zarr group, not an array; name the array inside it with --array")
    assert not os.path.exists("d2.zarr")


@pytest.mark.parametrize("cmd", ["info", "verify"])
def test_store_info_on_a_missing_store(cmd):
    _check(runner.invoke(app, ["store", cmd, "nope.zarr"]), 2, "no ootrain store at nope.zarr")
    assert not os.path.exists("nope.zarr")


def test_second_writer_is_a_run_failure():
    ok = runner.invoke(app, [*RSR[:3], "run.zarr", *RSR[4:]])
    assert ok.exit_code == 0, ok.output
    held = Store("run.zarr", Store("run.zarr", mode="r").stored_config)  # another writer
    try:
        res = runner.invoke(app, [*RSR[:3], "run.zarr", *RSR[4:5], "o2", *RSR[6:]])
    finally:
        held.release()
    assert res.exit_code == 1 and res.stderr.startswith("error: store run.zarr is being "
                                                        "written by pid")
    assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.output


def test_changed_config_names_the_key_and_the_flags():
    assert runner.invoke(app, [*RSR[:3], "run.zarr", *RSR[4:]]).exit_code == 0
    res = runner.invoke(app, [*RSR[:3], "run.zarr", *RSR[4:], "--seed", "3"])
    assert res.exit_code == 1
    line, = res.stderr.splitlines()
    assert "engine.seed: store has 0, requested 3" in line
    assert line.endswith("rerun with the same options, use a new --store, or pass "
                         "--overwrite to discard it")
    assert "mode='w'" not in line and "Traceback" not in res.output


def test_debug_shows_the_traceback():
    env = dict(os.environ, OOTRAIN_NO_PROGRESS="1")
    res = subprocess.run([sys.executable, "-m", "ootrain.cli", "--debug", "store", "info",
                          "nope.zarr"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr and "InputError" in res.stderr
    res = subprocess.run([sys.executable, "-m", "ootrain.cli", "store", "info", "nope.zarr"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: no ootrain store at nope.zarr")


def test_store_info_shows_steps_lock_and_resume_command():
    assert runner.invoke(app, [*RSR[:3], "run.zarr", *RSR[4:]]).exit_code == 0
    info = runner.invoke(app, ["store", "info", "run.zarr"])
    assert info.exit_code == 0, info.output
    assert "steps: 1 completed" in info.output and "lock: not held" in info.output
    assert "created by: ootrain rsr train --store run.zarr" in info.output
    s = Store("run.zarr", Store("run.zarr", mode="r").stored_config)
    try:
        info = runner.invoke(app, ["store", "info", "run.zarr"])
    finally:
        s.release()
    assert "lock: held by pid" in info.output
    assert "resume: rerun the same command: ootrain rsr train --store run.zarr" in info.output


def _failure_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, \
        res.stderr
    return lines[0]


def test_diverged_training_names_the_remedy(monkeypatch):
    """A model whose outputs become NaN: one line naming the array, and what to do."""
    import torch

    from ootrain.models.zoo import MLP

    forward = MLP.forward
    monkeypatch.setattr(MLP, "forward", lambda self, x: forward(self, x) * torch.nan)
    line = _failure_line(runner.invoke(app, RSR))
    assert "non-finite values (NaN/Inf)" in line and "smaller learning rate (--lr)" in line, line


def test_full_disk_before_a_step_names_the_remedy(monkeypatch):
    monkeypatch.setattr(Store, "free_bytes", lambda self: 0)
    line = _failure_line(runner.invoke(app, RSR))
    assert "GiB are free; free space and rerun the same command to resume" in line, line


def test_a_zarr_group_that_is_not_a_store(tmp_path):
    zarr.open_group("plain.zarr", mode="w")
    line = _failure_line(runner.invoke(app, [*RSR[:3], "plain.zarr", *RSR[4:]]))
    assert "not an ootrain store" in line and "pass another --store" in line, line


@pytest.mark.parametrize("cmd", ["otgan", "potgan"])
def test_changed_data_file_is_refused_on_resume(cmd):
    """The GANs' real data from a file is fingerprinted by all of its rows: changing rows in
    the middle of the file between two runs of the same store is refused, not mixed in."""
    x = np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32)
    np.save("real.npy", x)
    args = {"otgan": ["otgan", "train", "-b", "64", "--hidden", "16", "--critic-hidden", "16",
                      "--feature-dim", "4", "--n-samples", "50", "--sinkhorn-max-iter", "20"],
            "potgan": ["potgan", "train", "-b", "64", "--n-critic", "1", "--vae-steps", "5",
                       "--forest-trees", "2", "--forest-depth", "2", "--n-samples", "50"]}[cmd]
    run = [*args, "--data", "real.npy", "--store", "run.zarr", "--out", "o", "--no-progress"]
    assert runner.invoke(app, [*run, "--steps", "1"]).exit_code == 0
    x[150] += 1.0
    np.save("real.npy", x)
    line = _failure_line(runner.invoke(app, [*run, "--steps", "2"]))
    assert "written by another configuration" in line and "real" in line and "sha256" in line, \
        line


@pytest.mark.parametrize("cmd", ["otgan", "potgan"])
def test_gan_solves_check_space_before_writing(cmd, monkeypatch):
    """Every writer checks space first: the GANs' Solves (their cotangents) too, not only Run."""
    asked = []
    check = Store.check_space

    def recording(self, needed, what):
        asked.append((what, needed))
        return check(self, needed, what)
    monkeypatch.setattr(Store, "check_space", recording)
    args = {"otgan": ["otgan", "train", "-b", "64", "--steps", "1", "--hidden", "16",
                      "--critic-hidden", "16", "--feature-dim", "4", "--n-samples", "50",
                      "--sinkhorn-max-iter", "20"],
            "potgan": ["potgan", "train", "-b", "64", "--steps", "1", "--n-critic", "1",
                       "--vae-steps", "5", "--forest-trees", "2", "--forest-depth", "2",
                       "--n-samples", "50"]}[cmd]
    res = runner.invoke(app, [*args, "--store", "run.zarr", "--out", "o", "--no-progress"])
    assert res.exit_code == 0, res.output
    solves = [n for what, n in asked if "Solve (cotangents)" in what]
    assert solves and all(n > 0 for n in solves), asked


DEVICES = [("tpu", "--device must be one of auto, cpu, cuda or cuda:N, got 'tpu'")]
if not torch.cuda.is_available():
    DEVICES.append(("cuda", "--device must be a GPU torch can use, got 'cuda' but torch sees "
                            "no CUDA device"))


@pytest.mark.parametrize("cmd", ["rsr", "semidiscrete", "otgan", "potgan"])
@pytest.mark.parametrize("device,text", DEVICES, ids=[d for d, _ in DEVICES])
def test_bad_device_is_one_line_usage_error(cmd, device, text):
    base = RSR if cmd == "rsr" else BASE[cmd]
    _check(runner.invoke(app, [*base, "--device", device]), 2, text)
