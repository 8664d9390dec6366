"""Peak memory of one full RSR step as the population b grows, at a fixed memory budget.

Each configuration runs in a fresh subprocess (``--child``), so its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that configuration alone.  The child
also samples its RSS every 50 ms in a thread to attribute the peak to a phase, and samples the
free space of the store's file system to report the peak extra disk use (store + sort spill files;
other processes writing to the same disk blur this number).

The step is ``Engine.step`` (checkpoint, Run, Solve, ReRun, optimiser step) with:
a tiny generator (``Linear(latent 4 → d)``, so Run is cheap), identity embedding, sliced W2 with
k = 2 Gaussian directions, targets mode, ``memory_budget`` = 256 MiB (the solver's sort
budget: ``rsr.plan_pass`` decides whether whole rows fit, else the external sample sort)
and ``chunk_bytes`` = 16 MiB; m = 65536 (or b if smaller).  The real data is a
fixed set of n = 10^6 samples, itself a zarr array on disk (so it does not sit in RSS), embedded
once before the step (that phase is reported as ``embed_real``).

    /work/venv/bin/python benchmarks/bench_memory.py                          # 10^5 … 10^8
    /work/venv/bin/python benchmarks/bench_memory.py --b 100000 300000 --n 100000   # smoke

The 10^8 configuration writes ~27 GB (b × d × 4 B of embeddings, more than this machine's RAM)
and needs that much free disk (``Engine.run`` checks before writing); it takes minutes on
two cores.  Stores are deleted after each configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import dir_size, human_bytes, loadavg, machine_header, table  # noqa: E402

MiB = 1 << 20


# --------------------------------------------------------------------------- the child
def child(args: argparse.Namespace) -> dict:
    import resource

    import numpy as np
    import psutil
    import torch
    import zarr
    from torch import nn

    from ootrain.engine.core import Engine, EngineConfig
    from ootrain.methods.rsr import RSR, SlicedSolver, plan_pass
    from ootrain.store import Store

    torch.set_num_threads(args.threads or torch.get_num_threads())
    proc = psutil.Process()
    state = {"phase": "setup", "peak": {}, "min_free": None, "stop": False}

    def sampler() -> None:
        while not state["stop"]:
            rss = proc.memory_info().rss
            ph = state["phase"]
            state["peak"][ph] = max(state["peak"].get(ph, 0), rss)
            try:
                free = shutil.disk_usage(args.workdir).free
                state["min_free"] = free if state["min_free"] is None else min(state["min_free"],
                                                                               free)
            except OSError:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    free0 = shutil.disk_usage(args.workdir).free
    b, d, n, k = args.b[0], args.d, args.n, args.k
    m = min(args.m, b)
    times: dict[str, float] = {}
    out: dict = {"b": b, "d": d, "n": n, "k": k, "m": m}
    root = tempfile.mkdtemp(prefix=f"bench-mem-{b}-", dir=args.workdir)
    try:
        # real data on disk, written chunk by chunk (does not stay in RSS)
        real = zarr.create_array(os.path.join(root, "real.zarr"), shape=(n, d),
                                 chunks=(65536, d), dtype="float32", compressors=None)
        rng = np.random.default_rng(1)
        for lo in range(0, n, 65536):
            hi = min(n, lo + 65536)
            real[lo:hi] = rng.standard_normal((hi - lo, d), dtype=np.float32) + 0.5
        torch.manual_seed(0)
        G = nn.Linear(args.latent, d)
        cfg = EngineConfig(population=b, micro_batch=m, latent_dim=args.latent, seed=0,
                           memory_budget=args.budget, chunk_bytes=args.chunk_bytes)
        solver = SlicedSolver(n_directions=k)
        opt = torch.optim.Adam(G.parameters(), lr=1e-3)
        method = RSR(G, real, opt, solver=solver, generator_spec="linear",
                     embedding_spec="identity")
        t = time.perf_counter()  # the fingerprint hashes all of the real data (sha256)
        store = Store(os.path.join(root, "store"), Engine.store_config(cfg, method))
        out["fingerprint_s"] = time.perf_counter() - t
        eng = Engine(method, store, cfg)
        rows = eng._chunk_rows(method.plan(0).populations[0], d)
        g = plan_pass(b, n, k, 4, rows * d * 4, args.budget)
        out["path"] = f"in memory, {g} directions/pass" if g else "external sort"
        out["rss_before"] = proc.memory_info().rss

        def wrap(name: str, fn):
            def w(*a, **kw):
                state["phase"] = name
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    times[name] = time.perf_counter() - t
                    state["phase"] = "step-other"
            return w

        eng.embed_real = wrap("embed_real", eng.embed_real)
        eng.run = wrap("run", eng.run)
        eng.solve = wrap("solve", eng.solve)
        eng.rerun = wrap("rerun", eng.rerun)
        eng.embed_real()
        t = time.perf_counter()
        res = eng.step(0)
        out["step_wall"] = time.perf_counter() - t
        state["phase"] = "after"
        out["loss"] = res.metrics["loss"]
        out["store_bytes"] = dir_size(os.path.join(root, "store"))
        out["emb_bytes"] = dir_size(os.path.join(root, "store", "steps", "0", "embeddings"))
        store.release()
    finally:
        state["stop"] = True
        th.join()
        shutil.rmtree(root, ignore_errors=True)
    out["times"] = times
    out["peak_by_phase"] = state["peak"]
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out["disk_peak_extra"] = free0 - (state["min_free"] if state["min_free"] is not None else free0)
    return out


# --------------------------------------------------------------------------- the parent
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--b", type=int, nargs="+",
                    default=[100_000, 1_000_000, 10_000_000, 100_000_000])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n", type=int, default=1_000_000, help="real samples (fixed)")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--m", type=int, default=65536)
    ap.add_argument("--latent", type=int, default=4)
    ap.add_argument("--budget", type=int, default=256 * MiB)
    ap.add_argument("--chunk-bytes", type=int, default=16 * MiB)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where stores go")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    print(machine_header("Peak memory of one RSR step vs population size",
                         ["benchmarks/bench_memory.py"] + (argv if argv is not None else sys.argv[1:])))
    print(f"- setup: d={args.d}, k={args.k}, n_real={args.n} (zarr on disk), m={args.m}, "
          f"latent={args.latent}, generator Linear({args.latent}→{args.d}), identity embedding, "
          f"memory_budget={human_bytes(args.budget)}, chunk_bytes={human_bytes(args.chunk_bytes)}"
          f"; one fresh subprocess per b; stores under {args.workdir}")
    print()
    rows, phase_rows = [], []
    for b in args.b:
        free = shutil.disk_usage(args.workdir).free
        print(f"- b={b}: starting at {time.strftime('%H:%M:%S')}, load {loadavg()}, disk free "
              f"{human_bytes(free)}", flush=True)
        cmd = [sys.executable, "-u", os.path.abspath(__file__), "--child", "--b", str(b),
               "--d", str(args.d), "--n", str(args.n), "--k", str(args.k), "--m", str(args.m),
               "--latent", str(args.latent), "--budget", str(args.budget), "--chunk-bytes",
               str(args.chunk_bytes), "--threads", str(args.threads), "--workdir", args.workdir]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"  b={b}: timed out after {args.timeout:.0f} s", flush=True)
            rows.append([b, "timeout", "", "", "", "", "", time.perf_counter() - t, loadavg()])
            continue
        wall = time.perf_counter() - t
        res = next((json.loads(line[7:]) for line in p.stdout.splitlines()
                    if line.startswith("RESULT ")), None)
        if p.returncode != 0 or res is None:
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            print(f"  b={b}: failed (rc {p.returncode}): {err}", flush=True)
            rows.append([b, f"failed: {err[:80]}", "", "", "", "", "", wall, loadavg()])
            continue
        tm, pk = res["times"], res["peak_by_phase"]
        rows.append([b, res["path"], human_bytes(res["store_bytes"]), human_bytes(res["emb_bytes"]),
                     human_bytes(res["ru_maxrss"]), human_bytes(res["rss_before"]),
                     human_bytes(res["disk_peak_extra"]), round(res["step_wall"], 1), loadavg()])
        phase_rows.append([b] + [human_bytes(pk.get(ph, 0)) for ph in
                                 ("embed_real", "run", "solve", "rerun")]
                          + [round(tm.get(ph, float("nan")), 1) for ph in
                             ("embed_real", "run", "solve", "rerun")])
        print(f"  b={b}: peak RSS {human_bytes(res['ru_maxrss'])}, store "
              f"{human_bytes(res['store_bytes'])}, step {res['step_wall']:.1f} s "
              f"(run {tm['run']:.1f}, solve {tm['solve']:.1f}, rerun {tm['rerun']:.1f}), "
              f"real-data fingerprint {res.get('fingerprint_s', float('nan')):.1f} s, "
              f"process wall {wall:.1f} s, load {loadavg()}", flush=True)
    print()
    print(table(["b", "sort path", "store on disk", "of which embeddings", "peak RSS (ru_maxrss)",
                 "RSS before step (imports, model)", "peak extra disk (store + spill)",
                 "step wall (s)", "load after"], rows))
    print()
    print("Peak RSS by phase (sampled every 50 ms) and phase times (s):")
    print()
    print(table(["b", "embed_real", "Run", "Solve", "ReRun", "t embed_real", "t Run", "t Solve",
                 "t ReRun"], phase_rows))
    print()
    print(f"- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
