"""Engine overhead: an RSR step on the engine (in-memory store) vs plain in-memory autograd.

Both sides compute the gradient of the SAME loss on the SAME inputs, then take one Adam step:
the sliced W2² (exact, unequal sizes: quantile targets) between ``E(G(z))`` for ``b`` latents
``z`` and the whole real set (``n`` points), over the same ``k`` directions.

- ``engine``: :meth:`ootrain.engine.Engine.step` of :class:`ootrain.methods.RSR` with
  ``SlicedSolver(k)`` on the in-memory store (``Store(None, …)``, what
  ``ootrain.methods.train(…, store=None)`` opens at these sizes): Run (``b`` forwards without
  autograd, ``m`` rows at a time, latents regenerated from their Philox keys) → Solve (project
  the stored embeddings and the stored real embeddings, sort, quantile targets) → ReRun (the
  same micro-batches with autograd, accumulated) → ``optimizer.step()``; at ``m = b`` and at
  ``m = --m``.
- ``plain``: what a user writes without the engine: ``loss = sliced_wasserstein(G(z), real,
  Ω)`` (:func:`ootrain.ot.sliced.sliced_wasserstein`), one autograd pass over the ``b``
  samples, ``backward()``, ``optimizer.step()``.  ``z`` are the engine's latents of the same
  step (``Engine.inputs``, regenerated before timing) and ``Ω`` the directions the engine
  stored for that step (``steps/<k>/directions``), so the loss values agree (printed).

The plain and the ``m = b`` engine generator start from the same initialisation and take the
same steps, so their trajectories coincide to float32 rounding.  Repeats are interleaved
(repeat r: every b, every mode, then repeat r + 1), after ``--warmup`` untimed steps per case;
medians of wall and process-CPU time.  torch intra-op threads and the BLAS pools (via
threadpoolctl) are pinned to ``--threads`` for both sides (same process) and printed.

The first step is reported separately: opening the store (incl. the fingerprint: sha256 of the
real set), building the engine, embedding the real set, and step 0 (incl. the engine's
one-micro-batch determinism check), vs the median of later steps.  ``--profile B`` adds a
cProfile of ``--profile-steps`` engine steps at ``b = B``, ``m = min(--m, B)``.

Setup: generator ``MLP(8 → 128 → 128 → 8)``, LayerNorm + ReLU (``pipelines/rsr_table2.py``'s),
identity embedding, k = 64 Gaussian directions, real = ``mog:8:8`` (n = 32768), float32, Adam
(lr 3e-3, betas 0.5, 0.999).

    .venv/bin/python benchmarks/bench_engine_overhead.py                       # ~3-5 min
    .venv/bin/python benchmarks/bench_engine_overhead.py --b 1024 2048 --repeats 2 --warmup 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import loadavg, machine_header, median, table  # noqa: E402


def make_generator(seed: int):
    import torch
    from ootrain.models.zoo import MLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(8, 8, hidden=(128, 128), activation="relu", layer_norm=True)


class EngineCase:
    """One engine (in-memory store) kept open across repeats: step k, k + 1, …"""

    def __init__(self, real, b: int, m: int, k: int, seed: int) -> None:
        from ootrain.engine import Engine, EngineConfig
        from ootrain.methods import RSR
        from ootrain.methods.rsr import SlicedSolver
        from ootrain.methods.training import estimate_step_bytes, make_optimizer, \
            open_shared_store

        self.b, self.m = b, m
        self.G = make_generator(0)
        opt = make_optimizer(self.G.parameters(), "adam", 3e-3)
        self.method = RSR(self.G, real, opt, solver=SlicedSolver(n_directions=k))
        self.cfg = EngineConfig(population=b, micro_batch=m, latent_dim=8, seed=seed)
        t = [time.perf_counter()]
        # what ootrain.methods.train does before its loop, phase by phase
        self.method.bind(self.cfg)
        est = estimate_step_bytes(self.method, self.cfg)
        assert est * 2 <= self.cfg.memory_budget, "would not be an in-memory store"
        self.store = open_shared_store(None, Engine.store_config(self.cfg, self.method))
        self.store.__enter__()
        t.append(time.perf_counter())
        self.engine = Engine(self.method, self.store, self.cfg)
        t.append(time.perf_counter())
        self.engine.embed_real()
        t.append(time.perf_counter())
        self.step = 0
        self.last = self.do_step()
        t.append(time.perf_counter())
        self.first = {"store": t[1] - t[0], "engine": t[2] - t[1], "embed_real": t[3] - t[2],
                      "step0": t[4] - t[3], "total": t[4] - t[0]}

    def do_step(self):
        res = self.engine.step(self.step)
        self.step += 1
        return res

    def inputs_and_directions(self, step: int):
        """The latents [b, 8] and the stored directions of ``step`` (must still be stored)."""
        import torch

        pop = self.method.plan(step).populations[0]
        z = self.engine.inputs(step, 0, pop, 0, self.b)
        omega = torch.as_tensor(self.store.array(f"steps/{step}/directions")[:])
        return z, omega

    def close(self) -> None:
        self.store.__exit__(None, None, None)


class PlainCase:
    def __init__(self, real) -> None:
        import torch
        from ootrain.methods.training import make_optimizer

        self.G = make_generator(0)
        self.opt = make_optimizer(self.G.parameters(), "adam", 3e-3)
        self.real = torch.as_tensor(real)

    def do_step(self, z, omega) -> float:
        from ootrain.ot.sliced import sliced_wasserstein

        self.opt.zero_grad(set_to_none=True)
        loss = sliced_wasserstein(self.G(z), self.real, omega)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def timed(fn, *args):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--b", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--m", type=int, default=1024, help="the second micro-batch (besides m = b)")
    ap.add_argument("--k", type=int, default=64, help="directions")
    ap.add_argument("--n", type=int, default=32768, help="real points")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="B",
                    help="also cProfile engine steps at b = B (m = min(--m, B))")
    ap.add_argument("--profile-steps", type=int, default=10)
    args = ap.parse_args()

    import numpy as np
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(args.threads)
    limits = threadpool_limits(limits=args.threads)  # noqa: F841 (held for the whole run)
    print(machine_header("Engine overhead: RSR engine step (in-memory store) vs plain autograd",
                         sys.argv))
    pools = ", ".join(f"{p['internal_api']} ({os.path.basename(p['filepath'])}): "
                      f"{p['num_threads']}" for p in threadpool_info())
    print(f"- threads (both sides): torch {torch.get_num_threads()} intra-op, "
          f"{torch.get_num_interop_threads()} inter-op; BLAS/OpenMP pools: {pools}")
    print(f"- setup: MLP 8→128→128→8 (LayerNorm, ReLU), k = {args.k}, n = {args.n} real "
          f"(mog:8:8), float32, Adam; repeats {args.repeats} (interleaved), warm-up "
          f"{args.warmup}\n")

    from ootrain.data import load_dataset

    real = load_dataset("mog:8:8", n=args.n, seed=1000)
    ms = lambda b: [b] + ([args.m] if args.m < b else [])  # noqa: E731

    # ---------------------------------------------------------------- first steps
    cases: dict[tuple[int, int], EngineCase] = {}
    plains: dict[int, PlainCase] = {}
    first_plain: dict[int, float] = {}
    for b in args.b:
        for m in ms(b):
            cases[b, m] = EngineCase(real, b, m, args.k, args.seed)
        plains[b] = PlainCase(real)
        z, omega = cases[b, b].inputs_and_directions(0)
        _, first_plain[b], _ = timed(plains[b].do_step, z, omega)  # plain step 0
    for _ in range(args.warmup):
        for b in args.b:
            for m in ms(b):
                cases[b, m].do_step()
            plains[b].do_step(*cases[b, b].inputs_and_directions(cases[b, b].step - 1))

    # ---------------------------------------------------------------- timed, interleaved
    wall: dict[tuple[int, str], list[float]] = {}
    cpu: dict[tuple[int, str], list[float]] = {}
    phases: dict[tuple[int, int], list[dict[str, float]]] = {}
    loss_diff: dict[int, float] = {b: 0.0 for b in args.b}
    loads = [loadavg()]
    t_start = time.perf_counter()
    for r in range(args.repeats):
        for b in args.b:
            for m in ms(b):
                res, w, c = timed(cases[b, m].do_step)
                wall.setdefault((b, f"engine m={m}"), []).append(w)
                cpu.setdefault((b, f"engine m={m}"), []).append(c)
                phases.setdefault((b, m), []).append(res.timings)
                if m == b:
                    eng_loss = float(res.metrics["loss"])
            z, omega = cases[b, b].inputs_and_directions(cases[b, b].step - 1)
            loss, w, c = timed(plains[b].do_step, z, omega)
            wall.setdefault((b, "plain"), []).append(w)
            cpu.setdefault((b, "plain"), []).append(c)
            loss_diff[b] = max(loss_diff[b], abs(loss - eng_loss) / abs(loss))
        if r % 5 == 4:
            loads.append(loadavg())
    loads.append(loadavg())
    print(f"timed part: {time.perf_counter() - t_start:.1f} s; 1-min load during it: "
          f"{'; '.join(l.split(',')[0] for l in loads)}\n")

    rows = []
    for b in args.b:
        pw, pc = median(wall[b, "plain"]), median(cpu[b, "plain"])
        rows.append([b, "plain autograd", "–", pw * 1e3, pc * 1e3, "", "", "", 1.0, 1.0, ""])
        for m in ms(b):
            key = (b, f"engine m={m}")
            ph = {p: median([t[p] for t in phases[b, m]]) * 1e3 for p in ("run", "solve",
                                                                          "rerun")}
            ew, ec = median(wall[key]), median(cpu[key])
            rows.append([b, "engine (memory store)", m, ew * 1e3, ec * 1e3,
                         ph["run"], ph["solve"], ph["rerun"], ew / pw, ec / pc,
                         f"{loss_diff[b]:.1e}" if m == b else ""])
    print("### Steady-state step (medians, ms)\n")
    print(table(["b", "side", "m", "wall", "CPU", "Run", "Solve", "ReRun + Adam",
                 "engine / plain (wall)", "engine / plain (CPU)",
                 "max rel. loss diff vs plain"], rows))
    print()
    print("Min / max of the wall times (ms):",
          "; ".join(f"b={b} {s}: {min(v) * 1e3:.1f}/{max(v) * 1e3:.1f}"
                    for (b, s), v in wall.items()))
    print()

    rows = []
    for b in args.b:
        for m in ms(b):
            f = cases[b, m].first
            later = median(wall[b, f"engine m={m}"])
            rows.append([b, m, f["store"] * 1e3, f["engine"] * 1e3, f["embed_real"] * 1e3,
                         f["step0"] * 1e3, f["total"] * 1e3, later * 1e3,
                         (f["total"] - later) * 1e3])
        rows.append([b, "plain", "", "", "", first_plain[b] * 1e3, first_plain[b] * 1e3,
                     median(wall[b, "plain"]) * 1e3,
                     (first_plain[b] - median(wall[b, "plain"])) * 1e3])
    print("### First step (ms): store open + fingerprint, Engine(), embed real, step 0\n")
    print(table(["b", "m", "store", "Engine()", "embed real", "step 0", "first total",
                 "later step (median)", "first − later"], rows))
    print()

    if args.profile:
        b = args.profile
        case = cases.get((b, min(args.m, b))) or EngineCase(real, b, min(args.m, b), args.k,
                                                            args.seed)
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.profile_steps):
            case.do_step()
        pr.disable()
        s = io.StringIO()
        st = pstats.Stats(pr, stream=s)
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(30)
        print(f"### cProfile of {args.profile_steps} engine steps at b = {b}, "
              f"m = {case.m}\n\n```\n{s.getvalue()}```")
    for c in cases.values():
        c.close()


if __name__ == "__main__":
    main()
