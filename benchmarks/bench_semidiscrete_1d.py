"""1-D semi-discrete OT: the quantile method against the ascent, to the issue's accuracy.

Issue 13, item 1: uniform [0, 1] to ``N`` points ``(j + 1/2) / N`` with *default* arguments
must map >= 99 % of points as the exact quantile map and give a cost within 0.5 % of
``W2^2 = 1 / (12 N^2)``.  Rows, one thread:

- ``quantile``: ``SemiDiscreteOT(y).fit(draw)`` with its defaults (1-D: the quantile
  method, mismatch <= 0.01 with 99 % probability);
- ``ascent``: ``fit(draw, method="ascent")`` (the averaged Adam ascent at its default
  chi^2 <= 1e-3), and at ``--ascent-chi2`` (1e-4) where ``N <= --ascent-max-n``;

each in a fresh interpreter, with fit seconds, source draws, agreement with the exact map on
2·10^6 fresh points, the cost's relative error, and the RSS growth during the fit and the
peak RSS after it.  Limits, measured in the same run: the
sampler alone (``rng.random`` in batches of 2^22, the same calls) and the histogram kernel
alone; the in-memory alternative (``np.sort`` of all draws, then ``np.quantile``) is timed
on 10^8 draws and its memory for the quantile method's draw count is stated.

Example::

    python benchmarks/bench_semidiscrete_1d.py --n 50 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_header, set_threads, table  # noqa: E402


HEADERS = ["N", "method", "s", "draws", "M draws/s", "agree %", "cost err %", "χ² (check)",
           "mismatch ≤ (99 %)", "fit ΔRSS / peak MiB"]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def draw(k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random((k, 1))


def run_child(n: int, fit_kw: dict) -> dict:
    """``run`` in a fresh interpreter, so that its peak RSS is its own."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([n, fit_kw])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(n: int, **fit_kw) -> dict:
    import torch
    from ootrain.ot.semidiscrete import SemiDiscreteOT
    y = ((torch.arange(n, dtype=torch.float64) + 0.5) / n)[:, None]
    calls = [0]

    def counted(k: int, rng: np.random.Generator) -> np.ndarray:
        calls[0] += k
        return draw(k, rng)
    rss0 = rss_mib()
    t = time.perf_counter()
    sd = SemiDiscreteOT(y).fit(counted, rng=1, progress=False, **fit_kw)
    seconds = time.perf_counter() - t
    rss_fit = rss_mib()
    x = torch.rand(2_000_000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    agree = float((sd.assign(x) == (x[:, 0] * n).floor().long()).double().mean())
    last = sd.history[-1]
    return {"n": n, "seconds": seconds, "draws": calls[0], "agreement": agree,
            "cost_error": float(sd.cost(x) * 12 * n * n - 1), "chi2": last["chi2"],
            "certified": bool(last["certified"]), "mismatch_bound": last.get("mismatch"),
            "rss_growth_mib": rss_fit - rss0, "peak_rss_mib": rss_fit}


def limits(batches: int = 8) -> dict:
    from ootrain.ot.monotone import QUANTILE_BATCH, QUANTILE_BINS, _count_bins
    rng = np.random.default_rng(0)
    k = QUANTILE_BATCH
    t = time.perf_counter()
    for _ in range(batches):
        x = draw(k, rng)
    sampler = batches * k / (time.perf_counter() - t)
    x = x[:, 0]
    edges = np.unique(np.sort(x)[k // QUANTILE_BINS - 1::k // QUANTILE_BINS])
    grid = np.linspace(edges[0], edges[-1], 4 * edges.size + 1)
    tab = np.searchsorted(edges, grid).astype(np.int64)
    counts = np.zeros(edges.size + 1, np.int64)
    inv = (tab.size - 1) / (edges[-1] - edges[0])
    _count_bins(x, edges, tab, inv, counts)
    t = time.perf_counter()
    for _ in range(batches):
        _count_bins(x, edges, tab, inv, counts)
    kernel = batches * k / (time.perf_counter() - t)
    big = rng.random(10**8)
    t = time.perf_counter()
    np.quantile(np.sort(big), [0.25, 0.5, 0.75])
    in_memory = big.size / (time.perf_counter() - t)
    return {"sampler_draws_s": sampler, "kernel_draws_s": kernel, "sort_draws_s": in_memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[50, 1000])
    ap.add_argument("--ascent-chi2", type=float, default=1e-4)
    ap.add_argument("--ascent-max-n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.child:
        n, fit_kw = json.loads(args.child)
        print(json.dumps(run(n, **fit_kw)))
        return
    print(machine_header("1-D semi-discrete OT: quantile method vs ascent", sys.argv))
    rows, out = [], {"runs": []}          # the limits last: their 10^8 draws raise the peak RSS
    for n in args.n:
        cases = [("quantile (default)", {}), ("ascent (default χ² 1e-3)", {"method": "ascent"})]
        if n <= args.ascent_max_n:
            cases.append((f"ascent χ² {args.ascent_chi2:g}",
                          {"method": "ascent", "chi2_tol": args.ascent_chi2}))
        for name, kw in cases:
            r = run_child(n, kw)
            r["method"] = name
            out["runs"].append(r)
            rows.append([n, name, f"{r['seconds']:.1f}", f"{r['draws']:.3g}",
                         f"{r['draws'] / r['seconds'] / 1e6:.1f}", f"{100 * r['agreement']:.2f}",
                         f"{100 * r['cost_error']:+.3f}", f"{r['chi2']:.2g}",
                         "-" if r["mismatch_bound"] is None else f"{r['mismatch_bound']:.3f}",
                         f"{r['rss_growth_mib']:.0f} / {r['peak_rss_mib']:.0f}"])
            print(table(HEADERS, rows[-1:]), flush=True)
    lim = out["limits"] = limits()
    print(table(HEADERS, rows))
    q = [r for r in out["runs"] if r["method"].startswith("quantile")]
    both = 1 / (1 / lim["sampler_draws_s"] + 1 / lim["kernel_draws_s"])
    print(f"\nlimits (one thread): sampler alone {lim['sampler_draws_s'] / 1e6:.0f} M draws/s, "
          f"histogram kernel alone {lim['kernel_draws_s'] / 1e6:.0f} M/s, the two in series "
          f"{both / 1e6:.0f} M/s; in-memory np.sort + np.quantile "
          f"{lim['sort_draws_s'] / 1e6:.0f} M/s")
    for r in q:
        rate = r["draws"] / r["seconds"]
        print(f"N={r['n']}: quantile method {rate / 1e6:.0f} M draws/s = "
              f"{rate / both:.2f} of sampler + kernel, "
              f"{rate / lim['sort_draws_s']:.1f}x in-memory sorting, which would hold "
              f"{r['draws'] * 8 / 2**30:.1f} GiB of draws")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
