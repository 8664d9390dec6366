"""OT-GAN (Salimans, Zhang, Radford & Metaxas, ICLR 2018) trained in memory.

The generator ``g_theta`` and the critic ``v_eta`` play on the mini-batch energy distance
(:func:`ootrain.ot.sinkhorn.energy_distance`, the paper's eq. 8) between two independent real
batches ``X, X'`` and two independent generated batches ``Y = g(Z), Y' = g(Z')``:

    D^2 = W(X, Y) + W(X, Y') + W(X', Y) + W(X', Y') - 2 W(X, X') - 2 W(Y, Y'),

``W`` the transport cost ``<P, C>`` of the entropic (Sinkhorn) plan of the cosine cost
``c(x, y) = 1 - <v(x), v(y)> / (|v(x)| |v(y)|)`` between critic features.  Algorithm 1 of the
paper, which :func:`train_otgan` runs: at iteration ``t = 1, 2, ...`` draw ``X, X', Z, Z'``,
compute ``D^2``; if ``t mod (n_gen + 1) == 0`` the critic takes an ascent step on ``D^2``, else
the generator a descent step.  Plans are not differentiated: the gradient is the envelope
gradient ``sum_j P_ij grad c`` with the plans frozen (the paper's choice; by the envelope
theorem exact for the entropic objective ``<P, C> + eps KL`` at its optimum, a first-order
approximation for ``<P, C>`` itself), which :func:`ootrain.ot.sinkhorn.sinkhorn` returns.

Conventions fixed here (:class:`OTGANConfig`):

- ``batch`` is the size of **each** of the four sets ``X, X', Y, Y'``: one iteration sees
  ``2 * batch`` real and ``2 * batch`` generated samples, ``4 * batch`` in all.  The paper's
  headline batch "8000" is that total (``batch = 2000``); its batch-size study (200, 800, 3200,
  8000) is in totals as well.
- ``eps`` is absolute, in cosine-cost units: the cost lies in ``[0, 2]``.  The default
  ``1/500`` is the paper's entropy parameter (Sinkhorn with ``exp(-C / eps)``).
- The critic update is the paper's ``t mod (n_gen + 1) == 0`` with ``t`` counted from 1: with
  ``n_gen = 3`` iterations 1-3 update the generator and 4 the critic.  After
  ``critic_freeze_after`` iterations every iteration updates the generator (the paper's
  consistency experiment: with the critic fixed, ``D^2`` is still a proper distance, so the
  generator should keep all modes).
- Warm starts (``warm_start``, off by default): the six Sinkhorn problems of iteration ``t``
  start from those of iteration ``t - 1`` instead of eps-scaling from ``eps_0 = 2``.  The sets
  are fresh draws every iteration, so ``method="ctransform"`` moves the potentials to the new
  points: it evaluates the previous plan's potential ``f`` (on the previous first set ``p_i``)
  at the new second set by the entropic c-transform, ``g0(q) = -eps log sum_i a_i exp((f_i -
  c(p_i, q)) / eps)`` (any sizes); ``method="index"`` reuses ``(f, g)`` as they are when the
  sizes match (right scale, but potential ``i`` belonged to another point).  Measured (ring8,
  eps 0.05, tol 1e-2): against a smooth, slowly moving critic both halve the Sinkhorn
  iterations (tests), but once the critic has learned the modes they save nothing (``index``)
  or cost 30-50 % more iterations (``ctransform``) than eps-scaling (``pipelines/otgan_ring``,
  40 iterations from a trained model, critic training or frozen): the potentials of clustered
  features carry per-cluster offsets set by each batch's random cluster counts, which a fresh
  batch changes by O(1) and which Sinkhorn at the final eps corrects slowly, while eps-scaling
  fixes them at the coarse temperatures.  Each history row records the step's Sinkhorn
  iterations.

The 2-D models (:func:`make_generator`, :class:`Critic`) are the toy problems'; any
``nn.Module`` pair works: ``generator(z [n, latent_dim]) -> [n, D]``, ``critic(x [n, D]) ->
[n, k]`` (non-zero rows; :class:`Critic` L2-normalises them, which the cosine cost does anyway).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ootrain.engine.cotangent import Population, cotangent_step, embed, frozen_parameters
from ootrain.models.zoo import ACTIVATIONS, MLP, seeded
from ootrain.progress import make_progress
from ootrain.validation import check_betas, check_bool, check_micro_batch, is_int, is_num
from ootrain.ot.sinkhorn import (DENSE_MAX_ENTRIES, ENERGY_TERMS, SINKHORN_BACKENDS,
                              EnergyDistanceResult, SinkhornResult, sinkhorn)

__all__ = [
    "OTGANConfig",
    "WARM_START_METHODS",
    "Critic",
    "make_generator",
    "make_critic",
    "train_otgan",
    "array_sampler",
    "energy_step",
    "data_sampler",
]

WARM_START_METHODS = ("ctransform", "index")
PLAYERS = ("generator", "critic")


@dataclass
class OTGANConfig:
    """Hyper-parameters of :func:`train_otgan` (module doc for the conventions).

    Attributes:
        batch: samples in **each** of ``X, X', Y, Y'`` (``4 * batch`` per iteration).
        eps: Sinkhorn temperature, absolute, in cosine-cost units (cost in ``[0, 2]``);
            paper: 1/500.
        n_gen: generator updates per critic update (paper text: 3; its released code: 5).
        lr_gen, lr_critic: Adam learning rates (paper: 3e-4 both).
        betas: Adam ``(beta1, beta2)`` (paper: 0.5, 0.999).
        sinkhorn_tol: stop each Sinkhorn solve at marginal error ``||P 1 - a||_1 <= tol``.
        sinkhorn_max_iter: Sinkhorn iteration cap per solve (at the target eps).
        sinkhorn_scaling: eps-scaling factor of cold solves (None: start at ``eps``).
        backend: Sinkhorn backend, ``auto`` / ``dense`` / ``keops``.
        warm_start: start each solve from the previous iteration's potentials (module doc:
            measured to help only while the critic is smooth).
        warm_start_method: ``ctransform`` (move the potentials to the new points) or
            ``index`` (reuse them as they are; sizes must match, else cold).
        critic_freeze_after: after this many iterations the critic is no longer updated
            (None: never frozen; 0: the critic stays at its initialisation).
        steps: iterations (generator and critic updates together).
        latent_dim: dimension of ``z ~ N(0, I)``.
        seed: seed of the real draws and the latents (model init is the caller's).
        micro_batch: None: one autograd graph over the whole batch (in memory); an integer
            ``m``: the engine's cotangent mode (:mod:`ootrain.engine.cotangent`): critic features
            are computed ``m`` rows at a time without autograd, the six Sinkhorn problems
            are solved on them, and ``m`` rows at a time are replayed with autograd against
            the per-sample cotangents; same gradient, activations of ``m`` rows only.
        verify: with ``micro_batch``, check that the replay reproduces the first pass's
            features (raises :class:`ootrain.engine.core.NondeterministicModelError`).
    """

    batch: int = 200
    eps: float = 1 / 500
    n_gen: int = 3
    lr_gen: float = 3e-4
    lr_critic: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    sinkhorn_tol: float = 1e-3
    sinkhorn_max_iter: int = 1000
    sinkhorn_scaling: Optional[float] = 0.5
    backend: str = "auto"
    warm_start: bool = False
    warm_start_method: str = "ctransform"
    critic_freeze_after: Optional[int] = None
    steps: int = 1000
    latent_dim: int = 8
    seed: int = 0
    micro_batch: Optional[int] = None
    verify: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not is_int(self.batch) or self.batch < 2:
            raise ValueError(f"batch (size of each of X, X', Y, Y') must be an integer >= 2, "
                             f"got {self.batch!r}")
        if not is_num(self.eps) or self.eps <= 0:
            raise ValueError(f"eps must be a finite number > 0 (cosine-cost units, cost in "
                             f"[0, 2]), got {self.eps!r}")
        if not is_int(self.n_gen) or self.n_gen < 1:
            raise ValueError(f"n_gen (generator updates per critic update) must be an integer "
                             f">= 1, got {self.n_gen!r}")
        for name in ("lr_gen", "lr_critic"):
            v = getattr(self, name)
            if not is_num(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        self.betas = check_betas(self.betas)
        if not is_num(self.sinkhorn_tol) or self.sinkhorn_tol < 0:
            raise ValueError(f"sinkhorn_tol must be a finite number >= 0, got "
                             f"{self.sinkhorn_tol!r}")
        if not is_int(self.sinkhorn_max_iter) or self.sinkhorn_max_iter < 1:
            raise ValueError(f"sinkhorn_max_iter must be an integer >= 1, got "
                             f"{self.sinkhorn_max_iter!r}")
        s = self.sinkhorn_scaling
        if s is not None and (not is_num(s) or not 0 < s < 1):
            raise ValueError(f"sinkhorn_scaling must be in (0, 1) or None, got {s!r}")
        if self.backend not in SINKHORN_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(SINKHORN_BACKENDS)}, got "
                             f"{self.backend!r}")
        if not isinstance(self.warm_start, bool):
            raise ValueError(f"warm_start must be a bool, got {self.warm_start!r}")
        if self.warm_start_method not in WARM_START_METHODS:
            raise ValueError(f"warm_start_method must be one of "
                             f"{', '.join(WARM_START_METHODS)}, got {self.warm_start_method!r}")
        f = self.critic_freeze_after
        if f is not None and (not is_int(f) or f < 0):
            raise ValueError(f"critic_freeze_after must be None or an integer >= 0, got {f!r}")
        if not is_int(self.steps) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")
        if not is_int(self.latent_dim) or self.latent_dim < 1:
            raise ValueError(f"latent_dim must be an integer >= 1, got {self.latent_dim!r}")
        if not is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        check_micro_batch(self.micro_batch)
        check_bool("verify", self.verify)

    def player(self, step: int) -> str:
        """Who updates at 0-based iteration ``step`` (the paper's ``t = step + 1``)."""
        if self.critic_freeze_after is not None and step >= self.critic_freeze_after:
            return "generator"
        return "critic" if (step + 1) % (self.n_gen + 1) == 0 else "generator"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


# ----------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------
class Critic(nn.Module):
    """MLP features ``in_dim -> hidden... -> feature_dim``, L2-normalised per row: the cosine
    cost of OT-GAN is then ``1 - <v(x), v(y)>``."""

    def __init__(self, in_dim: int = 2, feature_dim: int = 32,
                 hidden: Sequence[int] = (128, 128), activation: str = "leaky_relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from "
                             f"{sorted(ACTIVATIONS)}")
        self.features = MLP(in_dim, feature_dim, hidden=hidden, activation=activation)
        self.in_dim, self.feature_dim = int(in_dim), int(feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.features(x), dim=1, eps=1e-12)


def make_generator(latent_dim: int = 8, out_dim: int = 2, hidden: Sequence[int] = (128, 128),
                   activation: str = "relu", layer_norm: bool = False, seed: int = 0) -> MLP:
    """The toy generator ``MLP(latent_dim -> hidden -> out_dim)`` (linear output; each hidden
    layer Linear -> LayerNorm if ``layer_norm`` -> activation), initialised from ``seed``
    without touching the global torch RNG."""
    return seeded(seed, lambda: MLP(latent_dim, out_dim, hidden=hidden, activation=activation,
                                     layer_norm=layer_norm))


def make_critic(in_dim: int = 2, feature_dim: int = 32, hidden: Sequence[int] = (128, 128),
                activation: str = "leaky_relu", seed: int = 0) -> Critic:
    """A :class:`Critic`, initialised from ``seed`` without touching the global torch RNG."""
    return seeded(seed, lambda: Critic(in_dim, feature_dim, hidden, activation))


def array_sampler(data: Any) -> Callable[[int, np.random.Generator], np.ndarray]:
    """A real-data sampler drawing rows of ``data [N, D]`` with replacement."""
    arr = np.asarray(data)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"data must be a non-empty [N, D] array, got shape {arr.shape}")

    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        return arr[rng.integers(0, arr.shape[0], size=n)]

    return draw


# ----------------------------------------------------------------------------------
# warm starts
# ----------------------------------------------------------------------------------
@dataclass
class _Prev:
    """One term's solve of the previous iteration: the normalised points and potentials."""

    p: Tensor
    q: Tensor
    f: Tensor
    g: Tensor


def _unit(v: Tensor) -> Tensor:
    return (v / v.norm(dim=1, keepdim=True)).detach()


def _ctransform(prev: _Prev, q: Tensor, eps: float) -> Tensor:
    """``g0(q_j) = -eps log sum_i a_i exp((f_i - c(p_i, q_j)) / eps)``, cosine cost, uniform
    ``a``; dense in column blocks of at most DENSE_MAX_ENTRIES entries."""
    n = prev.p.shape[0]
    h = prev.f / eps - math.log(n)
    block = max(1, DENSE_MAX_ENTRIES // n)
    out = []
    for j in range(0, q.shape[0], block):
        C = 1 - prev.p @ q[j:j + block].T               # [n, block]
        out.append(-eps * torch.logsumexp(h[:, None] - C / eps, dim=0))
    return torch.cat(out)


def _init_for(prev: Optional[_Prev], p: Tensor, q: Tensor, cfg: OTGANConfig
              ) -> Optional[tuple[Tensor, Tensor]]:
    if prev is None or not cfg.warm_start:
        return None
    if cfg.warm_start_method == "index":
        if prev.f.shape[0] != p.shape[0] or prev.g.shape[0] != q.shape[0]:
            return None
        return prev.f, prev.g
    g0 = _ctransform(prev, q.to(prev.p.dtype), cfg.eps)
    if not bool(torch.isfinite(g0).all()):
        return None
    return torch.zeros(p.shape[0], dtype=g0.dtype), g0  # sinkhorn's first update is f(g0)


# ----------------------------------------------------------------------------------
# one iteration
# ----------------------------------------------------------------------------------
def energy_step(feats: dict[str, Tensor], cfg: OTGANConfig,
                prev: Optional[dict[str, _Prev]] = None
                ) -> tuple[EnergyDistanceResult, dict[str, _Prev], bool]:
    """The energy distance of critic features ``feats`` (keys ``x, x2, y, y2``) with the six
    solves warm-started from ``prev`` (module doc); returns the result (``value`` carries
    the envelope gradient), the state for the next call and whether all six were warm."""
    results: dict[str, SinkhornResult] = {}
    state: dict[str, _Prev] = {}
    warm = True
    units = {k: _unit(v) for k, v in feats.items()}
    for key, a, b, _ in ENERGY_TERMS:
        init = _init_for(None if prev is None else prev.get(key), units[a], units[b], cfg)
        warm &= init is not None
        res = sinkhorn(feats[a], feats[b], cfg.eps, "cosine", tol=cfg.sinkhorn_tol,
                       max_iter=cfg.sinkhorn_max_iter, scaling=cfg.sinkhorn_scaling,
                       backend=cfg.backend, init=init)
        results[key] = res
        state[key] = _Prev(units[a], units[b], res.f, res.g)
    value = sum(c * results[key].cost for key, _, _, c in ENERGY_TERMS)
    return EnergyDistanceResult(value=value, results=results), state, warm


def _checked_generator(generator: nn.Module, width: int) -> Callable[[Tensor], Tensor]:
    def forward(z: Tensor) -> Tensor:
        y = generator(z)
        if y.ndim != 2 or y.shape[0] != z.shape[0] or y.shape[1] != width:
            raise ValueError(f"generator output must be [n, {width}] (the real data's "
                             f"width), got {tuple(y.shape)} for {z.shape[0]} latents")
        return y
    return forward


_Batch = tuple[Tensor, Tensor, Tensor]   # X [n, D], X' [n, D], Z [2n, latent_dim]


def _in_memory_gradients(generator: nn.Module, critic: nn.Module, batch: _Batch, player: str,
                         cfg: OTGANConfig, prev: Optional[dict[str, _Prev]],
                         params: list[Tensor]
                         ) -> tuple[EnergyDistanceResult, dict[str, _Prev], bool, float]:
    """One autograd graph over the whole batch; sets ``.grad`` of ``params`` (the updating
    player's) to the gradient of ``D^2`` (generator) or ``-D^2`` (critic)."""
    x, x2, z = batch
    n = x.shape[0]
    gen = _checked_generator(generator, x.shape[1])
    with torch.no_grad() if player == "critic" else nullcontext():
        y = gen(z)
    if player == "critic":
        feats = {"x": critic(x), "x2": critic(x2), "y": critic(y[:n]), "y2": critic(y[n:])}
    else:
        with torch.no_grad():
            fx, fx2 = critic(x), critic(x2)
        fy = critic(y)
        feats = {"x": fx, "x2": fx2, "y": fy[:n], "y2": fy[n:]}
    t1 = time.perf_counter()
    res, state, warm = energy_step(feats, cfg, prev)
    sink_s = time.perf_counter() - t1
    objective = -res.value if player == "critic" else res.value
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.detach()
    return res, state, warm, sink_s


def _micro_batched_gradients(generator: nn.Module, critic: nn.Module, batch: _Batch,
                             player: str, cfg: OTGANConfig, prev: Optional[dict[str, _Prev]],
                             params: list[Tensor]
                             ) -> tuple[EnergyDistanceResult, dict[str, _Prev], bool, float]:
    """The same gradients as :func:`_in_memory_gradients` through
    :func:`ootrain.engine.cotangent.cotangent_step`: the four sets' critic features ``m`` rows at a
    time without autograd, the six solves on them, per-feature cotangents ``±dD^2/dv`` (the
    envelope gradient, by autograd through the solves' frozen-plan costs on detached
    features), and a replay of the updating player's rows with autograd.  Critic turn:
    ``Y = G(Z)`` is generated without autograd and all four sets replayed through the critic;
    generator turn: only ``Y, Y'`` are replayed, through ``critic(G(z))`` with the critic's
    parameters not accumulating gradients."""
    x, x2, z = batch
    n, m = x.shape[0], cfg.micro_batch
    gen = _checked_generator(generator, x.shape[1])
    if player == "critic":
        y = embed(Population(gen, z), m)
        pops = [Population(critic, x), Population(critic, x2), Population(critic, y[:n]),
                Population(critic, y[n:])]
        guard = nullcontext()
    else:
        def fake(zz: Tensor) -> Tensor:
            return critic(gen(zz))
        pops = [Population(critic, x, backward=False), Population(critic, x2, backward=False),
                Population(fake, z[:n]), Population(fake, z[n:])]
        guard = frozen_parameters(critic)
    sign = -1.0 if player == "critic" else 1.0
    out: dict[str, Any] = {}

    def solve(*features: Tensor) -> tuple[EnergyDistanceResult, Sequence[Tensor]]:
        leaves = {k: f.detach().requires_grad_(True) for k, f in zip(("x", "x2", "y", "y2"),
                                                                      features)}
        t1 = time.perf_counter()
        res, out["state"], out["warm"] = energy_step(leaves, cfg, prev)
        out["sink_s"] = time.perf_counter() - t1
        return res, torch.autograd.grad(sign * res.value, list(leaves.values()))

    with guard:
        res = cotangent_step(pops, solve, m, verify=cfg.verify)
    return res, out["state"], out["warm"], out["sink_s"]



def _as_tensor(x: Any, n: int, dtype: torch.dtype, what: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(dtype)
    if t.ndim != 2 or t.shape[0] != n:
        raise ValueError(f"{what} must return an [n, D] array with n = {n} rows, got shape "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} returned non-finite values (NaN or Inf)")
    return t


def train_otgan(generator: nn.Module, critic: nn.Module,
                real_sampler: Callable[[int, np.random.Generator], Any], config: OTGANConfig,
                callback: Optional[Callable[[dict[str, Any]], Any]] = None, *,
                progress: Any = None, start_step: int = 0) -> list[dict[str, Any]]:
    """Algorithm 1 of OT-GAN (module doc): ``config.steps`` iterations, in place on the models.

    Args:
        generator: ``z [n, latent_dim] -> [n, D]``.
        critic: ``[n, D] -> [n, k]`` features (non-zero rows).
        real_sampler: ``real_sampler(n, rng) -> [n, D]`` exact draws (numpy or torch; e.g.
            :func:`ootrain.data.sample_ring8`, or :func:`array_sampler` of a data set), given
            a ``numpy.random.Generator`` seeded from ``config.seed``.
        config: an :class:`OTGANConfig`.
        callback: called with each history row after its update (and after the step's models
            are updated), e.g. to snapshot samples.
        progress: a ``rich.progress.Progress`` to add a task to, or a bool / None for a bar of
            its own (:func:`ootrain.progress.make_progress`).
        start_step: iteration index of the first step (for schedules; default 0).

    Returns:
        The history: per iteration ``step``, ``player`` (``generator`` / ``critic``),
        ``frozen`` (critic frozen), ``loss`` (``D^2`` before the update), the six terms
        ``W_xy, ...``, ``sinkhorn_iterations`` (sum over the six solves) and
        ``sinkhorn_iterations_max``, ``marginal_error`` (largest), ``converged``, ``warm``
        (all six warm-started), ``sinkhorn_s`` and ``step_s`` (wall seconds) and ``time_s``
        (since the start).

    Deterministic given ``config.seed`` and the models' initial parameters.
    """
    if not isinstance(config, OTGANConfig):
        raise ValueError(f"config must be an OTGANConfig, got {type(config).__name__}")
    config.validate()
    if not is_int(start_step) or start_step < 0:
        raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")
    cfg = config
    gparams = [p for p in generator.parameters() if p.requires_grad]
    cparams = [p for p in critic.parameters() if p.requires_grad]
    if not gparams:
        raise ValueError("the generator has no trainable parameters")
    frozen_from = cfg.critic_freeze_after
    if not cparams and (frozen_from is None or frozen_from > start_step):
        raise ValueError("the critic has no trainable parameters; set critic_freeze_after=0 "
                         "to train against a fixed critic")
    dtype = gparams[0].dtype
    opt_g = torch.optim.Adam(gparams, lr=cfg.lr_gen, betas=cfg.betas)
    opt_c = torch.optim.Adam(cparams, lr=cfg.lr_critic, betas=cfg.betas) if cparams else None
    rng_real = np.random.default_rng([cfg.seed, 1])
    rng_z = np.random.default_rng([cfg.seed, 2])
    n = cfg.batch
    history: list[dict[str, Any]] = []
    prev: Optional[dict[str, _Prev]] = None
    own = progress is None or isinstance(progress, bool)
    ctx = make_progress(progress) if own else nullcontext(progress)
    t_start = time.perf_counter()
    with ctx as bars:
        task = bars.add_task("OT-GAN iterations", total=cfg.steps)
        for k in range(start_step, start_step + cfg.steps):
            t0 = time.perf_counter()
            player = cfg.player(k)
            x = _as_tensor(real_sampler(n, rng_real), n, dtype, "real_sampler")
            x2 = _as_tensor(real_sampler(n, rng_real), n, dtype, "real_sampler")
            z = torch.as_tensor(rng_z.standard_normal((2 * n, cfg.latent_dim)), dtype=dtype)
            params, opt = (cparams, opt_c) if player == "critic" else (gparams, opt_g)
            for p in gparams + cparams:
                p.grad = None
            gradients = _in_memory_gradients if cfg.micro_batch is None \
                else _micro_batched_gradients
            res, prev, warm, sink_s = gradients(generator, critic, (x, x2, z), player, cfg,
                                                prev, params)
            opt.step()
            iters = [r.iterations for r in res.results.values()]
            now = time.perf_counter()
            row = {"step": k, "player": player,
                   "frozen": frozen_from is not None and k >= frozen_from,
                   "loss": float(res.value.detach()),
                   **{f"W_{key}": float(r.cost.detach()) for key, r in res.results.items()},
                   "sinkhorn_iterations": int(sum(iters)),
                   "sinkhorn_iterations_max": int(max(iters)),
                   "marginal_error": float(res.marginal_error),
                   "converged": bool(res.converged), "warm": bool(warm),
                   "sinkhorn_s": round(sink_s, 5), "step_s": round(now - t0, 5),
                   "time_s": round(now - t_start, 4)}
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"D^2 became non-finite at iteration {k}")
            history.append(row)
            bars.update(task, advance=1, description=f"OT-GAN ({player[0]}) D²={row['loss']:.4f}")
            if callback is not None:
                callback(row)
        if not own:
            bars.remove_task(task)
    for p in gparams + cparams:
        p.grad = None
    return history


def data_sampler(spec: str) -> tuple[Callable[[int, np.random.Generator], np.ndarray], int, str]:
    """``(sampler, D, description)`` for a data spec: a sampled built-in of
    :mod:`ootrain.data` (``ring8``, ``gaussian:D``, ``mog:D:K[:S]``, ``mog1d``: exact draws)
    or ``digits[:split]`` / a ``.npy``/``.npz``/zarr array (its rows, drawn with
    replacement)."""
    from ootrain.data import DATASETS, load_data, load_dataset, sample_ring8

    name = spec.split(":", 1)[0]
    if spec == "ring8":
        return sample_ring8, 2, "ring8: 8 Gaussians (std 0.02) on a circle of radius 2"
    if name in DATASETS and name != "digits":
        d = int(load_dataset(spec, n=1).shape[1])        # validates the spec

        def draw(n: int, rng: np.random.Generator) -> np.ndarray:
            return load_dataset(spec, n=n, seed=int(rng.integers(2**63)))

        return draw, d, f"{spec}: exact draws"
    data = load_data(spec)
    return array_sampler(data), int(data.shape[1]), \
        f"{spec}: {data.shape[0]} rows, drawn with replacement"
