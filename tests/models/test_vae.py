"""The VAE whose frozen encoder mean is POT-GAN's latent space (:mod:`ootrain.models.vae`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from ootrain.data import sample_ring8
from ootrain.models.vae import (VAE, VAEConfig, frozen_encoder, kl_divergence, make_vae,
                         reconstruction_error, train_vae)

pytestmark = pytest.mark.usefixtures("one_thread")

RING_CFG = VAEConfig(steps=1500, batch=128, lr=2e-3, seed=0)


@pytest.fixture(scope="module")
def ring_vae() -> tuple[VAE, list[dict]]:
    vae = make_vae(2, latent_dim=2, hidden=(64, 64), seed=0)
    return vae, train_vae(vae, sample_ring8, RING_CFG)


def test_kl_closed_form_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    logvar = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(200_000, 3, 4, generator=gen, dtype=torch.float64)
    log_ratio = (Normal(mu, std).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)  # [S, 3]
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    exact = kl_divergence(mu, logvar)
    assert exact.shape == (3,)
    assert bool((exact > 0.1).all())
    assert bool(((exact - mc).abs() < 4 * se).all()), (exact, mc, se)
    assert float((exact - mc).abs().max()) < 0.02


def test_loss_is_negative_elbo():
    vae = make_vae(3, latent_dim=2, hidden=(16,), seed=1).double()
    with torch.no_grad():
        vae.log_sigma.fill_(-1.3)
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    loss, parts = vae.loss(x, beta=0.3, generator=torch.Generator().manual_seed(5))
    # the same reparameterised draw, by hand
    mu, logvar = vae.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5), dtype=mu.dtype)
    recon = vae.decode(mu + (0.5 * logvar).exp() * eps)
    nll = -Normal(recon, math.exp(-1.3)).log_prob(x).sum(1).mean()
    kl = torch.distributions.kl_divergence(Normal(mu, (0.5 * logvar).exp()),
                                           Normal(torch.zeros_like(mu), 1.0)).sum(1).mean()
    assert torch.allclose(parts["nll"], nll)
    assert torch.allclose(parts["kl"], kl)
    assert torch.allclose(loss, nll + 0.3 * kl)
    assert float(parts["sigma"].detach()) == pytest.approx(math.exp(-1.3))


def test_ring8_training_separates_modes(ring_vae):
    vae, hist = ring_vae
    assert [r["step"] for r in hist] == list(range(RING_CFG.steps))
    assert set(hist[0]) >= {"step", "loss", "nll", "kl", "sigma"}
    first = np.mean([r["loss"] for r in hist[:20]])
    last = np.mean([r["loss"] for r in hist[-50:]])
    assert last < first - 2.0, (first, last)             # measured ~3.8 -> ~1.1
    assert hist[-1]["sigma"] < 0.2                       # adapted to the small data scale

    x = sample_ring8(4000, np.random.default_rng(99))
    rel = reconstruction_error(vae, x) / float(x.var(axis=0).mean())
    assert rel < 0.01, rel                               # measured ~8e-4

    q = frozen_encoder(vae)
    mode = np.round(np.arctan2(x[:, 1], x[:, 0]) / (2 * np.pi / 8)).astype(int) % 8
    with torch.no_grad():
        z = q(torch.as_tensor(x)).numpy()
    centroids = np.stack([z[mode == k].mean(0) for k in range(8)])
    spread = max(float(np.sqrt(((z[mode == k] - centroids[k]) ** 2).sum(1).mean()))
                 for k in range(8))
    dist = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    min_dist = float(dist[~np.eye(8, dtype=bool)].min())
    assert min_dist > 5 * spread, (min_dist, spread)     # measured ratio ~30


def test_frozen_encoder(ring_vae):
    vae = VAE(2, 2, (64, 64))
    vae.load_state_dict(ring_vae[0].state_dict())        # a private copy: it is modified below
    q = frozen_encoder(vae)
    assert not q.training
    assert not [p for p in q.parameters() if p.requires_grad]
    assert sum(p.numel() for p in q.parameters()) == \
        sum(p.numel() for p in vae.encoder.parameters())   # the whole encoder, all frozen

    x = torch.as_tensor(sample_ring8(64, np.random.default_rng(3)))
    assert torch.equal(q(x), vae.encode(x)[0])

    xq = x.clone().requires_grad_(True)
    (q(xq) ** 2).sum().backward()
    xv = x.clone().requires_grad_(True)
    (vae.encode(xv)[0] ** 2).sum().backward()
    assert float(xq.grad.abs().sum()) > 0
    assert torch.allclose(xq.grad, xv.grad)
    assert all(p.grad is None for p in q.parameters())

    before = q(x).detach().clone()
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.add_(0.5)
    assert not torch.allclose(vae.encode(x)[0], before)
    assert torch.equal(q(x), before)


def test_deterministic_and_global_rng_untouched():
    cfg = VAEConfig(steps=25, batch=32, seed=4)
    state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        vae = make_vae(2, hidden=(16, 16), seed=3)
        rows = []
        hist = train_vae(vae, sample_ring8, cfg, progress=False, callback=rows.append)
        assert rows == hist
        runs.append([(r["loss"], r["nll"], r["kl"], r["sigma"]) for r in hist])
    assert runs[0] == runs[1]
    assert torch.equal(torch.get_rng_state(), state)
    other = train_vae(make_vae(2, hidden=(16, 16), seed=3), sample_ring8,
                      VAEConfig(steps=25, batch=32, seed=5))
    assert [r["loss"] for r in other] != [r[0] for r in runs[0]]


@pytest.mark.parametrize("field, value", [
    ("steps", -1), ("steps", 2.5), ("batch", 0), ("batch", True), ("lr", 0.0),
    ("lr", float("nan")), ("beta", -0.1), ("beta", float("inf")), ("seed", "0"), ("seed", -1),
])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        VAEConfig(**{field: value})
    cfg = VAEConfig()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=field):
        train_vae(make_vae(2, hidden=(8,)), sample_ring8, cfg)


@pytest.mark.parametrize("sampler, message", [
    (lambda n, rng: np.zeros((n, 3)), "sampler must return an \\[n, in_dim\\]"),
    (lambda n, rng: np.zeros((n + 1, 2)), "sampler must return an \\[n, in_dim\\]"),
    (lambda n, rng: np.zeros(n * 2), "sampler must return an \\[n, in_dim\\]"),
    (lambda n, rng: np.full((n, 2), np.nan), "sampler returned non-finite"),
])
def test_bad_sampler(sampler, message):
    with pytest.raises(ValueError, match=message):
        train_vae(make_vae(2, hidden=(8,)), sampler, VAEConfig(steps=2, batch=4))


def test_non_finite_loss_raises():
    with pytest.raises(FloatingPointError, match="non-finite at step 0"):
        train_vae(make_vae(2, hidden=(8,)), lambda n, rng: np.full((n, 2), 1e30),
                  VAEConfig(steps=2, batch=4))
