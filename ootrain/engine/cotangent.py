"""Run → Solve → ReRun in cotangent mode for batches held as embeddings, not activations.

Losses such as OT-GAN's mini-batch energy distance couple every sample of a large batch,
but their gradient splits into per-sample pieces once the global solve is done:

    dL/dθ = Σ_p Σ_i (∂L/∂e_pi) · ∂e_pi/∂θ,      e_pi = f_p(u_pi),

over populations ``p`` (real halves, generated halves, …) whose embeddings
``e_p = f_p(u_p) [b_p, d]`` are computed by models ``f_p`` (a critic, a critic after a
generator) from inputs ``u_p`` (data or latents).  One step is

1. **Run**: ``e_p`` for every population, ``m`` rows at a time, without autograd;
2. **Solve**: ``(value, cotangents) = solve(e_1, …, e_P)``, no model involved
   (e.g. :func:`ootrain.ot.sinkhorn.energy_distance_gradients`);
3. **ReRun**: the same micro-batches again with autograd, ``e.backward(∂L/∂e)``; parameter
   gradients accumulate exactly as full-batch autograd would leave them (the invariant the
   tests check) while activations are held for ``m`` rows only.

This is the engine's cotangent mode (:mod:`ootrain.engine.core`) without the disk: the batch's
embeddings (``b × d`` numbers) live in memory, so it suits batches of 10^3–10^5 samples of
models whose activations do not fit at once; populations larger than memory go through
:class:`ootrain.engine.core.Engine` and its store.  Models must be deterministic (no dropout,
no batch statistics): ``verify=True`` compares ReRun's embeddings with Run's and raises
:class:`ootrain.engine.core.NondeterministicModelError` on a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ootrain.engine.core import NondeterministicModelError

__all__ = ["Population", "embed", "backward_cotangents", "cotangent_step", "frozen_parameters"]


@dataclass
class Population:
    """``b`` samples whose embeddings are ``forward(inputs[i:i + m])`` ``[m, d]``.

    ``inputs`` ``[b, ...]``; ``backward=False`` skips the population in ReRun (its cotangent
    is still computed by the solve: e.g. the real halves on a generator-only update).
    """

    forward: Callable[[Tensor], Tensor]
    inputs: Tensor
    backward: bool = True

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def _check_micro_batch(m: int) -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"micro_batch must be an integer >= 1, got {m!r}")
    return m


def embed(pop: Population, micro_batch: int) -> Tensor:
    """Run: ``forward`` over ``pop.inputs`` in micro-batches, no autograd → ``[b, d]``."""
    m = _check_micro_batch(micro_batch)
    with torch.no_grad():
        parts = [pop.forward(pop.inputs[i:i + m]) for i in range(0, len(pop), m)]
    e = torch.cat(parts)
    if e.ndim != 2 or e.shape[0] != len(pop):
        raise ValueError(f"forward must map [m, ...] inputs to [m, d] embeddings; got "
                         f"{tuple(e.shape)} for {len(pop)} inputs")
    if not bool(torch.isfinite(e).all()):
        raise ValueError("embeddings contain NaN or Inf")
    return e


def backward_cotangents(pop: Population, cotangent: Tensor, micro_batch: int,
                        reference: Tensor | None = None, rtol: float = 1e-5) -> None:
    """ReRun: ``forward`` with autograd per micro-batch and ``e.backward(cotangent[rows])``,
    accumulating ``Σ_i cotangent_i · ∂e_i/∂θ`` into the parameters' ``.grad``.

    ``reference`` (Run's embeddings) makes it check that the model reproduces them.
    """
    m = _check_micro_batch(micro_batch)
    if cotangent.shape[0] != len(pop):
        raise ValueError(f"cotangent has {cotangent.shape[0]} rows for a population of "
                         f"{len(pop)}")
    for i in range(0, len(pop), m):
        e = pop.forward(pop.inputs[i:i + m])
        if reference is not None:
            ref = reference[i:i + m]
            if not torch.allclose(e.detach(), ref, rtol=rtol, atol=rtol * float(
                    ref.abs().max().clamp_min(1e-30))):
                raise NondeterministicModelError(
                    f"ReRun embeddings of rows [{i}, {i + e.shape[0]}) differ from Run's (max "
                    f"diff {(e.detach() - ref).abs().max().item():.3g}); the model must be "
                    "deterministic (no dropout or batch statistics)")
        e.backward(cotangent[i:i + m].to(e.dtype))


def cotangent_step(populations: Sequence[Population],
                   solve: Callable[..., tuple[Any, Sequence[Tensor]]],
                   micro_batch: int, *, verify: bool = False) -> Any:
    """Run → Solve → ReRun over ``populations``; returns what ``solve`` returned first.

    Args:
        populations: the ``P`` populations (see :class:`Population`).
        solve: ``solve(e_1, …, e_P) -> (value, [∂L/∂e_1, …, ∂L/∂e_P])`` with cotangents of
            the embeddings' shapes.
        micro_batch: rows per forward pass (Run and ReRun).
        verify: check that ReRun reproduces Run's embeddings.

    Gradients accumulate into ``.grad`` (zero them before, step after).
    """
    embeddings = [embed(p, micro_batch) for p in populations]
    value, cotangents = solve(*embeddings)
    if len(cotangents) != len(populations):
        raise ValueError(f"solve returned {len(cotangents)} cotangents for "
                         f"{len(populations)} populations")
    for p, e, g in zip(populations, embeddings, cotangents):
        if g.shape != e.shape:
            raise ValueError(f"cotangent of shape {tuple(g.shape)} for embeddings of shape "
                             f"{tuple(e.shape)}")
        if p.backward:
            backward_cotangents(p, g, micro_batch, e if verify else None)
    return value


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Within the block, backward passes go *through* ``module`` (to its inputs) without
    accumulating its parameters' gradients: e.g. a generator's ReRun through a critic."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
