"""What the jobs share: the error that marks bad user input, and the default population of
a built-in data set."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ootrain.engine.compute import Compute

__all__ = ["InputError", "input_errors", "option_name", "default_rows", "check_steps", "check_finite_data",
           "model_errors", "check_population", "check_device", "connect"]


class InputError(ValueError):
    """Bad user input (a spec, an option value, a file), found before any work is lost.

    The jobs name the command's options in its message; the CLI shows it as a one-line usage
    error.  Any other exception a job raises is a failure of the work itself.
    """


_LEADING_NAME = re.compile(r"^([a-z][a-z0-9_]*)(?= must | \()")
_UNKNOWN_NAME = re.compile(r"^unknown ([a-z][a-z0-9_]*) ")


def option_name(message: str, names: Mapping[str, str] = {}) -> str:
    """A library message that starts with a parameter name (``eps must be ...``,
    ``warm_start_method must ...``) restated with the command's option: ``names[name]`` when
    given, else ``--`` + the name with dashes (``--warm-start-method must ...``); one that
    starts ``unknown cost ...`` is prefixed with the option (``--cost: unknown cost ...``)."""
    m = _UNKNOWN_NAME.match(message)
    if m is not None:
        return f"{names.get(m.group(1), '--' + m.group(1).replace('_', '-'))}: {message}"
    m = _LEADING_NAME.match(message)
    if m is None:
        return message
    name = m.group(1)
    return names.get(name, "--" + name.replace("_", "-")) + message[m.end():]


@contextmanager
def input_errors(prefix: str = "", names: Optional[Mapping[str, str]] = None
                 ) -> Iterator[None]:
    """Re-raise a ``ValueError`` or ``FileNotFoundError`` of the block as an
    :class:`InputError` whose message is ``prefix`` + the original one (an
    :class:`InputError` passes unchanged).  With ``names`` (library parameter -> option; may
    be empty), a message starting with a parameter name names the option instead (see
    :func:`option_name`)."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as e:
        text = str(e) if names is None else option_name(str(e), names)
        raise InputError(f"{prefix}{text}") from None


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
    from ootrain.data import check_finite_rows

    with input_errors(f"{option}: "):
        check_finite_rows(real)


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


def check_device(device: str) -> None:
    """``--device`` names a device this process can train on
    (:func:`ootrain.distributed.resolve_device`), else :class:`InputError`."""
    from ootrain.distributed import resolve_device

    with input_errors(names={}):
        resolve_device(device)


def connect(dask_address: Optional[str]) -> "Compute":
    """The :class:`~ootrain.engine.compute.Compute` of ``--dask-address`` (connected now, so a
    wrong address is an input error before any work; None: local threads).  Under torchrun
    only rank 0, which runs Solve, connects."""
    from ootrain.distributed import rank_world
    from ootrain.engine.compute import Compute

    compute = Compute(dask_address if rank_world()[0] == 0 else None)
    if compute.distributed:
        try:
            compute.client()
        except (ConnectionError, OSError, ValueError) as e:
            raise InputError(f"--dask-address {dask_address!r}: {e}") from e
    return compute
