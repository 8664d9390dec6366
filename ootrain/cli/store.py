"""``ootrain store``: inspect, verify, repair and unlock sample stores."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ootrain.cli.options import console

__all__ = ["app", "store_info", "store_verify", "store_repair", "store_unlock"]

app = typer.Typer(help="Inspect, verify, repair and unlock sample stores.", no_args_is_help=True)


@app.command("info")
def store_info(path: str = typer.Argument(..., help="Store path or URL.")) -> None:
    """Layout, sizes and completion of every array in a store."""
    from ootrain.jobs.store import store_info as job

    info = job(path)
    console.print(f"[bold]{path}[/]  fingerprint {info.fingerprint[:16]}…")
    console.print_json(json.dumps(info.config))
    table = Table("array", "shape", "chunks", "dtype", "complete chunks")
    for a in info.arrays:
        table.add_row(a.name, str(a.shape), str(a.chunks), a.dtype, f"{a.complete}/{a.total}")
    console.print(table)
    st = info.steps
    line = f"steps: {st.completed} completed"
    if st.unfinished is not None:
        line += f"; step {st.unfinished} unfinished, {st.unfinished_phase}"
    console.print(line)
    console.print(f"lock: held by {st.lock}" if st.lock else "lock: not held")
    if st.unfinished is not None or st.lock:
        cmd = " ".join(st.command) if st.command else "`ootrain <method> train ...`"
        console.print(f"resume: rerun the same command: {cmd}", soft_wrap=True)
    elif st.command:
        console.print(f"created by: {' '.join(st.command)}", soft_wrap=True)


@app.command("verify")
def store_verify(path: str = typer.Argument(..., help="Store path or URL."),
                 finite: bool = typer.Option(True, help="Also scan values for NaN/Inf.")) -> None:
    """Check every array is complete and finite; exits 1 listing the problems."""
    from ootrain.jobs.store import verify_store

    problems = verify_store(path, finite=finite)
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {p}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {path}: all arrays complete" + (" and finite" if finite else ""))


@app.command("repair")
def store_repair(path: str = typer.Argument(..., help="Store path or URL.")) -> None:
    """Make a store with damaged chunks resumable: they are marked incomplete (recomputed by
    the resumed run) or, in finished steps, deleted; exits 1 when the run cannot resume."""
    from ootrain.jobs.store import RESUME_HINT, repair_store

    report = repair_store(path)
    for line in report.actions:
        console.print(f"[yellow]•[/] {line}", soft_wrap=True)
    if not report.resumable:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {path}: " + ("nothing damaged" if not report.actions
                                               else f"repaired; {RESUME_HINT}"), soft_wrap=True)


@app.command("unlock")
def store_unlock(path: str = typer.Argument(..., help="Store path or URL.")) -> None:
    """Remove the writer lock of a store whose writer is known to be gone."""
    from ootrain.jobs.store import unlock_store

    held = unlock_store(path)
    console.print("no lock held" if held is None else f"removed lock of {held}")
