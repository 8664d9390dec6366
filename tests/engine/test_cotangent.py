"""Cotangent-mode Run → Solve → ReRun: micro-batched gradients == full-batch autograd."""

import pytest
import torch
from torch import nn

from ootrain.engine.core import NondeterministicModelError
from ootrain.engine.cotangent import Population, cotangent_step
from ootrain.ot.sinkhorn import energy_distance, energy_distance_gradients

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


class Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=1)


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    return G, Critic().double()


def _data(n: int = 60, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, x2 = (torch.randn(n, 2, generator=g, dtype=F64) + 1.0 for _ in range(2))
    z, z2 = (torch.randn(n, 4, generator=g, dtype=F64) for _ in range(2))
    return [x, x2, z, z2]


KW = {"eps": 0.05, "cost": "cosine", "tol": 1e-12, "max_iter": 5000}


def _grads(*mods: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for m in mods for p in m.parameters()]


@pytest.mark.parametrize("micro_batch", [7, 60])
def test_energy_distance_gradient_equals_full_batch(micro_batch):
    """Generator and critic gradients of OT-GAN's energy distance, computed with micro-batches
    of 7 rows (ragged last batch) and stored cotangents, equal full-batch autograd."""
    x, x2, z, z2 = _data()
    G, C = _models()
    full = energy_distance(C(x), C(x2), C(G(z)), C(G(z2)), **KW).value
    full.backward()
    ref = _grads(G, C)

    G2, C2 = _models()

    def solve(ex, ex2, ey, ey2):
        res = energy_distance(ex, ex2, ey, ey2, **KW)
        return res.value, energy_distance_gradients(ex, ex2, ey, ey2, res)

    gen = lambda u: C2(G2(u))  # noqa: E731
    value = cotangent_step([Population(C2, x), Population(C2, x2), Population(gen, z),
                            Population(gen, z2)], solve, micro_batch, verify=True)
    assert float(value) == pytest.approx(float(full.detach()), rel=1e-10)
    for a, b in zip(ref, _grads(G2, C2)):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-12)
    assert float(full.detach()) > 0  # shifted real data: a real signal, not a vacuous zero


def test_populations_without_backward_get_no_gradient():
    """A generator-only update skips the real halves in ReRun: the critic's gradient is then
    the generated halves' share only, and the generator's is unchanged."""
    x, x2, z, z2 = _data(30)
    G, C = _models()
    ey = C(G(z))
    ey2 = C(G(z2))
    with torch.no_grad():
        ex, ex2 = C(x), C(x2)
    energy_distance(ex, ex2, ey, ey2, **KW).value.backward()
    ref = _grads(G)

    G2, C2 = _models()

    def solve(*e):
        res = energy_distance(*e, **KW)
        return res.value, energy_distance_gradients(*e, res)

    gen = lambda u: C2(G2(u))  # noqa: E731
    cotangent_step([Population(C2, x, backward=False), Population(C2, x2, backward=False),
                    Population(gen, z), Population(gen, z2)], solve, 8)
    for a, b in zip(ref, _grads(G2)):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-12)


def test_nondeterministic_model_is_refused():
    x = _data(20)[0]
    drop = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5)).double()

    def solve(e):
        return 0.0, [torch.ones_like(e)]

    with pytest.raises(NondeterministicModelError, match="deterministic"):
        cotangent_step([Population(drop, x)], solve, 5, verify=True)


def test_bad_input_errors():
    x = _data(10)[0]
    lin = nn.Linear(2, 3).double()
    with pytest.raises(ValueError, match="micro_batch"):
        cotangent_step([Population(lin, x)], lambda e: (0, [e]), 0)
    with pytest.raises(ValueError, match="1 cotangents for 2 populations"):
        cotangent_step([Population(lin, x), Population(lin, x)], lambda a, b: (0, [a]), 4)
    with pytest.raises(ValueError, match="cotangent of shape"):
        cotangent_step([Population(lin, x)], lambda e: (0, [e[:, :2]]), 4)
    bad = torch.full((4, 2), float("nan"), dtype=F64)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cotangent_step([Population(lin, bad)], lambda e: (0, [e]), 4)
