"""PNG plots of an evaluation: ROC and precision-recall curves per label, and a confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402


def plot_curves(y_true: np.ndarray, probs: np.ndarray, label_names: list[str], path: Path) -> Path:
    """ROC (left) and precision-recall (right) curves, one line per label that has both classes."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(12, 5))
    for j, name in enumerate(label_names):
        if len(np.unique(y_true[:, j])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y_true[:, j], probs[:, j])
        precision, recall, _ = precision_recall_curve(y_true[:, j], probs[:, j])
        roc_ax.plot(fpr, tpr, label=name, linewidth=1)
        pr_ax.plot(recall, precision, label=name, linewidth=1)
    roc_ax.plot([0, 1], [0, 1], "k--", linewidth=0.5)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC per label")
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall per label")
    legend_size = 6 if len(label_names) > 10 else 8
    roc_ax.legend(fontsize=legend_size, ncol=2 if len(label_names) > 10 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: list[list[int]], label_names: list[str], path: Path) -> Path:
    matrix_array = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 2, 1.2 * len(label_names) + 1))
    ax.imshow(matrix_array, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    threshold = matrix_array.max() / 2 if matrix_array.size else 0
    for (i, j), count in np.ndenumerate(matrix_array):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
