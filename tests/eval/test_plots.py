"""Plots: labelled axes, real data under the generated points, titles, integer step ticks."""

from __future__ import annotations

import numpy as np

from ootrain.eval import plots


def _capture(monkeypatch):
    figs = []
    plt = plots._pyplot()
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    return figs


def test_scatter_labels_real_under_generated(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    rng = np.random.default_rng(0)
    assert plots.plot_samples(rng.normal(size=(300, 2)), tmp_path / "s.png",
                              real=rng.normal(size=(300, 2)), title="t")
    ax = figs[-1].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x1", "x2")
    real, gen = ax.collections[:2]
    assert real.get_label() == "real data" and gen.get_label() == "generated"
    assert real.get_zorder() < gen.get_zorder()
    assert np.all(gen.get_sizes() < real.get_sizes())
    assert ax.get_legend() is not None and ax.get_title() == "t"
    assert (tmp_path / "s.png").stat().st_size > 0


def test_scatter_3d_coordinate_names(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    x = np.random.default_rng(0).normal(size=(100, 3))
    assert plots.plot_samples(x, tmp_path / "s.png", real=x, coords=["a", "b", "c"])
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in figs[-1].axes]
    assert labels == [("a", "b"), ("a", "c"), ("b", "c")]


def test_loss_plots_titles_and_integer_ticks(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    plots.plot_rsr_losses([1.0, 0.5, 0.3], tmp_path / "l.png")
    plots.plot_otgan_losses([{"step": 0, "player": "critic", "loss": 1.0},
                             {"step": 1, "player": "generator", "loss": 0.5}], tmp_path / "o.png")
    plots.plot_potgan_losses([{"step": 1, "wasserstein": 1.0, "reg": 0.1},
                              {"step": 2, "wasserstein": 0.5, "reg": 0.05}], tmp_path / "p.png")
    for fig in figs[-3:]:
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
