"""POT-GAN's parallel latent OT regulariser (Avraham, Zuo & Drummond, CVPR 2019).

A VAE trained on the data gives a frozen encoder ``Q: [n, D] -> [n, k]``
(:func:`ootrain.models.vae.frozen_encoder`).  A Latent Transformation Forest ``F: R^k -> R^k``
(:class:`ootrain.models.forest.LatentTransformForest`) learns to carry the generated latents
``z_g = Q(G(Z))`` onto the real ones ``z_r = Q(X_r)``, and the generator is pulled so that
its transformed latents land on the real latents they were matched to:

- **matching** ``rho``: per real latent, the nearest transformed generated latent,
  ``rho_i = argmin_j |z_r,i - F(z_g,j)|^2`` (:func:`match`, through the argmin backends of
  :mod:`ootrain.ot.ctransform`: a c-transform with ``psi = 0``), or with ``matching="exact"`` the
  one-to-one assignment minimising ``sum_i |z_r,i - F(z_g,rho_i)|^2`` (Hungarian, scipy's
  ``linear_sum_assignment``; ``O(n^3)``, small batches);
- **Algorithm 2** (:meth:`POTRegulariser.prepare`): ``forest_steps`` Adam steps on ``F``,
  each re-matching and descending ``L_F = mean_i |z_r,i - F(z_g,rho_i)|^2`` with the
  latents fixed;
- **the regulariser** (:meth:`POTRegulariser.loss`), added to the WGAN-GP generator loss with
  weight ``lambda_POT`` (:mod:`ootrain.methods.wgan`): the paper's squared norm of the batch of matched
  differences, ``L_POT = |sigma_rho(Q(X_r)) - F(Q(G(Z)))|^2 = sum_i |z_r,i - F(z_g,rho_i)|^2``,
  differentiated through ``Q`` and ``G`` with ``F`` and ``rho`` held fixed.

Choices the paper leaves open, fixed here (and recorded by the pipeline):

- the matching runs over one batch (``n`` real, ``n`` generated), recomputed at every
  Algorithm 2 step and once more, with the updated ``F``, for ``L_POT``;
- ``L_POT`` is a *sum* over the batch's ``n`` matched pairs (the paper's norm of the batch
  matrix) while the WGAN terms are means: relative to the adversarial term the pull weighs
  ``lambda_POT * n`` (0.01 * 256 = 2.56 at the pipeline's batch); generated samples matched by
  no real latent get no pull, several real latents may pull the same generated one
  (``matching="argmin"``);
- ``L_F`` (Algorithm 2) is the mean over the pairs (Adam does not see the scale);
- ``F`` starts as the identity (residual forest, zero leaves) with thresholds set from the
  first batch's real latents, and keeps its Adam state across generator updates;
- ``F`` learns slowly by default (``forest_steps = 1``, ``forest_lr = 1e-3``).  Measured on
  the toys (``pipelines/potgan_toys``, one seed each, reverse KL): a fast ``F`` (5 steps at
  1e-2) absorbs the mismatch — ``L_POT`` falls to ~1e-4 and the generator gets no pull (ring
  70 vs WGAN-GP 27); ``F`` frozen at the identity (0 steps) makes ``L_POT`` a per-real
  nearest-neighbour pull, which helps on the ring (22.5 vs 27) but over-disperses the
  Gaussian ball (2.31 vs 1.50: the generated points settle like a k-means quantiser, whose
  density ~ p^{d/(d+2)} has heavier tails than p; measured std 1.28 vs 1); the slow ``F``
  helps on both (ring 23.0, ball 1.29).  ``matching="exact"`` (one-to-one) pulls every
  generated sample and at ``lambda_POT = 0.01`` fights the critic on the ring (59 vs 46).
  Matching the other way (each transformed generated latent to its nearest real one, every
  generated sample pulled; tried with the slow ``F`` over seeds 0-2) was worse than WGAN-GP on
  the ring (69-137 vs 26-45, 6-7 modes) and is not offered.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ootrain.ot.backends import BACKENDS
from ootrain.ot.ctransform import c_transform
from ootrain.models.forest import LatentTransformForest
from ootrain.engine.core import frozen_parameters, module_device, to_cpu
from ootrain.validation import check_int, check_num

__all__ = ["MATCHINGS", "GAN_METHODS", "POTConfig", "POTRegulariser", "match", "build_potgan"]

MATCHINGS = ("argmin", "exact")


def match(real: Tensor, fake: Tensor, method: str = "argmin", backend: str = "auto") -> Tensor:
    """The matching ``rho [n_r]`` (int64) of real latents ``real [n_r, k]`` to ``fake
    [n_g, k]`` under the squared Euclidean cost.

    ``argmin``: ``rho_i = argmin_j |real_i - fake_j|^2`` (ties: smallest ``j``), by
    :func:`ootrain.ot.ctransform.c_transform` on ``backend``.  ``exact``: a one-to-one assignment
    (``n_r <= n_g``) minimising ``sum_i |real_i - fake_rho_i|^2``
    (``scipy.optimize.linear_sum_assignment``).
    """
    if method not in MATCHINGS:
        raise ValueError(f"matching must be one of {', '.join(MATCHINGS)}, got {method!r}")
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"latents must be [n_r, k] and [n_g, k], got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    real, fake = real.detach(), fake.detach()
    if method == "argmin":
        psi = torch.zeros(fake.shape[0], dtype=real.dtype, device=real.device)
        return c_transform(real, fake, psi, "sqeuclidean", backend)[0]
    if real.shape[0] > fake.shape[0]:
        raise ValueError(f"exact matching needs n_r <= n_g, got {real.shape[0]} real and "
                         f"{fake.shape[0]} generated latents")
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(real.double(), fake.double()).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    rho = np.empty(real.shape[0], dtype=np.int64)
    rho[rows] = cols
    return torch.as_tensor(rho, device=real.device)


@dataclass
class POTConfig:
    """Hyper-parameters of the POT regulariser (module doc).

    Attributes:
        weight: ``lambda_POT`` (paper: 0.01; ``L_POT`` is a sum over the batch).
        forest_steps: Algorithm 2 iterations (Adam steps on ``F``) per generator update.
        forest_lr: Adam learning rate of ``F``.
        matching: ``argmin`` (the paper's) or ``exact`` (one-to-one).
        backend: argmin backend (:data:`ootrain.ot.ctransform.BACKENDS`).
    """

    weight: float = 0.01
    forest_steps: int = 1
    forest_lr: float = 1e-3
    matching: str = "argmin"
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_num("weight", self.weight, strict=False)
        check_num("forest_lr", self.forest_lr)
        check_int("forest_steps", self.forest_steps, 0)
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {', '.join(MATCHINGS)}, got "
                             f"{self.matching!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got "
                             f"{self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class POTRegulariser:
    """``lambda_POT * L_POT`` for :class:`ootrain.methods.wgan.WGANGP` (a
    :class:`ootrain.methods.wgan.Regulariser`).

    Args:
        encoder: the frozen encoder ``Q`` ``[n, D] -> [n, k]`` (no trainable parameters).
        forest: ``F`` ``[n, k] -> [n, k]``, trained here by Algorithm 2.
        config: a :class:`POTConfig`.
    """

    def __init__(self, encoder: nn.Module, forest: LatentTransformForest,
                 config: POTConfig | None = None) -> None:
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("the encoder must be frozen (no parameter with requires_grad); "
                             "use ootrain.models.vae.frozen_encoder")
        self.encoder = encoder
        self.forest = forest
        self.pot = config if config is not None else POTConfig()
        self.pot.validate()
        self.weight = float(self.pot.weight)
        self.optimizer = torch.optim.Adam(forest.parameters(), lr=self.pot.forest_lr)
        self._initialised = False

    def config(self) -> dict[str, Any]:
        return {"pot": self.pot.to_dict(), "forest": repr(self.forest)}

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "forest": self.forest}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"forest": self.optimizer}

    def state_dict(self) -> dict[str, Any]:
        return {"initialised": torch.tensor(self._initialised)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._initialised = bool(state["initialised"])

    def save_state(self) -> bytes:
        """``F``, its optimiser and :meth:`state_dict` as bytes of CPU tensors (a store
        written on a GPU resumes anywhere; :meth:`load_state` puts them back on ``F``'s
        device)."""
        buf = io.BytesIO()
        state = {"forest": self.forest.state_dict(), "optimizer": self.optimizer.state_dict(),
                 **self.state_dict()}
        torch.save(to_cpu(state), buf)
        return buf.getvalue()

    def load_state(self, raw: bytes) -> None:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        self.forest.load_state_dict(state["forest"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_state_dict(state)

    def _forest(self, z: Tensor) -> Tensor:
        """``F(z)`` computed on ``F``'s device (the engine's) and returned on ``z``'s (Solve's,
        the CPU); differentiable in ``z`` and in ``F``'s parameters."""
        return self.forest(z.to(module_device(self.forest))).to(z.device)

    def _pair_losses(self, real: Tensor, fake: Tensor) -> Tensor:
        """``|real_i - F(fake)_rho_i|^2`` ``[n_r]``, ``rho`` matched on ``F(fake)``."""
        moved = self._forest(fake)
        rho = match(real, moved, self.pot.matching, self.pot.backend)
        return (real - moved[rho]).pow(2).sum(1)

    def prepare(self, real_e: Tensor, fake_e: Tensor) -> dict[str, float]:
        """Algorithm 2: ``forest_steps`` Adam steps on ``F`` for the detached latents;
        returns ``forest_loss`` (``L_F`` before the last step) and ``matched`` (fraction of
        generated latents matched by some real latent, after the steps)."""
        real_e, fake_e = real_e.detach(), fake_e.detach()
        if not self._initialised:
            self.forest.init_from_data(real_e.to(module_device(self.forest)))
            self._initialised = True
        loss = torch.zeros(())
        for _ in range(self.pot.forest_steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._pair_losses(real_e, fake_e).mean()
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            rho = match(real_e, self._forest(fake_e), self.pot.matching, self.pot.backend)
        return {"forest_loss": float(loss.detach()),
                "matched": float(torch.unique(rho).numel() / fake_e.shape[0])}

    def streamed(self, real: Any, fake: Any, moved: Any, write_moved: Any, block: int,
                 nearest: Callable[[torch.dtype, str], Tensor]
                 ) -> tuple[float, dict[str, float], Any]:
        """:meth:`prepare` and :meth:`loss` over latents stored out of core, ``block`` rows at
        a time: ``real`` [n, k] and ``fake`` [b, k] are array-likes (zarr, numpy); ``moved``
        an array-like [b, k] that ``write_moved(lo, hi, rows)`` fills with ``F(fake)``.

        Each matching sweep is ``nearest(dtype, backend)``: ``rho [n]`` int64,
        ``rho_i = argmin_j |real_i - moved_j|^2`` over the rows ``moved`` holds at the call
        (ties: smallest ``j``; the latents as ``dtype``, the forest's, on argmin ``backend``)
        — the caller's, e.g. a Dask graph over the store's chunks
        (:func:`ootrain.methods.wgan.stored_nearest`), so that only models run here.
        A sweep's ``rho`` is held whole (``8 n`` bytes: with ``n = b``, less than the per-row
        sums below).  Algorithm 2's ``L_F`` gradient accumulates block by block; ``L_POT``'s
        gradient in ``fake_j`` is ``J_F(fake_j)^T 2 (c_j F(fake_j) - S_j)`` with ``c_j`` the
        real latents matched to ``j`` and ``S_j`` their sum, kept per generated row
        (``(k + 1)`` floats each).
        Returns ``L_POT``, the stats of :meth:`prepare`, and ``cotangent(lo, hi)`` giving
        ``d L_POT / d fake`` for rows ``[lo, hi)``.  Argmin matching only.
        """
        if self.pot.matching != "argmin":
            raise ValueError("exact (one-to-one) matching needs the whole batch in memory; "
                             "raise the memory budget or use matching='argmin'")
        n, b = int(real.shape[0]), int(fake.shape[0])
        dtype = next(self.forest.parameters()).dtype

        def rows_of(arr: Any, lo: int, hi: int) -> Tensor:
            return torch.as_tensor(np.asarray(arr[lo:hi]), dtype=dtype)

        def take(arr: Any, idx: Tensor) -> Tensor:
            flat = idx.reshape(-1).numpy()
            uniq, inv = np.unique(flat, return_inverse=True)
            got = torch.as_tensor(np.asarray(arr.get_orthogonal_selection(
                (uniq, slice(None)))), dtype=dtype)
            return got[torch.from_numpy(inv.reshape(-1))].reshape(*idx.shape, -1)

        def refresh() -> None:   # moved = F(fake), block by block
            with torch.no_grad():
                for lo in range(0, b, block):
                    write_moved(lo, min(b, lo + block),
                                self._forest(rows_of(fake, lo, min(b, lo + block))).numpy())

        def matches() -> Any:   # (real block, its rho) against moved as it stands
            rho = nearest(dtype, self.pot.backend)
            for lo in range(0, n, block):
                yield rows_of(real, lo, min(n, lo + block)), rho[lo:lo + block]

        if not self._initialised:
            self.forest.init_from_rows(n, lambda rows: take(real, rows))
            self._initialised = True
        loss = 0.0
        for _ in range(self.pot.forest_steps):
            refresh()
            self.optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for zr, rho in matches():
                part = (zr - self._forest(take(fake, rho))).pow(2).sum() / n
                part.backward()
                loss += float(part.detach())
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        refresh()
        counts = torch.zeros(b, dtype=dtype)
        sums = torch.zeros(b, int(fake.shape[1]), dtype=dtype)
        l_pot = 0.0
        for zr, rho in matches():
            l_pot += float((zr - take(moved, rho)).pow(2).sum())
            counts.index_add_(0, rho, torch.ones_like(rho, dtype=dtype))
            sums.index_add_(0, rho, zr)
        stats = {"forest_loss": loss, "matched": float((counts > 0).double().mean())}

        def cotangent(lo: int, hi: int) -> Tensor:
            z = rows_of(fake, lo, hi).requires_grad_(True)
            with frozen_parameters(self.forest):
                fz = self._forest(z)
                (g,) = torch.autograd.grad(fz, z, 2 * (counts[lo:hi, None] * fz.detach()
                                                        - sums[lo:hi]))
            return g

        return l_pot, stats, cotangent

    def loss(self, real_e: Tensor, fake_e: Tensor) -> Tensor:
        """``L_POT = sum_i |z_r,i - F(fake_e)_rho_i|^2`` with ``F``'s parameters and the
        matching held fixed (no gradient reaches ``F``)."""
        with frozen_parameters(self.forest):
            return self._pair_losses(real_e.detach(), fake_e).sum()


GAN_METHODS = ("potgan", "wgan-gp")


def build_potgan(sampler: Any, dim: int, *, method: str = "potgan",
                 wgan: Any = None, pot: POTConfig | None = None, vae: Any = None,
                 latent_dim: int = 2, lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9),
                 vae_latent: int = 2, vae_hidden: Any = (64, 64),
                 hidden: Any = (128, 128, 128), critic_hidden: Any = (128, 128, 128),
                 forest_trees: int = 8, forest_depth: int = 3, ema: float | None = None,
                 seed: int = 0, real_spec: str = "custom", progress: Any = None) -> Any:
    """POT-GAN (``method="potgan"``: a VAE trained on ``sampler``'s data gives the frozen
    encoder ``Q``; WGAN-GP with the latent OT regulariser) or its baseline (``"wgan-gp"``), as
    a :class:`ootrain.methods.wgan.WGANGP` ready for :func:`ootrain.methods.training.train`.

    Both build the generator ``MLP(latent_dim -> hidden -> dim)`` and the critic
    ``MLP(dim -> critic_hidden -> 1)`` from ``seed`` and Adam optimisers (``lr``, ``betas``),
    so they differ only by ``lambda_POT * L_POT``.  The VAE (``vae_latent``, ``vae_hidden``,
    trained in memory by :func:`ootrain.models.vae.train_vae` with ``vae``, a ``VAEConfig``)
    and the forest (``forest_trees`` of depth ``forest_depth``) are POT-GAN's only.
    """
    from ootrain.methods.wgan import WGANGP, WGANConfig, make_wgan_critic
    from ootrain.models.vae import VAEConfig, frozen_encoder, make_vae, train_vae
    from ootrain.models.zoo import MLP, seeded

    if method not in GAN_METHODS:
        raise ValueError(f"method must be one of {', '.join(GAN_METHODS)}, got {method!r}")
    G = seeded(seed, lambda: MLP(latent_dim, dim, hidden=hidden))
    D = make_wgan_critic(dim, critic_hidden, seed=seed + 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_c = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    reg, vae_history = None, None
    if method == "potgan":
        model = make_vae(dim, vae_latent, vae_hidden, seed=seed + 2)
        vcfg = vae if vae is not None else VAEConfig(seed=seed)
        vae_history = train_vae(model, sampler, vcfg, progress=progress,
                                optimizer=torch.optim.Adam(model.parameters(), lr=vcfg.lr))
        forest = LatentTransformForest(vae_latent, n_trees=forest_trees, depth=forest_depth,
                                       seed=seed + 3)
        reg = POTRegulariser(frozen_encoder(model), forest, pot)
    gan = WGANGP(G, D, sampler, opt_g, opt_c, wgan if wgan is not None else WGANConfig(), reg,
                 ema=ema, real_spec=real_spec)
    gan.vae_history = vae_history   # the VAE's training history (None for WGAN-GP)
    return gan
