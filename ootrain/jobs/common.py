"""What the jobs share: the error that marks bad user input, and the default population of
a built-in data set."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

__all__ = ["InputError", "input_errors", "default_rows"]


class InputError(ValueError):
    """Bad user input (a spec, an option value, a file), found before any work is lost.

    The jobs name the command's options in its message; the CLI shows it as a one-line usage
    error.  Any other exception a job raises is a failure of the work itself.
    """


@contextmanager
def input_errors(prefix: str = "") -> Iterator[None]:
    """Re-raise a ``ValueError`` or ``FileNotFoundError`` of the block as an
    :class:`InputError` whose message is ``prefix`` + the original one (an
    :class:`InputError` passes unchanged)."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise InputError(f"{prefix}{e}") from None


def default_rows(spec: str, n: Optional[int]) -> Optional[int]:
    """Rows drawn from a built-in data set: ``n``, else all of ``digits`` and 4096 samples of
    a sampled set."""
    if n is not None:
        return n
    return None if spec.startswith("digits") else 4096
