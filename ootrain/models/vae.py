"""A small VAE whose frozen encoder is the latent space of POT-GAN's OT regulariser.

POT-GAN (Avraham, Zuo & Drummond, CVPR 2019) adds to the generator's loss an optimal-transport
term computed in a *fixed* latent space ``Q``: the encoder of an auto-encoder trained first on
the real data.  This module trains that auto-encoder, a VAE (Kingma & Welling, 2014), and
hands out ``Q(x) = mu(x)``, the encoder mean, frozen (:func:`frozen_encoder`).

Model (:class:`VAE`), ``x in R^D``, ``z in R^k``:

- encoder ``x -> (mu(x), log var(x))``, an :class:`ootrain.models.zoo.MLP` ``D -> hidden -> 2k``;
  ``log var`` is clamped to ``[LOGVAR_MIN, LOGVAR_MAX]``; ``q(z | x) = N(mu, diag exp(log var))``;
- prior ``p(z) = N(0, I_k)``;
- decoder ``z -> m(z)``, an MLP ``k -> hidden -> D``; ``p(x | z) = N(m(z), sigma^2 I_D)`` with one
  learned scalar ``log sigma`` (clamped to ``[LOG_SIGMA_MIN, LOG_SIGMA_MAX]``), so the noise
  level adapts to the data's scale (the ring's modes have std 0.02).

Loss (:meth:`VAE.loss`), the negative ELBO averaged over the batch, ``z = mu + exp(log var / 2)
* eps``, ``eps ~ N(0, I)`` (reparameterised, one draw per row):

    NLL = sum_d [ (x_d - m_d(z))^2 / (2 sigma^2) + log sigma + log(2 pi) / 2 ]
    KL  = sum_j [ exp(log var_j) + mu_j^2 - 1 - log var_j ] / 2   (= KL(q(z|x) || p(z)))
    loss = mean_rows(NLL + beta * KL).
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ootrain.models.zoo import ACTIVATIONS, MLP, seeded
from ootrain.progress import make_progress
from ootrain.validation import DIVERGED, NonFiniteError, check_int, check_num, is_int

__all__ = [
    "LOGVAR_MIN",
    "LOGVAR_MAX",
    "LOG_SIGMA_MIN",
    "LOG_SIGMA_MAX",
    "VAE",
    "VAEConfig",
    "MeanEncoder",
    "kl_divergence",
    "make_vae",
    "train_vae",
    "frozen_encoder",
    "reconstruction_error",
]

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0
LOG_SIGMA_MIN, LOG_SIGMA_MAX = -9.0, 4.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` per row, in closed form.

    ``mu, logvar [n, k] -> [n]``: ``sum_j (exp(logvar_j) + mu_j^2 - 1 - logvar_j) / 2``.
    """
    return 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar).sum(dim=1)


class VAE(nn.Module):
    """Gaussian VAE ``x [n, in_dim] <-> z [n, latent_dim]`` (module doc for the model).

    Attributes:
        encoder: ``MLP(in_dim -> hidden -> 2 * latent_dim)``: columns ``[:k]`` the mean,
            ``[k:]`` the (unclamped) log-variance.
        decoder: ``MLP(latent_dim -> hidden -> in_dim)``, the likelihood mean.
        log_sigma: scalar parameter, log of the decoder's noise std (initially 0).
    """

    def __init__(self, in_dim: int, latent_dim: int = 2, hidden: Sequence[int] = (128, 128),
                 activation: str = "relu") -> None:
        super().__init__()
        if not is_int(in_dim) or in_dim < 1:
            raise ValueError(f"in_dim must be an integer >= 1, got {in_dim!r}")
        if not is_int(latent_dim) or latent_dim < 1:
            raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from "
                             f"{sorted(ACTIVATIONS)}")
        self.in_dim, self.latent_dim = int(in_dim), int(latent_dim)
        self.encoder = MLP(self.in_dim, 2 * self.latent_dim, hidden=hidden, activation=activation)
        self.decoder = MLP(self.latent_dim, self.in_dim, hidden=hidden, activation=activation)
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def sigma(self) -> Tensor:
        """The decoder's noise std ``exp(clamp(log_sigma))`` (scalar tensor)."""
        return self.log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX).exp()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [n, in_dim] -> (mu [n, k], logvar [n, k])``, ``logvar`` clamped to
        ``[LOGVAR_MIN, LOGVAR_MAX]``."""
        h = self.encoder(x)
        k = self.latent_dim
        return h[:, :k], h[:, k:].clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor) -> Tensor:
        """``z [n, k] -> [n, in_dim]``, the likelihood mean ``m(z)``."""
        return self.decoder(z)

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``(recon [n, in_dim], mu [n, k], logvar [n, k])`` with ``recon = m(mu + std * eps)``,
        ``eps ~ N(0, I)`` drawn from ``generator`` (the global RNG if None)."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype,
                          device=mu.device if generator is None else generator.device)
        z = mu + (0.5 * logvar).exp() * eps.to(mu.device)
        return self.decode(z), mu, logvar

    def loss(self, x: Tensor, beta: float = 1.0, generator: Optional[torch.Generator] = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative ELBO averaged over rows (module doc), one reparameterised draw per row.

        Returns ``(loss, parts)``, ``parts`` holding the batch means ``nll`` and ``kl`` and the
        current ``sigma`` (all tensors, ``loss = nll + beta * kl``).
        """
        recon, mu, logvar = self(x, generator)
        log_sigma = self.log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)
        nll = (0.5 * (x - recon).square() * torch.exp(-2 * log_sigma)
               + log_sigma + _HALF_LOG_2PI).sum(dim=1).mean()
        kl = kl_divergence(mu, logvar).mean()
        return nll + beta * kl, {"nll": nll, "kl": kl, "sigma": log_sigma.exp()}


def make_vae(in_dim: int, latent_dim: int = 2, hidden: Sequence[int] = (128, 128),
             activation: str = "relu", seed: int = 0) -> VAE:
    """A :class:`VAE` initialised from ``seed`` without touching the global torch RNG."""
    return seeded(seed, lambda: VAE(in_dim, latent_dim, hidden, activation))


@dataclass
class VAEConfig:
    """Hyper-parameters of :func:`train_vae`.

    Attributes:
        steps: Adam steps.
        batch: rows drawn from the sampler per step.
        lr: Adam learning rate.
        beta: weight of the KL term (1: the ELBO).
        seed: seed of the data draws (``numpy.random.default_rng([seed, 7])``) and of the
            latent noise (``torch.Generator().manual_seed(seed)``); model init is the caller's.
    """

    steps: int = 2000
    batch: int = 256
    lr: float = 1e-3
    beta: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_int("steps", self.steps, 0)
        check_int("batch", self.batch, 1)
        check_num("lr", self.lr)
        check_num("beta", self.beta, strict=False)
        check_int("seed", self.seed, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_batch(x: Any, n: int, d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.as_tensor(x if isinstance(x, Tensor) else np.asarray(x))
    if t.ndim != 2 or t.shape[0] != n or t.shape[1] != d:
        raise ValueError(f"sampler must return an [n, in_dim] array with n = {n}, in_dim = {d}, "
                         f"got shape {tuple(t.shape)}")
    if not t.is_floating_point() and t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"sampler must return real numbers, got dtype {t.dtype}")
    t = t.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("sampler returned non-finite values (NaN or Inf)")
    return t


def train_vae(vae: VAE, sampler: Callable[[int, np.random.Generator], Any], config: VAEConfig,
              *, optimizer: Optional[torch.optim.Optimizer] = None, progress: Any = None,
              callback: Optional[Callable[[dict[str, Any]], Any]] = None) -> list[dict[str, Any]]:
    """Fit ``vae`` in place by Adam on the negative ELBO of fresh draws.

    Args:
        vae: a :class:`VAE`.
        sampler: ``sampler(n, rng) -> [n, in_dim]`` (numpy or torch), e.g.
            :func:`ootrain.data.sample_ring8`; ``rng = numpy.random.default_rng([seed, 7])``.
        config: a :class:`VAEConfig`.
        optimizer: over the VAE's parameters (default: Adam at ``config.lr``).
        progress: a ``rich.progress.Progress`` to add a task to, or a bool / None for a bar of
            its own (:func:`ootrain.progress.make_progress`).
        callback: called with each history row after its update.

    Returns:
        The history: per step ``step``, ``loss`` (before the update), ``nll``, ``kl``,
        ``sigma`` and ``time_s`` (wall seconds since the start).

    Deterministic given ``config.seed`` and the initial parameters.  Raises ``ValueError`` on
    bad sampler output and :class:`~ootrain.validation.NonFiniteError` if the loss becomes non-finite.
    """
    if not isinstance(vae, VAE):
        raise ValueError(f"vae must be a VAE, got {type(vae).__name__}")
    if not isinstance(config, VAEConfig):
        raise ValueError(f"config must be a VAEConfig, got {type(config).__name__}")
    config.validate()
    params = [p for p in vae.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the VAE has no trainable parameters")
    dtype, device = params[0].dtype, params[0].device
    opt = optimizer if optimizer is not None else torch.optim.Adam(params, lr=config.lr)
    rng = np.random.default_rng([config.seed, 7])
    noise = torch.Generator().manual_seed(config.seed)
    vae.train()
    history: list[dict[str, Any]] = []
    own = progress is None or isinstance(progress, bool)
    ctx = make_progress(progress) if own else nullcontext(progress)
    t_start = time.perf_counter()
    with ctx as bars:
        task = bars.add_task("VAE steps", total=config.steps)
        for step in range(config.steps):
            x = _as_batch(sampler(config.batch, rng), config.batch, vae.in_dim, dtype, device)
            loss, parts = vae.loss(x, config.beta, generator=noise)
            if not bool(torch.isfinite(loss)):
                raise NonFiniteError(f"VAE loss became non-finite at step {step}; {DIVERGED}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            row = {"step": step, "loss": float(loss.detach()),
                   **{k: float(v.detach()) for k, v in parts.items()},
                   "time_s": round(time.perf_counter() - t_start, 4)}
            history.append(row)
            bars.update(task, advance=1, description=f"VAE -ELBO={row['loss']:.4f}")
            if callback is not None:
                callback(row)
        if not own:
            bars.remove_task(task)
    opt.zero_grad(set_to_none=True)
    vae.eval()
    return history


class MeanEncoder(nn.Module):
    """``Q(x) = mu(x)``: the mean columns ``[:k]`` of a VAE encoder's output,
    ``x [n, in_dim] -> [n, latent_dim]``."""

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = int(latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)[:, :self.latent_dim]


def frozen_encoder(vae: VAE) -> MeanEncoder:
    """A frozen, independent copy of ``vae``'s encoder mean: ``Q(x) -> [n, latent_dim]``.

    Deep-copied (later changes to ``vae`` do not reach it), in eval mode, every parameter
    ``requires_grad=False``; gradients still flow to its input, as POT-GAN's regulariser
    needs inside the generator's loss.
    """
    q = MeanEncoder(copy.deepcopy(vae.encoder), vae.latent_dim)
    q.requires_grad_(False)
    return q.eval()


def reconstruction_error(vae: VAE, x: Any) -> float:
    """``mean_{i, d} (m(mu(x_i))_d - x_id)^2``: mean squared error of the decoded encoder
    mean, over all rows and coordinates of ``x [n, in_dim]``."""
    p = next(vae.parameters())
    t = torch.as_tensor(x if isinstance(x, Tensor) else np.asarray(x)).to(p.dtype).to(p.device)
    if t.ndim != 2 or t.shape[1] != vae.in_dim:
        raise ValueError(f"x must be [n, {vae.in_dim}], got shape {tuple(t.shape)}")
    with torch.no_grad():
        return float((vae.decode(vae.encode(t)[0]) - t).square().mean())
