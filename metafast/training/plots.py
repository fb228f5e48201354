"""Training curves of a run: meta-training loss and accuracy, validation accuracy."""
from __future__ import annotations

from pathlib import Path

from metafast.stats import moving_average
from metafast.training import files


def plot_curves(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    it = history["iteration"]
    window = max(1, len(it) // 100)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if it:
        label = f" ({window}-iteration moving average)" if window > 1 else ""
        ax1.plot(it[window - 1:], moving_average(history["loss"], window), label="meta-train query loss" + label)
        ax2.plot(it[window - 1:], moving_average([100 * a for a in history["accuracy"]], window),
                 label="meta-train query accuracy" + label)
    if history["val_iteration"]:
        ax2.plot(history["val_iteration"], history["val_accuracy"], "o-",
                 label="validation accuracy")
    ax1.set(xlabel="iteration", ylabel="cross-entropy", title="loss")
    ax2.set(xlabel="iteration", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        files.write_rendered(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
