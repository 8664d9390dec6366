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

    from ootrain.ot.sort import sort_zarr

    t = time.perf_counter()
    sort_zarr(src, dst, budget, array=array, progress=progress)
    console.print(f"sorted {src} → {dst} in {time.perf_counter() - t:.2f}s")
