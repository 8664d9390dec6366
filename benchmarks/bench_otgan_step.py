"""One OT-GAN critic step at large batch: the engine's micro-batched step vs in-memory autograd.

OT-GAN's loss (the mini-batch energy distance of critic features, ``ootrain.ot.sinkhorn``)
couples the whole batch; its gradient is computed here two ways on the same inputs:

- ``in-memory``: forward of all four sets (``X, X'`` real, ``Y = G(Z), Y' = G(Z')`` with the
  generator under ``no_grad``) through the critic with autograd,
  :func:`ootrain.ot.sinkhorn.energy_distance`, ``backward()`` — what a user writes; its
  activations grow with the batch;
- ``micro-batched``: one critic step of :class:`ootrain.methods.otgan.OTGAN` on the engine
  (:class:`ootrain.engine.Engine`, in-memory store) — Run (no grad, ``m`` rows at a time) →
  Solve (the six Sinkhorn problems on the stored features, per-sample cotangents) → ReRun
  (``m`` rows at a time with grad, ``e.backward(cotangent)``): activations of ``m`` rows only.

The inputs are the engine's (keyed per micro-batch by the seed and step; the in-memory mode
regenerates them with ``Engine.inputs`` before timing).  Both players' optimisers are a
"capture" optimiser that records the gradients and leaves the parameters alone, so every
repeat is the same step.  A critic step ascends ``D^2``: the engine's critic gradient is
``-grad D^2``, compared with the in-memory ``grad D^2`` with the sign flipped.

Models sized like an MNIST OT-GAN's MLP: generator 64 → 1024 → 1024 → 784 (ReLU, sigmoid),
critic 784 → 1024 → 1024 → 256 (ReLU) then L2-normalised; cosine cost; ε = ``--eps`` (the
paper's 1/500 = 0.002 needs ~10^3 iterations per problem; the default 0.05 keeps a run short);
Sinkhorn tolerance 1e-3 on the marginals, ε-scaling, dense while each problem has ≤ 2^22
entries (KeOps above).  "Real" images: uniform random in [0, 1] (the timing does not depend
on the data).

Step time: the minimum over ``--repeats`` steps after one warm-up step (lazy initialisation
of the first call is reported separately).  Each (mode, batch) runs in a fresh subprocess
(its peak RSS sampled every 5 ms, minus the RSS after imports and model creation).  The
largest relative difference of the critic gradients is printed (float32; the Sinkhorn
problems are solved on identical features, so the difference is float32 rounding of the two
summation orders).

    .venv/bin/python benchmarks/bench_otgan_step.py                 # ~5 min
    .venv/bin/python benchmarks/bench_otgan_step.py --batch 400 --m 128 --repeats 1  # smoke
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
    import numpy as np
    import torch
    from ootrain.engine import Engine, EngineConfig
    from ootrain.methods.otgan import OTGAN, OTGANConfig
    from ootrain.ot.sinkhorn import energy_distance
    from ootrain.store import Store

    class Capture(torch.optim.Optimizer):
        """Records the gradients at ``step()``; the parameters stay as they are."""

        def __init__(self, params) -> None:
            super().__init__(params, {})
            self.grads = None

        @torch.no_grad()
        def step(self, closure=None):
            self.grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                          for g in self.param_groups for p in g["params"]]

    set_threads(args.threads)
    G, C = _models(args.seed)
    k = args.child_batch // 4                       # each of X, X', Y, Y'

    def images(n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.random((n, 784), dtype=np.float32)

    cfg = OTGANConfig(eps=args.eps, n_gen=1, sinkhorn_tol=1e-3, sinkhorn_max_iter=10000)
    STEP = 1                                        # n_gen = 1: step 1 is a critic step
    ecfg = EngineConfig(population=k, micro_batch=min(args.m, k), latent_dim=64,
                        seed=args.seed)
    opt_c = Capture(C.parameters())
    method = OTGAN(G, C, images, Capture(G.parameters()), opt_c, cfg, real_spec="uniform")
    method.bind(ecfg)
    assert cfg.player(STEP) == "critic"

    def engine() -> Engine:
        return Engine(method, Store(None, Engine.store_config(ecfg, method)), ecfg)

    if args.mode == "in-memory":
        eng = engine()
        pops = method.plan(STEP).populations
        x, x2, z, z2 = (eng.inputs(STEP, i, p, 0, k) for i, p in enumerate(pops))
        del eng
    kw = {"eps": cfg.eps, "cost": "cosine", "tol": cfg.sinkhorn_tol,
          "max_iter": cfg.sinkhorn_max_iter, "scaling": cfg.sinkhorn_scaling,
          "backend": cfg.backend}
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
            with torch.no_grad():
                y, y2 = G(z), G(z2)
            r = energy_distance(C(x), C(x2), C(y), C(y2), **kw)
            r.value.backward()
            grads = [p.grad.clone() for p in C.parameters()]
            return (float(r.value.detach()),
                    sum(int(t.iterations) for t in r.results.values()),
                    float(r.marginal_error), grads)
        res = engine().step(STEP)
        return (res.metrics["loss"], res.metrics["sinkhorn_iterations"],
                res.metrics["marginal_error"], [-g for g in opt_c.grads])  # ascent: -grad

    times = []
    for _ in range(1 + args.repeats):          # the first is a warm-up (lazy initialisation)
        t0 = time.perf_counter()
        value, iters, merr, grads = step()
        times.append(time.perf_counter() - t0)
    t = min(times[1:]) if len(times) > 1 else times[0]
    stop[0] = True
    th.join()
    torch.save(torch.cat([g.reshape(-1) for g in grads]), args.grad_out)
    print(json.dumps({"time": t, "warmup": times[0], "peak": peak, "base": base,
                      "value": value, "sinkhorn_iterations": iters,
                      "marginal_error": merr}))


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

    print(machine_header("OT-GAN critic step: engine (micro-batched) vs in-memory autograd"))
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
                print(f"  batch {b}: D^2 in-memory {a['value']:.6g}, engine {c['value']:.6g}; "
                      f"critic grad max rel diff {diff}", flush=True)
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
                 "baseline", "max marginal error", "critic grad max rel diff vs in-memory"], rows))
    print(f"\n- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
