"""Peak RSS of OT-GAN and POT-GAN steps whose stored populations exceed the memory budget.

Each case runs in a fresh process: one critic and one generator update of the method on the
engine, with the store on disk (a temporary folder) and a small memory budget, so that Solve
takes its out-of-core path (OT-GAN: the streamed Sinkhorn over the stored critic features;
POT-GAN: the blocked matching against the stored transformed latents).  It prints, per
population ``b``, the arrays of one step (what the store holds after the run: older steps are
pruned), the step times and the process's peak RSS; flat
memory means the peak stays within ~10 % while ``b`` grows 10x.

Usage: ``python benchmarks/bench_gan_memory.py [--otgan 500 5000] [--potgan 10000 100000]
[--budget 256KiB]``; ``--quick`` runs the smallest sizes only.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import human_bytes, machine_header, table  # noqa: E402


def _case(method: str, b: int, budget: int, store: str) -> dict:
    """One case, in this process (the child)."""
    import torch

    from ootrain.data import sample_ring8
    from ootrain.engine import EngineConfig
    from ootrain.methods import (OTGAN, OTGANConfig, POTConfig, WGANConfig, build_potgan,
                                 make_critic, make_generator, train)
    from ootrain.models.vae import VAEConfig

    torch.set_num_threads(1)
    if method == "otgan":
        G, C = make_generator(8, 2, (64, 64), seed=0), make_critic(2, 16, (64, 64), seed=1)
        m = OTGAN(G, C, sample_ring8, torch.optim.Adam(G.parameters(), 1e-4),
                  torch.optim.Adam(C.parameters(), 1e-4),
                  OTGANConfig(eps=0.1, n_gen=1, sinkhorn_tol=1e-2, sinkhorn_max_iter=200))
        steps, latent = 2, 8      # step 0 the generator, step 1 the critic (n_gen 1)
    else:
        m = build_potgan(sample_ring8, 2, wgan=WGANConfig(n_critic=1),
                         pot=POTConfig(), vae=VAEConfig(steps=50),
                         hidden=(64, 64), critic_hidden=(64, 64))
        steps, latent = 2, 2      # step 0 the critic, step 1 the generator (n_critic 1)
    cfg = EngineConfig(population=b, micro_batch=min(b, 1000), latent_dim=latent,
                       memory_budget=budget)
    t = time.perf_counter()
    run = train(m, steps, cfg, store=store)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"wall_s": wall, "peak_rss": rss,
            "solve_s": [round(r.timings["solve"], 3) for r in run.results],
            "players": [r.metrics["player"] for r in run.results]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--otgan", type=int, nargs="*", default=[500, 5000])
    ap.add_argument("--potgan", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--budget", default="256KiB")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, b, budget, store = args.child
        print(json.dumps(_case(method, int(b), int(budget), store)))
        return
    from ootrain.cli.options import parse_bytes

    budget = parse_bytes(args.budget)
    print(machine_header("OT-GAN / POT-GAN steps beyond the memory budget: peak RSS vs b"))
    cases = [("otgan", b) for b in (args.otgan[:1] if args.quick else args.otgan)] + \
        [("potgan", b) for b in (args.potgan[:1] if args.quick else args.potgan)]
    rows = []
    for method, b in cases:
        with tempfile.TemporaryDirectory(prefix="ootrain-bench-") as tmp:
            store = os.path.join(tmp, "run.zarr")
            out = subprocess.run([sys.executable, __file__, "--child", method, str(b),
                                  str(budget), store], capture_output=True, text=True,
                                 env={**os.environ, "OOTRAIN_NO_PROGRESS": "1"})
            if out.returncode:
                raise SystemExit(out.stderr[-2000:])
            res = json.loads(out.stdout.strip().splitlines()[-1])
            stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store)
                         for f in fs)
        rows.append([method, b, human_bytes(budget), human_bytes(stored),
                     f"{res['wall_s']:.1f}", " / ".join(f"{p[0]} {s}" for p, s in
                                                       zip(res["players"], res["solve_s"])),
                     human_bytes(res["peak_rss"])])
        print(table(["method", "b", "budget", "one step's arrays", "wall (s)",
                     "Solve (s) per step", "peak RSS"], [rows[-1]]), flush=True)
    print()
    print(table(["method", "b", "budget", "one step's arrays", "wall (s)",
                 "Solve (s) per step", "peak RSS"], rows))


if __name__ == "__main__":
    main()
