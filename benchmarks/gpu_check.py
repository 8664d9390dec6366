"""One device check of the GPU paths, sized for a short lease on one NVIDIA H200.

Each check runs in a fresh child process under its own time limit, so that one that fails,
hangs or is killed does not stop the others; its figures (or the error text) go to
``--out``/``results.json`` and ``--out``/``summary.md``, rewritten after every check (and on
SIGTERM), and are printed as they come.  Checks, all through the project's library code:

a. ``gemm``: GPU, driver, torch / CUDA versions, the toolchain KeOps needs (g++, CUDA headers,
   libnvrtc, Python.h), and the measured matrix rates: ``torch.matmul`` of ``n x n x n`` fp32 (TF32
   off), TF32 and bf16, repeated into the same output after warm-ups (best and median of
   timed products), the fp32 GEMM of the c-transform's shape ``[8192, d] @ [d, 65536]``, and
   a device-to-device copy.
b. ``ctransform``: ``ootrain.ot.ctransform.c_transform`` argmin, ``x [B, d]`` against
   ``y [N, d]`` (float32, sqeuclidean, random ``psi``), backends ``torch`` (dense blocks of
   ``torch.cdist`` without the GEMM expansion: not a GEMM), ``keops`` and ``faiss`` (when
   importable), plus a plain-torch GEMM-expansion argmin (not library code: what a GEMM-based
   backend could reach).  The first use of pykeops (its nvrtc binder build) is timed apart.  Each backend is timed on growing query counts
   (1024, x4, ...) while the next one fits its time share, so a slow backend is measured on
   fewer queries; rates are pairs/s and GEMM-equivalent flop/s ``2 B N d / t``, compared with
   the fp32 GEMM rate of (a).  The argmin of the first ``ref_rows`` queries is checked against
   a float64 CPU brute force (mismatches: their float64 gap).  Then ``l1`` with KeOps and torch
   on fewer targets.
c. ``sinkhorn``: ``ootrain.ot.sinkhorn.sinkhorn`` -- torch (dense) vs KeOps on the device
   against a float64 CPU dense solve at a small n; torch vs KeOps timing at a middle n; KeOps at
   n = 10^5 to the tolerance (eps-scaling) and at n = 10^6 for as many iterations as fit the
   share (no eps-scaling; the n shrinks if not even one fits).
d. ``rsr``: ``python -m torch.distributed.run --nproc_per_node 1 -m ootrain.cli rsr train``
   (one step, b = 10^5): which process group ``ootrain.distributed.from_environment`` makes
   (a probe under the same launcher), the step's wall time and stage times; a world-1 nccl
   group with an all-reduce of a CUDA tensor and of a CPU tensor (what the engine's gradient
   all-reduce passes); and the same train command on 2 ranks (one GPU: expected to fail).
e. ``semidiscrete``: ``SemiDiscreteOT(y [N = 10^6, d = 64], device=cuda).fit`` with an
   iteration cap sized from a timed batch, its history (imbalance, dual), and an independent
   imbalance / dual / cost measurement of the fitted and of the zero potential on fresh samples.

f. ``argmin`` (default): the torch backend's sqeuclidean c-transform, now certified GEMMs
   (``torch.addmm`` blocks and top candidates, re-evaluated exactly), ``B = 8192`` queries
   against ``N = 10^6`` targets in ``d = 64`` (float32, TF32 off): seconds, GEMM-equivalent
   TFLOP/s ``2 B N d / t`` against the fp32 GEMM of the same blocks and of one
   ``[8192, 64] @ [64, 65536]`` product, and the argmin of 256 rows against a float64 brute
   force.
g. ``engine`` (default): ``ootrain rsr train --device cuda`` on 1 rank under torchrun (its
   step lines: run / solve / rerun seconds), and the same job in a probe that joins a
   ``cpu:gloo,cuda:nccl`` group first: where the generator's parameters and Adam's moments
   live after training, the steps' phase timings, an all-reduce of a CUDA and of a CPU
   tensor through that group.
h. ``methods`` (default): ``semidiscrete train`` (OTS + FIT), ``otgan train`` and ``potgan
   train`` with ``--device cuda`` for 2 engine steps each (backend torch: KeOps 2.3 crashes
   on CUDA 13).

Without ``--only`` the checks f-h run (about 4 minutes with start-up); ``--only`` picks any.
``--small`` runs every check at tiny sizes (a CPU smoke test); without CUDA the GPU-only
parts are skipped with a note and the rest runs on the CPU.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --out gpu-check            # on the H200
    python benchmarks/gpu_check.py --out /tmp/gpu-check --small                  # smoke test
"""

from __future__ import annotations

import argparse
import ctypes.util
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

CHECKS = ("argmin", "engine", "methods", "gemm", "rsr", "ctransform", "semidiscrete",
          "sinkhorn")   # run order
#: what runs without --only: the engine on the GPU and the GEMM argmin (issue 15), ~4 min
DEFAULT = ("argmin", "engine", "methods")
LETTER = {"gemm": "a", "ctransform": "b", "sinkhorn": "c", "rsr": "d", "semidiscrete": "e",
          "argmin": "f", "engine": "g", "methods": "h"}

FULL = dict(gemm_n=8192, gemm_reps=10, copy_bytes=2**31, B=65536, N=10**6, d=64, ref_rows=256,
            n_l1=10**5, sk_d=16, sk_ref_n=1000, sk_cmp_n=20000, sk_n=(10**5, 10**6),
            rsr_b=10**6, rsr_m=4096, rsr_p=64, sd_N=10**6, sd_d=64, sd_tol=1.0,
            am_N=10**6, am_B=8192, m_b=8192, m_m=2048)
SMALL = dict(gemm_n=256, gemm_reps=3, copy_bytes=2**24, B=2048, N=20000, d=16, ref_rows=64,
             n_l1=4000, sk_d=2, sk_ref_n=200, sk_cmp_n=600, sk_n=(1500, 3000),
             rsr_b=4096, rsr_m=1024, rsr_p=8, sd_N=2000, sd_d=4, sd_tol=0.5,
            am_N=20000, am_B=1024, m_b=512, m_m=256)
#: seconds of each check's own measurements (its share); compile time and start-up come on top
SHARE_FULL = {"gemm": 10, "rsr": 45, "ctransform": 70, "semidiscrete": 60, "sinkhorn": 55,
              "argmin": 40, "engine": 100, "methods": 90}
SHARE_SMALL = {"gemm": 5, "rsr": 45, "ctransform": 20, "semidiscrete": 20, "sinkhorn": 20,
               "argmin": 20, "engine": 60, "methods": 90}
#: expected seconds of a child beyond its share (start-up, imports, KeOps compiles)
OVERHEAD = 12.0
#: a child's hard limit: share x SLACK + START (KeOps builds its nvrtc binder on first use)
SLACK, START = 1.5, 45.0


# ----------------------------------------------------------------------------------
# helpers shared by the children
# ----------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def err_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return (f"{type(e).__name__}: {e}"[:2000] + "\n" + "".join(tb[-3:])[-2000:]).strip()


class Part:
    """A child's results, rewritten to its JSON file after every ``set``."""

    def __init__(self, path: str) -> None:
        self.path, self.data = path, {}

    def set(self, key: str, value: Any) -> Any:
        self.data[key] = value
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=_jsonable)
        os.replace(tmp, self.path)
        return value

    def attempt(self, key: str, fn: Callable[[], Any]) -> Any:
        """``set(key, fn())``, or the error text under ``key`` (the check goes on)."""
        t = time.perf_counter()
        try:
            return self.set(key, fn())
        except Exception as e:  # noqa: BLE001 - every failure is a result here
            say(f"  {key}: FAILED after {time.perf_counter() - t:.1f} s: {type(e).__name__}: "
                f"{str(e)[:300]}")
            self.set(key, {"error": err_text(e), "seconds": time.perf_counter() - t})
            return None


def _jsonable(o: Any) -> Any:
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    try:
        import torch
        if isinstance(o, torch.Tensor):
            return o.tolist()
        if isinstance(o, (torch.dtype, torch.device)):
            return str(o)
    except ImportError:
        pass
    return str(o)


def _device(name: str) -> Any:
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync(dev: Any) -> None:
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: Any) -> tuple[float, Any]:
    _sync(dev)
    t = time.perf_counter()
    r = fn()
    _sync(dev)
    return time.perf_counter() - t, r


def grow(run: Callable[[int], float], start: int, stop: int, budget: float, factor: int = 4
         ) -> list[tuple[int, float]]:
    """``run(k)`` (seconds) at ``k = start, start*factor, ... <= stop`` while the next one is
    predicted (linearly) to fit in what is left of ``budget``; the measured ``(k, s)``."""
    done, spent, k = [], 0.0, min(start, stop)
    while True:
        s = run(k)
        done.append((k, s))
        spent += s
        if k >= stop:
            return done
        nxt = min(stop, k * factor)
        if spent + s * nxt / k > budget:
            return done
        k = nxt


# ----------------------------------------------------------------------------------
# a. environment and GEMM roofline
# ----------------------------------------------------------------------------------
def _cmd(args: list[str], timeout: float = 20) -> str:
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + p.stderr).strip()[-1500:]
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({type(e).__name__}: {e})"


def toolchain() -> dict[str, Any]:
    """What KeOps needs to compile on the device: g++, CUDA headers, libnvrtc, Python.h."""
    import sysconfig
    inc = sysconfig.get_paths().get("include", "")
    out = {
        "g++": shutil.which("g++") or shutil.which("c++"),
        "g++ --version": _cmd(["g++", "--version"]).split("\n")[0],
        "nvcc": shutil.which("nvcc"),
        "nvcc --version": _cmd(["nvcc", "--version"]).split("\n")[-1],
        "CUDA_PATH": os.environ.get("CUDA_PATH"), "CUDA_HOME": os.environ.get("CUDA_HOME"),
        "cuda dirs": sorted(glob.glob("/usr/local/cuda*")),
        "nvrtc.h": sorted(glob.glob("/usr/local/cuda*/include/nvrtc.h")
                          + glob.glob("/usr/local/cuda*/targets/*/include/nvrtc.h"))[:4],
        "find_library": {n: ctypes.util.find_library(n) for n in ("cuda", "nvrtc", "cudart")},
        "libnvrtc files": _nvrtc_files()[:6],
        "Python.h": os.path.exists(os.path.join(inc, "Python.h")),
        "python include": inc,
        "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH"),
        "KEOPS_CACHE_FOLDER": os.environ.get("KEOPS_CACHE_FOLDER"),
    }
    return out


def _nvrtc_files() -> list[str]:
    pats = ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/local/cuda*/targets/*/lib/libnvrtc.so*",
            "/usr/lib/x86_64-linux-gnu/libnvrtc.so*"]
    for p in list(sys.path):
        pats.append(os.path.join(p, "nvidia", "*", "lib", "libnvrtc.so*"))
        pats.append(os.path.join(p, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"))
    found: list[str] = []
    for p in pats:
        for f in glob.glob(p):
            if f not in found:
                found.append(f)
    return found


def versions() -> dict[str, Any]:
    """Installed distributions (metadata only: importing pykeops builds its nvrtc binder, which
    the c-transform check times)."""
    import platform
    from importlib import metadata
    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "zarr", "numcodecs", "google-crc32c", "donfig", "dask",
                 "distributed", "numba", "pykeops", "keopscore", "faiss-cpu", "faiss-gpu-cu12",
                 "faiss-gpu", "typer", "rich", "fsspec", "scikit-learn", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def check_gemm(P: Part, cfg: dict, dev: Any, share: float) -> None:
    import torch
    from _common import code_state, cpu_model, loadavg

    info: dict[str, Any] = {"device": str(dev), "cpu": cpu_model(), "cores": os.cpu_count(),
                            "load": loadavg(), "code": code_state(),
                            "torch_cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=p.total_memory / 2**30,
                    l2_mib=getattr(p, "L2_cache_size", 0) / 2**20,
                    nvidia_smi=_cmd(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,"
                                     "clocks.max.sm,power.limit", "--format=csv,noheader"]))
    P.set("info", info)
    say(f"  device {info.get('gpu', 'cpu')}  torch {torch.__version__} cuda {torch.version.cuda}")
    n, reps = cfg["gemm_n"], cfg["gemm_reps"]

    def gemm(dtype: Any, tf32: bool) -> dict[str, Any]:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            g = torch.Generator(dev).manual_seed(0)
            a = torch.randn(n, n, device=dev, generator=g).to(dtype)
            b = torch.randn(n, n, device=dev, generator=g).to(dtype)
            c = torch.empty(n, n, device=dev, dtype=dtype)
            for _ in range(3):
                torch.matmul(a, b, out=c)
            ts = [timed(lambda: torch.matmul(a, b, out=c), dev)[0] for _ in range(reps)]
            burst, _ = timed(lambda: [torch.matmul(a, b, out=c) for _ in range(reps)], dev)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        fl = 2.0 * n ** 3
        return {"n": n, "best_tflops": fl / min(ts) / 1e12,
                "median_tflops": fl / sorted(ts)[len(ts) // 2] / 1e12,
                "burst_tflops": fl * reps / burst / 1e12, "repeats": reps}

    modes = [("fp32", torch.float32, False)]
    if dev.type == "cuda":
        modes += [("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)]
    for name, dtype, tf32 in modes:
        r = P.attempt(f"gemm_{name}", lambda: gemm(dtype, tf32))
        if r:
            say(f"  GEMM {name} {n}^3: best {r['best_tflops']:.1f} TFLOP/s, median "
                f"{r['median_tflops']:.1f}, burst {r['burst_tflops']:.1f}")

    def argmin_shape() -> dict[str, Any]:
        torch.backends.cuda.matmul.allow_tf32 = False
        d, rows, cols = cfg["d"], min(8192, cfg["B"]), min(65536, cfg["N"])
        x = torch.randn(rows, d, device=dev)
        y = torch.randn(d, cols, device=dev)
        c = torch.empty(rows, cols, device=dev)
        for _ in range(3):
            torch.mm(x, y, out=c)
        ts = [timed(lambda: torch.mm(x, y, out=c), dev)[0] for _ in range(reps)]
        return {"shape": [rows, d, cols], "best_tflops": 2.0 * rows * d * cols / min(ts) / 1e12}

    r = P.attempt("gemm_argmin_shape_fp32", argmin_shape)
    if r:
        say(f"  GEMM fp32 {r['shape']}: {r['best_tflops']:.1f} TFLOP/s")

    def copy() -> dict[str, Any]:
        nb = cfg["copy_bytes"]
        a = torch.empty(nb // 4, device=dev)
        a.normal_()
        b = torch.empty_like(a)
        b.copy_(a)
        ts = [timed(lambda: b.copy_(a), dev)[0] for _ in range(5)]
        return {"bytes": nb, "read_plus_write_GBps": 2 * nb / min(ts) / 1e9}

    r = P.attempt("copy", copy)
    if r:
        say(f"  copy {r['bytes'] / 2**30:.2f} GiB: {r['read_plus_write_GBps']:.0f} GB/s (r+w)")
    P.attempt("versions", versions)
    tc = P.attempt("toolchain", toolchain)
    say(f"  versions {P.data.get('versions')}")
    say(f"  toolchain {tc}")


# ----------------------------------------------------------------------------------
# b. c-transform argmin
# ----------------------------------------------------------------------------------
def _reference(x: Any, y: Any, psi: Any, cost: str) -> dict[str, Any]:
    """float64 CPU brute force: best index, best and second-best value per row."""
    import torch
    x, y, psi = x.double().cpu(), y.double().cpu(), psi.double().cpu()
    best_v = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    second = best_v.clone()
    best_i = torch.zeros(x.shape[0], dtype=torch.long)
    step = 1 << 17
    yy = (y * y).sum(1)
    xx = (x * x).sum(1)
    for t0 in range(0, y.shape[0], step):
        yb = y[t0:t0 + step]
        if cost == "sqeuclidean":
            # direct differences would be exact but slow; the expansion in float64 is accurate
            # to ~1e-13 relative here, far below the float32 gaps we look at
            c = xx[:, None] + yy[None, t0:t0 + step] - 2 * x @ yb.T
        else:
            c = torch.cdist(x, yb, p=1)
        c = c - psi[t0:t0 + step]
        k = min(2, c.shape[1])
        v, i = c.topk(k, dim=1, largest=False)
        allv = torch.cat([best_v[:, None], second[:, None], v], 1)
        alli = torch.cat([best_i[:, None], best_i[:, None], i + t0], 1)
        order = allv.argsort(1)
        best_v = allv.gather(1, order[:, :1])[:, 0]
        best_i = alli.gather(1, order[:, :1])[:, 0]
        second = allv.gather(1, order[:, 1:2])[:, 0]
    return {"idx": best_i, "val": best_v, "gap": second - best_v, "x": x, "y": y, "psi": psi}


def _agreement(idx: Any, ref: dict[str, Any], cost: str) -> dict[str, Any]:
    r = ref["idx"].shape[0]
    got = idx[:r].cpu()
    bad = (got != ref["idx"]).nonzero()[:, 0]
    out = {"rows": r, "agree": int(r - bad.numel()), "fraction": float(1 - bad.numel() / r)}
    if bad.numel():
        xb, yb = ref["x"][bad], ref["y"][got[bad]]
        c = ((xb - yb) ** 2).sum(1) if cost == "sqeuclidean" else (xb - yb).abs().sum(1)
        excess = c - ref["psi"][got[bad]] - ref["val"][bad]
        out.update(max_excess_f64=float(excess.max()),
                   ref_gap_at_mismatch=ref["gap"][bad][:8].tolist(),
                   value_scale=float(ref["val"].abs().mean()))
    out["min_ref_gap"] = float(ref["gap"].min())
    return out


def _gemm_argmin(x: Any, y: Any, psi: Any) -> Any:
    """Plain torch argmin of ``||x - y||^2 - psi`` by the GEMM expansion (reference only)."""
    import torch
    best_v = torch.full((x.shape[0],), math.inf, device=x.device)
    best_i = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    yy = (y * y).sum(1) - psi
    qs, ts = 16384, 65536
    for q0 in range(0, x.shape[0], qs):
        xq = x[q0:q0 + qs]
        bv, bi = best_v[q0:q0 + qs], best_i[q0:q0 + qs]
        for t0 in range(0, y.shape[0], ts):
            c = torch.addmm(yy[None, t0:t0 + ts], xq, y[t0:t0 + ts].T, alpha=-2.0)
            v, i = c.min(1)
            better = v < bv
            bv = torch.where(better, v, bv)
            bi = torch.where(better, i + t0, bi)
        best_v[q0:q0 + qs], best_i[q0:q0 + qs] = bv, bi
    return best_i


def check_ctransform(P: Part, cfg: dict, dev: Any, share: float) -> None:
    import torch
    from ootrain.ot.backends import faiss_available, keops_available
    from ootrain.ot.ctransform import c_transform

    torch.backends.cuda.matmul.allow_tf32 = False

    def import_keops() -> dict[str, Any]:
        t = time.perf_counter()
        import pykeops
        from pykeops.torch import LazyTensor  # noqa: F401
        return {"seconds (builds the nvrtc binder on first use)": time.perf_counter() - t,
                "version": pykeops.__version__}

    say("  importing pykeops (first use builds its nvrtc binder with g++)")
    r = P.attempt("pykeops_import", import_keops)
    _keops_status(P)
    say(f"  pykeops import: {r}; KeOps config: {P.data.get('keops_config')}")
    B, N, d, R = cfg["B"], cfg["N"], cfg["d"], cfg["ref_rows"]
    g = torch.Generator(dev).manual_seed(0)
    x = torch.randn(B, d, device=dev, generator=g)
    y = torch.randn(N, d, device=dev, generator=g)
    psi = torch.rand(N, device=dev, generator=g)
    P.set("problem", {"B": B, "N": N, "d": d, "dtype": "float32", "psi": "U(0, 1)",
                      "data": "x, y ~ N(0, I)", "ref_rows": R})
    say(f"  x [{B}, {d}], y [{N}, {d}] on {dev}; float64 CPU reference on {R} rows")
    t, ref = timed(lambda: _reference(x[:R], y, psi, "sqeuclidean"), torch.device("cpu"))
    P.set("reference_sqeuclidean_s", t)
    backends = ["torch", "keops", "faiss", "gemm-expansion (plain torch, not library)"]
    avail = {"keops": keops_available(), "faiss": faiss_available()}
    P.set("available", avail)
    per = share * 0.8 / 4

    def one(bk: str, cost: str, xq: Any, yq: Any, pq: Any, refq: dict, budget: float
            ) -> dict[str, Any]:
        if bk in avail and not avail[bk]:
            return {"skipped": f"{bk} is not importable here"}
        if bk.startswith("gemm"):
            fn = lambda k: _gemm_argmin(xq[:k], yq, pq)  # noqa: E731
        else:
            fn = lambda k: c_transform(xq[:k], yq, pq, cost, bk)[0]  # noqa: E731
        first, _ = timed(lambda: fn(min(64, xq.shape[0])), dev)
        last = {}

        def run(k: int) -> float:
            s, idx = timed(lambda: fn(k), dev)
            last["idx"] = idx
            say(f"    {bk} {cost}: {k} x {yq.shape[0]} in {s:.3f} s "
                f"({k * yq.shape[0] / s / 1e9:.2f} Gpairs/s)")
            return s

        steps = grow(run, max(R, min(1024, xq.shape[0])), xq.shape[0], budget)
        k, s = steps[-1]
        if s < 1.0:   # short: best of 3
            s = min([s] + [timed(lambda: fn(k), dev)[0] for _ in range(2)])
        pairs = k * yq.shape[0]
        return {"first_call_s (compile)": first, "steps": steps, "B": k, "N": yq.shape[0],
                "seconds": s, "gpairs_per_s": pairs / s / 1e9,
                "gemm_equiv_tflops": 2.0 * pairs * xq.shape[1] / s / 1e12,
                "agreement": _agreement(last["idx"], refq, cost)}

    for bk in backends:
        r = P.attempt(f"sqeuclidean/{bk}", lambda: one(bk, "sqeuclidean", x, y, psi, ref, per))
        if r and "gpairs_per_s" in r:
            a = r["agreement"]
            say(f"  {bk}: B={r['B']} {r['seconds']:.3f} s, {r['gemm_equiv_tflops']:.2f} "
                f"TFLOP/s GEMM-equivalent, argmin agrees on {a['agree']}/{a['rows']} rows "
                f"(first call {r['first_call_s (compile)']:.1f} s)")
        elif r:
            say(f"  {bk}: {r}")
    # l1 on fewer targets
    n1 = cfg["n_l1"]
    y1, p1 = y[:n1], psi[:n1]
    t, ref1 = timed(lambda: _reference(x[:R], y1, p1, "l1"), torch.device("cpu"))
    P.set("reference_l1_s", t)
    for bk in ("keops", "torch"):
        r = P.attempt(f"l1/{bk}", lambda: one(bk, "l1", x, y1, p1, ref1, share * 0.1))
        if r and "gpairs_per_s" in r:
            a = r["agreement"]
            say(f"  l1 {bk}: B={r['B']} N={n1} {r['seconds']:.3f} s, {r['gpairs_per_s']:.2f} "
                f"Gpairs/s, agrees on {a['agree']}/{a['rows']}")


def _keops_status(P: Part) -> None:
    try:
        from keopscore.config import config, cuda_config
        P.set("keops_config", {
            "use_cuda": getattr(cuda_config, "_use_cuda", None),
            "n_gpus": getattr(cuda_config, "n_gpus", None),
            "cuda_version": getattr(cuda_config, "cuda_version", None),
            "cuda_include_path": getattr(cuda_config, "cuda_include_path", None),
            "libnvrtc_folder": getattr(cuda_config, "libnvrtc_folder", None),
            "cuda_message": getattr(cuda_config, "cuda_message", None),
            "cxx": getattr(config, "cxx_compiler", None),
            "build_folder": config.get_build_folder() if hasattr(config, "get_build_folder")
            else None})
    except Exception as e:  # noqa: BLE001
        P.set("keops_config", {"error": err_text(e)})


# ----------------------------------------------------------------------------------
# c. Sinkhorn
# ----------------------------------------------------------------------------------
def check_sinkhorn(P: Part, cfg: dict, dev: Any, share: float) -> None:
    import torch
    from ootrain.ot.backends import keops_available
    from ootrain.ot.sinkhorn import sinkhorn

    warnings.simplefilter("ignore", RuntimeWarning)   # "did not converge" at capped max_iter
    d = cfg["sk_d"]
    g = torch.Generator(dev).manual_seed(0)
    shift = torch.full((d,), 0.5, device=dev)

    def pts(n: int) -> tuple[Any, Any]:
        return (torch.randn(n, d, device=dev, generator=g),
                torch.randn(n, d, device=dev, generator=g) + shift)

    xs, ys = pts(1000)
    eps = 0.05 * float(torch.cdist(xs, ys).pow(2).mean())
    P.set("problem", {"d": d, "x": "N(0, I)", "y": "N(0.5, I)", "eps": eps,
                      "eps_rule": "0.05 x mean cost", "cost": "sqeuclidean", "dtype": "float32"})
    say(f"  d={d}, eps={eps:.4g} (0.05 x mean cost), keops available: {keops_available()}")

    def ref() -> dict[str, Any]:
        n = cfg["sk_ref_n"]
        x, y = pts(n)
        out: dict[str, Any] = {"n": n, "tol": 1e-4}
        t, r64 = timed(lambda: sinkhorn(x.double().cpu(), y.double().cpu(), eps, tol=1e-4,
                                        max_iter=3000, backend="torch"), torch.device("cpu"))
        out["cpu_float64_dense"] = {"seconds": t, "iterations": r64.iterations,
                                    "cost": float(r64.cost), "err": r64.marginal_error}
        for bk in ("torch", "keops"):
            try:
                t, r = timed(lambda: sinkhorn(x, y, eps, tol=1e-4, max_iter=3000, backend=bk),
                             dev)
            except Exception as e:  # noqa: BLE001
                out[f"{dev.type}_{bk}"] = {"error": err_text(e)}
                say(f"    n={n} {bk}: FAILED: {type(e).__name__}: {str(e)[:300]}")
                continue
            df = (r.f.double().cpu() - r64.f)
            dg = (r.g.double().cpu() - r64.g)
            c = (df.mean() - dg.mean()) / 2   # gauge: (f + c, g - c)
            out[f"{dev.type}_{bk}"] = {
                "seconds (first call: compile)": t, "iterations": r.iterations,
                "cost": float(r.cost), "err": r.marginal_error,
                "cost_rel_diff_vs_f64": abs(float(r.cost) - float(r64.cost)) / abs(float(r64.cost)),
                "max_potential_diff_over_eps": float(max((df - c).abs().max(),
                                                         (dg + c).abs().max())) / eps}
            say(f"    n={n} {bk}: cost {float(r.cost):.6g} vs f64 {float(r64.cost):.6g}, "
                f"iters {r.iterations} vs {r64.iterations}, max |dpot|/eps "
                f"{out[f'{dev.type}_{bk}']['max_potential_diff_over_eps']:.2e}")
        return out

    P.attempt("reference", ref)

    def compare() -> dict[str, Any]:
        n = cfg["sk_cmp_n"]
        x, y = pts(n)
        out: dict[str, Any] = {"n": n, "tol": 1e-3}
        for bk in ("torch", "keops"):
            try:
                sinkhorn(x[:64], y[:64], eps, max_iter=1, backend=bk)
                t, r = timed(lambda: sinkhorn(x, y, eps, tol=1e-3, max_iter=2000, backend=bk),
                             dev)
            except Exception as e:  # noqa: BLE001
                out[bk] = {"error": err_text(e)}
                say(f"    n={n} {bk}: FAILED: {type(e).__name__}: {str(e)[:300]}")
                continue
            out[bk] = {"seconds": t, "iterations": r.iterations, "err": r.marginal_error,
                       "cost": float(r.cost), "s_per_iter": t / max(1, r.iterations)}
            say(f"    n={n} {bk}: {t:.3f} s, {r.iterations} iters, cost {float(r.cost):.6g}")
        return out

    cmp = P.attempt("torch_vs_keops", compare)
    if not keops_available():
        P.set("large", {"skipped": "pykeops not importable"})
        return
    if isinstance(cmp, dict) and "error" in cmp.get("keops", {}):
        P.set("large", {"skipped": "KeOps failed at the middle n (torch_vs_keops.keops)"})
        return
    n1, n2 = cfg["sk_n"]
    left = share * 0.75

    def at_n1() -> dict[str, Any]:
        x, y = pts(n1)
        tp, _ = timed(lambda: sinkhorn(x, y, eps, max_iter=1, scaling=None, backend="keops"),
                      dev)
        per_iter = tp / 2      # the probe: 3 log-sum-exp passes + the cost pass
        cap = max(2, int(left * 0.4 / per_iter))
        t, r = timed(lambda: sinkhorn(x, y, eps, tol=1e-3, max_iter=cap, backend="keops"), dev)
        out = {"n": n1, "probe_1_iter_s": tp, "max_iter": cap, "seconds": t,
               "iterations": r.iterations, "converged": r.converged, "err": r.marginal_error,
               "cost": float(r.cost), "s_per_iter": t / max(1, r.iterations),
               "gpairs_per_s_per_pass": n1 * n1 * (2 * r.iterations + 2) / t / 1e9}
        say(f"  n={n1} keops: {t:.2f} s, {r.iterations} iters ({out['s_per_iter']:.4f} s/iter), "
            f"err {r.marginal_error:.2e} (tol 1e-3), converged {r.converged}")
        return out

    r1 = P.attempt("keops_n1", at_n1)

    def at_n2() -> dict[str, Any]:
        per1 = r1["s_per_iter"] if r1 else 1.0
        budget = left * 0.6
        pred = per1 * (n2 / n1) ** 2
        n = n2
        if 2 * pred > budget:   # not even the probe-sized run fits: shrink n
            n = int(n1 * math.sqrt(budget / (2 * per1)) // 1000 * 1000) or n1
            pred = per1 * (n / n1) ** 2
        cap = max(1, int(budget / pred) - 1)
        x, y = pts(n)
        say(f"  n={n} keops: predicted {pred:.2f} s/iter, max_iter {cap} (no eps-scaling)")
        t, r = timed(lambda: sinkhorn(x, y, eps, tol=1e-3, max_iter=cap, scaling=None,
                                      backend="keops"), dev)
        out = {"n": n, "wanted_n": n2, "predicted_s_per_iter": pred, "max_iter": cap,
               "scaling": None, "seconds": t, "iterations": r.iterations,
               "err": r.marginal_error, "cost": float(r.cost),
               "s_per_iter": t / max(1, r.iterations),
               "gpairs_per_s_per_pass": n * n * (2 * r.iterations + 2) / t / 1e9}
        say(f"  n={n} keops: {t:.2f} s for {r.iterations} iters ({out['s_per_iter']:.3f} s/iter, "
            f"{out['gpairs_per_s_per_pass']:.1f} Gpairs/s per pass), err {r.marginal_error:.2e}")
        return out

    P.attempt("keops_n2", at_n2)


# ----------------------------------------------------------------------------------
# d. RSR step under torchrun
# ----------------------------------------------------------------------------------
_PROBE = r"""
import json, os, torch, torch.distributed as dist
from ootrain.distributed import from_environment
with from_environment() as w:
    print("GPUCHECK " + json.dumps({"world": w, "initialized": dist.is_initialized(),
          "backend": dist.get_backend() if dist.is_initialized() else None,
          "cuda_available": torch.cuda.is_available(),
          "LOCAL_RANK": os.environ.get("LOCAL_RANK"), "WORLD_SIZE": os.environ.get("WORLD_SIZE")}))
"""

_NCCL = r"""
import json, time, torch, torch.distributed as dist
from ootrain.distributed import all_reduce, rank_world
out = {}
dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
out["backend"] = dist.get_backend()
t = torch.ones(2**26, device="cuda")
torch.cuda.synchronize(); s = time.perf_counter(); dist.all_reduce(t); torch.cuda.synchronize()
out["cuda_all_reduce_256MiB_s"] = time.perf_counter() - s
out["cuda_all_reduce_ok"] = bool((t == 1).all())
try:
    c = torch.ones(4); dist.all_reduce(c); out["cpu_tensor_all_reduce"] = "ok"
except Exception as e:
    out["cpu_tensor_all_reduce"] = f"{type(e).__name__}: {str(e)[:400]}"
try:
    c = torch.ones(4); all_reduce(c, "probe"); out["library_all_reduce_world1"] = f"ok (world {rank_world()[1]}: a no-op)"
except Exception as e:
    out["library_all_reduce_world1"] = f"{type(e).__name__}: {str(e)[:400]}"
dist.destroy_process_group()
print("GPUCHECK " + json.dumps(out))
"""


#: process groups this child launched (torchrun and its ranks), ended with it on SIGTERM
_LAUNCHED: list[subprocess.Popen] = []


def _kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)
    except OSError:
        pass


def _launch(args: list[str], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, cwd=ROOT, start_new_session=True)
    _LAUNCHED.append(p)
    try:
        text, _ = p.communicate(timeout=timeout)
        killed = False
    except subprocess.TimeoutExpired:
        _kill_group(p)
        text, _ = p.communicate()
        killed = True
    _kill_group(p)   # ranks left behind by torchrun, if any
    _LAUNCHED.remove(p)
    wall = time.perf_counter() - t
    lines = [s for s in (text or "").splitlines() if s.strip()]
    probe = [json.loads(s.split("GPUCHECK ", 1)[1]) for s in lines if "GPUCHECK " in s]
    return {"rc": p.returncode, "killed_at_timeout": killed, "wall_s": wall,
            "result": probe[-1] if probe else None,
            "step_lines": [s.strip()[:300] for s in lines if "step " in s and "SW2" in s][-4:],
            "tail": [s[:300] for s in lines[-12:]]}


def check_rsr(P: Part, cfg: dict, dev: Any, share: float) -> None:
    import torch
    env = dict(os.environ, OOTRAIN_DIST_TIMEOUT="60", OOTRAIN_NO_PROGRESS="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cuda = torch.cuda.is_available()
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    P.set("engine_device_note", "ootrain.engine places no model or tensor on a GPU (no "
          "'cuda'/'device' in ootrain/engine or ootrain/methods/rsr.py): the step runs on the "
          "CPU; CUDA only selects nccl in ootrain.distributed.from_environment when WORLD_SIZE > 1")
    r = P.attempt("probe_1rank", lambda: _launch(
        run + ["--nproc_per_node", "1", "--no-python", sys.executable, "-c", _PROBE], 40, env))
    if r:
        say(f"  torchrun 1 rank, from_environment: {r['result']} (rc {r['rc']})")
    tmp = tempfile.mkdtemp(prefix="gpu_check_rsr_")

    def train(nproc: int, timeout: float) -> dict[str, Any]:
        store = os.path.join(tmp, f"run{nproc}.zarr")
        args = run + ["--nproc_per_node", str(nproc), "-m", "ootrain.cli", "rsr", "train",
                      "--store", store, "--data", "mog:8:8", "-b", str(cfg["rsr_b"]),
                      "-m", str(cfg["rsr_m"]), "-p", str(cfg["rsr_p"]), "--steps", "1",
                      "--out", os.path.join(tmp, f"out{nproc}"), "--no-progress", "--overwrite"]
        out = _launch(args, timeout, env)
        out["command"] = " ".join(args[1:])
        out["completed"] = out["rc"] == 0 and any("done" in s for s in out["tail"])
        return out

    r = P.attempt("train_1rank", lambda: train(1, share * 0.6))
    if r:
        say(f"  rsr train 1 rank (b={cfg['rsr_b']}): rc {r['rc']}, {r['wall_s']:.1f} s wall, "
            f"{r['step_lines'] or r['tail'][-2:]}")
    if cuda:
        r = P.attempt("nccl_world1", lambda: _launch(
            run + ["--nproc_per_node", "1", "--no-python", sys.executable, "-c", _NCCL], 40, env))
        if r:
            say(f"  nccl world 1: {r['result'] or r['tail'][-3:]}")
    else:
        P.set("nccl_world1", {"skipped": "no CUDA: nccl cannot be tried here"})
    r = P.attempt("train_2ranks", lambda: train(2, share * 0.4))
    if r:
        say(f"  rsr train 2 ranks ({'1 GPU, nccl' if cuda else 'CPU, gloo'}): rc {r['rc']}, "
            f"{r['wall_s']:.1f} s, {r['step_lines'] or r['tail'][-3:]}")
    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------
# e. semi-discrete solver
# ----------------------------------------------------------------------------------
def check_semidiscrete(P: Part, cfg: dict, dev: Any, share: float) -> None:
    import numpy as np
    import torch
    from ootrain.ot.backends import keops_available
    from ootrain.ot.ctransform import c_transform
    from ootrain.ot.semidiscrete import CHECK_NOISE, SemiDiscreteOT

    N, d, tol = cfg["sd_N"], cfg["sd_d"], cfg["sd_tol"]
    g = torch.Generator(dev).manual_seed(0)
    # targets: a Gaussian mixture (8 centres ~ N(0, I), std 0.5); source N(0, I): the zero
    # potential is far from balanced, so the fit's progress shows in the imbalance
    centres = torch.randn(8, d, device=dev, generator=g)
    y = centres[torch.randint(8, (N,), device=dev, generator=g)] \
        + 0.5 * torch.randn(N, d, device=dev, generator=g)
    gs = torch.Generator(dev).manual_seed(1)

    def sampler(k: int, rng: np.random.Generator) -> Any:
        return torch.randn(k, d, device=dev, generator=gs)

    # backend: keops when it works here, else torch; time one batch of each candidate
    probe: dict[str, Any] = {}
    xb = torch.randn(65536 if dev.type == "cuda" else 512, d, device=dev, generator=g)
    psi0 = torch.zeros(N, device=dev)
    for bk in (["keops"] if keops_available() else []) + ["torch"]:
        try:
            c_transform(xb[:64], y, psi0, "sqeuclidean", bk)
            steps = grow(lambda k: timed(lambda: c_transform(xb[:k], y, psi0, "sqeuclidean",
                                                             bk), dev)[0],
                         min(8192, xb.shape[0]), xb.shape[0], 3.0, factor=8)
            probe[bk] = {"batch": steps[-1][0], "seconds": steps[-1][1], "steps": steps,
                         "per_sample": steps[-1][1] / steps[-1][0]}
        except Exception as e:  # noqa: BLE001
            probe[bk] = {"error": err_text(e)}
    P.set("backend_probe", probe)
    ok = [b for b in probe if "seconds" in probe[b]]
    if not ok:
        raise RuntimeError(f"no backend ran: {probe}")
    bk = min(ok, key=lambda b: probe[b]["per_sample"])
    per_sample = probe[bk]["per_sample"]
    # a batch of ~0.25 s on the GPU (power of two in [4096, 65536]); the default on the CPU
    batch = int(min(65536, max(4096, 2 ** round(math.log2(max(1.0, 0.25 / per_sample)))))) \
        if dev.type == "cuda" else None
    bs = batch or 256
    t_iter = per_sample * bs
    floor_sum = math.sqrt(2 * N / math.pi)          # sum_j sqrt(2 nu_j (1 - nu_j) / pi), nu = 1/N
    m_cert = math.ceil((floor_sum / (CHECK_NOISE * tol)) ** 2)
    evals = 2 * m_cert * per_sample                 # our own two imbalance measurements
    budget = share * 0.85 - evals
    max_iter = int(max(3, min(5000, (budget / t_iter - m_cert / bs) / 2)))
    P.set("setup", {"N": N, "d": d, "backend": bk, "batch": batch or f"default ({bs})",
                    "tol": tol, "m_cert": m_cert, "predicted_s_per_iter": t_iter,
                    "max_iter": max_iter, "source": "N(0, I)",
                    "targets": "8-component Gaussian mixture, centres ~ N(0, I), std 0.5"})
    say(f"  N={N} d={d} backend {bk} batch {bs}: ~{t_iter:.3f} s/iter predicted, max_iter "
        f"{max_iter}, tol {tol} (certification {m_cert} samples)")
    ot = SemiDiscreteOT(y, "sqeuclidean", backend=bk, device=dev, dtype=torch.float32)
    t, _ = timed(lambda: ot.fit(sampler, batch=batch, max_iter=max_iter, tol=tol, rng=0,
                                progress=False), dev)
    hist = ot.history
    iters = hist[-1]["iteration"] if hist else max_iter
    check_samples = sum(h["samples"] for h in hist)
    fit = {"seconds": t, "iterations": iters, "stopped": "tol" if hist and hist[-1][
        "imbalance"] <= tol and not hist[-1]["early"] else "max_iter",
           "s_per_iter_incl_checks": t / max(1, iters),
           "fit_samples": iters * bs, "check_samples": check_samples,
           "history": hist[-12:]}
    P.set("fit", fit)
    say(f"  fit: {t:.1f} s, {iters} iterations ({fit['stopped']}), last check "
        f"{hist[-1] if hist else None}")

    def evaluate() -> dict[str, Any]:
        ge = torch.Generator(dev).manual_seed(2)
        M = min(m_cert, 2**24)
        out: dict[str, Any] = {"samples": M, "noise_floor": floor_sum / math.sqrt(M)}
        for name, psi in (("fitted", ot.potentials), ("zero", torch.zeros_like(ot.potentials))):
            ge.manual_seed(2)
            counts = torch.zeros(N, device=dev)
            vsum, csum, m = 0.0, 0.0, 0
            ts = time.perf_counter()
            while m < M:
                k = min(bs, M - m)
                x = torch.randn(k, d, device=dev, generator=ge)
                idx, val = c_transform(x, ot.source, psi, "sqeuclidean", bk)
                counts += torch.bincount(idx, minlength=N).to(counts.dtype)
                vsum += float(val.double().sum())
                csum += float(((x - y[idx]) ** 2).sum(1).double().sum())
                m += k
            _sync(dev)
            nu = 1.0 / N
            out[name] = {"imbalance": float((counts / M - nu).abs().sum()),
                         "dual": vsum / M + float(psi.double().mean()),
                         "cost": csum / M, "seconds": time.perf_counter() - ts}
        return out

    r = P.attempt("evaluation", evaluate)
    if r:
        say(f"  fresh {r['samples']} samples (noise floor {r['noise_floor']:.3f}): imbalance "
            f"fitted {r['fitted']['imbalance']:.4f} vs zero psi {r['zero']['imbalance']:.4f}; "
            f"dual {r['fitted']['dual']:.5g} vs {r['zero']['dual']:.5g}; cost "
            f"{r['fitted']['cost']:.5g} vs {r['zero']['cost']:.5g}")


# ----------------------------------------------------------------------------------
# f. the GEMM argmin of the torch backend
# ----------------------------------------------------------------------------------
def check_argmin(P: Part, cfg: dict, dev: Any, share: float) -> None:
    import torch
    from ootrain.ot.backends import TORCH_BLOCK
    from ootrain.ot.ctransform import c_transform

    torch.backends.cuda.matmul.allow_tf32 = False   # fp32 products (the certificate's roundoff)
    N, d, B, R = cfg["am_N"], cfg["d"], cfg["am_B"], cfg["ref_rows"]
    g = torch.Generator(dev).manual_seed(0)
    y = torch.randn(N, d, device=dev, generator=g)
    x = torch.randn(B, d, device=dev, generator=g)
    psi = 0.1 * torch.randn(N, device=dev, generator=g)
    flop = 2.0 * B * N * d
    P.set("problem", {"B": B, "N": N, "d": d, "dtype": "float32", "device": str(dev)})
    c_transform(x[:256], y, psi, "sqeuclidean", "torch")   # warm-up
    t, (idx, _) = timed(lambda: c_transform(x, y, psi, "sqeuclidean", "torch"), dev)
    say(f"  torch GEMM argmin {B} x {N} d={d}: {t:.3f} s, {flop / t / 1e12:.3f} TFLOP/s")

    def blocked() -> None:   # the GEMM work of the argmin alone: the same blocks, no top-k
        bq = 1024
        bt = TORCH_BLOCK // bq
        for t0 in range(0, N, bt):
            yt = y[t0:t0 + bt]
            for q0 in range(0, B, bq):
                torch.addmm(psi[t0:t0 + bt], x[q0:q0 + bq], yt.T, alpha=-2)

    blocked()
    tb, _ = timed(blocked, dev)
    cols = min(N, 65536)
    big = y[:cols]
    x @ big.T
    reps = 5
    tg, _ = timed(lambda: [x @ big.T for _ in range(reps)], dev)
    gemm_rate = 2.0 * B * cols * d * reps / tg
    P.set("argmin", {"seconds": t, "gemm_equiv_tflops": flop / t / 1e12,
                     "blocked_addmm_seconds": tb, "blocked_addmm_tflops": flop / tb / 1e12,
                     "fp32_gemm_tflops_[B,d]x[d,65536]": gemm_rate / 1e12,
                     "of_blocked_addmm": tb / t, "of_fp32_gemm": flop / t / gemm_rate})
    say(f"  = {tb / t:.1%} of the same blocks' addmm ({flop / tb / 1e12:.3f} TFLOP/s), "
        f"{flop / t / gemm_rate:.1%} of the fp32 GEMM ({gemm_rate / 1e12:.2f} TFLOP/s)")
    tr, ref = timed(lambda: _reference(x[:R], y, psi, "sqeuclidean"), torch.device("cpu"))
    ag = P.set("exactness", {**_agreement(idx, ref, "sqeuclidean"), "reference_s": tr})
    say(f"  argmin vs float64 brute force: {ag['agree']}/{ag['rows']} rows agree")


# ----------------------------------------------------------------------------------
# g. the engine on the GPU under torchrun; h. every method's train command on the GPU
# ----------------------------------------------------------------------------------
_PLACED = r"""
import json, sys, time, torch, torch.distributed as dist
from ootrain.distributed import from_environment, process_group_backend
from ootrain.jobs.rsr import rsr_train
a = json.loads(sys.argv[1])
gpu = torch.cuda.is_available()
if gpu:   # world 1 makes no group of its own: the group of 2+ ranks, joined by 1
    dist.init_process_group(process_group_backend(True), device_id=torch.device("cuda", 0))
out = {"group": dist.get_backend() if dist.is_initialized() else None}
with from_environment() as w:
    t = time.perf_counter()
    res = rsr_train(a["store"], data="mog:8:8", population=a["b"], micro_batch=a["m"],
                    directions=a["p"], steps=2, overwrite=True, progress=False, device=a["device"])
    out["wall_s"] = time.perf_counter() - t
    m = res.run.method
    out["parameters"] = sorted({str(p.device) for p in m.G.parameters()})
    out["adam_state"] = sorted({str(v.device) for s in m.optimizer.state.values()
                                for v in s.values() if torch.is_tensor(v) and v.ndim})
    out["history"] = res.run.history
    if dist.is_initialized():
        for name, dev in (("cuda", "cuda"), ("cpu", "cpu")):
            try:
                v = torch.ones(4, device=dev); dist.all_reduce(v); out[f"all_reduce_{name}"] = "ok"
            except Exception as e:
                out[f"all_reduce_{name}"] = f"{type(e).__name__}: {str(e)[:300]}"
print("GPUCHECK " + json.dumps(out, default=str))
if dist.is_initialized():
    dist.destroy_process_group()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OOTRAIN_DIST_TIMEOUT="60", OOTRAIN_NO_PROGRESS="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_engine(P: Part, cfg: dict, dev: Any, share: float) -> None:
    device = "cuda" if dev.type == "cuda" else "cpu"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    tmp = tempfile.mkdtemp(prefix="gpu_check_engine_")
    args = run + ["-m", "ootrain.cli", "rsr", "train", "--store", os.path.join(tmp, "cli.zarr"),
                  "--data", "mog:8:8", "-b", str(cfg["rsr_b"]), "-m", str(cfg["rsr_m"]), "-p",
                  str(cfg["rsr_p"]), "--steps", "2", "--out", os.path.join(tmp, "out"),
                  "--no-progress", "--overwrite", "--device", device]
    r = P.attempt("rsr_cli", lambda: {**_launch(args, share * 0.45, _env()),
                                      "command": " ".join(args[1:])})
    if r:
        say(f"  rsr train --device {device} (1 rank): rc {r['rc']}, {r['wall_s']:.1f} s, "
            f"{r['step_lines'] or r['tail'][-3:]}")
    a = {"store": os.path.join(tmp, "probe.zarr"), "b": cfg["rsr_b"], "m": cfg["rsr_m"],
         "p": cfg["rsr_p"], "device": device}
    r = P.attempt("rsr_probe", lambda: _launch(
        run + ["--no-python", sys.executable, "-c", _PLACED, json.dumps(a)], share * 0.45,
        _env()))
    if r:
        res = r["result"] or {}
        say(f"  probe: group {res.get('group')}, parameters on {res.get('parameters')}, Adam "
            f"on {res.get('adam_state')}, all-reduce cuda {res.get('all_reduce_cuda')} / cpu "
            f"{res.get('all_reduce_cpu')}; steps "
            f"{[(h.get('run_s'), h.get('solve_s'), h.get('rerun_s')) for h in res.get('history', [])]}"
            if res else f"  probe: rc {r['rc']}, {r['tail'][-3:]}")
    shutil.rmtree(tmp, ignore_errors=True)


def check_methods(P: Part, cfg: dict, dev: Any, share: float) -> None:
    device = "cuda" if dev.type == "cuda" else "cpu"
    tmp = tempfile.mkdtemp(prefix="gpu_check_methods_")
    b, m = str(cfg["m_b"]), str(cfg["m_m"])
    commands = {
        "semidiscrete": ["semidiscrete", "train", "--data", "mog:8:8", "--n-real", b,
                         "--cost", "sqeuclidean", "--backend", "torch", "-b", b, "-m", m,
                         "--rounds", "2", "--ots-max-iter", "20"],
        # OT-GAN's Solve (six Sinkhorn problems of b x b) runs on the CPU: a smaller b
        "otgan": ["otgan", "train", "--steps", "2", "-b", str(cfg["m_b"] // 4), "--micro-batch",
                  str(cfg["m_m"] // 2), "--backend", "torch"],
        "potgan": ["potgan", "train", "--steps", "1", "--n-critic", "1", "-b", b,
                   "--micro-batch", m, "--backend", "torch", "--vae-steps", "50"],
    }
    for name, cmd in commands.items():
        args = [sys.executable, "-m", "ootrain.cli", *cmd, "--store",
                os.path.join(tmp, f"{name}.zarr"), "--out", os.path.join(tmp, name),
                "--no-progress", "--device", device]
        r = P.attempt(name, lambda: {**_launch(args, share / 3, _env()),
                                     "command": " ".join(args[1:])})
        if r:
            say(f"  {name} train --device {device}: rc {r['rc']}, {r['wall_s']:.1f} s, "
                f"{r['tail'][-2:]}")
    shutil.rmtree(tmp, ignore_errors=True)


RUNNERS = {"argmin": check_argmin, "engine": check_engine, "methods": check_methods,
           "gemm": check_gemm, "ctransform": check_ctransform, "sinkhorn": check_sinkhorn,
           "rsr": check_rsr, "semidiscrete": check_semidiscrete}


def child(args: argparse.Namespace) -> None:
    import torch
    cfg = SMALL if args.small else FULL
    dev = _device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(args.threads or min(2, os.cpu_count() or 1))
    P = Part(args.part)

    def on_term(signum: int, frame: Any) -> None:
        for p in list(_LAUNCHED):
            _kill_group(p)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    P.set("started", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    P.set("device", str(dev))
    t = time.perf_counter()
    try:
        RUNNERS[args.child](P, cfg, dev, args.share)
        P.set("status", "ok")
    except Exception as e:  # noqa: BLE001
        say(f"  {args.child}: FAILED: {type(e).__name__}: {str(e)[:300]}")
        P.set("status", "failed")
        P.set("error", err_text(e))
    P.set("seconds", time.perf_counter() - t)


# ----------------------------------------------------------------------------------
# the parent: environment, children, merged results and summary
# ----------------------------------------------------------------------------------
def prepare_env() -> list[str]:
    """Point KeOps at the CUDA toolkit when the environment does not; notes of what was set."""
    notes = []
    os.environ.setdefault("KEOPS_CACHE_FOLDER", os.path.join(tempfile.gettempdir(),
                                                             "keops-gpu-check"))
    if not (os.environ.get("CUDA_PATH") or os.environ.get("CUDA_HOME")):
        for base in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
            if os.path.exists(os.path.join(base, "include", "nvrtc.h")):
                os.environ["CUDA_PATH"] = base
                notes.append(f"CUDA_PATH={base}")
                break
    if ctypes.util.find_library("nvrtc") is None:
        dirs = []
        for f in _nvrtc_files():
            dn = os.path.dirname(f)
            if dn not in dirs:
                dirs.append(dn)
        if dirs:
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
                dirs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
            notes.append(f"LD_LIBRARY_PATH += {dirs} (find_library('nvrtc') found nothing)")
    return notes


def summary(res: dict[str, Any]) -> str:
    def g(d: Any, *ks: str, default: Any = None) -> Any:
        for k in ks:
            if not isinstance(d, dict) or k not in d:
                return default
            d = d[k]
        return d

    def f(v: Any, fmt: str = ".4g") -> str:
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    L = [f"# GPU check ({res.get('mode')})", "",
         f"- command: `{res.get('command')}`", f"- started: {res.get('started')}",
         f"- env notes: {res.get('env_notes')}"]
    a = res.get("gemm", {})
    L += [f"- device: {g(a, 'info', 'gpu', default=g(a, 'info', 'device'))}, capability "
          f"{g(a, 'info', 'capability')}, {g(a, 'info', 'sms')} SMs, "
          f"{f(g(a, 'info', 'memory_gib'))} GiB; nvidia-smi: {g(a, 'info', 'nvidia_smi')}",
          f"- versions: {g(a, 'versions')}", f"- code: {g(a, 'info', 'code')}", ""]
    fp32 = g(a, "gemm_fp32", "best_tflops")
    L += ["## a. GEMM roofline", "", "| what | TFLOP/s (best) | median | burst |", "|---|---|---|---|"]
    for k in ("fp32", "tf32", "bf16"):
        r = a.get(f"gemm_{k}")
        if isinstance(r, dict) and "best_tflops" in r:
            L.append(f"| {k} {r['n']}^3 | {f(r['best_tflops'])} | {f(r['median_tflops'])} | "
                     f"{f(r['burst_tflops'])} |")
    r = a.get("gemm_argmin_shape_fp32")
    if isinstance(r, dict) and "best_tflops" in r:
        L.append(f"| fp32 {r['shape']} | {f(r['best_tflops'])} | | |")
    L += ["", f"copy: {g(a, 'copy', 'read_plus_write_GBps')} GB/s (read + write); toolchain: "
          f"{g(a, 'toolchain')}", ""]
    b = res.get("ctransform", {})
    L += ["## b. c-transform argmin", "", f"problem: {g(b, 'problem')}", "",
          "| cost / backend | B x N | s | Gpairs/s | GEMM-equiv TFLOP/s | of fp32 GEMM | "
          "agrees (rows) | first call s |", "|---|---|---|---|---|---|---|---|"]
    for k, r in b.items():
        if "/" not in k or not isinstance(r, dict):
            continue
        if "gpairs_per_s" in r:
            frac = r["gemm_equiv_tflops"] / fp32 if fp32 else None
            ag = r["agreement"]
            L.append(f"| {k} | {r['B']} x {r['N']} | {f(r['seconds'])} | {f(r['gpairs_per_s'])} "
                     f"| {f(r['gemm_equiv_tflops'])} | {f(frac, '.1%') if frac else '-'} | "
                     f"{ag['agree']}/{ag['rows']} | {f(r['first_call_s (compile)'])} |")
        else:
            L.append(f"| {k} | {str(r.get('skipped') or r.get('error', ''))[:200]!r} |||||||")
    L += ["", f"pykeops import: {g(b, 'pykeops_import')}", "", f"KeOps: {g(b, 'keops_config')}",
          ""]
    c = res.get("sinkhorn", {})
    L += ["## c. Sinkhorn", "", f"problem: {g(c, 'problem')}", ""]
    for k in ("reference", "torch_vs_keops", "keops_n1", "keops_n2"):
        L.append(f"- {k}: {json.dumps(c.get(k), default=str)[:1500]}")
    d = res.get("rsr", {})
    L += ["", "## d. RSR step under torchrun", ""]
    for k in ("probe_1rank", "train_1rank", "nccl_world1", "train_2ranks"):
        r = d.get(k)
        if isinstance(r, dict) and "rc" in r:
            L.append(f"- {k}: rc {r['rc']}, {f(r['wall_s'])} s, result {r.get('result')}, "
                     f"steps {r.get('step_lines')}, tail {r['tail'][-3:]}")
        else:
            L.append(f"- {k}: {json.dumps(r, default=str)[:800]}")
    L.append(f"- note: {d.get('engine_device_note')}")
    e = res.get("semidiscrete", {})
    L += ["", "## e. Semi-discrete OT", "", f"- setup: {g(e, 'setup')}",
          f"- backend probe: {json.dumps(g(e, 'backend_probe'), default=str)[:600]}"]
    fit = e.get("fit")
    if isinstance(fit, dict):
        L.append(f"- fit: {f(fit.get('seconds'))} s, {fit.get('iterations')} iterations "
                 f"({fit.get('stopped')}), {f(fit.get('s_per_iter_incl_checks'))} s/iter incl. "
                 f"checks; last check {fit['history'][-1] if fit.get('history') else None}")
    L.append(f"- evaluation: {json.dumps(e.get('evaluation'), default=str)[:800]}")
    L += ["", "## f-h. issue 15: the GEMM argmin, the engine and the methods on the device", ""]
    for k in ("argmin", "engine", "methods"):
        L.append(f"- {k}: {json.dumps(res.get(k), default=str)[:2500]}")
    L += ["", "## status", ""]
    for k in CHECKS:
        r = res.get(k, {})
        L.append(f"- {LETTER[k]}. {k}: {r.get('status', 'not run')} "
                 f"({f(r.get('seconds'))} s){' - ' + r['error'][:300] if r.get('error') else ''}")
    return "\n".join(L) + "\n"


def parent(args: argparse.Namespace) -> None:
    os.makedirs(args.out, exist_ok=True)
    notes = prepare_env()
    shares = dict(SHARE_SMALL if args.small else SHARE_FULL)
    want = [c for c in CHECKS if (c in args.only if args.only else c in DEFAULT)
            and c not in (args.skip or [])]
    res: dict[str, Any] = {"mode": "small" if args.small else "full",
                           "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "env_notes": notes,
                           "budget_s": args.budget_s, "shares_s": shares}
    work = tempfile.mkdtemp(prefix="gpu_check_")
    t0 = time.perf_counter()
    current: dict[str, Any] = {}

    def write() -> None:
        for k, path in current.items():
            try:
                with open(path) as fh:
                    part = json.load(fh)
                part.setdefault("status", "interrupted")
                res[k] = part
            except (OSError, ValueError):
                pass
        res["elapsed_s"] = time.perf_counter() - t0
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump(res, fh, indent=1, default=str)
        try:
            text = summary(res)
        except Exception as e:  # noqa: BLE001 - the JSON is written; say why the summary is not
            text = f"# GPU check\n\nsummary failed: {err_text(e)}\n\nsee results.json\n"
        with open(os.path.join(args.out, "summary.md"), "w") as fh:
            fh.write(text)

    def stop(p: subprocess.Popen) -> None:
        """SIGTERM to the child's group (it ends what it launched), SIGKILL after 3 s."""
        _kill_group(p, signal.SIGTERM)
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(p)
        p.wait()

    def on_term(signum: int, frame: Any) -> None:
        say(f"signal {signum}: writing what was measured")
        for p in procs:
            stop(p)
        write()
        sys.exit(128 + signum)

    procs: list[subprocess.Popen] = []
    signal.signal(signal.SIGTERM, on_term)
    say(f"gpu_check {res['mode']}: checks {want}, budget {args.budget_s} s, env {notes}, "
        f"KEOPS_CACHE_FOLDER={os.environ['KEOPS_CACHE_FOLDER']}")
    for i, name in enumerate(want):
        left = args.budget_s - (time.perf_counter() - t0)
        rest = sum(shares[c] + OVERHEAD for c in want[i:])
        share = shares[name] * min(1.0, max(0.2, left / rest))
        limit = share * SLACK + START
        if left < 10:
            res[name] = {"status": "skipped", "error": f"budget spent ({left:.0f} s left)"}
            write()
            continue
        limit = min(limit, max(10.0, left))
        part = os.path.join(work, f"{name}.json")
        current[name] = part
        say(f"{LETTER[name]}. {name}: share {share:.0f} s, limit {limit:.0f} s")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--part", part,
               "--share", f"{share:.1f}", "--device", args.device, "--out", args.out]
        if args.small:
            cmd.append("--small")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        p = subprocess.Popen(cmd, start_new_session=True)
        procs.append(p)
        killed = False
        try:
            p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop(p)
            killed = True
            say(f"{name}: killed at its limit ({limit:.0f} s)")
        procs.remove(p)
        write()
        r = res.get(name, {})
        if p.returncode != 0 and r.get("status") in (None, "interrupted"):
            r["status"] = f"killed at its limit ({limit:.0f} s)" if killed else \
                f"exit {p.returncode}"
            res[name] = r
        del current[name]
        write()
    say(f"done in {time.perf_counter() - t0:.0f} s: {args.out}/results.json, summary.md")
    for k in want:
        say(f"  {LETTER[k]}. {k}: {res.get(k, {}).get('status')}")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for results.json and summary.md")
    ap.add_argument("--small", action="store_true", help="tiny sizes (a CPU smoke test)")
    ap.add_argument("--device", default="auto", help="auto (cuda when there), cuda or cpu")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="seconds for all checks together (each check's share shrinks to fit)")
    ap.add_argument("--only", nargs="+", choices=CHECKS, help="run only these checks")
    ap.add_argument("--skip", nargs="+", choices=CHECKS, help="skip these checks")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: 2)")
    ap.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--share", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
