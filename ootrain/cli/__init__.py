"""The ``ootrain`` command line (Typer): one module per command group, each command parsing
its options and calling one library function (mostly a job of :mod:`ootrain.jobs`)."""

from __future__ import annotations

import typer

from ootrain.cli import demo, otgan, potgan, rsr, semidiscrete, sort, store

__all__ = ["app"]

app = typer.Typer(help="Streaming out-of-core optimal-transport training.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
app.add_typer(rsr.app, name="rsr")
app.add_typer(store.app, name="store")
app.add_typer(semidiscrete.app, name="semidiscrete")
app.add_typer(otgan.app, name="otgan")
app.add_typer(potgan.app, name="potgan")
app.command("sort")(sort.sort_cmd)
app.command("demo")(demo.demo)
