"""Latent Transformation Forest of POT-GAN (Avraham, Zuo & Drummond, CVPR 2019).

A soft (differentiable) decision forest ``F: R^k -> R^m`` applied to latent codes ``z``
(``m = k`` by default).  The forest has ``T`` trees; each is a complete binary tree with
``depth = D`` levels of decision nodes (``N = 2^D - 1`` internal nodes, ``L = 2^D`` leaves).

Decision node ``n`` of tree ``t`` reads one coordinate ``k_{t,n}`` of ``z`` and sends the
sample left with probability, and right with its complement,

    d_{t,n}(z) = sigma(beta_{t,n} (z_{k_{t,n}} - theta_{t,n})),      1 - d_{t,n}(z),

``theta`` a learned threshold and ``beta = exp(log_beta) > 0`` a learned sharpness.  The
probability ``pi_{t,l}(z)`` of reaching leaf ``l`` is the product of the decisions along the
root-to-leaf path; it is a distribution over the leaves of each tree.  Leaf ``l`` carries a
learned vector ``mu_{t,l} in R^m``, tree ``t`` outputs ``sum_l pi_{t,l}(z) mu_{t,l}`` and the
forest the mean over trees:

    forest(z) = (1/T) sum_t sum_l pi_{t,l}(z) mu_{t,l},
    F(z) = z + forest(z)   (residual=True),      F(z) = forest(z)   (residual=False).

Choices fixed here, where the paper leaves room:

- **Split functions.** Each node thresholds a *single* coordinate (axis-aligned soft splits,
  as in a classical decision tree), chosen once at construction uniformly at random (with
  replacement across nodes) and stored as a buffer ``feature`` (not learned).  No learned
  projection precedes the forest: the latent codes are already a learned representation.
- **Sharpness.** Per node, learned in log space (``beta = exp(log_beta)``, initial value
  ``sharpness``), so splits can harden during training (``beta -> inf`` is the hard tree
  ``z_k > theta -> left``) while ``beta`` stays positive.
- **Node and leaf ordering.** Heap order: level ``j`` (root ``j = 0``) holds nodes
  ``2^j - 1 ... 2^(j+1) - 2``; the children of node ``n`` are ``2n + 1`` (left) and ``2n + 2``
  (right); leaf ``l`` is heap position ``2^D - 1 + l``, so the bits of ``l``, most significant
  first, are the path's decisions (0 = left).  :meth:`LatentTransformForest.routing` builds
  ``pi`` level by level: each level splits every current mass ``p`` into ``(p d, p (1 - d))``,
  so ``sum_l pi_{t,l} = 1`` holds up to float rounding (no normalisation needed).
- **Residual form.** ``F = id + forest`` with zero-initialised leaves, so ``F`` starts as the
  identity and the training only has to learn the *displacement* of the latent codes; without
  the residual the leaves start as ``N(0, 0.1^2)`` draws.  Trees are averaged (not summed), so
  the output scale does not grow with ``T``.
- **Initialisation.** All random draws (coordinates, thresholds, leaves) come from a private
  ``torch.Generator`` seeded by ``seed``: construction neither reads nor advances the global
  RNG and is reproducible.  Thresholds are ``N(0, 1)`` draws: latents of a VAE encoder are
  roughly ``N(0, I)``.  :meth:`LatentTransformForest.init_from_data` replaces them by the value
  of each node's coordinate at a random row of a data batch, so every node splits the data.
"""

from __future__ import annotations

from typing import Callable

import math

import torch
from torch import Tensor, nn

__all__ = ["MAX_DEPTH", "LatentTransformForest"]

#: Largest supported tree depth (2^12 = 4096 leaves per tree).
MAX_DEPTH = 12


def _check_int(name: str, value: object, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


class LatentTransformForest(nn.Module):
    """Soft decision forest ``F: [n, dim] -> [n, out_dim]`` on latent codes (see the module doc).

    Parameters (``T = n_trees``, ``N = 2^depth - 1`` nodes, ``L = 2^depth`` leaves per tree):

    - ``threshold`` ``[T, N]``: ``theta_{t,n}``;
    - ``log_sharpness`` ``[T, N]``: ``log beta_{t,n}``;
    - ``leaves`` ``[T, L, out_dim]``: ``mu_{t,l}``;

    and the buffer ``feature`` ``[T, N]`` (int64): the coordinate ``k_{t,n}`` node ``n`` reads.

    Args:
        dim: width ``k`` of the input codes.
        n_trees: number of trees ``T``.
        depth: levels of decision nodes per tree, ``1 <= depth <= MAX_DEPTH``.
        out_dim: output width (default ``dim``); must equal ``dim`` when ``residual``.
        residual: ``F(z) = z + forest(z)`` with zero leaves (identity at init); else
            ``F(z) = forest(z)`` with ``N(0, 0.1^2)`` leaves.
        sharpness: initial ``beta`` of every node, ``> 0``.
        seed: seed of the private generator for all random initialisation.
    """

    def __init__(
        self,
        dim: int,
        n_trees: int = 8,
        depth: int = 3,
        out_dim: int | None = None,
        residual: bool = True,
        sharpness: float = 4.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dim = _check_int("dim", dim)
        self.n_trees = _check_int("n_trees", n_trees)
        self.depth = _check_int("depth", depth, 1, MAX_DEPTH)
        self.out_dim = self.dim if out_dim is None else _check_int("out_dim", out_dim)
        self.residual = bool(residual)
        if self.residual and self.out_dim != self.dim:
            raise ValueError(f"residual=True needs out_dim == dim, got out_dim={self.out_dim} "
                             f"and dim={self.dim}")
        if isinstance(sharpness, bool) or not isinstance(sharpness, (int, float)) \
                or not math.isfinite(sharpness) or sharpness <= 0:
            raise ValueError(f"sharpness must be a finite number > 0, got {sharpness!r}")
        self.seed = _check_int("seed", seed, lo=0)
        n_nodes, n_leaves = self.n_nodes, self.n_leaves

        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.n_trees, n_nodes)
        self.register_buffer("feature", torch.randint(self.dim, shape, generator=generator))
        self.threshold = nn.Parameter(torch.randn(shape, generator=generator))
        self.log_sharpness = nn.Parameter(torch.full(shape, math.log(sharpness)))
        leaf_shape = (self.n_trees, n_leaves, self.out_dim)
        leaves = (torch.zeros(leaf_shape) if self.residual
                  else 0.1 * torch.randn(leaf_shape, generator=generator))
        self.leaves = nn.Parameter(leaves)

    @property
    def n_nodes(self) -> int:
        """Decision nodes per tree, ``2^depth - 1``."""
        return 2**self.depth - 1

    @property
    def n_leaves(self) -> int:
        """Leaves per tree, ``2^depth``."""
        return 2**self.depth

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_trees={self.n_trees}, depth={self.depth}, "
                f"out_dim={self.out_dim}, residual={self.residual}, seed={self.seed}")

    def _check_input(self, z: Tensor, name: str = "z") -> None:
        """ValueError unless ``z`` is a floating ``[n, dim]`` tensor matching the parameters."""
        if not isinstance(z, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() != 2:
            raise ValueError(f"{name} must be 2-D [n, dim], got shape {tuple(z.shape)}")
        if z.shape[1] != self.dim:
            raise ValueError(f"{name} must have width dim={self.dim}, got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {z.dtype}")
        p = self.threshold
        if z.dtype != p.dtype or z.device != p.device:
            raise ValueError(f"{name} is {z.dtype} on {z.device} but the forest is {p.dtype} on "
                             f"{p.device}; move one with .to(...)")

    def decisions(self, z: Tensor) -> Tensor:
        """Left probabilities ``d_{t,n}(z) = sigma(beta_{t,n} (z_{k_{t,n}} - theta_{t,n}))``.

        ``z [n, dim] -> [n, T, N]`` (nodes in heap order).
        """
        self._check_input(z)
        beta = self.log_sharpness.exp()
        return torch.sigmoid(beta * (z[:, self.feature] - self.threshold))

    def routing(self, z: Tensor) -> Tensor:
        """Leaf probabilities ``pi_{t,l}(z)``: ``z [n, dim] -> [n, T, 2^depth]``.

        Built level by level: ``pi^(0) = 1`` ``[n, T, 1]``; at level ``j`` the ``2^j`` masses
        ``p_i`` and their nodes' decisions ``d_i`` give ``2^(j+1)`` masses ordered
        ``(p_0 d_0, p_0 (1 - d_0), p_1 d_1, ...)``: child ``2i`` left, ``2i + 1`` right, which
        is heap order.  Each row sums to one over leaves up to rounding.
        """
        d = self.decisions(z)
        pi = d.new_ones(d.shape[0], self.n_trees, 1)
        for level in range(self.depth):
            dl = d[..., 2**level - 1: 2**(level + 1) - 1]
            pi = torch.stack((pi * dl, pi * (1 - dl)), dim=-1).flatten(-2)
        return pi

    def forward(self, z: Tensor) -> Tensor:
        """``F(z)``: ``[n, dim] -> [n, out_dim]``, ``z + (1/T) sum_{t,l} pi_{t,l}(z) mu_{t,l}``
        (without the ``z +`` when not residual)."""
        out = torch.einsum("ntl,tlo->no", self.routing(z), self.leaves) / self.n_trees
        return z + out if self.residual else out

    @torch.no_grad()
    def init_from_data(self, z: Tensor) -> None:
        """Data-dependent thresholds: ``theta_{t,n} = z[r_{t,n}, k_{t,n}]`` for rows ``r_{t,n}``
        drawn uniformly from ``z [n, dim]`` (``n >= 1``) by a generator seeded with ``seed``.

        Each node then splits the data at a data value, so none routes all of it one way
        (unless its coordinate is constant).  The global RNG is not used.
        """
        self._check_input(z)
        self.init_from_rows(z.shape[0], lambda rows: z[rows.to(z.device)])

    @torch.no_grad()
    def init_from_rows(self, n: int, take: Callable[[Tensor], Tensor]) -> None:
        """:meth:`init_from_data` for data read row by row: ``take(rows)`` returns the rows
        ``rows`` (int64, any shape) of the ``n`` data rows, shape ``[*rows.shape, dim]``."""
        if n < 1:
            raise ValueError("z must have at least one row")
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(n, self.threshold.shape, generator=generator)
        picked = take(rows).to(self.threshold)   # [*threshold.shape, dim], F's device/dtype
        self.threshold.copy_(picked.gather(-1, self.feature.unsqueeze(-1)).squeeze(-1))
