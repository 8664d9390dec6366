"""Fast tests for ootrain.models.zoo, ootrain.data and ootrain.progress."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from ootrain import data

from ootrain.models import zoo as models

from ootrain import progress

# --------------------------------------------------------------------------- #
# models
# --------------------------------------------------------------------------- #


def test_mlp_shapes_and_activations():
    for act in models.ACTIVATIONS:
        net = models.MLP(3, 5, hidden=(8, 4), activation=act, layer_norm=True)
        assert net(torch.zeros(7, 3)).shape == (7, 5)
    assert not any(isinstance(m, (nn.Dropout, nn.BatchNorm1d)) for m in models.MLP(2, 2).modules())
    with pytest.raises(ValueError, match="activation"):
        models.MLP(2, 2, activation="gelu")


def test_random_features_deterministic_and_frozen():
    x = torch.randn(16, 3)
    state = torch.get_rng_state()
    a = models.RandomFeatures(3, 10, hidden=(32,), seed=7)
    assert torch.equal(state, torch.get_rng_state()), "must not touch the global RNG"
    torch.manual_seed(123)  # a different global seed must not matter
    b = models.RandomFeatures(3, 10, hidden=(32,), seed=7)
    c = models.RandomFeatures(3, 10, hidden=(32,), seed=8)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    assert all(not p.requires_grad for p in a.parameters())


def test_build_model_zoo():
    assert isinstance(models.build_model("mlp", in_dim=2, out_dim=3), models.MLP)
    rf = models.build_model("random-features", in_dim=2, out_dim=4, seed=1)
    assert isinstance(rf, models.RandomFeatures)
    ident = models.build_model("identity", in_dim=2)
    x = torch.randn(3, 2)
    assert torch.equal(ident(x), x)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.build_model("nope")


FACTORY_SRC = textwrap.dedent(
    """
    from torch import nn

    def make(in_dim, out_dim):
        return nn.Linear(in_dim, out_dim)

    def not_a_module():
        return 42

    VALUE = 3
    """
)


def test_build_model_module_factory(tmp_path, monkeypatch):
    (tmp_path / "my_models_pkg").mkdir()
    (tmp_path / "my_models_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_models_pkg" / "zoo.py").write_text(FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        net = models.build_model("my_models_pkg.zoo:make", in_dim=2, out_dim=5)
        assert isinstance(net, nn.Linear) and net.out_features == 5
        with pytest.raises(ValueError, match="no attribute 'missing'"):
            models.build_model("my_models_pkg.zoo:missing")
        with pytest.raises(ValueError, match="not callable"):
            models.build_model("my_models_pkg.zoo:VALUE")
        with pytest.raises(TypeError, match="not a torch.nn.Module"):
            models.build_model("my_models_pkg.zoo:not_a_module")
        with pytest.raises(ValueError, match="cannot import module 'my_models_pkg.absent'"):
            models.build_model("my_models_pkg.absent:make")
    finally:
        for name in [m for m in sys.modules if m.startswith("my_models_pkg")]:
            del sys.modules[name]


def test_build_model_file_factory(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(FACTORY_SRC)
    net = models.build_model(f"{path}:make", in_dim=4, out_dim=1)
    assert isinstance(net, nn.Linear) and net.in_features == 4
    with pytest.raises(ValueError, match="does not exist"):
        models.build_model(f"{tmp_path / 'absent.py'}:make")


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = models.MLP(2, 2, hidden=(4,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net(torch.randn(8, 2)).pow(2).sum().backward()
    opt.step()
    meta = {"step": 3, "loss": 0.5, "tags": ["a", "b"], "cfg": {"seed": None}}
    path = tmp_path / "ckpt.pt"
    models.save_checkpoint(path, net, opt, meta=meta)
    # weights_only=True must be able to read the whole file.
    assert torch.load(path, weights_only=True)["meta"] == meta

    net2 = models.MLP(2, 2, hidden=(4,))
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    assert models.load_checkpoint(path, net2, opt2) == meta
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]

    with pytest.raises(TypeError, match="meta"):
        models.save_checkpoint(tmp_path / "bad.pt", net, meta={"x": np.zeros(2)})
    models.save_checkpoint(tmp_path / "noopt.pt", net)
    with pytest.raises(ValueError, match="no optimizer state"):
        models.load_checkpoint(tmp_path / "noopt.pt", net2, opt2)


# --------------------------------------------------------------------------- #
# data: built-ins
# --------------------------------------------------------------------------- #


def test_ring8_has_8_distinct_modes():
    x = data.load_dataset("ring8", n=4000, seed=0)
    assert x.shape == (4000, 2) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), data.RING8_RADIUS, atol=0.1)
    angles = np.round(np.arctan2(x[:, 1], x[:, 0]) / (2 * np.pi / 8)) % 8
    counts = np.bincount(angles.astype(int), minlength=8)
    assert len(counts) == 8 and counts.min() > 400


def test_mog1d_statistics():
    x = data.load_dataset("mog1d", n=200_000, seed=1)[:, 0]
    means, stds, weights = map(np.array, (data.MOG1D_MEANS, data.MOG1D_STDS, data.MOG1D_WEIGHTS))
    assert len(means) == 4 and np.isclose(weights.sum(), 1.0)
    mean = (weights * means).sum()
    var = (weights * (stds**2 + means**2)).sum() - mean**2
    assert abs(x.mean() - mean) < 0.05
    assert abs(x.var() - var) / var < 0.01
    # each sample's nearest mode is its component (modes are well separated)
    nearest = np.abs(x[:, None] - means).argmin(1)
    np.testing.assert_allclose(np.bincount(nearest) / len(x), weights, atol=0.01)
    for j in range(4):
        assert abs(x[nearest == j].std() - stds[j]) < 0.01
    # the density integrates to 1
    grid, step = np.linspace(-12, 12, 24001, retstep=True)
    assert abs(data.mog1d_pdf(grid).sum() * step - 1) < 1e-6


def test_gaussian_and_mog_determinism():
    g = data.load_dataset("gaussian:3", n=50_000, seed=2)
    assert g.shape == (50_000, 3) and abs(g.mean()) < 0.02 and abs(g.std() - 1) < 0.02
    a = data.load_dataset("mog:4:5", n=100, seed=0)
    assert a.shape == (100, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, data.load_dataset("mog:4:5", n=100, seed=0))
    assert not np.array_equal(a, data.load_dataset("mog:4:5", n=100, seed=1))
    p, q = data.mog_params(4, 5), data.mog_params(4, 5, param_seed=1)
    assert p.means.shape == (5, 4) and np.isclose(p.weights.sum(), 1.0)
    assert not np.allclose(p.means, q.means)
    np.testing.assert_array_equal(data.mog_params(4, 5).means, p.means)
    for bad in ("gaussian", "gaussian:x", "mog:3", "ring8:2", "nope"):
        with pytest.raises(ValueError):
            data.load_dataset(bad, n=10)
    with pytest.raises(ValueError, match="sample count"):
        data.load_dataset("mog1d")


def test_digits_splits():
    full = data.load_dataset("digits")
    train, test = data.load_digits("train"), data.load_digits("test")
    assert full.shape == (1797, 64) and full.dtype == np.float32
    assert full.min() == 0.0 and full.max() == 1.0
    assert len(train) + len(test) == len(full) and len(test) == round(0.2 * len(full))
    np.testing.assert_array_equal(data.load_dataset("digits:test"), test)
    sub = data.load_dataset("digits:train", n=100, seed=3)
    assert sub.shape == (100, 64)
    with pytest.raises(ValueError, match="split"):
        data.load_digits("val")


def test_digits_split_indices_disjoint():
    order = np.random.default_rng(data.DIGITS_SPLIT_SEED).permutation(1797)
    full = data.load_digits()
    train, test = data.load_digits("train"), data.load_digits("test")
    n_train = len(train)
    np.testing.assert_array_equal(train, full[np.sort(order[:n_train])])
    np.testing.assert_array_equal(test, full[np.sort(order[n_train:])])
    assert not set(order[:n_train]) & set(order[n_train:])


# --------------------------------------------------------------------------- #
# data: user arrays
# --------------------------------------------------------------------------- #


def test_npy_npz_roundtrip(tmp_path):
    x = np.random.default_rng(0).standard_normal((20, 3))
    np.save(tmp_path / "x.npy", x)
    out = data.load_data(tmp_path / "x.npy")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x, rtol=1e-6)
    lazy = data.load_data(str(tmp_path / "x.npy"), lazy=True)
    assert isinstance(lazy, np.memmap) and lazy.shape == (20, 3)

    np.savez(tmp_path / "one.npz", a=x)
    np.savez(tmp_path / "two.npz", a=x, b=np.arange(5))
    np.testing.assert_allclose(data.load_data(str(tmp_path / "one.npz")), x, rtol=1e-6)
    np.testing.assert_allclose(data.load_data(str(tmp_path / "two.npz"), key="a"), x, rtol=1e-6)
    # arrays must be 2-D [n, d]: a 1-D one is refused (no guessing of [n, 1] or [1, n])
    with pytest.raises(ValueError, match=r"must be 2-D \[n, d\], got shape \(5,\)"):
        data.load_data(str(tmp_path / "two.npz"), key="b")
    with pytest.raises(ValueError, match="key="):
        data.load_data(str(tmp_path / "two.npz"))

    sub = data.load_data(str(tmp_path / "x.npy"), n=5, seed=0)
    assert sub.shape == (5, 3)
    assert all(any(np.allclose(r, s) for s in x) for r in sub)


def test_zarr_roundtrip(tmp_path):
    import zarr

    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=x.shape, chunks=(10, 4), dtype="float32")
    z[...] = x
    np.testing.assert_array_equal(data.load_data(str(tmp_path / "x.zarr")), x)
    lazy = data.load_data(str(tmp_path / "x.zarr"), lazy=True)
    assert isinstance(lazy, zarr.Array) and lazy.shape == (50, 4)
    np.testing.assert_array_equal(lazy[10:20], x[10:20])

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("feats", shape=x.shape, dtype="float32")[...] = x
    np.testing.assert_array_equal(data.load_data(str(tmp_path / "g.zarr"), array="feats"), x)
    with pytest.raises(ValueError, match="array= one of \\['feats'\\]"):
        data.load_data(str(tmp_path / "g.zarr"))

    # fsspec URL
    np.testing.assert_array_equal(data.load_data(f"file://{tmp_path / 'x.zarr'}"), x)
    with pytest.raises(FileNotFoundError):
        data.load_data(str(tmp_path / "absent.zarr"))


def test_load_data_dispatch_builtin():
    np.testing.assert_array_equal(data.load_data("ring8", n=10, seed=4), data.load_dataset("ring8", n=10, seed=4))


# --------------------------------------------------------------------------- #
# check_array
# --------------------------------------------------------------------------- #


def test_check_array_errors():
    data.check_array(np.zeros((3, 2), np.float32), "x")
    data.check_array(torch.zeros(3, 2), "x")
    with pytest.raises(ValueError, match=r"x must be 2-D \[n, d\], got shape \(3,\)"):
        data.check_array(np.zeros(3), "x")
    with pytest.raises(ValueError, match="empty"):
        data.check_array(np.zeros((0, 2)), "x")
    with pytest.raises(ValueError, match="floating-point dtype, got int64"):
        data.check_array(np.zeros((3, 2), np.int64), "x")
    bad = np.zeros((4, 3), np.float32)
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"target contains 2 non-finite.*NaN: 1, Inf: 1.*\(1, 2\)"):
        data.check_array(bad, "target")
    with pytest.raises(ValueError, match="NaN: 1"):
        data.check_array(torch.from_numpy(bad), "t")
    data.check_array(bad, "target", finite=False)


def test_load_data_rejects_nan(tmp_path):
    x = np.ones((5, 2))
    x[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(ValueError, match="NaN"):
        data.load_data(str(tmp_path / "nan.npy"))


# --------------------------------------------------------------------------- #
# progress
# --------------------------------------------------------------------------- #


def test_progress_enabled(monkeypatch):
    monkeypatch.delenv("OOTRAIN_NO_PROGRESS", raising=False)
    assert progress.progress_enabled(True)
    assert not progress.progress_enabled()  # pytest captures stderr: not a TTY
    monkeypatch.setenv("OOTRAIN_NO_PROGRESS", "1")
    assert not progress.progress_enabled(True)
    assert list(progress.track(range(5), description="x")) == list(range(5))
    assert progress.make_progress().disable


# --------------------------------------------------------------------------- parameter_ema
@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_parameter_ema_is_the_normalised_weighted_average(decay):
    """After t updates the average is sum_s (1-b) b^(t-s) theta_s / (1 - b^t), computed
    here directly from the stored snapshots (no trace of the initial parameters)."""
    from ootrain.models.zoo import parameter_ema

    net = torch.nn.Linear(3, 2).double()
    avg = parameter_ema(net, decay)
    snaps = []
    rng = torch.Generator().manual_seed(0)
    for _ in range(7):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=rng, dtype=p.dtype))
        snaps.append([p.detach().clone() for p in net.parameters()])
        avg.update_parameters(net)
    assert avg.module is not net
    t = len(snaps)
    w = torch.tensor([(1 - decay) * decay ** (t - 1 - s) for s in range(t)], dtype=torch.float64)
    w = w / w.sum() if decay > 0 else torch.eye(t, dtype=torch.float64)[-1]
    for k, p in enumerate(avg.module.parameters()):
        want = sum(w[s] * snaps[s][k] for s in range(t))
        torch.testing.assert_close(p, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan"), True, "0.9"])
def test_parameter_ema_rejects_bad_decay(decay):
    from ootrain.models.zoo import parameter_ema

    with pytest.raises(ValueError, match="decay"):
        parameter_ema(torch.nn.Linear(2, 2), decay)


def test_wgan_gp_keeps_the_averaged_generator():
    """WGANGP's generator_ema is the running average of the generator it trained, updated after
    generator steps only: with decay 0 it equals the final generator, with decay > 0 it
    differs from it; without ema there is none."""
    from ootrain.data import sample_ring8
    from ootrain.engine import EngineConfig
    from ootrain.methods import WGANConfig, build_potgan, train

    def run(ema):
        m = build_potgan(sample_ring8, 2, method="wgan-gp", wgan=WGANConfig(n_critic=1),
                         lr=1e-3, hidden=(16,), critic_hidden=(16,), ema=ema)
        train(m, 10, EngineConfig(population=32, micro_batch=32, latent_dim=2))
        return m

    last = run(0.0)
    for a, b in zip(last.G.parameters(), last.generator_ema.module.parameters()):
        torch.testing.assert_close(a, b)
    avg = run(0.9)
    assert any(not torch.equal(a, b) for a, b in
               zip(avg.G.parameters(), avg.generator_ema.module.parameters()))
    assert int(avg.generator_ema.n_averaged) == 5       # the 5 generator steps of 10
    assert run(None).generator_ema is None
