"""The store on S3: a real S3-compatible server on localhost (moto's server mode), the CLI
training there, a ``kill -9`` mid-run, the same command resuming, ``store verify``, and the
result bit-identical to the same run on a local disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")

from ootrain.store import Store  # noqa: E402

ARGS = ["rsr", "train", "--data", "gaussian:3", "--n-real", "300", "--latent-dim", "2",
        "-b", "1024", "-m", "64", "-p", "8", "--steps", "8", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def s3():
    """``(env, bucket)``: a moto S3 server on a free localhost port and the environment that
    points fsspec / botocore at it."""
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": url,
           "AWS_ENDPOINT_URL": url}
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="runs")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env, "runs"
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    srv.stop()


def _cli(store: str, out, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ootrain.cli", *ARGS, "--store", store,
                             "--out", str(out)], env={**os.environ, **env,
                                                      "OOTRAIN_NO_PROGRESS": "1",
                                                      "MPLBACKEND": "Agg"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _steps_done(url: str) -> int:
    try:
        s = Store(url, mode="r")
        return sum(1 for k in range(8) if s.has(f"steps/{k}")
                   and s.group[f"steps/{k}"].attrs.get("phase") == "done")
    except Exception:   # not created yet
        return 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_train_kill_resume_verify_on_s3(s3, tmp_path):
    env, bucket = s3
    ref = _cli(str(tmp_path / "local.zarr"), tmp_path / "local-out", env)
    url = f"s3://{bucket}/run.zarr"
    run = _cli(url, tmp_path / "s3-out", env)
    deadline = time.time() + 300
    while _steps_done(url) < 2 and run.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()[0][-3000:]
    os.kill(run.pid, signal.SIGKILL)           # mid-run, wherever it is
    run.wait()
    assert Store.read_lock(url) is not None      # the dead writer's lock is still there
    again = _cli(url, tmp_path / "s3-out", env)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert "taking over the lock" in out
    assert ref.wait(timeout=300) == 0, ref.communicate()[0][-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "s3-out" / "samples.npy"),
                                  np.load(tmp_path / "local-out" / "samples.npy"))
    res = subprocess.run([sys.executable, "-m", "ootrain.cli", "store", "verify", url],
                         env={**os.environ, **env}, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert Store.read_lock(url) is None


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_out_of_core_solve_keeps_its_buckets_on_s3(s3, tmp_path):
    """A budget below one row: Solve's sample sort writes its buckets into the store on S3
    (not $TMPDIR), trains as on a local disk, and deletes them once the targets are stored."""
    env, bucket = s3
    ooc = ["--memory-budget", "16KiB", "--steps", "2"]
    runs = {}
    for name, store in (("local", str(tmp_path / "local.zarr")),
                        ("s3", f"s3://{bucket}/ooc.zarr")):
        res = subprocess.run([sys.executable, "-m", "ootrain.cli", *ARGS[:-5], *ooc,
                              "--threads", "1", "--no-progress", "--store", store,
                              "--out", str(tmp_path / name)],
                             env={**os.environ, **env, "OOTRAIN_NO_PROGRESS": "1",
                                  "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path)},
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        runs[name] = store
    np.testing.assert_array_equal(np.load(tmp_path / "s3" / "samples.npy"),
                                  np.load(tmp_path / "local" / "samples.npy"))
    s = Store(runs["s3"], mode="r")
    assert s.has("steps/1/sort")                    # where the buckets were
    assert list(s.group["steps/1/sort/generated"].array_keys()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ootrain-")]
