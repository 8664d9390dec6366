"""Thread settings of each method's ``train`` command: torch's default vs 1, 2 and the new default.

Each case is a fresh subprocess running the CLI (``ootrain <method> train ...`` at a small size)
with one thread setting:

* ``0``       -- ``--threads 0`` and ``OOTRAIN_THREADS=0``: every pool left at its library's
  default (torch, OpenBLAS, OpenMP, numba: one thread per logical CPU);
* ``1``, ``2`` -- ``--threads N`` and ``OOTRAIN_THREADS=N``: every pool at N;
* ``default`` -- neither: what the CLI and the library do by default
  (:func:`ootrain.threads.default_threads`).

(``OOTRAIN_THREADS`` is passed as well so that the library's trainers, which follow the
process's setting, see the same count whatever the CLI's ``--threads`` wiring does.)
Settings are interleaved within each repeat (round-robin, order rotated per repeat), so a
change of the machine's background load hits all of them alike; the load average is recorded
before every run.  Each child reports the pools' sizes as the engine starts training
(torch, BLAS, OpenMP, numba), printed in the table.

    python benchmarks/bench_threads.py                 # ~14 min on the shared 2-core machine
    python benchmarks/bench_threads.py --repeats 1 --methods rsr   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import loadavg, machine_header, median, table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Small argument sets (from tests/cli and tests/methods), sized to ~10-40 s at 1 thread here.
COMMANDS: dict[str, list[str]] = {
    "rsr": ["rsr", "train", "--data", "gaussian:3", "--n-real", "2000", "--latent-dim", "2",
            "-b", "4096", "-m", "512", "-p", "32", "--steps", "20"],
    "semidiscrete": ["semidiscrete", "train", "--data", "ring8", "--n-real", "256",
                     "--latent-dim", "2", "-b", "512", "-m", "128", "--rounds", "3",
                     "--fit-epochs", "4", "--cost", "sqeuclidean", "--ots-batch", "256",
                     "--ots-max-iter", "50"],
    "otgan": ["otgan", "train", "--data", "ring8", "-b", "200", "-m", "100", "--steps", "10",
              "--n-gen", "1", "--hidden", "64,64", "--critic-hidden", "64",
              "--feature-dim", "16", "--n-samples", "500"],
    "potgan": ["potgan", "train", "--data", "ring8", "-b", "256", "-m", "64", "--steps", "10",
               "--n-critic", "1", "--vae-steps", "100", "--forest-trees", "4",
               "--forest-depth", "3", "--n-samples", "500"],
}

#: The child: runs the CLI, recording the pools' sizes when the engine starts training.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from ootrain.engine import core
from ootrain.threads import current_threads
seen = {}
_train = core.Engine.train
def train(self, *a, **k):
    if not seen:
        seen.update(current_threads())
    return _train(self, *a, **k)
core.Engine.train = train
def report(code):
    print("BENCH " + json.dumps({"pools": seen, "code": code, "wall": time.perf_counter() - t0}),
          file=sys.stderr, flush=True)
from ootrain.cli import app
sys.argv = ["ootrain"] + sys.argv[1:]
try:
    app()
    report(0)
except SystemExit as e:
    report(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
    raise
"""


def pools_text(pools: dict) -> str:
    if not pools:
        return "?"
    parts = [f"torch {pools.get('torch', '?')}"]
    for api in ("blas", "openmp"):
        vals = sorted(set((pools.get(api) or {}).values()))
        if vals:
            parts.append(f"{api} {'/'.join(map(str, vals))}")
    if "numba" in pools:
        parts.append(f"numba {pools['numba']}")
    return ", ".join(parts)


def run_case(method: str, setting: str, workdir: str, timeout: float) -> dict:
    out = os.path.join(workdir, f"{method}-{setting}-{time.monotonic_ns()}")
    cmd = [sys.executable, "-c", CHILD, *COMMANDS[method], "--store", out + ".zarr",
           "--out", out, "--no-progress"]
    env = dict(os.environ)
    env.pop("OOTRAIN_THREADS", None)
    env.setdefault("OOTRAIN_NO_PROGRESS", "1")
    env.setdefault("KEOPS_CACHE_FOLDER", os.path.join(ROOT, ".keops_cache"))
    env.setdefault("MPLBACKEND", "Agg")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.pop(var, None)
    if setting != "default":
        cmd += ["--threads", setting]
        env["OOTRAIN_THREADS"] = setting
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        wall = time.perf_counter() - t0
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        wall, rc = time.perf_counter() - t0, "timeout"
        err = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    info: dict = {}
    for line in err.splitlines():
        if line.startswith("BENCH "):
            info = json.loads(line[6:])
    if rc != 0:
        print(f"  {method} {setting}: exit {rc}\n{err[-2000:]}", file=sys.stderr)
    return {"wall": wall, "load": load, "rc": rc, "pools": info.get("pools", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(COMMANDS), choices=list(COMMANDS))
    ap.add_argument("--settings", nargs="+", default=["0", "1", "2", "default"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds per run; a run past it is reported as \"> timeout\"")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from ootrain.threads import available_cpus, default_threads, physical_cores

    print(machine_header("Thread defaults: each method's train command at 0 / 1 / 2 / default "
                         "threads — `bench_threads.py`", ["benchmarks/bench_threads.py",
                                                         *sys.argv[1:]]))
    print(f"- CPUs available to the process (affinity, cgroup quota): {available_cpus()}; "
          f"physical cores among them: {physical_cores()}; default_threads(): "
          f"{default_threads()}")
    print(f"- settings: {', '.join(args.settings)}; repeats: {args.repeats} (interleaved, order "
          "rotated per repeat); fresh subprocess per run; wall time of the whole command "
          "(imports, data, training, samples and plots)")
    print()
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-", dir=args.workdir) as workdir:
        for rep in range(args.repeats):
            for method in args.methods:
                k = rep % len(args.settings)
                order = args.settings[k:] + args.settings[:k]
                for setting in order:
                    r = run_case(method, setting, workdir, args.timeout)
                    results.setdefault((method, setting), []).append(r)
                    print(f"  repeat {rep} {method:13s} threads={setting:8s} {r['wall']:7.1f} s "
                          f"load {r['load']:.2f}  [{pools_text(r['pools'])}]", file=sys.stderr,
                          flush=True)
    rows = []
    for method in args.methods:
        base = results.get((method, "1"))
        base_med = median([r["wall"] for r in base]) if base else None
        for setting in args.settings:
            rs = results[(method, setting)]
            walls = [r["wall"] for r in rs]
            med = median(walls)
            ok = all(r["rc"] == 0 for r in rs)
            rows.append([f"`{method} train`", setting, pools_text(rs[0]["pools"]),
                         ", ".join(f"> {r['wall']:.0f}" if r["rc"] == "timeout" else
                                   f"{r['wall']:.1f}" for r in rs),
                         (">= " if any(r["rc"] == "timeout" for r in rs) else "") + f"{med:.1f}",
                         f"{med / base_med:.2f}" if base_med else "", 
                         ", ".join(f"{r['load']:.2f}" for r in rs), "ok" if ok else ("timeout" if any(r["rc"] == "timeout" for r in rs) else "FAILED")])
    print(table(["command", "--threads", "pools while training", "wall per repeat (s)",
                 "median (s)", "÷ 1 thread", "load (1 min) before each", "exit"], rows))
    print()
    print("Arguments (plus `--store`, `--out` in a temp dir and `--no-progress`):")
    print()
    for method in args.methods:
        print(f"- {method}: `ootrain {' '.join(COMMANDS[method])}`")
    print(f"\n- load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
