"""The ``ootrain`` command line (Typer): one module per command group, each command parsing
its options and calling one library function (mostly a job of :mod:`ootrain.jobs`).

Errors are handled here, in one place (:class:`_Root`): a usage error (a bad option value or
data file, :class:`~ootrain.jobs.common.InputError`) prints ``error: <message>`` on one line
and exits 2; a failure of the run (a store locked by another writer or written by another
configuration, a full disk, a non-deterministic model, non-finite values, a lost
``torchrun`` rank) prints the same and exits 1.  ``--debug`` shows the traceback instead."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from ootrain.cli import demo, otgan, potgan, rsr, semidiscrete, sort, store

__all__ = ["app", "exit_code"]


def exit_code(e: BaseException) -> Optional[int]:
    """The exit code of an error ootrain reports in one line (2: usage, 1: run failure), or
    None for any other exception (a bug: shown with its traceback)."""
    from ootrain.distributed import RankLostError
    from ootrain.engine.core import NondeterministicModelError, NonFiniteError
    from ootrain.jobs.common import InputError
    from ootrain.store import StoreError

    if isinstance(e, InputError):
        return 2
    if isinstance(e, (StoreError, NondeterministicModelError, NonFiniteError, RankLostError)):
        return 1
    return None


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


@contextmanager
def _plain_warnings() -> Iterator[None]:
    """Show Python warnings as one plain ``warning: ...`` line (no source line)."""
    old = warnings.showwarning

    def show(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None,
             line: Any = None) -> None:
        click.echo(f"warning: {_one_line(str(message))}", err=True)
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


#: Usage errors of click and of the click that Typer vendors (``typer._click``: a different
#: class hierarchy; reached through the public ``typer.BadParameter``).
_USAGE_ERRORS = tuple({click.UsageError, *(c for c in typer.BadParameter.__mro__
                                           if c.__name__ == "UsageError")})
_EXITS = (click.exceptions.Exit, click.exceptions.Abort, typer.Exit, typer.Abort)


class _Root(TyperGroup):
    """The root group: records the command line (stores keep it in their attributes) and turns
    ootrain's errors into one line and an exit code."""

    def main(self, args: Any = None, *a: Any, **kw: Any) -> Any:
        from ootrain import store as store_mod

        argv = list(sys.argv[1:] if args is None else args)
        store_mod.COMMAND = ["ootrain", *argv]
        try:
            return super().main(args, *a, **kw)
        finally:
            store_mod.COMMAND = None

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())
        from ootrain.distributed import from_environment, quiet_unless_rank0

        with _plain_warnings(), from_environment(), quiet_unless_rank0():
            try:
                return super().invoke(ctx)
            except _EXITS:
                raise
            except _USAGE_ERRORS as e:
                if debug or (no_args and isinstance(e, no_args)):
                    raise
                click.echo(f"error: {_one_line(e.format_message())}", err=True)
                ctx.exit(2)
            except Exception as e:
                code = exit_code(e)
                if code is None or debug:
                    raise
                click.echo(f"error: {_one_line(str(e))}", err=True)
                ctx.exit(code)


app = typer.Typer(cls=_Root, help="Streaming out-of-core optimal-transport training.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error "
                                     "instead of its one-line message.")) -> None:
    pass


app.add_typer(rsr.app, name="rsr")
app.add_typer(store.app, name="store")
app.add_typer(semidiscrete.app, name="semidiscrete")
app.add_typer(otgan.app, name="otgan")
app.add_typer(potgan.app, name="potgan")
app.command("sort")(sort.sort_cmd)
app.command("demo")(demo.demo)
