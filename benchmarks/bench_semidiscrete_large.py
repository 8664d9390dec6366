"""Large semi-discrete OT with the targets on disk: throughput and peak memory against N.

Issue 13, item 4: ``N`` targets in ``d`` dimensions stored as a zarr array on disk (never all
in RAM), ``SemiDiscreteOT(path).fit(sampler, chi2_tol=...)`` with its defaults (hard argmin,
backend ``auto``: FAISS flat search per target block of ~64 MiB on the CPU; ``--device cuda
--backend torch`` runs the torch backend's certified GEMM argmin on the GPU, the blocks read
from disk and copied to the device at every pass).  Source: standard Gaussian; targets:
``bench_semidiscrete.py``'s seeded Gaussian mixture (8 centres ~ N(0, I), std 0.5).

Each ``N`` runs in a fresh subprocess for ``--seconds`` of fitting (``max_iter`` large, the
run is stopped by a sampler that raises after the time budget), and reports

- seconds per iteration and source samples assigned per second (each assigned against all
  ``N`` targets: ``samples x N x d x 2`` flop-equivalents per second),
- the process's peak RSS (``ru_maxrss``) and the size of the stored targets, to show memory
  is ``O(batch d + block d + N)`` (the potentials and Adam's moments are ``5 N`` floats),
- an extrapolated time to the marginal chi^2 <= ``--chi2`` (0.05, the SD-FM paper's stop):
  any sampling-based solver needs at least ``N / chi2`` samples (a map balanced on ``T``
  samples has a true chi^2 of about ``N / T``); ``--efficiency`` (samples used / ``N / chi2``,
  measured at N = 10^4 by ``bench_semidiscrete.py``) turns it into the solver's own estimate.

Example (this machine, one thread)::

    python benchmarks/bench_semidiscrete_large.py --n 250000 1000000 --d 64 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_semidiscrete import make_targets  # noqa: E402


def write_targets(path: str, n: int, d: int, seed: int = 0, rows: int = 2**16) -> None:
    """``bench_semidiscrete.make_targets(n, d, seed)`` written to a zarr array in row chunks."""
    import zarr
    y = make_targets(n, d, seed)
    arr = zarr.open_array(path, mode="w", shape=(n, d), chunks=(rows, d), dtype="float32")
    for a in range(0, n, rows):
        arr[a:a + rows] = y[a:a + rows]


class _Stop(Exception):
    pass


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    from ootrain.ot.semidiscrete import SemiDiscreteOT
    d = args.d[0]
    ot = SemiDiscreteOT(args.path, device=args.device, backend=args.backend)
    draws = {"n": 0, "samples": 0, "t0": None, "first": None}

    def sampler(k: int, rng: np.random.Generator) -> np.ndarray:
        now = time.perf_counter()
        if draws["t0"] is None:
            draws["t0"] = now
        elif draws["first"] is None:   # the first iteration includes the cell-width scan
            draws["first"] = now
            draws["samples_first"] = draws["samples"]
        if now - draws["t0"] > args.seconds:
            raise _Stop
        draws["n"] += 1
        draws["samples"] += k
        return rng.normal(size=(k, d)).astype(np.float32)

    t = time.perf_counter()
    try:
        ot.fit(sampler, chi2_tol=args.chi2, max_iter=10**9, rng=0, progress=False)
    except _Stop:
        pass
    end = time.perf_counter()
    steady = end - (draws["first"] or t)
    samples = draws["samples"] - draws.get("samples_first", 0)
    if samples == 0:      # one iteration in the budget: charge the scan to it
        steady, samples = end - t, draws["samples"]
    return {"n": ot.n_targets, "d": d, "device": args.device, "threads": args.threads,
            "seconds": end - t, "draws": draws["n"], "samples": draws["samples"],
            "samples_per_s": samples / steady if steady > 0 else float("nan"),
            "checks": len(ot.history),
            "last_chi2": ot.history[-1]["chi2"] if ot.history else None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--d", type=int, nargs="+", default=[64])
    ap.add_argument("--seconds", type=float, default=60.0, help="fitting time per N")
    ap.add_argument("--chi2", type=float, default=0.05)
    ap.add_argument("--efficiency", type=float, default=None,
                    help="samples the solver used / (N / chi2), measured at smaller N")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", help="c-transform backend (torch on a GPU)")
    ap.add_argument("--dir", default=None, help="where the zarr targets go (default: a temp dir)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for d in args.d:
            for n in args.n:
                path = os.path.join(tmp, f"y_{n}_{d}.zarr")
                t = time.perf_counter()
                write_targets(path, n, d)
                made = time.perf_counter() - t
                cmd = [sys.executable, __file__, "--child", "--path", path, "--d", str(d),
                       "--seconds", str(args.seconds), "--chi2", str(args.chi2),
                       "--threads", str(args.threads), "--device", args.device,
                       "--backend", args.backend]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["targets_mib"] = n * d * 4 / 2**20
                r["write_s"] = made
                flops = r["samples_per_s"] * n * d * 2
                r["gflops"] = flops / 1e9
                need = n / args.chi2
                r["min_samples"] = need
                r["hours_at_minimum"] = need / r["samples_per_s"] / 3600
                if args.efficiency:
                    r["hours_estimate"] = r["hours_at_minimum"] * args.efficiency
                rows.append(r)
                print(f"N={n} d={d} {args.device} threads={args.threads}: "
                      f"{r['samples_per_s']:.0f} samples/s ({r['gflops']:.1f} GFLOP/s), "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB (targets {r['targets_mib']:.0f} "
                      f"MiB on disk), N/χ² = {need:.2g} samples → ≥ {r['hours_at_minimum']:.1f} h"
                      + (f", ≈ {r['hours_estimate']:.1f} h at efficiency {args.efficiency}"
                         if args.efficiency else ""), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "argv": sys.argv, "date": time.strftime("%F %T %Z"),
                       "load": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
