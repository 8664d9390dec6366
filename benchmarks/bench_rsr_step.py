"""One Run-Sort-ReRun step versus plain gradient accumulation over the same b samples.

RSR: ``Engine.step`` (Run → Solve → ReRun → optimiser step) on a local zarr store in a temporary
directory, sliced W2 with k Gaussian directions, targets mode, identity embedding.

Accumulation (the baseline, what a user without RSR would do): for each of the ceil(b/m)
micro-batches, draw m latents, forward with grad, an in-memory sliced W2 loss against m real
samples (the same k directions for the whole step; project, ``torch.sort`` both sides, mean
squared difference), backward; one optimiser step at the end.  It is *not* the same loss (the
sliced W2 of b samples is not the mean of per-micro-batch sliced W2s — that is the point of RSR),
but it is the same amount of model work: b forwards and b backwards.

Model work: RSR = b forwards (Run) + b forwards and backwards (ReRun); accumulation = b forwards
and backwards.  With backward ≈ 2 forwards the floor of the ratio RSR/accumulation is ≈ 4/3.

The two methods run interleaved (RSR rep, accumulation rep, ...) on the same process so that a
changing background load hits both; medians over ``--repeats`` are reported.

    /work/venv/bin/python benchmarks/bench_rsr_step.py                 # b = 10^6 (minutes)
    /work/venv/bin/python benchmarks/bench_rsr_step.py --b 20000 --m 1024 --k 8 --repeats 2  # smoke
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import dir_size, human_bytes, loadavg, machine_header, median, table  # noqa: E402

from ootrain.engine.compute import Compute  # noqa: E402
from ootrain.engine.core import Engine, EngineConfig  # noqa: E402
from ootrain.threads import apply_threads, current_threads  # noqa: E402
from ootrain.methods.rsr import RSR, SlicedSolver  # noqa: E402
from ootrain.ot.sliced import random_directions  # noqa: E402
from ootrain.store import Store  # noqa: E402


def make_generator(latent: int, hidden: int, d: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, d))


def make_real(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2.0, size=d).astype(np.float32)
    shift = rng.normal(size=d).astype(np.float32)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= scale
    x += shift
    return x


def accumulation_step(G: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, b: int,
                      m: int, k: int, gen: torch.Generator, latent: int,
                      variant: str = "argsort") -> dict[str, float]:
    """ceil(b/m) micro-batches: forward with grad, per-micro-batch sliced W2, backward; step.

    variant ``"torchsort"``: the textbook loss, ``torch.sort`` of the generated projections with
    autograd through the sort (slow on CPU: torch.sort of [64, 4096] takes ~30 ms, its backward a
    scatter).  variant ``"argsort"``: the same value and gradient, computed the fast way — rank
    the generated projections with ``np.argsort`` (no grad), put the sorted real projections at
    those ranks (per-sample targets) and take the mean squared difference, so autograd sees
    only a matmul and an MSE.  Real projections are sorted with ``np.sort`` in both.
    """
    t0 = time.perf_counter()
    d = real.shape[1]
    omega = random_directions(d, k, generator=gen)
    perm = torch.randperm(real.shape[0], generator=gen)
    n_micro = math.ceil(b / m)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for i in range(n_micro):
        mi = min(m, b - i * m)
        z = torch.randn(mi, latent, generator=gen)
        idx = perm[(i * m) % real.shape[0]:][:mi]
        if idx.numel() < mi:  # wrap around a real set smaller than b
            idx = torch.randint(real.shape[0], (mi,), generator=gen)
        with torch.no_grad():
            py = np.sort((omega.T @ real[idx].T).numpy(), axis=1)  # [k, mi] sorted
        e = G(z)
        px = omega.T @ e.T  # [k, mi]
        if variant == "torchsort":
            loss = (torch.sort(px, dim=1).values - torch.from_numpy(py)).square().mean()
        else:
            ranks = np.argsort(px.detach().numpy(), axis=1)
            t = np.empty_like(py)
            np.put_along_axis(t, ranks, py, axis=1)
            loss = (px - torch.from_numpy(t)).square().mean()
        loss = loss * (mi / b)
        loss.backward()
        total += float(loss.detach())
    opt.step()
    return {"total": time.perf_counter() - t0, "loss": total}


class _SolveAfterRun(SlicedSolver):
    """RSR's sliced solver without the overlap: all of Solve after Run."""

    def observe(self, ctx):
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--b", type=int, default=1_000_000, help="population per step")
    ap.add_argument("--m", type=int, default=4096, help="micro-batch size")
    ap.add_argument("--k", type=int, default=64, help="number of directions")
    ap.add_argument("--n", type=int, default=None, help="real samples (default: b)")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--d", type=int, default=64, help="generator output = embedding width")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=int, default=1 << 30, help="Solve memory budget, bytes")
    ap.add_argument("--chunk-bytes", type=int, default=16 << 20)
    ap.add_argument("--mode", choices=("target", "cotangent"), default="target")
    ap.add_argument("--tmpdir", default=None, help="where the temporary store goes")
    ap.add_argument("--no-torchsort", action="store_true",
                    help="skip the (slow) torch.sort accumulation baseline")
    ap.add_argument("--profile", default=None,
                    help="write a cProfile of one extra RSR step to this path")
    ap.add_argument("--compare-overlap", action="store_true",
                    help="also time RSR with Solve after Run (no overlap), interleaved")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch, BLAS/OpenMP and numba threads of both sides (ootrain.threads."
                         "apply_threads; 0: the libraries' defaults)")
    args = ap.parse_args(argv)
    b, m, k = args.b, args.m, args.k
    n = args.n or b
    # one setting for both sides: torch, BLAS/OpenMP (threadpoolctl) and numba together; RSR's
    # Solve runs its Dask tasks on the usable cores (one BLAS thread per task)
    apply_threads(args.threads)

    print(machine_header("RSR step vs gradient accumulation", ["benchmarks/bench_rsr_step.py"]
                         + (argv if argv is not None else sys.argv[1:])))
    print(f"- setup: b={b}, m={m}, k={k}, n_real={n}, generator {args.latent}→{args.hidden}→"
          f"{args.hidden}→{args.d} MLP (ReLU, float32), identity embedding, mode={args.mode}, "
          f"memory_budget={human_bytes(args.budget)}, chunk_bytes={human_bytes(args.chunk_bytes)}, "
          f"Adam; {args.repeats} repeats, interleaved; thread pools (both sides) "
          f"{current_threads()}; RSR's Solve: {Compute()}")
    print()

    real = make_real(n, args.d, seed=1)
    G0 = make_generator(args.latent, args.hidden, args.d, seed=0)
    G_rsr, G_acc, G_ts, G_plain = (copy.deepcopy(G0) for _ in range(4))
    E = nn.Identity()
    tmp = tempfile.mkdtemp(prefix="bench-rsr-", dir=args.tmpdir)
    try:
        cfg = EngineConfig(population=b, micro_batch=m, latent_dim=args.latent, seed=0,
                           memory_budget=args.budget, chunk_bytes=args.chunk_bytes)
        solver = SlicedSolver(n_directions=k, mode=args.mode)
        opt_rsr = torch.optim.Adam(G_rsr.parameters(), lr=1e-4)
        method = RSR(G_rsr, real, opt_rsr, embedding=E, solver=solver,
                     generator_spec="bench-mlp", embedding_spec="identity")
        store = Store(os.path.join(tmp, "store"), Engine.store_config(cfg, method))
        eng = Engine(method, store, cfg)  # keep_steps=2: older steps' arrays are dropped
        plain = None   # the same RSR with Solve entirely after Run
        if args.compare_overlap:
            solver_p = _SolveAfterRun(n_directions=k, mode=args.mode)
            method_p = RSR(G_plain, real, torch.optim.Adam(G_plain.parameters(), lr=1e-4),
                           embedding=E, solver=solver_p, generator_spec="bench-mlp",
                           embedding_spec="identity")
            plain = Engine(method_p, Store(os.path.join(tmp, "store-plain"),
                                           Engine.store_config(cfg, method_p)), cfg)
            plain.embed_real()
        t = time.perf_counter()
        eng.embed_real()
        t_real = time.perf_counter() - t
        chunk_rows = eng._chunk_rows(method.plan(0).populations[0], args.d)
        print(f"- embed_real (once, not in the step): {t_real:.2f} s; chunk_rows={chunk_rows}"
              f", n_chunks={math.ceil(b / chunk_rows)}")

        # process CPU time per phase (all threads of this process), next to the engine's wall
        # timings: CPU time is far less sensitive to other jobs on the machine than wall time
        cpu: dict[str, float] = {}

        def cpu_timed(name, fn):
            def w(*a, **kw):
                c = time.process_time()
                try:
                    return fn(*a, **kw)
                finally:
                    cpu[name] = time.process_time() - c
            return w

        eng.run = cpu_timed("run", eng.run)
        eng.solve = cpu_timed("solve", eng.solve)
        eng.rerun = cpu_timed("rerun", eng.rerun)

        opt_acc = torch.optim.Adam(G_acc.parameters(), lr=1e-4)
        opt_ts = torch.optim.Adam(G_ts.parameters(), lr=1e-4)
        real_t = torch.from_numpy(real)
        gen = torch.Generator().manual_seed(0)
        # warm-up (allocator, thread pools) — one small pass each, not timed
        accumulation_step(G_acc, opt_acc, real_t, min(b, 4 * m), m, k, gen, args.latent)
        if not args.no_torchsort:
            accumulation_step(G_ts, opt_ts, real_t, min(b, 4 * m), m, k, gen, args.latent,
                              "torchsort")

        def acc_run(G, opt, variant):
            c = time.process_time()
            r = accumulation_step(G, opt, real_t, b, m, k, gen, args.latent, variant)
            return {**r, "cpu": time.process_time() - c}

        rsr, acc, ts, loads, plains = [], [], [], [], []
        step_bytes = 0
        for rep in range(args.repeats):
            loads.append(loadavg().split(",")[0])
            if plain is not None:
                t = time.perf_counter()
                res_p = plain.step(rep)
                plains.append({**res_p.timings, "wall": time.perf_counter() - t})
                print(f"  rep {rep}: RSR without overlap: run {plains[-1]['run']:.2f} s, solve "
                      f"{plains[-1]['solve']:.2f} s, rerun {plains[-1]['rerun']:.2f} s",
                      flush=True)
            t = time.perf_counter()
            c = time.process_time()
            res = eng.step(rep)
            wall = time.perf_counter() - t
            rsr.append({**res.timings, "wall": wall, "cpu_step": time.process_time() - c,
                        **{f"cpu_{kk}": v for kk, v in cpu.items()},
                        "loss": res.metrics["loss"]})
            # disk use stays bounded: the engine (keep_steps=2) dropped the previous step's
            # arrays at the end of this step (inside its wall time)
            step_bytes = dir_size(os.path.join(tmp, "store", "steps", str(rep)))
            acc.append(acc_run(G_acc, opt_acc, "argsort"))
            if not args.no_torchsort:
                ts.append(acc_run(G_ts, opt_ts, "torchsort"))
            r = rsr[-1]
            print(f"  rep {rep}: RSR run {r['run']:.2f} s (cpu {r['cpu_run']:.2f}), solve "
                  f"{r['solve']:.2f} s (cpu {r['cpu_solve']:.2f}; the overlap's background "
                  f"work {r.get('observer', 0.0):.2f} s), rerun {r['rerun']:.2f} s "
                  f"(cpu {r['cpu_rerun']:.2f}), step wall {wall:.2f} s | accumulation "
                  f"(argsort) {acc[-1]['total']:.2f} s (cpu {acc[-1]['cpu']:.2f})"
                  + (f", (torch.sort) {ts[-1]['total']:.2f} s (cpu {ts[-1]['cpu']:.2f})"
                     if ts else "")
                  + f" | load {loads[-1]}", flush=True)

        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
            eng.step(args.repeats)
            prof.disable()
            prof.dump_stats(args.profile)
            print(f"- cProfile of one extra RSR step written to {args.profile}")

        def series(key):
            if key == "rsr_total":
                return ([r["run"] + r["solve"] + r["rerun"] for r in rsr],
                        [r["cpu_run"] + r["cpu_solve"] + r["cpu_rerun"] for r in rsr])
            if key == "rsr_nosolve":
                return ([r["run"] + r["rerun"] for r in rsr],
                        [r["cpu_run"] + r["cpu_rerun"] for r in rsr])
            if key == "step":
                return [r["wall"] for r in rsr], [r["cpu_step"] for r in rsr]
            if key == "acc":
                return [a["total"] for a in acc], [a["cpu"] for a in acc]
            if key == "ts":
                return [a["total"] for a in ts], [a["cpu"] for a in ts]
            if key.startswith("plain_"):
                part = key[len("plain_"):]
                w = [p["run"] + p["solve"] + p["rerun"] if part == "total" else p[part]
                     for p in plains]
                return w, w   # (wall only)
            return [r[key] for r in rsr], [r[f"cpu_{key}"] for r in rsr]

        labels = [
            ("run", "RSR: Run (b forwards, no grad, zarr write)"),
            ("solve", "RSR: Solve (project, sort k rows, targets)"),
            ("rerun", "RSR: ReRun (b fwd+bwd, read targets) + optimiser step"),
            ("rsr_total", "RSR: total (run + solve + rerun)"),
            ("step", "RSR: Engine.step (incl. checkpoint saves)"),
            ("acc", "accumulation, argsort targets (b fwd+bwd, per-micro-batch SW2, step)"),
        ] + ([("ts", "accumulation, autograd through torch.sort (same)")] if ts else []) + (
            [("plain_run", "RSR without overlap: Run"),
             ("plain_solve", "RSR without overlap: Solve (all of it after Run)"),
             ("plain_rerun", "RSR without overlap: ReRun + step"),
             ("plain_total", "RSR without overlap: total")] if plains else [])
        vals = {}
        rows = []
        for key, label in labels:
            w, c = series(key)
            vals[key] = {"wall_med": median(w), "wall_min": min(w), "cpu_med": median(c),
                         "cpu_min": min(c)}
            v = vals[key]
            rows.append([label, v["wall_med"], v["wall_min"], v["cpu_med"], v["cpu_min"],
                         b / v["wall_med"]])
        print()
        print(f"{args.repeats} repeats (seconds; samples/s = b / median wall time):")
        print()
        print(table(["phase", "wall median", "wall min", "CPU median", "CPU min", "samples/s"],
                    rows))
        print()

        def ratio(num, den, f):
            return vals[num][f] / vals[den][f]

        ratio_rows = []
        for num, den, label in [
            ("rsr_total", "acc", "RSR total / accumulation (floor ≈ 1.33)"),
            ("rsr_nosolve", "acc", "RSR excluding Solve (run + rerun) / accumulation"),
            ("run", "acc", "Run / accumulation (≈ 1/3 expected)"),
            ("rerun", "acc", "ReRun / accumulation (≈ 1 expected)"),
            ("solve", "acc", "Solve / accumulation"),
        ] + ([("rsr_total", "ts", "RSR total / torch.sort accumulation")] if ts else []) + (
            [("plain_total", "acc", "RSR without overlap / accumulation"),
             ("plain_solve", "acc", "Solve without overlap / accumulation")] if plains else []):
            if num == "rsr_nosolve" and num not in vals:
                w, c = series(num)
                vals[num] = {"wall_med": median(w), "wall_min": min(w), "cpu_med": median(c),
                             "cpu_min": min(c)}
            ratio_rows.append([label, ratio(num, den, "wall_med"), ratio(num, den, "wall_min"),
                               ratio(num, den, "cpu_med"), ratio(num, den, "cpu_min")])
        print(table(["ratio", "wall (medians)", "wall (mins)", "CPU (medians)", "CPU (mins)"],
                    ratio_rows))
        print()
        print("(ratios of medians / of minima over the repeats; accumulation = the argsort-target "
              "variant unless stated)")
        print()
        print(f"- store per step on disk: {human_bytes(step_bytes)}; load average at the end: "
              f"{loadavg()}; per-rep 1-min loads: {', '.join(loads)}")
        print(f"- per-rep wall totals: RSR "
              f"{[round(r['run'] + r['solve'] + r['rerun'], 2) for r in rsr]}"
              f", accumulation {[round(a['total'], 2) for a in acc]}"
              + (f", torch.sort accumulation {[round(a['total'], 2) for a in ts]}" if ts else ""))
        print(f"- RSR losses (sliced W2 of the population, per step): "
              f"{[round(r['loss'], 4) for r in rsr]}")
        store.release()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
