"""Shared helpers of the benchmark scripts: machine description, load, markdown tables.

Not a benchmark itself.  Every script prints :func:`machine_header` first so a pasted result
always says where and when it was measured.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
from typing import Any, Sequence


def set_threads(n: int) -> None:
    """``n`` intra-op threads for torch and, when installed, faiss's OpenMP pool."""
    import torch

    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(n)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        a, b, c = os.getloadavg()
        return f"{a:.2f}, {b:.2f}, {c:.2f}"
    except OSError:
        return "n/a"


def code_state() -> str:
    """Git HEAD (read-only query) and a hash of the working-tree ``ootrain/*.py`` files, since
    the package is edited concurrently and results belong to the code they ran."""
    import glob
    import hashlib
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head = "?"
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(root, "ootrain", "*.py"))):
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            h.update(fh.read())
    return f"git HEAD {head or '?'} + working tree ootrain/*.py sha256 {h.hexdigest()[:12]}"


def machine_header(title: str, argv: Sequence[str] | None = None) -> str:
    """Markdown block: command, date, machine, library versions, load average."""
    import numpy as np
    import psutil
    import torch

    lines = [f"## {title}", ""]
    cmd = " ".join(argv if argv is not None else sys.argv)
    lines.append(f"- command: `{os.path.basename(sys.executable)} {cmd}`")
    lines.append(f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M:%S %Z')}")
    lines.append(f"- machine: {platform.platform()}; CPU: {cpu_model()}; "
                 f"cores (os.cpu_count): {os.cpu_count()}; torch threads: "
                 f"{torch.get_num_threads()}; RAM: {psutil.virtual_memory().total / 2**30:.1f} GiB")
    vers = [f"python {platform.python_version()}", f"torch {torch.__version__}",
            f"numpy {np.__version__}"]
    for mod in ("zarr", "dask", "numba"):
        try:
            vers.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    lines.append("- versions: " + ", ".join(vers))
    lines.append(f"- code: {code_state()}")
    lines.append(f"- load average (1, 5, 15 min) at start: {loadavg()}")
    return "\n".join(lines)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 4 significant digits."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def dir_size(path: str) -> int:
    """Bytes of all regular files under ``path`` (apparent size)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def run_watched(cmd: Sequence[str], env: dict[str, str], mem_limit: float,
                wall_limit: float) -> dict[str, Any]:
    """Run ``cmd`` as a child under a watchdog: its RSS (children included) is sampled every
    20 ms and it is killed past ``mem_limit`` bytes or ``wall_limit`` seconds.

    Returns ``returncode``, ``lines`` (stdout lines), ``err_tail`` (last non-empty stderr
    line), ``peak`` (sampled RSS), ``wall`` (seconds), ``killed`` (None, ``"memory"`` or
    ``"wall"``) and ``rss`` (the sample that triggered a memory kill).
    """
    import subprocess
    import tempfile
    import time

    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env)
        ps = psutil.Process(p.pid)
        peak, rss, killed = 0, 0, None
        while p.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss
                                                 for c in ps.children(recursive=True))
            except psutil.Error:
                rss = 0
            peak = max(peak, rss)
            if rss > mem_limit:
                killed = "memory"
            elif time.perf_counter() - t0 > wall_limit:
                killed = "wall"
            if killed:
                p.kill()
                p.wait()
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        tail = [s for s in err.read().strip().splitlines() if s.strip()] or ["?"]
    return {"returncode": p.returncode, "lines": lines, "err_tail": tail[-1], "peak": peak,
            "wall": wall, "killed": killed, "rss": rss}
