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


def plot_samples(x: np.ndarray, path: Path, real: Optional[np.ndarray] = None,
                 title: str = "", n_show: int = 100) -> bool:
    """Picture of generated samples: an image grid when ``d`` is a square (8x8 digits: 64),
    a scatter over the real data when ``d == 2``, its three coordinate-pair projections when
    ``d == 3``, histograms when ``d == 1``.  Returns False (nothing written) for other
    widths."""
    plt = _pyplot()
    d = x.shape[1]
    side = int(round(d ** 0.5))
    if d == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        if real is not None:
            r = np.asarray(real[:5000])
            ax.scatter(r[:, 0], r[:, 1], s=2, c="0.6", label="data")
        ax.scatter(x[:5000, 0], x[:5000, 1], s=2, c="C0", label="generated")
        ax.legend(markerscale=4, fontsize=8)
    elif d == 3:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
        for ax, (i, j) in zip(axes, ((0, 1), (0, 2), (1, 2))):
            if real is not None:
                r = np.asarray(real[:5000])
                ax.scatter(r[:, i], r[:, j], s=1, c="0.6", label="data")
            ax.scatter(x[:5000, i], x[:5000, j], s=1, c="C0", label="generated")
            ax.set_xlabel(f"x{i}")
            ax.set_ylabel(f"x{j}")
            ax.set_aspect("equal")
        axes[0].legend(markerscale=4, fontsize=8)
        ax = axes[1]
    elif d == 1:
        fig, ax = plt.subplots(figsize=(5, 3))
        if real is not None:
            ax.hist(np.asarray(real[:100_000, 0]), bins=100, density=True, color="0.6",
                    label="data")
        ax.hist(x[:, 0], bins=100, density=True, alpha=0.6, label="generated")
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


def plot_rsr_losses(losses: Sequence[float], path: Path) -> None:
    """Run-Sort-ReRun's per-step population loss (sliced W2²), log scale."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.semilogy(losses)
    ax.set_xlabel("step")
    ax.set_ylabel("sliced W2² (population)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_otgan_losses(history: list, path: Path) -> None:
    """OT-GAN's mini-batch energy distance per iteration, generator and critic iterations
    apart (``history``: the rows of :func:`ootrain.methods.otgan.ootrain.methods.train(OTGAN(...), ...).history`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    for player, color in (("generator", "C0"), ("critic", "C3")):
        rows = [r for r in history if r["player"] == player]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], ".", ms=2, color=color,
                label=f"{player} iterations")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mini-batch energy distance D²")
    ax.legend(fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_potgan_losses(history: list, path: Path) -> None:
    """WGAN-GP / POT-GAN per generator update: the critic's Wasserstein estimate and, when
    recorded, the latent regulariser L_POT (symlog scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    steps = [r["step"] for r in history]
    ax.plot(steps, [r["wasserstein"] for r in history], lw=0.8, label="critic's W estimate")
    if history and "reg" in history[0]:
        ax.plot(steps, [r["reg"] for r in history], lw=0.8, label="L_POT")
    ax.set_xlabel("generator update")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
