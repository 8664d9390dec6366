"""``ootrain sort``: the stand-alone out-of-core sort of a zarr array's rows."""

from __future__ import annotations

import time
from typing import Optional

import typer

from ootrain.cli.options import console, parse_bytes

__all__ = ["sort_cmd"]


def sort_cmd(src: str = typer.Argument(..., help="2-D zarr array (path or URL) to sort by row."),
             dst: str = typer.Argument(..., help="Destination zarr array (created)."),
             memory_budget: str = typer.Option("1GiB", help="Rows larger are sorted out of core (spill files in $TMPDIR)."),
             array: Optional[str] = typer.Option(None, help="Array name inside a zarr group."),
             progress: bool = typer.Option(True, help="Progress bar.")) -> None:
    """Out-of-core sort of every row of a zarr array (in memory when a row fits, else an external sample sort)."""
    budget = parse_bytes(memory_budget)

    from ootrain.jobs.common import InputError, input_errors
    from ootrain.jobs.store import node_kind
    from ootrain.ot.sort import sort_zarr

    kind = node_kind(src, array)
    if kind is None:
        raise InputError(f"SRC {src}{'/' + array if array else ''}: no zarr array there; "
                         "give the path of an existing 2-D zarr array")
    if kind == "group":
        raise InputError(f"SRC {src} is a zarr group, not an array; name the array inside "
                         "it with --array NAME")
    if node_kind(dst, array) is not None:
        raise InputError(f"DST {dst} already exists; sort never overwrites: remove it or "
                         "give a new destination")
    t = time.perf_counter()
    with input_errors(f"sort {src}: "):
        sort_zarr(src, dst, budget, array=array, progress=progress)
    console.print(f"sorted {src} → {dst} in {time.perf_counter() - t:.2f}s; wrote {dst}")
