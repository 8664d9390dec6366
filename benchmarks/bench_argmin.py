"""Throughput and memory of the c-transform argmin backends (``ootrain.ot.ctransform.c_transform``).

For ``B`` queries and ``N`` targets in ``d`` dimensions, one hard c-transform evaluates
``B × N`` costs.  Measured side by side in one run:

- the machine's GEMM rate: ``torch.mm`` of float32 ``[B, d] @ [d, N_block]`` on the same shapes
  (the physical limit: squared Euclidean argmin is a GEMM plus a row-wise reduction, ``2 B N d``
  flops), reported as the fraction of that rate each backend reaches ("roofline");
- each backend (``torch`` reference, ``keops``, ``faiss``) for ``sqeuclidean`` and ``l1``;
- the naive alternative a user would write, ``(torch.cdist(x, y) ** 2 − ψ).argmin(1)`` (dense
  ``B × N`` matrix; skipped when that matrix would exceed ``--naive-max-bytes``);
- peak RSS (sampled every 5 ms, relative to the RSS just before the call, after a warm-up call
  and ``malloc_trim``) of a fresh process per (backend, N) with the targets **streamed from a
  zarr array** on disk, N up to ``--stream-n`` (10^7 by default: 2.4 GiB of float32 targets), against the
  ``B × N × 4`` bytes a dense cost matrix would take: memory must stay O((B + N) d).

All backends are checked to return the same value as the torch reference on a subset.

    /work/venv/bin/python benchmarks/bench_argmin.py                      # default (~10 min)
    /work/venv/bin/python benchmarks/bench_argmin.py --n 10000 --stream-n 200000 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import human_bytes, loadavg, machine_header, set_threads, table  # noqa: E402

from ootrain.ot.ctransform import c_transform  # noqa: E402


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_rate(B: int, d: int, repeats: int) -> float:
    """float32 GEMM flop/s on ``[B, d] @ [d, 65536]`` (the shape of a target block)."""
    x, y = torch.randn(B, d), torch.randn(d, 65536)
    torch.mm(x, y)
    return 2 * B * d * 65536 / _best(lambda: torch.mm(x, y), repeats)


def child(args: argparse.Namespace) -> None:
    """One streamed c-transform over a zarr target array; print peak RSS and time as JSON."""
    import zarr

    torch.set_num_threads(args.threads)
    arr = zarr.open_array(args.child, mode="r")
    n = arr.shape[0]
    x = torch.randn(args.B, arr.shape[1], generator=torch.Generator().manual_seed(1))
    psi = torch.zeros(n)
    c_transform(x[:8], arr[:1024], psi[:1024], args.cost, args.backend)  # imports, compiles
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    proc = psutil.Process()
    base = proc.memory_info().rss
    state = {"peak": base, "stop": False}

    def sample() -> None:
        while not state["stop"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    idx, _ = c_transform(x, arr, psi, args.cost, args.backend)
    wall = time.perf_counter() - t
    state["stop"] = True
    th.join()
    print(json.dumps({"wall": wall, "peak": state["peak"], "base": base, "idx0": int(idx[0])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--B", type=int, default=4096, help="queries per call")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                    help="in-memory target counts")
    ap.add_argument("--stream-n", type=int, nargs="+", default=[1_000_000, 10_000_000],
                    help="target counts streamed from zarr (peak RSS, fresh process each)")
    ap.add_argument("--stream-B", type=int, default=256,
                    help="queries of the streamed runs (time grows with B × N; memory must not)")
    ap.add_argument("--backends", nargs="+", default=["torch", "keops", "faiss"])
    ap.add_argument("--costs", nargs="+", default=["sqeuclidean", "l1"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (faiss: OMP threads)")
    ap.add_argument("--naive-max-bytes", type=float, default=4e9)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cost", default="sqeuclidean", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    set_threads(args.threads)
    print(machine_header("c-transform argmin backends", sys.argv))
    B, d = args.B, args.d
    rate = gemm_rate(B, d, args.repeats)
    print(f"- float32 GEMM rate ([{B}, {d}] @ [{d}, 65536], {args.threads} thread(s)): "
          f"{rate / 1e9:.1f} GFLOP/s; load {loadavg()}\n")
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in args.n:
        y = torch.randn(n, d, generator=gen)
        x = torch.randn(B, d, generator=gen)
        psi = 0.1 * torch.randn(n, generator=gen)
        for cost in args.costs:
            ref_idx, ref_val = c_transform(x[:256], y, psi, cost, "torch")
            for backend in args.backends + ["naive"]:
                if backend == "naive":
                    if B * n * 4 > args.naive_max_bytes:
                        rows.append([n, cost, "naive cdist + argmin", "—", "—", "—",
                                     f"skipped: B×N matrix {human_bytes(B * n * 4)}"])
                        continue
                    p = 1.0 if cost == "l1" else 2.0

                    def fn():
                        c = torch.cdist(x, y, p=p)
                        if p == 2.0:
                            c = c.square_()
                        return (c - psi).argmin(dim=1)
                else:
                    def fn(backend=backend, cost=cost):
                        return c_transform(x, y, psi, cost, backend)
                try:
                    got = c_transform(x[:256], y, psi, cost, backend)[1] \
                        if backend != "naive" else None
                except Exception as e:  # a backend that cannot run here
                    rows.append([n, cost, backend, "—", "—", "—", f"unavailable: {e}"[:80]])
                    continue
                if got is not None and not torch.allclose(got, ref_val, rtol=1e-5, atol=1e-5):
                    rows.append([n, cost, backend, "—", "—", "—", "MISMATCH vs torch"])
                    continue
                t0 = time.perf_counter()
                fn()  # warm-up (KeOps compiles, FAISS builds)
                t0 = time.perf_counter() - t0
                # slow cases (> 5 s) are timed once more only, not ``repeats`` times
                t = _best(fn, args.repeats if t0 < 5 else 1)
                pairs = B * n / t
                roof = 2 * B * n * d / t / rate if cost == "sqeuclidean" else float("nan")
                rows.append([n, cost, backend if backend != "naive" else "naive cdist + argmin",
                             f"{t:.4g}", f"{pairs:.3g}",
                             "—" if roof != roof else f"{roof:.2f}", "ok"])
                print(f"  N={n} {cost} {backend}: {t:.3f} s, {pairs:.3g} pairs/s; load "
                      f"{loadavg()}", flush=True)
    print()
    print(table(["N", "cost", "backend", "time (s)", "pairs/s", "fraction of GEMM roofline",
                 "check"], rows))

    # ---------------------------------------------------------------- streamed from zarr
    import zarr

    mem_rows = []
    for n in args.stream_n:
        root = tempfile.mkdtemp(prefix="bench-argmin-", dir=args.workdir)
        try:
            path = os.path.join(root, "targets.zarr")
            arr = zarr.create_array(path, shape=(n, d), chunks=(65536, d), dtype="float32",
                                    compressors=None)
            rng = np.random.default_rng(2)
            for lo in range(0, n, 1 << 20):
                hi = min(n, lo + (1 << 20))
                arr[lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32)
            for backend in args.backends:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", path,
                       "--B", str(args.stream_B),
                       "--backend", backend, "--cost", "sqeuclidean",
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    mem_rows.append([n, backend, "—", "—", "—", "—",
                                     f"failed: {out.stderr.strip().splitlines()[-1][:80]}"])
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                mem_rows.append([n, backend, human_bytes(n * d * 4), f"{res['wall']:.3g}",
                                 human_bytes(res["peak"]), human_bytes(res["peak"] - res["base"]),
                                 human_bytes(args.stream_B * n * 4)])
                print(f"  streamed N={n} {backend}: {res['wall']:.2f} s, peak RSS "
                      f"{human_bytes(res['peak'])}; load {loadavg()}", flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(["N (zarr, streamed)", "backend", "targets on disk", "time (s)",
                 "peak RSS", "peak RSS − RSS before the call", "a dense B×N cost matrix"],
                mem_rows))
    print(f"\n- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
