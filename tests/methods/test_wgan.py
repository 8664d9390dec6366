"""WGAN-GP (ootrain.methods.wgan): the penalty's closed form, micro-batched == in-memory training, a
short fit, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ootrain.models.zoo import MLP, seeded
from ootrain.methods.wgan import (WGANConfig, critic_loss, gradient_penalty, make_wgan_critic,
                          train_wgan_gp)

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(latent=2, out=2, seed=0):
    return seeded(seed, lambda: MLP(latent, out, hidden=(16, 16)))


def test_gradient_penalty_of_a_linear_critic_is_its_closed_form():
    """D(x) = w.x + b has |grad D| = |w| everywhere: GP_i = (|w| - 1)^2 for every sample, and
    d GP / d w = 2 (|w| - 1) w / |w| (double backward reaches the critic's weights)."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 1).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    gp = gradient_penalty(lin, x, y, torch.rand(7, dtype=torch.float64))
    w = lin.weight.detach().flatten()
    torch.testing.assert_close(gp, torch.full((7,), float((w.norm() - 1) ** 2),
                                              dtype=torch.float64))
    gp.mean().backward()
    torch.testing.assert_close(lin.weight.grad.flatten(), 2 * (w.norm() - 1) * w / w.norm())


def test_critic_loss_micro_batches_add_up_to_the_batch_loss():
    D = make_wgan_critic(2, (8, 8), seed=1).double()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 2, generator=g).double(), torch.randn(10, 2, generator=g).double()
    a = torch.rand(10, generator=g).double()
    full, _ = critic_loss(D, x, y, a, 10.0)
    parts = sum(critic_loss(D, x[i:i + 4], y[i:i + 4], a[i:i + 4], 10.0,
                            scale=min(4, 10 - i) / 10)[0] for i in range(0, 10, 4))
    torch.testing.assert_close(parts, full)


def _ring_like(n, rng):
    return np.stack([np.cos(t := rng.uniform(0, 2 * np.pi, n)), np.sin(t)], 1) * 2.0


@pytest.mark.parametrize("micro_batch", [7, 32])
def test_micro_batched_training_equals_in_memory_training(micro_batch):
    """Critic updates by gradient accumulation over rows and the generator's by Run → solve →
    ReRun leave the same parameters as one autograd graph per batch (float64)."""
    def run(m):
        G, D = _gen().double(), make_wgan_critic(2, (16, 16), seed=1).double()
        cfg = WGANConfig(batch=30, n_critic=2, steps=4, lr_gen=1e-3, lr_critic=1e-3,
                         micro_batch=m, verify=m is not None, seed=3)
        h = train_wgan_gp(G, D, _ring_like, cfg, progress=False)
        return h, [p.detach().clone() for p in (*G.parameters(), *D.parameters())]

    (h0, w0), (h1, w1) = run(None), run(micro_batch)
    np.testing.assert_allclose([r["gen_loss"] for r in h1], [r["gen_loss"] for r in h0],
                               rtol=1e-10)
    np.testing.assert_allclose([r["wasserstein"] for r in h1], [r["wasserstein"] for r in h0],
                               rtol=1e-9)
    init = [p.detach() for m in (_gen(), make_wgan_critic(2, (16, 16), seed=1))
            for p in m.parameters()]
    for k, (a, b, c) in enumerate(zip(w1, w0, init)):
        # every parameter moved but the critic's output bias, which L_D and L_G do not see
        assert torch.equal(b, c.double()) == (k == len(init) - 1)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_wgan_gp_learns_a_shifted_gaussian():
    """A 2-D Gaussian at (3, -2) with std 0.5 from N(0, I) latents: the generated mean moves
    to within 0.3 of the target and the critic's Wasserstein estimate shrinks."""
    def real(n, rng):
        return rng.normal([3.0, -2.0], 0.5, size=(n, 2))

    G, D = _gen(), make_wgan_critic(2, (32, 32), seed=1)
    cfg = WGANConfig(batch=128, steps=300, lr_gen=2e-3, lr_critic=2e-3, seed=0)
    h = train_wgan_gp(G, D, real, cfg, progress=False)
    with torch.no_grad():
        y = G(torch.randn(4000, 2, generator=torch.Generator().manual_seed(9))).numpy()
    assert np.abs(y.mean(0) - [3.0, -2.0]).max() < 0.3, y.mean(0)
    assert np.mean([r["wasserstein"] for r in h[-20:]]) < 0.3 * h[0]["wasserstein"] or \
        h[0]["wasserstein"] < 0.05


@pytest.mark.parametrize("field,value", [
    ("batch", 1), ("n_critic", 0), ("gp_weight", -1.0), ("lr_gen", 0.0), ("lr_critic", -1e-4),
    ("betas", (0.5, 1.0)), ("steps", -1), ("latent_dim", 0), ("seed", 0.5),
    ("micro_batch", 0), ("verify", "yes")])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        WGANConfig(**{field: value})


def test_train_rejects_bad_inputs():
    G, D = _gen(), make_wgan_critic(2, (8,), seed=1)
    cfg = WGANConfig(batch=8, steps=1)
    with pytest.raises(ValueError, match="WGANConfig"):
        train_wgan_gp(G, D, _ring_like, {"batch": 8}, progress=False)
    with pytest.raises(ValueError, match="rows"):
        train_wgan_gp(G, D, lambda n, rng: _ring_like(n + 1, rng), cfg, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        train_wgan_gp(G, D, lambda n, rng: np.full((n, 2), np.inf), cfg, progress=False)
    with pytest.raises(ValueError, match="generator output"):
        train_wgan_gp(_gen(out=3), D, _ring_like, cfg, progress=False)
