"""What the jobs share: the error that marks bad user input, and the default population of
a built-in data set."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

__all__ = ["InputError", "input_errors", "default_rows", "check_steps", "check_finite_data",
           "model_errors", "check_population"]


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


def check_steps(name: str, value: Any, low: int = 0) -> None:
    """``value`` of the option ``name`` is an integer >= ``low``, else :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")


def check_finite_data(real: Any, option: str = "--data") -> None:
    """Refuse data with NaN/Inf (read in blocks of rows) before anything is created."""
    import numpy as np

    from ootrain.jobs.store import row_blocks

    for sl in row_blocks(real):
        block = np.asarray(real[sl])
        bad = ~np.isfinite(block)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(f"{option}: {int(bad.sum())} non-finite values (NaN/Inf) in rows "
                             f"[{sl.start}, {sl.stop}), first at row {sl.start + first[0]}; "
                             "clean or drop them and rerun")


@contextmanager
def model_errors(option: str) -> Iterator[None]:
    """A model spec that cannot be imported or built is a usage error naming ``option``."""
    try:
        yield
    except InputError:
        raise
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise InputError(f"{option}: {e} (a zoo name, or module:factory with the module on "
                         "the path or given as a .py file)") from None


def check_population(population: Any, micro_batch: Any) -> None:
    """``-b/--population`` and ``-m/--micro-batch`` as the commands name them (micro-batch
    None: the whole population)."""
    for name, v in (("--population/-b", population), ("--micro-batch/-m", micro_batch)):
        if v is None and name.startswith("--micro"):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if micro_batch is not None and micro_batch > population:
        raise InputError(f"--micro-batch/-m {micro_batch} exceeds --population/-b "
                         f"{population}; pass -m <= -b")
