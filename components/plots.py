"""Pictures people would rather look at than read: confusion matrix and training curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def confusion_matrix_png(matrix: list[list[int]], classes: list[str], path: str, title: str) -> None:
    """Counts with row-normalised shading; rows are true classes, columns predictions."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    totals = [max(sum(row), 1) for row in matrix]
    shade = [[v / t for v in row] for row, t in zip(matrix, totals, strict=False)]
    image = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if shade[i][j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_curves_png(history: list[dict[str, float]], path: str) -> None:
    """Loss, accuracy and learning rate per epoch: training split, eval split and, when the Trainer scored
    it, the eval split's grayscale copy."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes[:2], ("loss", "accuracy"), strict=False):
        ax.plot(epochs, [row[key] for row in history], marker="o", label=f"train {key}")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], marker="o", label=f"eval {key}")
        if f"val_grayscale_{key}" in history[0]:
            gray = [row[f"val_grayscale_{key}"] for row in history]
            ax.plot(epochs, gray, marker="o", linestyle="--", label=f"eval {key}, grayscale copy")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].semilogy(epochs, [row["lr"] for row in history], marker="o")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
