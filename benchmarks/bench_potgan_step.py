"""One POT-GAN training cycle at large batch: the engine vs in-memory autograd of the same loss.

A POT-GAN cycle is one WGAN-GP critic update and one generator update whose loss adds the
latent OT regulariser (:mod:`ootrain.methods.potgan`): the frozen encoder ``Q`` embeds a real
batch and the generated batch, the Latent Transformation Forest ``F`` takes ``forest_steps``
Adam steps (Algorithm 2, re-matching each time), and ``L_POT`` pulls the generated latents
onto the real latents matched to them.  It runs two ways from the same models and on the same
inputs:

- ``engine``: :class:`ootrain.methods.wgan.WGANGP` trained by
  :func:`ootrain.methods.training.train` (two engine steps per cycle, each Run → Solve →
  ReRun in ``m``-row micro-batches: the critic's loss is a sum of per-sample terms, the
  generator's goes through the per-sample embeddings ``[D(G(z)), Q(G(z))]`` and ``Q(x)``,
  the regulariser's solve (forest steps, matching) on the stored ``b × 17`` and ``b × 16``
  numbers, then the ReRun against the cotangents);
- ``in-memory``: the same two losses on the whole batch with one autograd graph each — what
  a user writes; activations grow with the batch.  Its inputs are the engine's: each
  population's rows drawn micro-batch by micro-batch from the engine's keys
  (:func:`ootrain.engine.core.latent_key`) and concatenated.

Models sized like an MNIST GAN's MLPs: generator 64 → 1024 → 1024 → 784 (ReLU, sigmoid),
critic 784 → 1024 → 1024 → 1 (ReLU), frozen encoder ``Q`` 784 → 512 → 16 (random
initialisation: the timing does not depend on training), forest 8 trees of depth 3 on the
16-d latents; ``POTConfig(weight=0.01, forest_steps=5, matching="argmin", backend="auto")``
(the argmin matching of ``b`` real against ``b`` generated latents goes through
:mod:`ootrain.ot.ctransform`: FAISS when installed above 2^17 pairs).  ``n_critic = 1``.  "Real"
images: fresh uniform rows in [0, 1] drawn by the sampler (the timing does not depend on
the data).

Per (mode, batch) a fresh subprocess (:func:`_common.run_watched`: RSS sampled every 20 ms,
killed past ``--mem-limit`` GiB or ``--wall-limit`` s) runs ``1 + --repeats`` cycles; the
cycle times are the sums of the two steps' times (engine: its phase timings; in-memory:
the wall time of the step, the draws included): the first step (lazy initialisation, the forest's data-dependent thresholds) is
reported separately and the minimum of the others is the step time.  "POT part" is the wall
time inside the regulariser's ``prepare`` (Algorithm 2: ``forest_steps`` forest forward /
backward / Adam steps with a matching each, then one more matching) and ``loss`` (forest
forward, matching, ``L_POT``; its backward runs inside the generator's backward), taken
on the step with the minimum time.  Peak RSS: the kernel's high-water mark of the child
(``ru_maxrss``) minus its RSS after imports and model creation.

Cross-check: both modes start from identical models and draw identical batches (same seed).
Two numbers, each the largest difference between the modes relative to the largest
magnitude: the first critic update's gradient (at identical parameters: float32 rounding of
two summation orders) and the first generator update's (after that critic update), copied by
an optimizer step pre-hook, and the generator's and critic's parameters after all the steps, with the count of
elements differing by more than 1e-6 (= 0.01 learning rate).  Adam's first update is
``lr * g / (|g| + 1e-8)``, so where a gradient is ~1e-9 a rounding-level difference moves the
parameter by a sizeable fraction of ``lr`` (1e-4): the parameter difference is dominated by
such few elements, not by the bulk.

    /work/venv/bin/python benchmarks/bench_potgan_step.py             # b = 1024, 4096, 16384; ~4 min
    /work/venv/bin/python benchmarks/bench_potgan_step.py --quick     # smoke: b = 512, m = 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (human_bytes, loadavg, machine_header, run_watched, set_threads,  # noqa: E402
                     table)

LATENT, IMAGE, CODE = 64, 784, 16


def _models(seed: int):
    """Generator, critic, frozen encoder and forest, identical for a given ``seed``."""
    from torch import nn

    from ootrain.models.forest import LatentTransformForest
    from ootrain.models.zoo import MLP, seeded
    from ootrain.methods.wgan import make_wgan_critic

    G = seeded(seed, lambda: nn.Sequential(MLP(LATENT, IMAGE, hidden=(1024, 1024)),
                                           nn.Sigmoid()))
    D = make_wgan_critic(IMAGE, hidden=(1024, 1024), seed=seed + 1)
    Q = seeded(seed + 2, lambda: MLP(IMAGE, CODE, hidden=(512,)))
    Q.requires_grad_(False)
    F = LatentTransformForest(CODE, n_trees=8, depth=3, seed=seed + 3)
    return G, D, Q, F


def _reference_step(method, engine_cfg, step: int) -> dict:
    """One step of ``method`` by in-memory autograd of the engine's loss on the inputs the
    engine draws for ``step`` (the same keys per micro-batch, concatenated)."""
    import numpy as np
    import torch

    from ootrain.engine.core import frozen_parameters, latent_key
    from ootrain.methods.wgan import critic_loss

    plan = method.plan(step)
    m, b = engine_cfg.micro_batch, engine_cfg.population
    inputs = [torch.cat([torch.as_tensor(np.asarray(pop.draw(min(m, b - i), latent_key(
        engine_cfg.seed, step, i // m, k)))) for i in range(0, b, m)]).float()
        for k, pop in enumerate(plan.populations)]
    G, D, reg = method.G, method.D, method.reg
    for opt in (method.opt_g, method.opt_c):
        opt.zero_grad(set_to_none=True)
    if method.cfg.player(step) == "critic":
        u = inputs[0]
        width = u.shape[1] - method.latent_dim - 1
        x, z, a = u[:, :width], u[:, width:-1], u[:, -1]
        with torch.no_grad():
            y = G(z)
        loss, sums = critic_loss(D, x, y, a, method.cfg.gp_weight)
        loss.backward()
        method.opt_c.step()
        n = x.shape[0]
        return {"player": "critic", "loss": float(loss.detach()),
                "wasserstein": (sums["d_real"] - sums["d_fake"]) / n}
    z, x = inputs
    with frozen_parameters(D):
        y = G(z)
        adv = -D(y).mean()
        fake_e, real_e = reg.encoder(y), reg.encoder(x)
        reg.prepare(real_e.detach(), fake_e.detach())
        loss = adv + reg.weight * reg.loss(real_e, fake_e)
        loss.backward()
    method.opt_g.step()
    return {"player": "generator", "loss": float(loss.detach())}


def child(args) -> None:
    import numpy as np
    import psutil
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from ootrain.engine import EngineConfig
    from ootrain.methods.potgan import POTConfig, POTRegulariser
    from ootrain.methods.training import train
    from ootrain.methods.wgan import WGANGP, WGANConfig

    set_threads(args.threads)

    class TimedPOT(POTRegulariser):
        """The regulariser with the wall time of ``prepare`` and ``loss`` accumulated."""

        spent = 0.0

        def prepare(self, real_e, fake_e):
            t0 = time.perf_counter()
            try:
                return super().prepare(real_e, fake_e)
            finally:
                self.spent += time.perf_counter() - t0

        def loss(self, real_e, fake_e):
            t0 = time.perf_counter()
            try:
                return super().loss(real_e, fake_e)
            finally:
                self.spent += time.perf_counter() - t0

    G, D, Q, F = _models(args.seed)
    reg = TimedPOT(Q, F, POTConfig(weight=0.01, forest_steps=5, matching="argmin",
                                   backend="auto"))
    sampler = lambda n, rng: rng.random((n, IMAGE), dtype=np.float32)  # noqa: E731
    method = WGANGP(G, D, sampler, torch.optim.Adam(G.parameters(), 1e-4, betas=(0.5, 0.9)),
                    torch.optim.Adam(D.parameters(), 1e-4, betas=(0.5, 0.9)),
                    WGANConfig(n_critic=1), reg, real_spec="uniform")
    cfg = EngineConfig(population=args.child_batch, micro_batch=args.m, latent_dim=LATENT,
                       seed=args.seed)
    method.bind(cfg)
    n_steps = 2 * (1 + args.repeats)    # engine steps: (critic, generator) per cycle

    # the first critic's and the first generator's gradients, copied when their Adam steps
    # (the forest's optimizer is skipped)
    first_grads: dict[str, torch.Tensor] = {}
    owners = {id(next(G.parameters())): "G", id(next(D.parameters())): "D"}

    def grab(opt, *_):
        who = owners.get(id(opt.param_groups[0]["params"][0]))
        if who is not None and who not in first_grads:
            first_grads[who] = torch.cat([p.grad.reshape(-1) for g in opt.param_groups
                                          for p in g["params"]])

    hook = register_optimizer_step_pre_hook(grab)
    base = psutil.Process().memory_info().rss
    rows: list[dict] = []
    if args.mode == "engine":
        def callback(r) -> None:
            rows.append({**r.metrics, "step_s": sum(r.timings.values()), "pot": reg.spent})
            reg.spent = 0.0

        train(method, n_steps, cfg, callback=callback)
    else:
        for step in range(n_steps):
            t0 = time.perf_counter()
            row = _reference_step(method, cfg, step)
            rows.append({**row, "step_s": time.perf_counter() - t0, "pot": reg.spent})
            reg.spent = 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
    hook.remove()
    params = torch.cat([p.detach().reshape(-1) for p in
                        list(G.parameters()) + list(D.parameters())])
    torch.save({"params": params, "grad_G": first_grads["G"], "grad_D": first_grads["D"]},
               args.param_out)
    steps = [rows[i]["step_s"] + rows[i + 1]["step_s"] for i in range(0, n_steps, 2)]
    pot = [rows[i]["pot"] + rows[i + 1]["pot"] for i in range(0, n_steps, 2)]
    best = 1 + min(range(len(steps) - 1), key=lambda i: steps[1 + i])
    print(json.dumps({"warmup": steps[0], "time": steps[best], "steps": steps,
                      "pot": pot[best], "pot_all": pot, "base": base, "peak": peak,
                      "gen_loss": [r["loss"] for r in rows if r["player"] == "generator"],
                      "wasserstein": [r["wasserstein"] for r in rows
                                      if r["player"] == "critic"]}))


def _error(r: dict, args) -> str:
    if r["killed"] == "memory":
        return f"killed: RSS {human_bytes(r['rss'])} > limit {args.mem_limit:g} GiB"
    if r["killed"] == "wall":
        return f"killed: wall > {args.wall_limit:g} s"
    return f"exit {r['returncode']}: {r['err_tail'][:100]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1024, 4096, 16384],
                    help="batch b (real and generated samples per update)")
    ap.add_argument("--m", type=int, default=256, help="micro-batch rows")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up "
                    "step (the minimum is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-limit", type=float, default=12.0, help="GiB per child (RSS)")
    ap.add_argument("--wall-limit", type=float, default=600.0, help="seconds per child")
    ap.add_argument("--quick", action="store_true", help="smoke test: --batch 512 --m 128")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--child-batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--param-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.batch, args.m = [512], 128
    import torch

    set_threads(args.threads)
    print(machine_header("POT-GAN step: the engine (Run → Solve → ReRun) vs in-memory autograd"))
    print(f"- micro-batch m = {args.m}; n_critic 1; POT weight 0.01, forest_steps 5, argmin "
          f"matching, backend auto; threads {args.threads}; {args.repeats} timed steps after "
          f"1 warm-up; limits {args.mem_limit:g} GiB, {args.wall_limit:g} s per child\n")
    rows = []
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batch:
            out = {}
            for mode in ("in-memory", "engine"):
                ppath = os.path.join(tmp, f"{mode}-{b}.pt")
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--mode", mode,
                       "--child-batch", str(b), "--param-out", ppath, "--m", str(args.m),
                       "--threads", str(args.threads), "--repeats", str(args.repeats),
                       "--seed", str(args.seed)]
                w = run_watched(cmd, env, args.mem_limit * 2**30, args.wall_limit)
                if w["killed"] or w["returncode"] != 0:
                    out[mode] = {"error": _error(w, args)}
                    print(f"  batch {b} {mode}: {out[mode]['error']} (after {w['wall']:.0f} s, "
                          f"load {loadavg()})", flush=True)
                    continue
                r = out[mode] = json.loads(w["lines"][-1])
                r["params"] = ppath
                r["watched"] = w["peak"]
                print(f"  batch {b} {mode}: step {r['time']:.2f} s (all: "
                      f"{', '.join(f'{s:.2f}' for s in r['steps'])}; POT part "
                      f"{', '.join(f'{s:.2f}' for s in r['pot_all'])}), baseline RSS "
                      f"{human_bytes(r['base'])}, peak {human_bytes(r['peak'])} (sampled "
                      f"{human_bytes(w['peak'])}), child wall {w['wall']:.0f} s, load "
                      f"{loadavg()}", flush=True)
            a, c = out["in-memory"], out["engine"]
            diff = gdiff = "—"
            if "params" in a and "params" in c:
                sa, sc = torch.load(a["params"]), torch.load(c["params"])
                rel = {k: float((sa[k] - sc[k]).abs().max() / sa[k].abs().max()) for k in sa}
                far = int(((sa["params"] - sc["params"]).abs() > 1e-6).sum())
                diff = (f"{rel['params']:.1e} ({far} of {sa['params'].numel() / 1e6:.1f} M "
                        f"elements differ by > 1e-6)")
                gdiff = f"G {rel['grad_G']:.1e}, D {rel['grad_D']:.1e}"
                gl = max(abs(x - y) / max(abs(x), 1e-30) for x, y in
                         zip(a["gen_loss"], c["gen_loss"]))
                print(f"  batch {b}: params max rel diff {diff}; first-step gradients max "
                      f"rel diff {gdiff}; gen_loss max rel diff over the steps {gl:.1e}",
                      flush=True)
            for mode, r in (("in-memory", a), ("engine", c)):
                if "error" in r:
                    rows.append([b, mode, "—", r["error"], "—", "—", "—", "", ""])
                    continue
                rows.append([b, mode, f"{r['warmup']:.2f}", f"{r['time']:.2f}",
                             f"{r['time'] / a['time']:.2f}" if "time" in a else "—",
                             f"{r['pot']:.2f}", human_bytes(r["peak"] - r["base"]),
                             gdiff if mode == "engine" else "",
                             diff if mode == "engine" else ""])
    print()
    print(table(["batch b", "mode", "first step (s)", "step time (s)", "÷ in-memory",
                 "of which POT part (s)", "peak RSS above baseline",
                 "first-step grad max rel diff vs in-memory",
                 "param max rel diff vs in-memory (after all steps)"], rows))
    print(f"\n- load average at the end: {loadavg()}")


if __name__ == "__main__":
    main()
