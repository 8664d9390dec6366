"""The one backend vocabulary of the OT kernels, and whether each backend is available.

    torch   dense cost blocks of at most ``TORCH_BLOCK`` entries (the reference; always there)
    keops   pykeops LazyTensor reductions, ``O((B + N) d)`` memory, any registry cost
    faiss   exact flat (inner-product / Lp) search; the hard c-transform only
    auto    the kernel's own choice among those available (see each kernel's docstring)

:data:`BACKENDS` is the c-transform's set; :data:`SOFT_BACKENDS` the entropic kernels' set
(soft c-transform, Sinkhorn), which have no faiss path.

Example::

    >>> from ootrain.ot.backends import check_backend, keops_available
    >>> check_backend("torch", ("auto", "torch", "keops"))
    'torch'
"""

from __future__ import annotations

import functools

__all__ = ["BACKENDS", "SOFT_BACKENDS", "TORCH_BLOCK", "keops_available", "faiss_available",
           "check_backend"]

#: Backends of the hard c-transform.
BACKENDS = ("auto", "torch", "keops", "faiss")
#: Backends of the entropic kernels (soft c-transform, Sinkhorn).
SOFT_BACKENDS = ("auto", "torch", "keops")
#: Entries of one dense cost block of the torch backends.
TORCH_BLOCK = 2**22


@functools.lru_cache(maxsize=None)
def faiss_available() -> bool:
    """Whether ``faiss`` imports (and has flat indices)."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "IndexFlat")


@functools.lru_cache(maxsize=None)
def keops_available() -> bool:
    """Whether ``pykeops.torch.LazyTensor`` imports (it may still fail to compile)."""
    try:
        from pykeops.torch import LazyTensor
    except Exception:  # ImportError, or a broken compiler setup raising at import
        return False
    return LazyTensor is not None


def check_backend(backend: str, allowed: tuple[str, ...] = BACKENDS, what: str = "backend"
                  ) -> str:
    """``backend`` if it is one of ``allowed`` and, when named explicitly, importable;
    ValueError otherwise (``what`` names the kernel in the message)."""
    if not isinstance(backend, str) or backend not in allowed:
        raise ValueError(f"unknown {what} {backend!r}; expected one of {', '.join(allowed)}")
    if backend == "keops" and not keops_available():
        raise ValueError("backend 'keops' requested but pykeops cannot be imported")
    if backend == "faiss" and not faiss_available():
        raise ValueError("backend 'faiss' requested but faiss is not installed")
    return backend
