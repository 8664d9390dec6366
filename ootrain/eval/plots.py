"""Pictures of generated samples and training curves (matplotlib, Agg backend).

Every function writes one PNG to ``path`` and closes its figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["plot_samples", "plot_rsr_losses", "plot_otgan_losses", "plot_potgan_losses"]


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Marker style of the real data (drawn first, underneath) and of the generated samples (on top).
REAL_STYLE = dict(c="0.55", alpha=0.45, linewidths=0, label="real data", zorder=1)
GEN_STYLE = dict(c="C1", alpha=0.7, linewidths=0, label="generated", zorder=2)


def _coords(d: int, names: Optional[Sequence[str]]) -> list[str]:
    if names is not None and len(names) >= d:
        return [str(n) for n in names[:d]]
    return [f"x{i + 1}" for i in range(d)]


def _integer_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_samples(x: np.ndarray, path: Path, real: Optional[np.ndarray] = None,
                 title: str = "", n_show: int = 100,
                 coords: Optional[Sequence[str]] = None) -> bool:
    """Picture of generated samples: an image grid when ``d`` is a square (8x8 digits: 64),
    a scatter over the real data when ``d == 2``, its three coordinate-pair projections when
    ``d == 3``, histograms when ``d == 1``.  Returns False (nothing written) for other
    widths.

    Scatter plots draw the real data first (grey, larger, translucent markers) and the
    generated samples on top (smaller, coloured), with a legend and axes labelled by
    ``coords`` (default ``x1``, ``x2``, ...)."""
    plt = _pyplot()
    x = np.asarray(x)
    d = x.shape[1]
    side = int(round(d ** 0.5))
    names = _coords(d, coords)
    if d == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        if real is not None:
            r = np.asarray(real[:5000])
            ax.scatter(r[:, 0], r[:, 1], s=9, **REAL_STYLE)
        ax.scatter(x[:5000, 0], x[:5000, 1], s=2, **GEN_STYLE)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(markerscale=3, fontsize=8, loc="best")
    elif d == 3:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
        for ax, (i, j) in zip(axes, ((0, 1), (0, 2), (1, 2))):
            if real is not None:
                r = np.asarray(real[:5000])
                ax.scatter(r[:, i], r[:, j], s=6, **REAL_STYLE)
            ax.scatter(x[:5000, i], x[:5000, j], s=1.5, **GEN_STYLE)
            ax.set_xlabel(names[i])
            ax.set_ylabel(names[j])
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_title(f"{names[i]} vs {names[j]}", fontsize=8)
        axes[0].legend(markerscale=3, fontsize=8)
        if title:
            fig.suptitle(title, fontsize=9)
            title = ""
        ax = axes[1]
    elif d == 1:
        fig, ax = plt.subplots(figsize=(5, 3))
        if real is not None:
            ax.hist(np.asarray(real[:100_000, 0]), bins=100, density=True, color="0.6",
                    label="real data")
        ax.hist(x[:, 0], bins=100, density=True, alpha=0.6, color="C1", label="generated")
        ax.set_xlabel(names[0])
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    elif side * side == d and side >= 4:
        k = int(np.ceil(np.sqrt(min(n_show, len(x)))))
        lo, hi = (0.0, 1.0) if (x.min() >= -0.05 and x.max() <= 1.05) else \
            (float(np.percentile(x, 1)), float(np.percentile(x, 99)))
        canvas = np.full((k * (side + 1) - 1, k * (side + 1) - 1), lo + 0.3 * (hi - lo))
        for i, img in enumerate(x[:k * k]):
            r, c = divmod(i, k)
            canvas[r * (side + 1):r * (side + 1) + side,
                   c * (side + 1):c * (side + 1) + side] = img.reshape(side, side)
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(canvas, cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
        ax.axis("off")
    else:
        return False
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_rsr_losses(losses: Sequence[float], path: Path,
                    title: str = "Run-Sort-ReRun training loss") -> None:
    """Run-Sort-ReRun's per-step population loss (sliced W2²), log scale, steps from 1."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    steps = np.arange(1, len(losses) + 1)
    ax.semilogy(steps, losses, marker="." if len(losses) <= 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("sliced W2² (population)")
    ax.set_title(title, fontsize=9)
    _integer_x(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_otgan_losses(history: list, path: Path,
                      title: str = "OT-GAN training loss") -> None:
    """OT-GAN's mini-batch energy distance per iteration, generator and critic iterations
    apart (``history``: the rows of ``ootrain.methods.train(OTGAN(...), ...).history``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for player, color in (("generator", "C0"), ("critic", "C3")):
        rows = [r for r in history if r["player"] == player]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], ".", ms=3, color=color,
                label=f"{player} iterations")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mini-batch energy distance D²")
    ax.set_title(title, fontsize=9)
    _integer_x(ax)
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_potgan_losses(history: list, path: Path,
                       title: str = "WGAN-GP / POT-GAN training") -> None:
    """WGAN-GP / POT-GAN per generator update: the critic's Wasserstein estimate and, when
    recorded, the latent regulariser L_POT (symlog scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    steps = [r["step"] for r in history]
    marker = "." if len(steps) <= 50 else None
    ax.plot(steps, [r["wasserstein"] for r in history], lw=0.8, marker=marker,
            label="critic's W estimate")
    if history and "reg" in history[0]:
        ax.plot(steps, [r["reg"] for r in history], lw=0.8, marker=marker, label="L_POT")
    ax.set_xlabel("generator update")
    ax.set_ylabel("loss")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_title(title, fontsize=9)
    _integer_x(ax)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
