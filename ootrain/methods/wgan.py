"""WGAN-GP (Gulrajani, Ahmed, Arjovsky, Dumoulin & Courville, NeurIPS 2017), with a hook for a
generator regulariser computed on per-sample embeddings (POT-GAN's latent OT term,
:mod:`ootrain.methods.potgan`).

The critic ``D: [n, D] -> [n, 1]`` maximises ``E D(x) - E D(G(z))`` under the soft 1-Lipschitz
constraint of the gradient penalty; it minimises

    L_D = mean_i D(y_i) - mean_i D(x_i) + lambda * mean_i (|grad D(x_hat_i)| - 1)^2,
    x_hat_i = a_i x_i + (1 - a_i) y_i,   a_i ~ U[0, 1],

``n_critic`` times per generator iteration, each on fresh real and generated batches; then the
generator minimises

    L_G = -mean_j D(G(z_j)) + w * R(E(X_r), E(G(Z))),

``R`` a regulariser of the embeddings ``E`` (the frozen VAE encoder in POT-GAN) of a fresh
real batch ``X_r`` and the generated batch, ``w`` its weight (``R`` absent: plain WGAN-GP).

Both losses split over samples once the regulariser's coupling (a matching) is solved, so
``micro_batch = m`` runs them ``m`` rows at a time: the critic's loss is a sum of per-sample
terms (gradient accumulation), and the generator's goes through
:func:`ootrain.engine.cotangent.cotangent_step` with per-sample embeddings ``[D(G(z)), E(G(z))]``
(Run without autograd → the regulariser's solve → ReRun against the cotangents): the same
gradients as in memory (the tests check it), activations of ``m`` rows.

Defaults are the WGAN-GP paper's (Adam 1e-4, betas (0.5, 0.9), lambda 10, n_critic 5).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ootrain.engine.cotangent import Population, cotangent_step, embed, frozen_parameters
from ootrain.models.zoo import MLP, seeded
from ootrain.progress import make_progress
from ootrain.validation import (check_betas, check_bool, check_int, check_micro_batch,
                                check_num)

__all__ = ["WGANConfig", "Regulariser", "make_wgan_critic", "gradient_penalty", "critic_loss",
           "train_wgan_gp"]


@dataclass
class WGANConfig:
    """Hyper-parameters of :func:`train_wgan_gp`.

    Attributes:
        batch: real and generated samples per critic / generator update.
        n_critic: critic updates per generator update (paper: 5).
        gp_weight: gradient-penalty weight ``lambda`` (paper: 10).
        lr_gen, lr_critic: Adam learning rates (paper: 1e-4).
        betas: Adam ``(beta1, beta2)`` (paper: 0.5, 0.9).
        steps: generator updates.
        latent_dim: dimension of ``z ~ N(0, I)``.
        seed: seed of the real draws, latents and interpolation weights.
        micro_batch: None (one autograd graph per batch) or rows per forward pass.
        verify: with ``micro_batch``, check the generator's ReRun reproduces its Run.
    """

    batch: int = 256
    n_critic: int = 5
    gp_weight: float = 10.0
    lr_gen: float = 1e-4
    lr_critic: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    steps: int = 2000
    latent_dim: int = 2
    seed: int = 0
    micro_batch: Optional[int] = None
    verify: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        for name, low in (("batch", 2), ("n_critic", 1), ("steps", 0), ("latent_dim", 1),
                          ("seed", 0)):
            check_int(name, getattr(self, name), low)
        check_num("gp_weight", self.gp_weight, strict=False)
        check_num("lr_gen", self.lr_gen)
        check_num("lr_critic", self.lr_critic)
        self.betas = check_betas(self.betas)
        check_micro_batch(self.micro_batch)
        check_bool("verify", self.verify)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


class Regulariser(Protocol):
    """A generator regulariser ``w * R(E(X_r), E(G(Z)))`` on per-sample embeddings.

    ``encoder``: ``[n, D] -> [n, k]`` (frozen; gradients flow to its input).
    ``weight``: ``w``.
    ``prepare(real_e, fake_e)``: called once per generator update on the detached embeddings
    before the loss (e.g. fit an inner model); returns numbers for the history.
    ``loss(real_e, fake_e)``: scalar ``R``, differentiable in ``fake_e``; must not leave
    gradients in any parameter (only ``fake_e``'s cotangent is used).
    """

    encoder: nn.Module
    weight: float

    def prepare(self, real_e: Tensor, fake_e: Tensor) -> dict[str, float]: ...

    def loss(self, real_e: Tensor, fake_e: Tensor) -> Tensor: ...


def make_wgan_critic(in_dim: int = 2, hidden: Sequence[int] = (128, 128, 128),
                     activation: str = "relu", seed: int = 0) -> MLP:
    """The toy critic ``MLP(in_dim -> hidden -> 1)`` (no normalisation layers: the gradient
    penalty is per sample), initialised from ``seed`` without touching the global RNG."""
    return seeded(seed, lambda: MLP(in_dim, 1, hidden=hidden, activation=activation))


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """Per-sample ``(|grad_x D(x_hat_i)|_2 - 1)^2`` ``[n]`` at ``x_hat = alpha x + (1 - alpha)
    y``, ``alpha [n]``; differentiable in the critic's parameters (double backward)."""
    a = alpha.to(real.dtype).reshape(-1, *([1] * (real.ndim - 1)))
    x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1) ** 2


def critic_loss(critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor,
                gp_weight: float, scale: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """``scale * sum_i [D(y_i) - D(x_i) + lambda GP_i] / n_rows`` for rows ``real, fake
    [n_rows, D]`` (``scale = n_rows / n`` makes micro-batch losses add up to the batch's
    ``L_D``); returns the loss and the rows' sums of ``D(x)``, ``D(y)``, ``GP``."""
    d_real, d_fake = critic(real).squeeze(1), critic(fake).squeeze(1)
    gp = gradient_penalty(critic, real, fake, alpha)
    n = real.shape[0]
    loss = scale * (d_fake - d_real + gp_weight * gp).sum() / n
    return loss, {"d_real": float(d_real.detach().sum()), "d_fake": float(d_fake.detach().sum()),
                  "gp": float(gp.detach().sum())}


def _draw(sampler: Callable[[int, np.random.Generator], Any], n: int, rng: np.random.Generator,
          dtype: torch.dtype, width: Optional[int]) -> Tensor:
    t = torch.as_tensor(np.asarray(sampler(n, rng))).to(dtype)
    if t.ndim != 2 or t.shape[0] != n or (width is not None and t.shape[1] != width):
        raise ValueError(f"real_sampler must return an [n, D] array with n = {n} rows"
                         + (f" and D = {width}" if width is not None else "")
                         + f", got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("real_sampler returned non-finite values (NaN or Inf)")
    return t


def _critic_update(G: nn.Module, D: nn.Module, x: Tensor, z: Tensor, alpha: Tensor,
                   cfg: WGANConfig, params: list[Tensor]) -> dict[str, float]:
    """Set ``.grad`` of the critic's ``params`` to ``grad L_D`` (in rows of ``micro_batch``)."""
    n = x.shape[0]
    m = cfg.micro_batch or n
    for p in params:
        p.grad = None
    y = embed(Population(G, z), m)
    if y.shape != x.shape:
        raise ValueError(f"generator output must be {tuple(x.shape)} (the real data's shape), "
                         f"got {tuple(y.shape)}")
    totals = {"d_real": 0.0, "d_fake": 0.0, "gp": 0.0}
    for i in range(0, n, m):
        rows = slice(i, i + m)
        loss, parts = critic_loss(D, x[rows], y[rows], alpha[rows], cfg.gp_weight,
                                  scale=(min(i + m, n) - i) / n)
        loss.backward()
        for k in totals:
            totals[k] += parts[k]
    return {k: v / n for k, v in totals.items()}


def _generator_objective(reg: Optional[Regulariser], fake: Tensor, real_e: Optional[Tensor]
                         ) -> tuple[Tensor, dict[str, float]]:
    """``L_G`` of the per-sample embeddings ``fake [n, 1 + k]`` (``D(G(z))``, then
    ``E(G(z))``) and the real batch's ``real_e [n, k]``."""
    adv = -fake[:, 0].mean()
    if reg is None:
        return adv, {"adv": float(adv.detach())}
    stats = reg.prepare(real_e.detach(), fake[:, 1:].detach())
    r = reg.loss(real_e, fake[:, 1:])
    return adv + reg.weight * r, {"adv": float(adv.detach()), "reg": float(r.detach()), **stats}


def _generator_update(G: nn.Module, D: nn.Module, reg: Optional[Regulariser], x: Tensor,
                      z: Tensor, cfg: WGANConfig, params: list[Tensor]) -> dict[str, float]:
    """Set ``.grad`` of the generator's ``params`` to ``grad L_G``: in memory, or Run → solve
    → ReRun with per-sample embeddings ``[D(G(z)), E(G(z))]``."""
    def fake_embedding(zz: Tensor) -> Tensor:
        y = G(zz)
        parts = [D(y)] + ([reg.encoder(y)] if reg is not None else [])
        return torch.cat(parts, dim=1)

    real_pop = Population(reg.encoder, x, backward=False) if reg is not None else None
    for p in params:
        p.grad = None
    with frozen_parameters(D):
        if cfg.micro_batch is None:
            fake = fake_embedding(z)
            with torch.no_grad():
                real_e = reg.encoder(x) if reg is not None else None
            value, stats = _generator_objective(reg, fake, real_e)
            grads = torch.autograd.grad(value, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = None if g is None else g.detach()
            return {"gen_loss": float(value.detach()), **stats}

        out: dict[str, Any] = {}

        def solve(fake: Tensor, *real: Tensor) -> tuple[Tensor, list[Tensor]]:
            leaf = fake.detach().requires_grad_(True)
            value, out["stats"] = _generator_objective(reg, leaf, real[0] if real else None)
            (cot,) = torch.autograd.grad(value, leaf)
            return value.detach(), [cot] + [torch.zeros_like(r) for r in real]

        pops = [Population(fake_embedding, z)] + ([real_pop] if real_pop is not None else [])
        value = cotangent_step(pops, solve, cfg.micro_batch, verify=cfg.verify)
        return {"gen_loss": float(value), **out["stats"]}


def train_wgan_gp(generator: nn.Module, critic: nn.Module,
                  real_sampler: Callable[[int, np.random.Generator], Any], config: WGANConfig,
                  regulariser: Optional[Regulariser] = None,
                  callback: Optional[Callable[[dict[str, Any]], Any]] = None, *,
                  progress: Any = None) -> list[dict[str, Any]]:
    """WGAN-GP training (module doc), in place on the models.

    Args:
        generator: ``z [n, latent_dim] -> [n, D]``.
        critic: ``[n, D] -> [n, 1]``.
        real_sampler: ``real_sampler(n, rng) -> [n, D]`` given a seeded
            ``numpy.random.Generator`` (e.g. :func:`ootrain.data.sample_ring8`).
        config: a :class:`WGANConfig`.
        regulariser: a :class:`Regulariser` added to the generator loss (None: WGAN-GP).
        callback: called with each history row.
        progress: a ``rich.progress.Progress``, or bool / None for a bar of its own.

    Returns:
        Per generator update: ``step``, ``wasserstein`` (last critic batch's ``mean D(x) -
        mean D(y)``), ``gp`` (its mean penalty), ``gen_loss`` (``L_G``), ``adv`` (``-mean
        D(G(z))``), the regulariser's ``reg`` and ``prepare`` numbers, ``step_s``, ``time_s``.

    Deterministic given ``config.seed`` and the models' initial parameters.
    """
    if not isinstance(config, WGANConfig):
        raise ValueError(f"config must be a WGANConfig, got {type(config).__name__}")
    config.validate()
    cfg = config
    gparams = [p for p in generator.parameters() if p.requires_grad]
    cparams = [p for p in critic.parameters() if p.requires_grad]
    if not gparams or not cparams:
        raise ValueError("the generator and the critic need trainable parameters")
    dtype = gparams[0].dtype
    opt_g = torch.optim.Adam(gparams, lr=cfg.lr_gen, betas=cfg.betas)
    opt_c = torch.optim.Adam(cparams, lr=cfg.lr_critic, betas=cfg.betas)
    rng_real = np.random.default_rng([cfg.seed, 1])
    rng_z = np.random.default_rng([cfg.seed, 2])
    rng_a = np.random.default_rng([cfg.seed, 3])
    n, width = cfg.batch, None
    history: list[dict[str, Any]] = []
    own = progress is None or isinstance(progress, bool)
    t_start = time.perf_counter()
    with (make_progress(progress) if own else nullcontext(progress)) as bars:
        task = bars.add_task("WGAN-GP" if regulariser is None else "WGAN-GP + regulariser",
                             total=cfg.steps)
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            for _ in range(cfg.n_critic):
                x = _draw(real_sampler, n, rng_real, dtype, width)
                width = x.shape[1]
                z = torch.as_tensor(rng_z.standard_normal((n, cfg.latent_dim)), dtype=dtype)
                alpha = torch.as_tensor(rng_a.random(n), dtype=dtype)
                crit = _critic_update(generator, critic, x, z, alpha, cfg, cparams)
                opt_c.step()
            x = _draw(real_sampler, n, rng_real, dtype, width)
            z = torch.as_tensor(rng_z.standard_normal((n, cfg.latent_dim)), dtype=dtype)
            gen = _generator_update(generator, critic, regulariser, x, z, cfg, gparams)
            opt_g.step()
            now = time.perf_counter()
            row = {"step": step, "wasserstein": crit["d_real"] - crit["d_fake"],
                   "gp": crit["gp"], **gen, "step_s": round(now - t0, 5),
                   "time_s": round(now - t_start, 4)}
            if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                raise FloatingPointError(f"a loss became non-finite at generator step {step}: "
                                         f"{row}")
            history.append(row)
            bars.update(task, advance=1, description=f"WGAN-GP W={row['wasserstein']:.4f}")
            if callback is not None:
                callback(row)
        if not own:
            bars.remove_task(task)
    for p in gparams + cparams:
        p.grad = None
    return history
