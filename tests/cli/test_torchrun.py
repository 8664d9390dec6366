"""``torchrun --nproc_per_node 2 -m ootrain.cli <method> train ...``: real torchrun ranks (gloo)
train the same models as one process, and print one report, for all four methods."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

import ootrain
from ootrain.store import Store

ARGS = {
    "rsr": (["rsr", "train", "--data", "gaussian:3", "--n-real", "300", "--latent-dim", "2",
             "-b", "256", "-m", "32", "-p", "6", "--steps", "3"], 3),
    "otgan": (["otgan", "train", "--data", "ring8", "-b", "64", "-m", "32", "--steps", "3",
               "--n-gen", "1", "--hidden", "16,16", "--critic-hidden", "16", "--feature-dim",
               "8", "--n-samples", "200", "--sinkhorn-max-iter", "100"], 3),
    "semidiscrete": (["semidiscrete", "train", "--data", "ring8", "--n-real", "64",
                      "--latent-dim", "2", "-b", "128", "-m", "32", "--rounds", "2",
                      "--fit-epochs", "2", "--ots-max-iter", "200", "--n-samples", "200"], 2),
    "potgan": (["potgan", "train", "--data", "ring8", "-b", "64", "-m", "32", "--steps", "2",
                "--n-critic", "1", "--vae-steps", "20", "--forest-trees", "2",
                "--forest-depth", "2", "--n-samples", "200"], 4),
}


def _command(args: list[str], store, out, ranks: int) -> tuple[list[str], dict[str, str]]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
              "--master_port", str(29500 + os.getpid() % 1000)] if ranks > 1 else [sys.executable]
    env = dict(os.environ, OOTRAIN_NO_PROGRESS="1", MPLBACKEND="Agg")
    return [*launch, "-m", "ootrain.cli", *args, "--store", str(store), "--out", str(out),
            "--threads", "1", "--no-progress"], env


def _run(args: list[str], store, out, ranks: int) -> subprocess.CompletedProcess:
    cmd, env = _command(args, store, out, ranks)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _modules(store, step: int) -> dict:
    raw = Store(store, mode="r").get_bytes(f"checkpoints/step-{step}.pt")
    return torch.load(io.BytesIO(raw), weights_only=True)["modules"]


@pytest.mark.parametrize("method", ["rsr", "semidiscrete",
                                    *(pytest.param(m, marks=pytest.mark.slow)
                                      for m in ("otgan", "potgan"))])
def test_two_torchrun_ranks_train_as_one_process(method, tmp_path):
    args, steps = ARGS[method]
    one = _run(args, tmp_path / "one.zarr", tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(args, tmp_path / "two.zarr", tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _modules(tmp_path / "one.zarr", steps), _modules(tmp_path / "two.zarr", steps)
    for mod in a:
        for name, x in a[mod].items():
            y = b[mod][name]
            assert torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-7), (mod, name)
    np.testing.assert_allclose(np.load(tmp_path / "one" / "samples.npy"),
                               np.load(tmp_path / "two" / "samples.npy"), rtol=1e-5, atol=1e-6)
    # one report: rank 1's standard output and progress log are silent, and rank 0 alone
    # writes the outputs (the files of both runs are the same)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())
    assert two.stdout.count("store") == one.stdout.count("store"), two.stdout


DASK_CASES = [("rsr", 1), pytest.param("rsr", 2, marks=pytest.mark.slow),
              *(pytest.param(m, 2, marks=pytest.mark.slow) for m in ("semidiscrete", "otgan",
                                                                     "potgan"))]
PREFIXES = {"rsr": {"project-x", "project-y", "align", "write"},
            "semidiscrete": {"assign_chunk"}, "otgan": {"energy_term"},
            "potgan": {"column_sums"}}


@pytest.mark.parametrize("method, ranks", DASK_CASES)
def test_solve_on_a_dask_cluster_at_an_address_trains_as_one_process(method, ranks,
                                                                      dask_cluster, tmp_path):
    """``--dask-address``: the Solves run on a real dask.distributed scheduler and its 2
    worker processes (with 1 or 2 torchrun ranks): the models of one plain process."""
    args, steps = ARGS[method]
    one = _run(args, tmp_path / "one.zarr", tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    before = dask_cluster.scheduler.transition_counter
    dask = _run([*args, "--dask-address", dask_cluster.scheduler_address], tmp_path / "d.zarr",
                tmp_path / "d", ranks)
    assert dask.returncode == 0, dask.stderr[-3000:]
    # the Solve's tasks ran there
    assert PREFIXES[method] <= set(dask_cluster.scheduler.task_prefixes)
    assert dask_cluster.scheduler.transition_counter > before
    a, b = _modules(tmp_path / "one.zarr", steps), _modules(tmp_path / "d.zarr", steps)
    for mod in a:
        for name, x in a[mod].items():
            assert torch.allclose(x.double(), b[mod][name].double(), rtol=1e-5, atol=1e-7), \
                (mod, name)


@pytest.mark.slow   # the client waits out its 10 s connection timeout
def test_a_dask_address_without_a_scheduler_is_a_one_line_error(tmp_path):
    res = _run([*ARGS["rsr"][0], "--dask-address", "tcp://127.0.0.1:9"], tmp_path / "s.zarr",
               tmp_path / "o", 1)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --dask-address 'tcp://127.0.0.1:9'"), \
        res.stderr
    assert not (tmp_path / "s.zarr").exists()


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (a descendant of the launcher)."""
    for proc in psutil.Process(launcher).children(recursive=True):
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if env.get("RANK") == str(rank) and env.get("LOCAL_RANK") == str(rank):
            return proc.pid
    return None


def _wait_for(cond, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - t0


KILL_ARGS = ["rsr", "train", "--data", "gaussian:3", "--n-real", "300", "--latent-dim", "2",
             "-b", "2048", "-m", "32", "-p", "6", "--steps", "6"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_lost_rank_stops_the_run_and_the_same_command_resumes(how, tmp_path):
    """Rank 1 is killed (SIGKILL) or frozen (SIGSTOP) in the middle of step 2: rank 0 stops
    with one ``error:`` line (torchrun's SIGTERM, or a collective that times out after
    OOTRAIN_DIST_TIMEOUT), and the same torchrun command resumes to the models of one
    uninterrupted process."""
    one = _run(KILL_ARGS, tmp_path / "one.zarr", tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    store, out = tmp_path / "two.zarr", tmp_path / "two"
    cmd, env = _command(KILL_ARGS, store, out, 2)
    env["OOTRAIN_DIST_TIMEOUT"] = "5"
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_for(lambda: (store / "steps" / "2").exists(), 240, "step 2")
            victim = _rank_pid(proc.pid, 1)
            assert victim is not None
            os.kill(victim, signal.SIGKILL if how == "dies" else signal.SIGSTOP)
            text = lambda: (tmp_path / "stderr").read_text()   # noqa: E731
            # stated bound: torchrun's monitor (~1 s) for a death, the timeout for a hang
            took = _wait_for(lambda: "error: rank 0 of 2" in text(), 60, "rank 0's error")
            assert took < (30 if how == "dies" else 5 + 30), took
            if how == "hangs":                  # what the operator does with a hung rank
                with contextlib.suppress(ProcessLookupError):   # torchrun may have got there
                    os.kill(victim, signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    stderr = text()
    assert proc.returncode != 0
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: rank 0 of 2")]
    assert len(lines) == 1, stderr[-3000:]
    # a death: torchrun's SIGTERM, or first the collective that sees the connection close
    assert "did not complete" in lines[0] or (how == "dies" and "stopped by torchrun" in
                                              lines[0]), lines
    assert "rerun the same command" in lines[0]
    assert 'File "' + str(Path(ootrain.__file__).parent) not in stderr, stderr[-3000:]
    again = _run(KILL_ARGS, store, out, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = _modules(tmp_path / "one.zarr", 6), _modules(store, 6)
    for mod in a:
        for name, x in a[mod].items():
            assert torch.equal(x, b[mod][name]), (mod, name)
    verify = subprocess.run([sys.executable, "-m", "ootrain.cli", "store", "verify", str(store)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
