"""OT-GAN (Salimans, Zhang, Radford & Metaxas, ICLR 2018) trained on the streaming engine.

The generator ``g_theta`` and the critic ``v_eta`` play on the mini-batch energy distance
(:func:`ootrain.ot.sinkhorn.energy_distance`, the paper's eq. 8) between two independent real
batches ``X, X'`` and two independent generated batches ``Y = g(Z), Y' = g(Z')``:

    D^2 = W(X, Y) + W(X, Y') + W(X', Y) + W(X', Y') - 2 W(X, X') - 2 W(Y, Y'),

``W`` the transport cost ``<P, C>`` of the entropic (Sinkhorn) plan of the cosine cost
``c(x, y) = 1 - <v(x), v(y)> / (|v(x)| |v(y)|)`` between critic features.  Algorithm 1 of the
paper, which :class:`OTGAN` runs on the engine: at iteration ``t = 1, 2, ...`` draw ``X, X', Z, Z'``,
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

import io
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Sequence

import dask
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ootrain.engine.compute import Compute
from ootrain.engine.core import (CotangentLoss, Plan, Population, Sampler, standard_normal)
from ootrain.models.zoo import ACTIVATIONS, MLP, seeded
from ootrain.validation import DIVERGED, NonFiniteError, is_int, is_num
from ootrain.ot.sinkhorn import (DENSE_MAX_ENTRIES, ENERGY_TERMS, SINKHORN_BACKENDS,
                              cost_gradients, sinkhorn)

__all__ = [
    "OTGANConfig",
    "WARM_START_METHODS",
    "Critic",
    "make_generator",
    "make_critic",
    "OTGAN",
    "EnergySolver",
    "energy_step", "EnergyStep", "EnergyTerm",
]

WARM_START_METHODS = ("ctransform", "index")
PLAYERS = ("generator", "critic")


@dataclass
class OTGANConfig:
    """Hyper-parameters of :class:`OTGAN` (module doc for the conventions).  The batch (the
    size of **each** of ``X, X', Y, Y'``) is the engine's ``population``, the optimisers (paper:
    Adam 3e-4, betas 0.5, 0.999) are injected.

    Attributes:
        eps: Sinkhorn temperature, absolute, in cosine-cost units (cost in ``[0, 2]``);
            paper: 1/500.
        n_gen: generator updates per critic update (paper text: 3; its released code: 5).
        sinkhorn_tol: stop each Sinkhorn solve at marginal error ``||P 1 - a||_1 <= tol``.
        sinkhorn_max_iter: Sinkhorn iteration cap per solve (at the target eps).
        sinkhorn_scaling: eps-scaling factor of cold solves (None: start at ``eps``).
        backend: Sinkhorn backend, ``auto`` / ``torch`` / ``keops``.
        warm_start: start each solve from the previous step's potentials (module doc:
            measured to help only while the critic is smooth; in-memory Solve only).
        warm_start_method: ``ctransform`` (move the potentials to the new points) or
            ``index`` (reuse them as they are; sizes must match, else cold).
        critic_freeze_after: after this many iterations the critic is no longer updated
            (None: never frozen; 0: the critic stays at its initialisation).
    """

    eps: float = 1 / 500
    n_gen: int = 3
    sinkhorn_tol: float = 1e-3
    sinkhorn_max_iter: int = 1000
    sinkhorn_scaling: Optional[float] = 0.5
    backend: str = "auto"
    warm_start: bool = False
    warm_start_method: str = "ctransform"
    critic_freeze_after: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not is_num(self.eps) or self.eps <= 0:
            raise ValueError(f"eps must be a finite number > 0 (cosine-cost units, cost in "
                             f"[0, 2]), got {self.eps!r}")
        if not is_int(self.n_gen) or self.n_gen < 1:
            raise ValueError(f"n_gen (generator updates per critic update) must be an integer "
                             f">= 1, got {self.n_gen!r}")
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

    def player(self, step: int) -> str:
        """Who updates at 0-based iteration ``step`` (the paper's ``t = step + 1``)."""
        if self.critic_freeze_after is not None and step >= self.critic_freeze_after:
            return "generator"
        return "critic" if (step + 1) % (self.n_gen + 1) == 0 else "generator"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _prev_state(prev: Optional[dict[str, _Prev]]) -> dict[str, dict[str, Tensor]]:
    """The warm-start state as plain tensors (for checkpoints and the step's ``warm.pt``)."""
    return {} if prev is None else {k: {f.name: getattr(v, f.name) for f in fields(_Prev)}
                                    for k, v in prev.items()}


def _prev_from(state: dict[str, dict[str, Tensor]]) -> Optional[dict[str, _Prev]]:
    return {k: _Prev(**v) for k, v in state.items()} or None


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
@dataclass
class EnergyTerm:
    """One of the six Sinkhorn problems of :func:`energy_step`: ``cost`` ``<P, C>``, the
    potentials ``f``, ``g``, the solver's ``iterations``, ``marginal_error`` and ``converged``,
    and the cotangents ``grad_p`` / ``grad_q`` of ``cost`` in its two point sets (plan
    fixed)."""

    cost: float
    f: Tensor
    g: Tensor
    iterations: int
    marginal_error: float
    converged: bool
    grad_p: Tensor
    grad_q: Tensor


@dataclass
class EnergyStep:
    """What :func:`energy_step` returns: ``value`` (``D²``), ``cotangents`` (``∂D²/∂feats[k]``,
    the shapes of the features), the six ``results`` (:class:`EnergyTerm` by the keys of
    :data:`~ootrain.ot.sinkhorn.ENERGY_TERMS`), the warm-start ``state`` for the next call
    and ``warm`` (all six were warm-started)."""

    value: float
    cotangents: dict[str, Tensor]
    results: dict[str, EnergyTerm]
    state: dict[str, "_Prev"]
    warm: bool


def _energy_term(p: Tensor, q: Tensor, init: Optional[tuple[Tensor, Tensor]],
                 cfg: OTGANConfig) -> EnergyTerm:
    """A Dask task: one Sinkhorn problem of the energy distance and its cotangents."""
    res = sinkhorn(p, q, cfg.eps, "cosine", tol=cfg.sinkhorn_tol,
                   max_iter=cfg.sinkhorn_max_iter, scaling=cfg.sinkhorn_scaling,
                   backend=cfg.backend, init=init)
    gp, gq = cost_gradients(p, q, res)
    return EnergyTerm(float(res.cost.detach()), res.f, res.g, int(res.iterations),
                      float(res.marginal_error), bool(res.converged), gp, gq)


def energy_step(feats: dict[str, Tensor], cfg: OTGANConfig,
                prev: Optional[dict[str, _Prev]] = None, compute: Optional[Compute] = None
                ) -> EnergyStep:
    """The energy distance of critic features ``feats`` (keys ``x, x2, y, y2``, ``[n, k]``)
    and its cotangents, the six solves warm-started from ``prev`` (module doc).

    The six Sinkhorn problems are independent Dask tasks on ``compute`` (default: local
    threads); each returns its cost and its cotangents ``Σ_j P_ij ∇c`` (plan fixed: the
    envelope gradient), combined here with the terms' coefficients."""
    feats = {k: v.detach() for k, v in feats.items()}
    units = {k: _unit(v) for k, v in feats.items()}
    inits = {key: _init_for(None if prev is None else prev.get(key), units[a], units[b], cfg)
             for key, a, b, _ in ENERGY_TERMS}
    shared = {k: dask.delayed(v) for k, v in feats.items()}   # each set sent once
    tasks = [dask.delayed(_energy_term)(shared[a], shared[b], inits[key], cfg)
             for key, a, b, _ in ENERGY_TERMS]
    terms = dict(zip([key for key, *_ in ENERGY_TERMS], (compute or Compute()).run(tasks)))
    cot = {k: torch.zeros_like(v) for k, v in feats.items()}
    for key, a, b, c in ENERGY_TERMS:
        cot[a] += c * terms[key].grad_p
        cot[b] += c * terms[key].grad_q
    state = {key: _Prev(units[a], units[b], terms[key].f, terms[key].g)
             for key, a, b, _ in ENERGY_TERMS}
    value = sum(c * terms[key].cost for key, _, _, c in ENERGY_TERMS)
    return EnergyStep(value, cot, terms, state, all(i is not None for i in inits.values()))


SETS = ("x", "x2", "y", "y2")   # X, X' real; Y, Y' generated


class EnergySolver:
    """Engine solver of OT-GAN: the six Sinkhorn problems between the stored critic features
    of ``X, X', Y, Y'`` (cosine cost, plans frozen) and the per-sample cotangents of ``sign ·
    D²`` (``sign`` -1 on critic updates: ascent).

    Features that fit a quarter of the memory budget are solved in memory
    (:func:`energy_step`, warm starts possible); larger ones by the streamed Sinkhorn of
    :mod:`ootrain.ot.sinkhorn`, whose memory is set by its block, not by the population.
    Writes ``cotangents/<set>`` [b, k] for the replayed sets; metrics: ``loss`` (``D²``), the
    six ``W_*``, ``sinkhorn_iterations`` (sum) and ``_max``, ``marginal_error`` (largest),
    ``converged``, ``warm``, ``player``.
    """

    def __init__(self, config: OTGANConfig, player: str, replay: Sequence[str],
                 state: dict[str, Any]) -> None:
        self.cfg, self.player, self.replay, self.state = config, player, tuple(replay), state
        self.sign = -1.0 if player == "critic" else 1.0

    def config(self) -> dict[str, Any]:
        return {"method": "otgan-energy", **self.cfg.to_dict()}

    def solve(self, ctx: Any) -> dict[str, Any]:
        arrays = {k: ctx.arrays[k] for k in SETS}
        new = [arrays[k] for k in self.replay if not ctx.store.has(f"{ctx.prefix}/cotangents/{k}")]
        if new:   # before the six solves
            ctx.store.check_space(sum(ctx.store.array_bytes(a.shape, a.chunks, a.dtype.itemsize)
                                      for a in new), f"step {ctx.step}: Solve (cotangents)")
        nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays.values())
        if nbytes * 4 <= ctx.memory_budget:
            feats = {k: torch.from_numpy(np.asarray(a[:])) for k, a in arrays.items()}
            res = energy_step(feats, self.cfg, self.state.get("prev"), ctx.compute)
            warm = res.warm
            self.state["prev"] = res.state if self.cfg.warm_start else None   # if used
            if self.cfg.warm_start:   # with the step: a resume after Solve reloads it
                buf = io.BytesIO()
                torch.save(_prev_state(self.state["prev"]), buf)
                ctx.store.put_bytes(f"{ctx.prefix}/warm.pt", buf.getvalue())
            cot = {k: self.sign * res.cotangents[k] for k in SETS}
            results, value = res.results, res.value

            def rows(name: str, lo: int, hi: int) -> np.ndarray:
                return cot[name][lo:hi].numpy()
        else:
            from ootrain.ot.sinkhorn import energy_distance_streamed

            streamed = energy_distance_streamed(
                *(arrays[k] for k in SETS), self.cfg.eps, "cosine", tol=self.cfg.sinkhorn_tol,
                max_iter=self.cfg.sinkhorn_max_iter, scaling=self.cfg.sinkhorn_scaling,
                block_rows=_block_rows(ctx.memory_budget), dtype=torch.float64)
            results, value, warm = streamed.results, float(streamed.value), False
            self.state["prev"] = None

            def rows(name: str, lo: int, hi: int) -> np.ndarray:
                return (self.sign * streamed.cotangent(name, lo, hi)).numpy()
        for name in self.replay:
            arr = arrays[name]
            path = f"{ctx.prefix}/cotangents/{name}"
            ctx.store.require_array(path, arr.shape, arr.chunks, arr.dtype)
            done = ctx.store.done(path)
            step = arr.chunks[0]
            for c in np.flatnonzero(~done):
                lo, hi = int(c) * step, min(arr.shape[0], (int(c) + 1) * step)
                ctx.store.write_chunk(path, (int(c), 0), rows(name, lo, hi).astype(arr.dtype))
        iters = [int(r.iterations) for r in results.values()]
        if not math.isfinite(value):
            raise NonFiniteError(f"D^2 became non-finite at step {ctx.step}; {DIVERGED}")
        return {"player": self.player, "loss": value,
                **{f"W_{key}": float(torch.as_tensor(r.cost).detach()) for key, r in results.items()},
                "sinkhorn_iterations": int(sum(iters)), "sinkhorn_iterations_max": max(iters),
                "marginal_error": float(max(float(r.marginal_error) for r in results.values())),
                "converged": bool(all(bool(r.converged) for r in results.values())),
                "warm": bool(warm)}

    def rerun_loss(self, ctx: Any, population: str, dtype: torch.dtype) -> CotangentLoss:
        if self.cfg.warm_start:   # the state this step's Solve left (also when resumed)
            raw = ctx.store.get_bytes(f"{ctx.prefix}/warm.pt")
            if raw is not None:
                self.state["prev"] = _prev_from(torch.load(io.BytesIO(raw), weights_only=True))
        return CotangentLoss(ctx.store.array(f"{ctx.prefix}/cotangents/{population}"), dtype)


def _block_rows(budget: int) -> int:
    """Rows of a streamed Sinkhorn block: its [block, block] float64 cost and kernel, with
    autograd's copies, in an eighth of the budget."""
    return int(max(256, min(16384, math.isqrt(max(1, budget // (8 * 8 * 4))))))


class OTGAN:
    """OT-GAN (Algorithm 1 of Salimans et al.) on the engine: each iteration is one engine
    step, a critic update (every ``n_gen + 1``-th, until ``critic_freeze_after``) or a
    generator update.

    Each step's populations are ``x``, ``x2`` (``population`` real draws each, through the
    critic) and ``y``, ``y2`` (``population`` latents each, through ``critic(G(z))``); Solve is
    :class:`EnergySolver`; ReRun replays the updating player's sets (all four on a critic
    update, ``y, y2`` on a generator update) with the other player frozen.

    Args:
        generator: ``z [m, latent_dim] -> [m, D]``.
        critic: ``[m, D] -> [m, k]`` features (non-zero rows; :class:`Critic` normalises).
        real_sampler: ``draw(n, rng) -> [n, D]`` (e.g. :func:`ootrain.data.sample_ring8`).
        generator_optimizer, critic_optimizer: injected optimisers.
        config: an :class:`OTGANConfig`.
        real_spec: names the real data in the store's fingerprint.
    """

    def __init__(self, generator: nn.Module, critic: nn.Module, real_sampler: Sampler,
                 generator_optimizer: torch.optim.Optimizer,
                 critic_optimizer: torch.optim.Optimizer | None,
                 config: OTGANConfig | None = None, *, real_spec: str = "custom") -> None:
        self.G, self.C, self.real_sampler = generator, critic, real_sampler
        self.opt_g, self.opt_c = generator_optimizer, critic_optimizer
        self.cfg = config if config is not None else OTGANConfig()
        self.cfg.validate()
        self.real_spec = real_spec
        self.latent: Sampler | None = None
        self._state: dict[str, Any] = {}
        if not any(p.requires_grad for p in generator.parameters()):
            raise ValueError("the generator has no trainable parameters")
        if critic_optimizer is None and self.cfg.critic_freeze_after != 0:
            raise ValueError("without a critic optimiser the critic must stay fixed: set "
                             "critic_freeze_after=0")

    def bind(self, config: Any) -> "OTGAN":
        self.latent = standard_normal(config.latent_dim, np.dtype(config.dtype))
        p = next(self.G.parameters())
        with torch.no_grad():
            self._width = int(self.G(torch.zeros(1, config.latent_dim, dtype=p.dtype,
                                                 device=p.device)).shape[1])
        return self

    def _real(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self._width:
            raise ValueError(f"real data rows have shape {tuple(x.shape[1:])} but the "
                             f"generator's outputs have width {self._width}: the real "
                             "sampler and the generator must agree")
        return self.C(x)

    def config(self) -> dict[str, Any]:
        return {"method": "otgan", **self.cfg.to_dict(), "real": self.real_spec}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.G, "critic": self.C}

    def state_dict(self) -> dict[str, Any]:
        """The warm-start state (the previous iteration's six solves; empty when cold)."""
        return {"warm": _prev_state(self._state.get("prev"))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state["prev"] = _prev_from(state.get("warm", {}))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"generator": self.opt_g}
        if self.opt_c is not None:
            opts["critic"] = self.opt_c
        return opts

    def _fake(self, z: Tensor) -> Tensor:
        return self.C(self.G(z))

    def _fake_detached(self, z: Tensor) -> Tensor:
        return self.C(self.G(z).detach())

    def plan(self, step: int) -> Plan:
        if self.latent is None:
            raise RuntimeError("OTGAN.bind(config) must be called before plan (train does)")
        player = self.cfg.player(step)
        critic_turn = player == "critic"
        fake = self._fake_detached if critic_turn else self._fake
        pops = [Population("x", self.real_sampler, self._real, replay=critic_turn),
                Population("x2", self.real_sampler, self._real, replay=critic_turn),
                Population("y", self.latent, fake), Population("y2", self.latent, fake)]
        replay = [p.name for p in pops if p.replay]
        solver = EnergySolver(self.cfg, player, replay, self._state)
        opt = self.opt_c if critic_turn else self.opt_g
        return Plan(pops, solver, opt, self.C if critic_turn else self.G)
