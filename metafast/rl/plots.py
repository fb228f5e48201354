"""Figures of `train navigation` / `eval` (matplotlib, Agg)."""
from __future__ import annotations

from metafast._optional import require


def _pyplot():
    matplotlib = require("matplotlib", "plotting the navigation results")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "plotting the navigation results")


def plot_returns(history: list[dict], path: str, label: str = "MAML") -> None:
    """Average return per iteration before and after the inner step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    its = [h["iteration"] for h in history]
    ax.plot(its, [h["train_return"] for h in history], label="before adaptation", lw=1)
    if any(h["valid_return"] != h["train_return"] for h in history):
        ax.plot(its, [h["valid_return"] for h in history], label="after one step", lw=1)
    ax.set(xlabel="meta-iteration", ylabel="average return", title=f"2D navigation: {label} training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(goals, before, after, path: str, goals_shown: int = 4, trajectories_shown: int = 5,
                      title: str = "") -> None:
    """Paths of a few trajectories for a few goals, before and after one adaptation step.
    ``before`` / ``after``: Episodes sampled on ``goals``."""
    plt = _pyplot()
    n = min(goals_shown, goals.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for eps, color, name in ((before, "tab:gray", "0 steps"), (after, "tab:blue", "1 step")):
            for e in range(min(trajectories_shown, eps.observations.shape[2])):
                length = int(eps.mask[:, i, e].sum())
                xy = eps.observations[:length, i, e].detach().cpu()
                ax.plot(xy[:, 0], xy[:, 1], color=color, lw=0.8, alpha=0.8, label=name if e == 0 else None)
        g = goals[i].detach().cpu()
        ax.plot([0], [0], "ko", ms=4)
        ax.plot([g[0]], [g[1]], "r*", ms=12, label="goal")
        ax.set(xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect="equal", title=f"goal ({g[0]:.2f}, {g[1]:.2f})")
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
