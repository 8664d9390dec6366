"""What the command groups share: option parsing (sizes, JSON kwargs, width lists, thread
counts), the console and the help of the shared options."""

from __future__ import annotations

import json
import re
from typing import Optional

import typer
from rich.console import Console

__all__ = ["console", "THREADS_HELP", "DEVICE_HELP", "parse_bytes", "json_kwargs", "int_list", "set_threads",
           "POPULATION_HELP", "MICRO_BATCH_HELP"]

console = Console()

#: Help of every command's ``--threads``.
DASK_HELP = ("Run Solve's task graphs on the dask.distributed scheduler at this address "
             "(tcp://host:8786); default: Dask's local threads on the usable cores.")
#: Help of every train command's ``--device``.
DEVICE_HELP = ("Where the models run: auto (cuda:<LOCAL_RANK> when torch sees a GPU, else cpu), "
               "cpu, cuda or cuda:N.  Solve runs on the CPU; the store does not depend on it.")
THREADS_HELP = ("Threads of torch, BLAS and numba together (default: ootrain.threads."
                "default_threads(), 1 on machines of <= 2 physical cores, or OOTRAIN_THREADS; "
                "0: the libraries' own defaults).")

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'512MiB', '2G', '1e9' → bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise typer.BadParameter(f"not a size: {text!r} (e.g. 512MiB, 2GiB, 1e9)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def json_kwargs(text: str) -> dict:
    """A JSON object of keyword arguments ('' → {})."""
    try:
        out = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not JSON: {text!r} ({e})") from None
    if not isinstance(out, dict):
        raise typer.BadParameter(f"expected a JSON object, got {text!r}")
    return out


def int_list(text: str, option: str) -> tuple:
    """Comma-separated positive integers ('128,128') → a tuple; ``option`` names the option
    in the error."""
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated integers, got {text!r}") \
            from None
    if not out or min(out) < 1:
        raise typer.BadParameter(f"{option} must list positive widths, got {text!r}")
    return out


def set_threads(threads: Optional[int]) -> None:
    """``--threads``: torch's, the BLAS/OpenMP pools' and numba's threads together (None:
    :func:`ootrain.threads.default_threads`; 0 leaves the libraries' own defaults)."""
    if threads is not None and threads < 0:
        raise typer.BadParameter(f"--threads must be >= 0, got {threads}")
    from ootrain.threads import apply_threads

    apply_threads(threads)


#: Help of every command's ``-b/--population``.
POPULATION_HELP = "Samples of each population per step (engine population b)."
#: Help of every command's ``-m/--micro-batch``.
MICRO_BATCH_HELP = "Samples per forward pass (engine micro-batch m)."

