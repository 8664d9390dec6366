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

On the engine (:class:`WGANGP`) every critic update and every generator update is one
Run → Solve → ReRun step: the critic's loss is a sum of per-sample terms (Solve only reads
the stored rows for its metrics), the generator's goes through per-sample embeddings ``[D(G(z)),
E(G(z))]`` whose cotangents Solve writes after the regulariser's matching; the tests check
the accumulated gradients against full-batch autograd.  Out of core (stored rows beyond the
memory budget) every matching sweep of the generator's Solve is a Dask graph over the store's
chunks on the step's scheduler (:func:`stored_nearest`), the regulariser's models staying in
this process.

Defaults are the WGAN-GP paper's (Adam 1e-4, betas (0.5, 0.9), lambda 10, n_critic 5).
"""

from __future__ import annotations

import math
import operator
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Optional, Protocol, Sequence

import dask
import numpy as np
import torch
from torch import Tensor, nn

from ootrain.engine.compute import Compute, StoreArray
from ootrain.engine.core import CotangentLoss, Plan, Population, Sampler, standard_normal
from ootrain.models.zoo import MLP, parameter_ema, seeded
from ootrain.ot.sharded import SHARD_SHARE, argmin_tasks, plan_shards
from ootrain.ot.targets import TargetSource
from ootrain.validation import DIVERGED, NonFiniteError, check_int, check_num

__all__ = ["WGANConfig", "Regulariser", "make_wgan_critic", "gradient_penalty", "critic_loss",
           "CriticSolver", "GeneratorSolver", "stored_nearest", "WGANGP"]


@dataclass
class WGANConfig:
    """Hyper-parameters of :class:`WGANGP`; the batch (real and generated samples per update)
    is the engine's ``population``, the optimisers (paper: Adam 1e-4, betas 0.5, 0.9) are
    injected.

    Attributes:
        n_critic: critic updates per generator update (paper: 5).
        gp_weight: gradient-penalty weight ``lambda`` (paper: 10).
    """

    n_critic: int = 5
    gp_weight: float = 10.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_int("n_critic", self.n_critic, 1)
        check_num("gp_weight", self.gp_weight, strict=False)

    def player(self, step: int) -> str:
        """Who updates at engine step ``step``: ``n_critic`` critic steps, then the generator."""
        return "generator" if step % (self.n_critic + 1) == self.n_critic else "critic"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Regulariser(Protocol):
    """A generator regulariser ``w * R(E(X_r), E(G(Z)))`` on per-sample embeddings.

    ``encoder``: ``[n, D] -> [n, k]`` (frozen; gradients flow to its input).
    ``weight``: ``w``.
    ``prepare(real_e, fake_e)``: called once per generator update on the detached embeddings
    before the loss (e.g. fit an inner model); returns numbers for the history.
    ``loss(real_e, fake_e)``: scalar ``R``, differentiable in ``fake_e``; must not leave
    gradients in any parameter (only ``fake_e``'s cotangent is used).
    ``config()``: JSON-able settings (fingerprint); ``modules()``/``optimizers()``: its
    models and optimisers (checkpointed); ``state_dict()``/``load_state_dict()``: other
    state (tensors); ``save_state()``/``load_state(raw)``: everything ``prepare`` changes, as
    bytes (stored with the step, so that a resumed step sees what its Solve left).
    """

    encoder: nn.Module
    weight: float

    def prepare(self, real_e: Tensor, fake_e: Tensor) -> dict[str, float]: ...

    def loss(self, real_e: Tensor, fake_e: Tensor) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...

    def modules(self) -> dict[str, nn.Module]: ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save_state(self) -> bytes: ...

    def load_state(self, raw: bytes) -> None: ...


def make_wgan_critic(in_dim: int = 2, hidden: Sequence[int] = (128, 128, 128),
                     activation: str = "relu", seed: int = 0) -> MLP:
    """The toy critic ``MLP(in_dim -> hidden -> 1)`` (no normalisation layers: the gradient
    penalty is per sample), initialised from ``seed`` without touching the global RNG."""
    return seeded(seed, lambda: MLP(in_dim, 1, hidden=hidden, activation=activation))


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """Per-sample ``(|grad_x D(x_hat_i)|_2 - 1)^2`` ``[n]`` at ``x_hat = alpha x + (1 - alpha)
    y``, ``alpha [n]``; differentiable in the critic's parameters (double backward)."""
    outer = torch.is_grad_enabled()   # without grad (Run) the value only, no graph kept
    a = alpha.to(real.dtype).reshape(-1, *([1] * (real.ndim - 1)))
    with torch.enable_grad():
        x_hat = (a * real + (1 - a) * fake).detach().requires_grad_(True)
        out = critic(x_hat)
        (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=outer)
        gp = (grad.flatten(1).norm(dim=1) - 1) ** 2
    return gp if outer else gp.detach()


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


class _Linear:
    """ReRun loss ``Σ_i e_i · w / n`` of constant per-column weights ``w`` (no stored data)."""

    def __init__(self, weights: Sequence[float], n: int) -> None:
        self.w, self.n = torch.tensor(weights, dtype=torch.float64), n

    def load(self, lo: int, hi: int) -> dict[str, Tensor]:
        return {}

    def __call__(self, e: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return (e * self.w.to(e.device, e.dtype)).sum() / self.n


class CriticSolver:
    """The critic update's Solve: ``L_D`` is a sum of per-sample terms, so there is nothing
    global to solve; it reads the stored ``[D(x), D(y), GP]`` rows for the metrics
    (``wasserstein`` = mean D(x) - mean D(y), ``gp``) and ReRun minimises
    ``mean_i [D(y_i) - D(x_i) + lambda GP_i]``."""

    def __init__(self, gp_weight: float) -> None:
        self.gp_weight = float(gp_weight)

    def config(self) -> dict[str, Any]:
        return {"method": "wgan-gp-critic", "gp_weight": self.gp_weight}

    def solve(self, ctx: Any) -> dict[str, Any]:
        arr = ctx.arrays["pairs"]
        ctx.compute.check_store(ctx.store)
        ref, rows = ctx.ref(arr), arr.chunks[0]
        sums = np.zeros(3)   # one task per stored chunk, its sums added in chunk order
        for part in ctx.compute.run([dask.delayed(_column_sums)(ref, lo, lo + rows)
                                     for lo in range(0, arr.shape[0], rows)]):
            sums += part
        mean = sums / arr.shape[0]
        out = {"player": "critic", "wasserstein": float(mean[0] - mean[1]), "gp": float(mean[2]),
               "loss": float(mean[1] - mean[0] + self.gp_weight * mean[2])}
        if not all(math.isfinite(v) for v in out.values() if isinstance(v, float)):
            raise NonFiniteError(f"a critic loss became non-finite at step {ctx.step}: {out}; "
                                 f"{DIVERGED}")
        return out

    def rerun_loss(self, ctx: Any, population: str, dtype: torch.dtype) -> _Linear:
        return _Linear([-1.0, 1.0, self.gp_weight], ctx.arrays[population].shape[0])


def _column_sums(ref: StoreArray, lo: int, hi: int) -> np.ndarray:
    """A Dask task: the float64 column sums of the stored rows [lo, hi)."""
    return np.asarray(ref.array()[lo:hi], dtype=np.float64).sum(0)


class GeneratorSolver:
    """The generator update's Solve: ``L_G = -mean_j D(G(z_j)) + w R(E(X_r), E(G(Z)))`` over
    the stored ``fake`` rows ``[D(G(z)), E(G(z))]`` and ``real`` rows ``E(x)``, whose
    gradient in the stored rows is written as ``cotangents/fake``.  The regulariser's
    ``prepare`` (e.g. POT-GAN's Algorithm 2 on its forest) runs here; the state it leaves is
    stored with the step (``regulariser.pt``) and restored by a resumed ReRun."""

    def __init__(self, regulariser: Optional["Regulariser"]) -> None:
        self.reg = regulariser

    def config(self) -> dict[str, Any]:
        return {"method": "wgan-gp-generator",
                "regulariser": None if self.reg is None else self.reg.config()}

    def solve(self, ctx: Any) -> dict[str, Any]:
        fake_arr = ctx.arrays["fake"]
        if not ctx.store.has(f"{ctx.prefix}/cotangents/fake"):   # (and at most as much moved)
            ctx.store.check_space(2 * ctx.store.array_bytes(fake_arr.shape, fake_arr.chunks,
                                                            fake_arr.dtype.itemsize),
                                  f"step {ctx.step}: Solve (cotangents)")
        stored = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in ctx.arrays.values())
        if self.reg is not None and 4 * stored > ctx.memory_budget:
            return self._solve_streamed(ctx)
        fake = torch.from_numpy(np.asarray(fake_arr[:])).requires_grad_(True)
        real = None
        if self.reg is not None:
            real = torch.from_numpy(np.asarray(ctx.arrays["real"][:]))
        value, stats = _generator_objective(self.reg, fake, real)
        (cot,) = torch.autograd.grad(value, fake)
        if self.reg is not None:
            ctx.store.put_bytes(f"{ctx.prefix}/regulariser.pt", self.reg.save_state())
        path = f"{ctx.prefix}/cotangents/fake"
        ctx.store.require_array(path, fake_arr.shape, fake_arr.chunks, fake_arr.dtype)
        rows = fake_arr.chunks[0]
        for c in np.flatnonzero(~ctx.store.done(path)):
            lo, hi = int(c) * rows, min(fake_arr.shape[0], (int(c) + 1) * rows)
            ctx.store.write_chunk(path, (int(c), 0), cot[lo:hi].numpy().astype(fake_arr.dtype))
        out = {"player": "generator", "loss": float(value.detach()), **stats}
        if not all(math.isfinite(v) for v in out.values() if isinstance(v, float)):
            raise NonFiniteError(f"a generator loss became non-finite at step {ctx.step}: "
                                 f"{out}; {DIVERGED}")
        return out

    def _solve_streamed(self, ctx: Any) -> dict[str, Any]:
        """The same Solve with the stored rows read in blocks (a quarter of the budget's
        worth of rows beyond it): :meth:`ootrain.methods.potgan.POTRegulariser.streamed`,
        its matching sweeps (real latents against the stored ``moved = F(fake)``) a Dask
        graph on the step's scheduler (:func:`stored_nearest`)."""
        ctx.compute.check_store(ctx.store)
        fake_arr, real_arr = ctx.arrays["fake"], ctx.arrays["real"]
        b, width = fake_arr.shape
        k = width - 1
        rows = fake_arr.chunks[0]
        block = max(rows, (ctx.memory_budget // (64 * width * 8)) // rows * rows)
        mpath = f"{ctx.prefix}/moved"
        ctx.store.require_array(mpath, (b, k), (rows, k), fake_arr.dtype)
        moved = ctx.store.array(mpath)

        class _Latents:   # the latent columns of the stored fake rows, as an array-like
            shape, dtype, chunks = (b, k), fake_arr.dtype, (rows, k)

            def __getitem__(self, key: Any) -> np.ndarray:
                return np.asarray(fake_arr[key])[:, 1:]

            def get_orthogonal_selection(self, sel: Any) -> np.ndarray:
                return np.asarray(fake_arr.get_orthogonal_selection(sel))[:, 1:]

        def write_moved(lo: int, hi: int, values: np.ndarray) -> None:
            for c0 in range(lo, hi, rows):
                ctx.store.write_chunk(mpath, (c0 // rows, 0),
                                      values[c0 - lo:c0 - lo + rows].astype(fake_arr.dtype))

        def nearest(dtype: torch.dtype, backend: str) -> Tensor:
            return stored_nearest(ctx.compute, ctx.ref(real_arr), ctx.ref(mpath), rows=block,
                                  budget=ctx.memory_budget, dtype=dtype, backend=backend)

        l_pot, stats, cot = self.reg.streamed(real_arr, _Latents(), moved, write_moved, block,
                                              nearest)
        adv = 0.0
        for lo in range(0, b, block):
            adv -= float(np.asarray(fake_arr[lo:lo + block][:, 0], dtype=np.float64).sum()) / b
        ctx.store.put_bytes(f"{ctx.prefix}/regulariser.pt", self.reg.save_state())
        path = f"{ctx.prefix}/cotangents/fake"
        ctx.store.require_array(path, fake_arr.shape, fake_arr.chunks, fake_arr.dtype)
        for c in np.flatnonzero(~ctx.store.done(path)):
            lo, hi = int(c) * rows, min(b, (int(c) + 1) * rows)
            g = np.empty((hi - lo, width), dtype=fake_arr.dtype)
            g[:, 0] = -1.0 / b
            g[:, 1:] = (self.reg.weight * cot(lo, hi)).numpy()
            ctx.store.write_chunk(path, (int(c), 0), g)
        value = adv + self.reg.weight * l_pot
        out = {"player": "generator", "loss": value, "adv": adv, "reg": l_pot, **stats}
        if not all(math.isfinite(v) for v in out.values() if isinstance(v, float)):
            raise NonFiniteError(f"a generator loss became non-finite at step {ctx.step}: "
                                 f"{out}; {DIVERGED}")
        return out

    def rerun_loss(self, ctx: Any, population: str, dtype: torch.dtype) -> CotangentLoss:
        if self.reg is not None:
            raw = ctx.store.get_bytes(f"{ctx.prefix}/regulariser.pt")
            if raw is not None:
                self.reg.load_state(raw)
        return CotangentLoss(ctx.store.array(f"{ctx.prefix}/cotangents/{population}"), dtype)


def stored_nearest(compute: Compute, queries: StoreArray, targets: StoreArray, *, rows: int,
                   budget: int, dtype: torch.dtype, backend: str = "auto") -> Tensor:
    """``rho [n]`` int64, ``rho_i = argmin_j |x_i - y_j|^2`` (ties: smallest ``j``), of the
    stored queries ``x [n, k]`` over the stored targets ``y [b, k]``, as one Dask graph on
    ``compute``: per block of ``rows`` queries a read task, one argmin task per target shard
    and a merge (:func:`ootrain.ot.sharded.argmin_tasks` with ``psi = 0``).  A shard takes
    ``1 / SHARD_SHARE`` of a task's part of ``budget`` (:meth:`Compute.task_budget`).

    The indices of ``c_transform(x, y, 0, "sqeuclidean", backend)`` with ``x`` and ``y``
    read as ``dtype``; the tasks see arrays only (on a cluster they open the store by its
    URL).  Raises ``ValueError`` when a task's shard budget holds no target row.
    """
    y = TargetSource(targets)
    n = int(queries.shape[0])
    shards = plan_shards(y, compute.task_budget(budget) // SHARD_SHARE, dtype)
    name = f"nearest-{uuid.uuid4().hex}"   # keys unique to the computation
    graph: dict[Any, Any] = {(name, "queries", q): (queries.rows, lo, min(n, lo + rows), dtype)
                             for q, lo in enumerate(range(0, n, rows))}
    merged = argmin_tasks(graph, list(graph), y, torch.zeros(y.n, dtype=dtype), shards,
                          "sqeuclidean", backend, distributed=compute.distributed)
    keys = [(name, "rho", q) for q in range(len(merged))]
    for key, best in zip(keys, merged):
        graph[key] = (operator.getitem, best, 0)
    return torch.cat(compute.get(graph, keys))


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


class WGANGP:
    """WGAN-GP on the engine, with an optional generator regulariser (POT-GAN's).

    Engine steps cycle through ``n_critic`` critic updates and one generator update
    (:meth:`WGANConfig.player`), so ``steps`` generator updates are ``steps * (n_critic + 1)``
    engine steps.  A critic step's population ``pairs`` draws ``(x, z, a)`` per row (a real
    sample, a latent, an interpolation weight) and stores ``[D(x), D(G(z)), GP]`` (the
    gradient penalty at ``a x + (1 - a) G(z)``, computed with a graph in ReRun so that its
    gradient reaches the critic); a generator step's ``fake`` stores ``[D(G(z)), E(G(z))]``
    and, with a regulariser, ``real`` stores ``E(x)`` (not replayed).

    Args:
        generator: ``z [m, latent_dim] -> [m, D]``.
        critic: ``[m, D] -> [m, 1]`` (no normalisation layers: the penalty is per sample).
        real_sampler: ``draw(n, rng) -> [n, D]``.
        generator_optimizer, critic_optimizer: injected optimisers.
        config: a :class:`WGANConfig`.
        regulariser: a :class:`Regulariser` (None: plain WGAN-GP).
        ema: keep the bias-corrected moving average of the generator's parameters with this
            decay (:func:`ootrain.models.zoo.parameter_ema`), as ``generator_ema``.
        real_spec: names the real data in the store's fingerprint.
    """

    def __init__(self, generator: nn.Module, critic: nn.Module, real_sampler: Sampler,
                 generator_optimizer: torch.optim.Optimizer,
                 critic_optimizer: torch.optim.Optimizer, config: WGANConfig | None = None,
                 regulariser: Optional[Regulariser] = None, *, ema: float | None = None,
                 real_spec: str = "custom") -> None:
        self.G, self.D, self.real_sampler = generator, critic, real_sampler
        self.opt_g, self.opt_c = generator_optimizer, critic_optimizer
        self.cfg = config if config is not None else WGANConfig()
        self.cfg.validate()
        self.reg = regulariser
        self.ema = ema
        self.generator_ema = parameter_ema(generator, ema) if ema is not None else None
        self.real_spec = real_spec
        self.latent_dim: int | None = None
        self._latent: Sampler | None = None
        self._critic_solver = CriticSolver(self.cfg.gp_weight)
        self._generator_solver = GeneratorSolver(regulariser)

    def bind(self, config: Any) -> "WGANGP":
        self.latent_dim = int(config.latent_dim)
        self._latent = standard_normal(config.latent_dim, np.dtype(config.dtype))
        return self

    def config(self) -> dict[str, Any]:
        return {"method": "wgan-gp" if self.reg is None else "potgan", **self.cfg.to_dict(),
                "regulariser": None if self.reg is None else self.reg.config(),
                "ema": self.ema, "real": self.real_spec}

    def modules(self) -> dict[str, nn.Module]:
        mods = {"generator": self.G, "critic": self.D}
        if self.reg is not None:
            mods.update(self.reg.modules())
        if self.generator_ema is not None:
            mods["generator_ema"] = self.generator_ema
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"generator": self.opt_g, "critic": self.opt_c}
        if self.reg is not None:
            opts.update(self.reg.optimizers())
        return opts

    def state_dict(self) -> dict[str, Any]:
        return {} if self.reg is None else {"regulariser": self.reg.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.reg is not None:
            self.reg.load_state_dict(state["regulariser"])

    def _pairs(self, n: int, rng: np.random.Generator) -> Tensor:
        x = torch.as_tensor(np.asarray(self.real_sampler(n, rng)), dtype=torch.float64)
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"the real sampler returned shape {tuple(x.shape)} for {n} rows; "
                             f"expected [{n}, D]")
        z = torch.as_tensor(rng.standard_normal((n, self.latent_dim)), dtype=torch.float64)
        a = torch.as_tensor(rng.random((n, 1)), dtype=torch.float64)
        return torch.cat([x, z, a], dim=1)

    def _critic_rows(self, u: Tensor) -> Tensor:
        width = u.shape[1] - self.latent_dim - 1
        x, z, a = u[:, :width], u[:, width:-1], u[:, -1]
        with torch.no_grad():
            y = self.G(z)
        if y.shape != x.shape:
            raise ValueError(f"generator output must be {tuple(x.shape)} (the real data's "
                             f"shape), got {tuple(y.shape)}")
        gp = gradient_penalty(self.D, x, y, a)
        return torch.stack([self.D(x).squeeze(1), self.D(y).squeeze(1), gp], dim=1)

    def _fake_rows(self, z: Tensor) -> Tensor:
        y = self.G(z)
        parts = [self.D(y)] + ([self.reg.encoder(y)] if self.reg is not None else [])
        return torch.cat(parts, dim=1)

    def _real_rows(self, x: Tensor) -> Tensor:
        return self.reg.encoder(x)

    def plan(self, step: int) -> Plan:
        if self._latent is None:
            raise RuntimeError("WGANGP.bind(config) must be called before plan (train does)")
        if self.cfg.player(step) == "critic":
            return Plan([Population("pairs", self._pairs, self._critic_rows)],
                        self._critic_solver, self.opt_c, self.D)
        pops = [Population("fake", self._latent, self._fake_rows)]
        if self.reg is not None:
            pops.append(Population("real", self.real_sampler, self._real_rows, replay=False))
        return Plan(pops, self._generator_solver, self.opt_g, self.G)

    def finish_step(self, step: int, metrics: dict[str, Any]) -> None:
        if self.generator_ema is not None and self.cfg.player(step) == "generator":
            self.generator_ema.update_parameters(self.G)
