"""One OT-GAN critic step at large batch: micro-batched cotangent mode vs in-memory autograd.

OT-GAN's loss (the mini-batch energy distance of critic features, ``ootrain.ot.sinkhorn``)
couples the whole batch; its gradient is computed here two ways on the same inputs:

- ``in-memory``: forward of all four sets (``X, X'`` real, ``Y = G(Z), Y' = G(Z')``) through
  the critic with autograd, the energy distance, ``backward()`` — what a user writes; its
  activations grow with the batch;
- ``micro-batched``: :func:`ootrain.engine.cotangent.cotangent_step` — Run (no grad, ``m`` rows at
  a time) → the six Sinkhorn problems on the stored features → per-sample cotangents →
  ReRun (``m`` rows at a time with grad, ``e.backward(cotangent)``): activations of ``m``
  rows only.

A critic step (both players' gradients: the four sets are replayed).  Models sized like an
MNIST OT-GAN's MLP: generator 64 → 1024 → 1024 → 784 (ReLU, sigmoid), critic 784 → 1024 →
1024 → 256 (ReLU) then L2-normalised; cosine cost; ε = ``--eps`` (the paper's 1/500 = 0.002
needs ~10^3 iterations per problem; the default 0.05 keeps a run short); Sinkhorn tolerance
1e-3 on the marginals, ε-scaling, dense while each problem has ≤ 2^22 entries (KeOps above).
"Real" images: a fixed random batch in [0, 1] (the timing does not depend on the data).

Step time: the minimum over ``--repeats`` steps after one warm-up step (lazy initialisation
of the first call is reported separately).  Each (mode, batch) runs in a fresh subprocess
(its peak RSS sampled every 5 ms, minus the
RSS after imports and model creation).  The in-memory gradient is compared with the
micro-batched one where both ran (same seed: identical models and inputs): the largest
relative difference over parameters is printed (float32; the Sinkhorn problems are solved
on identical features, so the difference is float32 rounding of the two summation orders).

    /work/venv/bin/python benchmarks/bench_otgan_step.py                 # ~5 min
    /work/venv/bin/python benchmarks/bench_otgan_step.py --batch 400 --m 128   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import human_bytes, loadavg, machine_header, set_threads, table  # noqa: E402


def _models(seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                      nn.Linear(1024, 784), nn.Sigmoid())

    class Critic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                                     nn.ReLU(), nn.Linear(1024, 256))

        def forward(self, x):
            return nn.functional.normalize(self.net(x), dim=1)

    return G, Critic()


def child(args) -> None:
    import torch
    from ootrain.engine.cotangent import Population, cotangent_step
    from ootrain.ot.sinkhorn import energy_distance, energy_distance_gradients

    set_threads(args.threads)
    G, C = _models(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    k = args.child_batch // 4                       # each of X, X', Y, Y'
    x, x2 = (torch.rand(k, 784, generator=g) for _ in range(2))
    z, z2 = (torch.randn(k, 64, generator=g) for _ in range(2))
    kw = {"eps": args.eps, "cost": "cosine", "tol": 1e-3, "max_iter": 10000}
    proc = psutil.Process()
    base = peak = proc.memory_info().rss
    stop = [False]

    def sample() -> None:
        nonlocal peak
        while not stop[0]:
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()

    def step():
        for p in list(G.parameters()) + list(C.parameters()):
            p.grad = None
        if args.mode == "in-memory":
            r = energy_distance(C(x), C(x2), C(G(z)), C(G(z2)), **kw)
            r.value.backward()
            return r
        holder = {}

        def solve(*e):
            holder["res"] = energy_distance(*e, **kw)
            return holder["res"].value, energy_distance_gradients(*e, holder["res"])

        gen = lambda u: C(G(u))  # noqa: E731
        cotangent_step([Population(C, x), Population(C, x2), Population(gen, z),
                        Population(gen, z2)], solve, args.m)
        return holder["res"]

    times = []
    for _ in range(1 + args.repeats):          # the first is a warm-up (lazy initialisation)
        t0 = time.perf_counter()
        res = step()
        times.append(time.perf_counter() - t0)
    t = min(times[1:])
    value = float(res.value.detach())
    stop[0] = True
    th.join()
    grads = torch.cat([p.grad.reshape(-1) for p in list(G.parameters()) + list(C.parameters())])
    torch.save(grads, args.grad_out)
    iters = sum(r.iterations for r in res.results.values())
    print(json.dumps({"time": t, "warmup": times[0], "peak": peak, "base": base,
                      "value": value, "sinkhorn_iterations": iters,
                      "marginal_error": res.marginal_error}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[800, 2000, 4000, 8000],
                    help="total batch (4 equal sets: X, X', Y, Y')")
    ap.add_argument("--m", type=int, default=256, help="micro-batch rows")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up "
                    "step (the minimum is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--grad-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import torch

    print(machine_header("OT-GAN step: micro-batched cotangent mode vs in-memory autograd"))
    print(f"- micro-batch m = {args.m}; eps {args.eps}; cosine cost; threads {args.threads}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batch:
            out = {}
            for mode in ("in-memory", "micro-batched"):
                gpath = os.path.join(tmp, f"{mode}-{b}.pt")
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode,
                       "--child-batch", str(b), "--grad-out", gpath, "--m", str(args.m),
                       "--eps", str(args.eps), "--threads", str(args.threads),
                       "--repeats", str(args.repeats),
                       "--seed", str(args.seed)]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    out[mode] = {"error": p.stderr.strip().splitlines()[-1][:100]}
                    continue
                out[mode] = json.loads(p.stdout.strip().splitlines()[-1])
                out[mode]["grad"] = gpath
                r = out[mode]
                print(f"  batch {b} {mode}: {r['time']:.2f} s (first call "
                      f"{r['warmup']:.2f} s), peak RSS {human_bytes(r['peak'])} "
                      f"(+{human_bytes(r['peak'] - r['base'])}), Sinkhorn iterations "
                      f"{r['sinkhorn_iterations']}, load {loadavg()}", flush=True)
            a, c = out["in-memory"], out["micro-batched"]
            diff = "—"
            if "grad" in a and "grad" in c:
                ga, gc = torch.load(a["grad"]), torch.load(c["grad"])
                diff = f"{float((ga - gc).abs().max() / ga.abs().max()):.1e}"
            for mode, r in (("in-memory", a), ("micro-batched", c)):
                if "error" in r:
                    rows.append([b, mode, "—", "—", "—", "—", r["error"]])
                    continue
                rows.append([b, mode, f"{r['time']:.2f}",
                             f"{r['time'] / a['time']:.2f}" if "time" in a else "—",
                             human_bytes(r["peak"] - r["base"]),
                             f"{r['marginal_error']:.1e}",
                             diff if mode == "micro-batched" else ""])
    print()
    print(table(["batch (4 sets)", "mode", "step time (s)", "÷ in-memory", "peak RSS above "
                 "baseline", "max marginal error", "grad max rel diff vs in-memory"], rows))
    print(f"\n- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
