"""Data sources: built-in target distributions, user arrays, and input validation.

Every loader returns a ``float32`` numpy array of shape ``[n, d]`` (or, with
``lazy=True``, an unloaded array-like for out-of-core streaming).

Built-in data sets (spec strings accepted by :func:`load_dataset`):

``mog1d``
    The 1-D mixture of 4 Gaussians used as the target in Figure 1 of the
    Run-Sort-ReRun (RSR) paper. We use well-separated modes: means
    ``(-6, -2, 2, 6)``, std ``0.4`` each, equal weights ``1/4``; the gap
    between neighbouring means is 10 standard deviations, so the modes do not
    overlap and mode dropping is easy to see.
``gaussian:<d>``
    The standard normal distribution in ``d`` dimensions.
``mog:<d>:<k>[:<param_seed>]``
    A fixed random mixture of ``k`` isotropic Gaussians in ``d`` dimensions.
    Its parameters depend only on ``param_seed`` (default 0; see
    :func:`mog_params`), so the distribution stays the same while the sample
    ``seed`` varies.
``ring8``
    8 Gaussians with std ``0.02`` centred on a circle of radius 2 at angles
    ``2*pi*k/8`` for ``k = 0..7``.
``digits[:<split>]``
    scikit-learn's bundled 8x8 digits, flattened to 64 features and scaled to
    ``[0, 1]``; ``split`` is ``all`` (default), ``train`` or ``test`` (a fixed
    80/20 split, see :func:`load_digits`).

Synthetic sets are sampled exactly with ``numpy.random.default_rng(seed)`` and
need ``n``; ``digits`` returns all rows of its split, or ``n`` of them drawn
without replacement using ``seed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "MOG1D_MEANS",
    "MOG1D_STDS",
    "MOG1D_WEIGHTS",
    "RING8_RADIUS",
    "RING8_STD",
    "Mixture",
    "check_array",
    "load_array",
    "load_data",
    "load_dataset",
    "load_digits",
    "mog1d_pdf",
    "mog_params",
    "sample_gaussian",
    "sample_mixture",
    "sample_mog1d",
    "sample_ring8",
    "load_targets",
    "row_sampler",
    "data_sampler",
    "check_finite_rows",
    "row_blocks",
    "describe_array",
    "data_identity",
]

MOG1D_MEANS: tuple[float, ...] = (-6.0, -2.0, 2.0, 6.0)
MOG1D_STDS: tuple[float, ...] = (0.4, 0.4, 0.4, 0.4)
MOG1D_WEIGHTS: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)

RING8_RADIUS = 2.0
RING8_STD = 0.02

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def check_array(x: Any, name: str = "x", ndim: int | None = 2, finite: bool = True) -> None:
    """Validate a numpy array, torch tensor or array-like (e.g. a zarr array).

    Raises ``ValueError`` naming the problem: wrong number of dimensions, an
    empty axis, a non-floating dtype, or (when ``finite``) NaN/Inf values with
    their count and the index of the first one. The finiteness check reads all
    the data: pass ``finite=False`` for lazy arrays and check chunks as they
    stream instead.
    """
    shape = tuple(getattr(x, "shape", ()))
    if ndim is not None and len(shape) != ndim:
        expected = "[n, d]" if ndim == 2 else f"{ndim}-D"
        raise ValueError(f"{name} must be {ndim}-D {expected}, got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name} is empty: shape {shape}")
    if isinstance(x, torch.Tensor):
        is_float = x.is_floating_point()
    else:
        is_float = np.issubdtype(np.dtype(getattr(x, "dtype", object)), np.floating)
    if not is_float:
        raise ValueError(f"{name} must have a floating-point dtype, got {x.dtype}")
    if not finite:
        return
    if isinstance(x, torch.Tensor):
        values = x.detach().cpu()
        bad = (~torch.isfinite(values)).numpy()
        n_nan = int(torch.isnan(values).sum())
    else:
        values = np.asarray(x)
        bad = ~np.isfinite(values)
        n_nan = int(np.isnan(values).sum())
    n_bad = int(bad.sum())
    if n_bad:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} contains {n_bad} non-finite value(s) (NaN: {n_nan}, Inf: {n_bad - n_nan}); "
            f"first at index {first}"
        )


def row_blocks(x: Any, block_bytes: int = 64 << 20) -> Iterator[slice]:
    """Slices of rows of ``x`` (numpy, memory map or zarr ``[n, ...]``) of about
    ``block_bytes`` each, aligned to the row chunks of a zarr array."""
    n = int(x.shape[0])
    row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize)
    step = max(1, block_bytes // row)
    chunks = getattr(x, "chunks", None)
    if chunks:
        step = max(int(chunks[0]), step // int(chunks[0]) * int(chunks[0]))
    for lo in range(0, n, step):
        yield slice(lo, min(n, lo + step))


def check_finite_rows(x: Any) -> None:
    """Raise ``ValueError`` if ``x`` (any ``[n, ...]`` array, read in row blocks, so it may
    be larger than memory) holds NaN or Inf: the count, the block and the first row."""
    for sl in row_blocks(x):
        bad = ~np.isfinite(np.asarray(x[sl]))
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise ValueError(f"{int(bad.sum())} non-finite values (NaN/Inf) in rows "
                             f"[{sl.start}, {sl.stop}), first at row {sl.start + first}; "
                             "clean or drop them and rerun")


# --------------------------------------------------------------------------- #
# Exact samplers
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Mixture:
    """An isotropic Gaussian mixture: ``means [k, d]``, ``stds [k]``, ``weights [k]``."""

    means: np.ndarray
    stds: np.ndarray
    weights: np.ndarray


def sample_mixture(n: int, mixture: Mixture, generator: np.random.Generator) -> np.ndarray:
    """Draw ``n`` exact samples ``[n, d]`` (float32) from an isotropic Gaussian mixture."""
    means = np.asarray(mixture.means, dtype=np.float64)
    component = generator.choice(len(mixture.weights), size=n, p=mixture.weights)
    noise = generator.standard_normal((n, means.shape[1]))
    return (means[component] + np.asarray(mixture.stds)[component, None] * noise).astype(np.float32)


def _mog1d() -> Mixture:
    return Mixture(
        means=np.array(MOG1D_MEANS)[:, None],
        stds=np.array(MOG1D_STDS),
        weights=np.array(MOG1D_WEIGHTS),
    )


def sample_mog1d(n: int, generator: np.random.Generator) -> np.ndarray:
    """Exact samples ``[n, 1]`` from the RSR Figure 1 target (see ``MOG1D_*``)."""
    return sample_mixture(n, _mog1d(), generator)


def mog1d_pdf(x: np.ndarray) -> np.ndarray:
    """Density of the ``mog1d`` target at points ``x`` (any shape), for plots."""
    x = np.asarray(x, dtype=np.float64)[..., None]
    means, stds, weights = (np.array(v) for v in (MOG1D_MEANS, MOG1D_STDS, MOG1D_WEIGHTS))
    dens = np.exp(-0.5 * ((x - means) / stds) ** 2) / (stds * np.sqrt(2 * np.pi))
    return (dens * weights).sum(-1)


def sample_ring8(n: int, generator: np.random.Generator) -> np.ndarray:
    """Exact samples ``[n, 2]`` from 8 Gaussians on a circle (angles ``2*pi*k/8``)."""
    angles = 2 * np.pi * np.arange(8) / 8
    means = RING8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    mixture = Mixture(means=means, stds=np.full(8, RING8_STD), weights=np.full(8, 1 / 8))
    return sample_mixture(n, mixture, generator)


def sample_gaussian(n: int, d: int, generator: np.random.Generator) -> np.ndarray:
    """Exact samples ``[n, d]`` from the standard normal distribution."""
    return generator.standard_normal((n, d), dtype=np.float32)


def mog_params(d: int, k: int, param_seed: int = 0) -> Mixture:
    """Parameters of the ``mog:<d>:<k>[:<param_seed>]`` data set.

    Means are uniform in ``[-4, 4]^d``, stds uniform in ``[0.3, 0.7]`` and
    weights Dirichlet(5, ..., 5) (no vanishing component), all drawn from
    ``numpy.random.default_rng(param_seed)``.
    """
    if d < 1 or k < 1:
        raise ValueError(f"mog needs d >= 1 and k >= 1, got d={d}, k={k}")
    rng = np.random.default_rng(param_seed)
    return Mixture(
        means=rng.uniform(-4.0, 4.0, size=(k, d)),
        stds=rng.uniform(0.3, 0.7, size=k),
        weights=rng.dirichlet(np.full(k, 5.0)),
    )


def load_digits(split: str = "all") -> np.ndarray:
    """scikit-learn's 8x8 digits as ``[n, 64]`` float32 in ``[0, 1]``.

    ``split`` is ``"all"`` (1797 rows), ``"train"`` or ``"test"``: a fixed
    permutation (seed ``DIGITS_SPLIT_SEED``) whose last
    ``DIGITS_TEST_FRACTION`` of rows is the test set.
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    x = (_sklearn_digits().data / 16.0).astype(np.float32)
    if split == "all":
        return x
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    n_train = len(x) - int(round(DIGITS_TEST_FRACTION * len(x)))
    if split == "train":
        return x[np.sort(order[:n_train])]
    if split == "test":
        return x[np.sort(order[n_train:])]
    raise ValueError(f"digits split must be 'all', 'train' or 'test', got {split!r}")


# --------------------------------------------------------------------------- #
# Spec dispatch
# --------------------------------------------------------------------------- #

#: Built-in data set names (the part of a spec before the first ``:``).
DATASETS: tuple[str, ...] = ("mog1d", "gaussian", "mog", "ring8", "digits")


def _subsample(x: np.ndarray, n: int | None, seed: int, what: str) -> np.ndarray:
    """All rows of ``x``, or ``n`` of them drawn without replacement (kept in order)."""
    if n is None:
        return x
    if not 0 < n <= len(x):
        raise ValueError(f"n must be in [1, {len(x)}] for {what}, got {n}")
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return x[rows]


def _int_args(spec: str, args: list[str], count: tuple[int, int]) -> list[int]:
    """Parse ``args`` as integers, checking their number is within ``count``."""
    lo, hi = count
    if not lo <= len(args) <= hi:
        raise ValueError(f"data set spec {spec!r}: expected {lo}..{hi} ':'-separated integers")
    try:
        return [int(a) for a in args]
    except ValueError:
        raise ValueError(f"data set spec {spec!r}: arguments must be integers") from None


def load_dataset(spec: str, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Load a built-in data set by spec (see the module docstring) as float32 ``[n, d]``."""
    name, *args = spec.split(":")
    if name == "digits":
        if len(args) > 1:
            raise ValueError(f"data set spec {spec!r}: expected 'digits[:split]'")
        return _subsample(load_digits(*args), n, seed, spec)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; built-ins: {', '.join(DATASETS)}")
    if n is None or n < 1:
        raise ValueError(f"data set {spec!r} is sampled: pass a sample count n >= 1, got {n}")
    rng = np.random.default_rng(seed)
    if name == "mog1d":
        _int_args(spec, args, (0, 0))
        return sample_mog1d(n, rng)
    if name == "ring8":
        _int_args(spec, args, (0, 0))
        return sample_ring8(n, rng)
    if name == "gaussian":
        (d,) = _int_args(spec, args, (1, 1))
        if d < 1:
            raise ValueError(f"data set spec {spec!r}: d must be >= 1")
        return sample_gaussian(n, d, rng)
    d, k, *param_seed = _int_args(spec, args, (2, 3))
    return sample_mixture(n, mog_params(d, k, *param_seed), rng)


def load_array(
    path: str | os.PathLike[str],
    *,
    key: str | None = None,
    array: str | None = None,
    lazy: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Load a user's array from ``.npy``, ``.npz`` or zarr (v3 or v2).

    - ``.npy``: loaded (``lazy`` gives a read-only memory map instead).
    - ``.npz``: the array ``key`` (optional when the file holds one array);
      always loaded, whatever ``lazy`` says.
    - anything else is opened with zarr: a local path or an fsspec URL
      (``storage_options`` go to the fsspec backend). For a group, ``array``
      names the array inside it. ``lazy`` returns the ``zarr.Array`` unloaded.

    Eager loads are returned as-is (see :func:`load_data` for conversion and
    validation). Pickled objects are never loaded.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path.rstrip("/"))[1].lower()
    if suffix == ".npy":
        return np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None and len(names) == 1:
                key = names[0]
            if key not in names:
                raise ValueError(f"{path}: pass key= one of {names}, got {key!r}")
            return archive[key]
    z = _open_zarr(path, array, storage_options)
    return z if lazy else z[...]


def _open_zarr(path: str, array: str | None, storage_options: dict[str, Any] | None) -> Any:
    import zarr

    try:
        node = zarr.open(store=path, mode="r", storage_options=storage_options or None)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"no .npy/.npz file or zarr array/group at {path!r}") from err
    if isinstance(node, zarr.Group):
        names = sorted(name for name, _ in node.arrays())
        if array not in names:
            raise ValueError(f"{path} is a zarr group: pass array= one of {names}, got {array!r}")
        return node[array]
    if array is not None:
        raise ValueError(f"{path} is a zarr array, not a group: do not pass array={array!r}")
    return node


def load_data(
    spec: str | os.PathLike[str],
    *,
    n: int | None = None,
    seed: int = 0,
    key: str | None = None,
    array: str | None = None,
    lazy: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """Load data from a built-in spec or a user's file/URL.

    A spec whose part before the first ``:`` is a built-in name (``DATASETS``)
    is a built-in data set (write ``./digits`` for a file of that name);
    anything else goes to :func:`load_array`. Eagerly loaded user arrays are
    cast to float32 when numeric (they must be 2-D ``[n, d]``), ``n`` rows are
    drawn without replacement using ``seed`` when given, and the result is
    validated with :func:`check_array`. With ``lazy=True`` the unloaded array
    is returned after a shape/dtype check only.
    """
    spec = os.fspath(spec)
    if spec.split(":", 1)[0] in DATASETS:
        if lazy:
            raise ValueError(f"lazy=True applies to user arrays, not the built-in {spec!r}")
        return load_dataset(spec, n=n, seed=seed)
    x = load_array(spec, key=key, array=array, lazy=lazy, storage_options=storage_options)
    if lazy:
        if n is not None:
            raise ValueError("n cannot be combined with lazy=True: slice the returned array instead")
        check_array(x, spec, finite=False)
        return x
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
        x = np.asarray(x, dtype=np.float32)
    check_array(x, spec, finite=False)
    x = _subsample(x, n, seed, spec)
    check_array(x, spec)
    return x


# --------------------------------------------------------------------------- #
# Populations and samplers of the stand-alone semi-discrete solver
# --------------------------------------------------------------------------- #


def load_targets(spec: str, n: int | None = None, seed: int = 0,
                 array: str | None = None) -> Any:
    """Points a command reads as a population: a built-in set, in memory (sampled sets need
    ``n``; ``digits`` gives all rows of its split, or ``n`` of them), or a user's array, left
    on disk when it is zarr (``array`` names it inside a group; see :func:`load_data`)."""
    if spec.split(":")[0] in DATASETS:
        return load_data(spec, n=n, seed=seed)
    return load_data(spec, array=array, lazy=True)


def describe_array(x: Any, block_bytes: int = 64 << 20) -> dict[str, Any]:
    """Shape, dtype and the sha256 of all of an array's content (read in row blocks)."""
    import hashlib

    n = int(x.shape[0])
    h = hashlib.sha256()
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize)
    step = max(1, block_bytes // row_bytes)
    for lo in range(0, n, step):
        h.update(np.ascontiguousarray(np.asarray(x[lo:lo + step])).tobytes())
    return {"shape": [int(s) for s in x.shape], "dtype": str(x.dtype), "sha256": h.hexdigest()}


def data_identity(spec: str, sampler: Any) -> str:
    """What names the data of ``spec`` in a store's fingerprint: the spec, and for data read
    from an array (file, zarr, digits) the sha256 of all its rows, so a file changed between
    two steps of a run is refused instead of silently mixed in."""
    digest = getattr(sampler, "sha256", None)
    return spec if digest is None else f"{spec} (sha256 {digest})"


def row_sampler(data: Any, dtype: torch.dtype
                ) -> Callable[[int, np.random.Generator], torch.Tensor]:
    """Draws of rows of ``data`` (numpy array, memory map or zarr array) with replacement;
    each draw reads only the rows it needs.

    ``sampler(k, rng)`` returns a ``[k, d]`` tensor of ``dtype`` whose rows are
    ``rng.integers(0, n, k)`` (the project's sampler convention, ``rng`` a
    ``numpy.random.Generator`` owned by the caller, e.g. ``SemiDiscreteOT.fit(sampler,
    rng=seed)``).
    """
    n = int(data.shape[0])
    lazy = hasattr(data, "get_orthogonal_selection")

    def draw(k: int, rng: np.random.Generator) -> torch.Tensor:
        uniq, inv = np.unique(rng.integers(0, n, size=k), return_inverse=True)
        rows = data.get_orthogonal_selection((uniq, slice(None))) if lazy else data[uniq]
        rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
        return rows[torch.from_numpy(inv.reshape(-1))].to(dtype)

    return draw


def data_sampler(spec: str, dtype: torch.dtype | None = None, array: str | None = None
                 ) -> tuple[Callable[[int, np.random.Generator], torch.Tensor], int, str]:
    """``(sampler, d, description)`` for a data spec drawn i.i.d. (the GANs' real data, the
    source of ``ootrain semidiscrete solve``).

    ``sampler(k, rng)`` returns a ``[k, d]`` tensor of i.i.d. source draws (``dtype``,
    default float32) made with the caller's ``numpy.random.Generator`` ``rng`` (the project's
    sampler convention; a fixed ``rng`` seed gives fixed draws):

    - ``gaussian:D`` — N(0, I_D); ``uniform:D`` — uniform on the cube [0, 1]^D;
    - the other sampled built-ins (``mog1d``, ``ring8``, ``mog:D:K[:S]``) — exact draws;
    - ``digits[:split]``, a ``.npy``/``.npz`` file or a zarr array/group (path or URL) — the
      empirical distribution of its rows, sampled with replacement (a zarr array stays on
      disk; each draw reads only its rows; see :func:`row_sampler`).  It must be 2-D and
      finite (checked in row blocks); the sampler's ``sha256`` attribute is that of all its
      content (:func:`describe_array`), for a store's fingerprint.

    Raises ``ValueError`` (``FileNotFoundError`` for a missing file).

    Example:
        >>> draw, d, _ = data_sampler("ring8")
        >>> draw(5, np.random.default_rng(0)).shape, d
        (torch.Size([5, 2]), 2)
    """
    dtype = dtype or torch.float32
    name, *args = spec.split(":")
    if name in ("gaussian", "uniform"):
        if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
            raise ValueError(f"source {spec!r}: expected '{name}:D' with an integer D >= 1")
        d = int(args[0])
        uniform = name == "uniform"

        def draw(k: int, rng: np.random.Generator) -> torch.Tensor:
            x = rng.random((k, d)) if uniform else rng.standard_normal((k, d))
            return torch.from_numpy(x).to(dtype)

        what = "N(0, I)" if name == "gaussian" else "uniform on [0, 1]^D"
        return draw, d, f"{spec}: {what}, exact draws"
    direct = {"ring8": sample_ring8, "mog1d": sample_mog1d}.get(spec)
    if direct is not None:
        def draw_direct(k: int, rng: np.random.Generator) -> torch.Tensor:
            return torch.from_numpy(direct(k, rng)).to(dtype)

        return draw_direct, int(direct(1, np.random.default_rng(0)).shape[1]), \
            f"{spec}: exact draws"
    if name in DATASETS and name != "digits":
        d = int(load_dataset(spec, n=1).shape[1])          # validates the spec

        def draw_builtin(k: int, rng: np.random.Generator) -> torch.Tensor:
            x = load_dataset(spec, n=k, seed=int(rng.integers(2**63)))
            return torch.from_numpy(x).to(dtype)

        return draw_builtin, d, f"{spec}: exact draws"
    data = load_data(spec) if name == "digits" else load_data(spec, array=array, lazy=True)
    check_finite_rows(data)
    n, d = (int(s) for s in data.shape)
    draw_rows = row_sampler(data, dtype)
    draw_rows.sha256 = describe_array(data)["sha256"]   # type: ignore[attr-defined]
    return draw_rows, d, f"{spec}: empirical distribution of {n} rows, drawn with replacement"
