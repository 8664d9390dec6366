"""``torchrun --nproc_per_node 2 -m ootrain.cli <method> train ...``: real torchrun ranks (gloo)
train the same models as one process, and print one report."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ootrain.store import Store

ARGS = {
    "rsr": (["rsr", "train", "--data", "gaussian:3", "--n-real", "300", "--latent-dim", "2",
             "-b", "256", "-m", "32", "-p", "6", "--steps", "3"], 3),
    "otgan": (["otgan", "train", "--data", "ring8", "-b", "64", "-m", "32", "--steps", "3",
               "--n-gen", "1", "--hidden", "16,16", "--critic-hidden", "16", "--feature-dim",
               "8", "--n-samples", "200", "--sinkhorn-max-iter", "100"], 3),
    "potgan": (["potgan", "train", "--data", "ring8", "-b", "64", "-m", "32", "--steps", "2",
                "--n-critic", "1", "--vae-steps", "20", "--forest-trees", "2",
                "--forest-depth", "2", "--n-samples", "200"], 4),
}


def _run(args: list[str], store, out, ranks: int) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
              "--master_port", str(29500 + os.getpid() % 1000)] if ranks > 1 else [sys.executable]
    env = dict(os.environ, OOTRAIN_NO_PROGRESS="1", MPLBACKEND="Agg")
    return subprocess.run([*launch, "-m", "ootrain.cli", *args, "--store", str(store), "--out",
                           str(out), "--threads", "1", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)


def _modules(store, step: int) -> dict:
    raw = Store(store, mode="r").get_bytes(f"checkpoints/step-{step}.pt")
    return torch.load(io.BytesIO(raw), weights_only=True)["modules"]


@pytest.mark.parametrize("method", list(ARGS))
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


def test_semidiscrete_under_torchrun_is_a_one_line_refusal(tmp_path):
    res = _run(["semidiscrete", "train", "--data", "ring8", "--n-real", "64", "--latent-dim",
                "2", "-b", "128", "-m", "32", "--rounds", "1"], tmp_path / "s.zarr",
               tmp_path / "o", 2)
    # torchrun reports its failed children with a traceback of its own (torch/distributed/
    # elastic); the ranks themselves print one line each and no frame of ootrain
    assert res.returncode != 0 and "ootrain/" not in res.stderr.replace("-m ootrain", ""), \
        res.stderr[-3000:]
    assert res.stderr.count("error: ootrain semidiscrete train runs in one process") == 2 and \
        "without torchrun" in res.stderr, res.stderr[-3000:]
