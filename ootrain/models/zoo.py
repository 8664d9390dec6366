"""Built-in model zoo, user model factories, and safe state-dict checkpoints.

All models are plain, deterministic ``torch.nn.Module``s (no dropout, no
batch-norm): the engine re-runs generators and expects the same outputs.

Model specs accepted by :func:`build_model`:

- a zoo name: a key of ``GENERATORS`` or ``EMBEDDINGS`` (``"mlp"``,
  ``"random-features"``, ``"identity"``);
- ``"package.module:factory"``: the module is imported and ``factory(**kwargs)``
  is called;
- ``"path/to/file.py:factory"``: the file is imported as a module, likewise.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "EMBEDDINGS",
    "GENERATORS",
    "MLP",
    "Identity",
    "RandomFeatures",
    "build_model",
    "generate",
    "parameter_ema",
    "load_checkpoint",
    "save_checkpoint",
    "seeded",
]

#: Activation name -> module factory.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}

#: The identity embedding (accepts and ignores constructor arguments).
Identity = nn.Identity


M = TypeVar("M", bound=nn.Module)


def seeded(seed: int, build: Callable[[], M]) -> M:
    """``build()`` with torch's global RNG seeded by ``seed`` inside a fork: the model's
    initialisation is reproducible and the caller's RNG stream is neither used nor changed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class MLP(nn.Module):
    """Fully connected network ``in_dim -> hidden... -> out_dim`` (linear output).

    Each hidden layer is ``Linear``, then ``LayerNorm`` if ``layer_norm``, then
    the activation (``"relu"``, ``"leaky_relu"`` (slope 0.2), ``"tanh"`` or
    ``"silu"``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)
        layers: list[nn.Module] = []
        width = self.in_dim
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            if layer_norm:
                layers.append(nn.LayerNorm(int(h)))
            layers.append(ACTIVATIONS[activation]())
            width = int(h)
        layers.append(nn.Linear(width, self.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RandomFeatures(MLP):
    """A frozen random MLP feature extractor, deterministic from ``seed``.

    Used as the embedding network when matching feature distributions (RSR).
    Weights are drawn from ``N(0, gain^2 / fan_in)`` (``gain = sqrt(2)`` for
    ReLU-like activations, 1 otherwise) and biases from ``N(0, 1)`` with a
    private ``torch.Generator(seed)``, so the global RNG is neither used nor
    changed. All parameters have ``requires_grad=False``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: Sequence[int] = (128,),
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        with torch.random.fork_rng(devices=[]):  # default init must not advance the global RNG
            super().__init__(in_dim, out_dim, hidden=hidden, activation=activation)
        self.seed = int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        gain = 2.0**0.5 if activation in ("relu", "leaky_relu") else 1.0
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    std = gain / layer.in_features**0.5
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator))
        self.requires_grad_(False)


#: Generator zoo: name -> factory(**kwargs).
GENERATORS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP}

#: Embedding zoo: name -> factory(**kwargs).
EMBEDDINGS: dict[str, Callable[..., nn.Module]] = {
    "identity": Identity,
    "mlp": MLP,
    "random-features": RandomFeatures,
}


def _import_file(path: str) -> Any:
    """Import a ``.py`` file as a module (named after its absolute path)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist")
    name = "ootrain_user_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable named by a zoo name, ``module:attr`` or ``file.py:attr`` spec."""
    zoo = {**GENERATORS, **EMBEDDINGS}
    if spec in zoo:
        return zoo[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown model {spec!r}: use a zoo name ({', '.join(sorted(zoo))}), "
            "'package.module:factory' or 'path/to/file.py:factory'"
        )
    target, attr = spec.rsplit(":", 1)
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(target)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"model spec {spec!r}: cannot import module {target!r}: {err}") from err
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"model spec {spec!r}: module {target!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ValueError(f"model spec {spec!r}: {attr!r} is not callable")
    return factory


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model from a zoo name or a user factory spec, passing ``kwargs``.

    Raises ``ValueError`` when the spec cannot be resolved and ``TypeError``
    when the factory does not return an ``nn.Module``.
    """
    model = _resolve_factory(spec)(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model spec {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


_CHECKPOINT_FORMAT = "ootrain-checkpoint-v1"
_META_SCALARS = (str, int, float, bool, type(None))


def _check_meta(value: Any, where: str = "meta") -> None:
    """Reject metadata that ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be str, got {k!r}")
            _check_meta(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_meta(v, f"{where}[{i}]")
    elif not isinstance(value, (*_META_SCALARS, torch.Tensor)):
        raise TypeError(f"{where} must hold only str/int/float/bool/None/list/dict/tensor, got {type(value).__name__}")


def save_checkpoint(
    path: str | os.PathLike[str],
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Atomically write the module's (and optimizer's) state dicts plus ``meta``.

    ``meta`` may hold only plain Python values and tensors, so that
    :func:`load_checkpoint` can read it with ``weights_only=True``.
    """
    meta = {} if meta is None else meta
    _check_meta(meta)
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "model": module.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "meta": meta,
    }
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike[str],
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into ``module`` (and ``optimizer``); return ``meta``.

    Uses ``torch.load(weights_only=True)``: no arbitrary object is unpickled.
    The model state dict must match exactly (``strict=True``).
    """
    payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an ootrain checkpoint")
    module.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return payload["meta"]


def generate(generator: nn.Module, n: int, latent_dim: int, seed: int = 12345,
             batch: int = 65536) -> np.ndarray:
    """``n`` samples ``G(z)``, ``z ~ N(0, I)``, in batches, without grad: [n, out_dim] (on the
    CPU; ``z`` drawn there and moved to the generator's device)."""
    rng = np.random.default_rng(seed)
    p = next(generator.parameters())
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            z = torch.as_tensor(rng.standard_normal((min(batch, n - i), latent_dim)),
                                dtype=p.dtype, device=p.device)
            out.append(generator(z).cpu().numpy())
    return np.concatenate(out)


def parameter_ema(module: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """A bias-corrected exponential moving average of ``module``'s parameters (the averaged
    generator of GAN evaluation, Yazıcı et al., ICLR 2019), as a
    ``torch.optim.swa_utils.AveragedModel``: call ``.update_parameters(module)`` after every
    optimiser step; ``.module`` is the averaged copy (same architecture, no grad).

    After ``t`` updates with parameters ``θ_1 .. θ_t`` it holds

        θ̄_t = Σ_{s=1..t} (1 - β) β^(t-s) θ_s / (1 - β^t),      β = ``decay`` in [0, 1),

    by the recursion ``θ̄_1 = θ_1``, ``θ̄_t = θ̄_{t-1} + (θ_t - θ̄_{t-1}) (1 - β) / (1 - β^t)``:
    the weights sum to one, so unlike a plain EMA started at ``θ_0`` no trace of the
    initialisation is left (``β = 0`` keeps the last parameters).  Buffers are not averaged.
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
    beta = float(decay)

    def average(avg: torch.Tensor, new: torch.Tensor, n_averaged: torch.Tensor) -> torch.Tensor:
        t = int(n_averaged) + 1   # this is update t (a Python float weight: full precision)
        return avg + (new - avg) * ((1 - beta) / (1 - beta ** t))

    return torch.optim.swa_utils.AveragedModel(module, avg_fn=average)
