"""Figures of an evaluation: ROC and precision-recall curves per label, a confusion matrix, reliability diagrams and
the validation metric over training; saved as PNG files or returned as PNG bytes for the HTML report."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from utils.evaluation.metrics import expected_calibration_error, reliability_bins  # noqa: E402


def one_vs_rest(y_true: np.ndarray, label_count: int) -> np.ndarray:
    """(N, labels) 0/1 outcomes: multi-label targets as they are, class ids one-hot."""
    y_true = np.asarray(y_true)
    return y_true if y_true.ndim == 2 else np.eye(label_count)[y_true.astype(int)]


LEGEND_MOST = 10  # curves named in a legend: past this many labels, the worst and best halves; the rest grey
CONFUSION_MOST = 20  # classes a confusion matrix shows whole; past it, the classes of the most confused pairs
CONFUSED_CLASSES = 15  # classes kept from a larger matrix
CALIBRATION_PANELS_MOST = 8  # labels drawn one diagram each; past it, one diagram of every label's scores pooled


def named_curves(aucs: dict[int, float]) -> set[int]:
    """The labels whose curves a legend names: all of them up to LEGEND_MOST, else the worst and best by AUC."""
    if len(aucs) <= LEGEND_MOST:
        return set(aucs)
    ranked = sorted(aucs, key=lambda j: (aucs[j], j))
    return set(ranked[:LEGEND_MOST // 2] + ranked[-(LEGEND_MOST - LEGEND_MOST // 2):])


def curves_figure(y_true: np.ndarray, probs: np.ndarray, label_names: list[str],
                  thresholds: np.ndarray | None = None) -> Figure:
    """ROC (left) and precision-recall (right) curves, one line per label that has both classes, its AUC in the
    legend and, where given, the operating point of its threshold marked; past LEGEND_MOST labels only the worst
    and best are named and coloured, the others drawn thin and grey."""
    outcomes = one_vs_rest(y_true, len(label_names))
    drawn = [j for j in range(len(label_names)) if len(np.unique(outcomes[:, j])) == 2]
    aucs = {j: float(auc(*roc_curve(outcomes[:, j], probs[:, j])[:2])) for j in drawn}
    named = named_curves(aucs)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(12, 5))
    for j in sorted(drawn, key=lambda j: (j in named, aucs[j])):  # named curves on top, the worst first
        fpr, tpr, _ = roc_curve(outcomes[:, j], probs[:, j])
        precision, recall, _ = precision_recall_curve(outcomes[:, j], probs[:, j])
        if j not in named:
            for ax, xs, ys in ((roc_ax, fpr, tpr), (pr_ax, recall, precision)):
                ax.plot(xs, ys, color="#c8ccd0", linewidth=0.5, zorder=1)
            continue
        line, = roc_ax.plot(fpr, tpr, label=f"{label_names[j]} (AUC {aucs[j]:.3f})", linewidth=1)
        pr_auc = average_precision_score(outcomes[:, j], probs[:, j])
        pr_ax.plot(recall, precision, label=f"{label_names[j]} (PR AUC {pr_auc:.3f})", linewidth=1,
                   color=line.get_color())
        if thresholds is not None:
            mark_threshold(roc_ax, pr_ax, outcomes[:, j], probs[:, j] >= thresholds[j], line.get_color())
    others = len(drawn) - len(named)
    for ax in (roc_ax, pr_ax):
        if others:  # one legend entry for every grey curve
            ax.plot([], [], color="#c8ccd0", linewidth=0.5, label=f"the other {others} (middle AUCs)")
        ax.legend(fontsize=8 if len(named) <= 6 else 7)
    roc_ax.plot([0, 1], [0, 1], "k--", linewidth=0.5)
    marked = " (dots: tuned thresholds)" if thresholds is not None else ""
    shown = f"worst and best {len(named)} of {len(drawn)}" if others else "per label"
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC, {shown}{marked}")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall, {shown}{marked}")
    fig.tight_layout()
    return fig


def mark_threshold(roc_ax: Any, pr_ax: Any, outcome: np.ndarray, chosen: np.ndarray, colour: str) -> None:
    """The operating point of one label's threshold on its ROC and precision-recall curves."""
    positives = outcome == 1
    point_tpr, point_fpr = chosen[positives].mean(), chosen[~positives].mean()
    point_precision = (chosen & positives).sum() / max(chosen.sum(), 1)
    roc_ax.plot(point_fpr, point_tpr, "o", color=colour, markersize=6, markeredgecolor="black")
    pr_ax.plot(point_tpr, point_precision, "o", color=colour, markersize=6, markeredgecolor="black")


def most_confused_classes(matrix: np.ndarray, most: int = CONFUSED_CLASSES) -> list[int]:
    """Up to `most` classes, taken pair by pair from the largest off-diagonal counts, in class order."""
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    kept: list[int] = []
    for flat in np.argsort(-errors, axis=None, kind="stable"):
        true, said = divmod(int(flat), len(matrix))
        if errors[true, said] == 0 or len(kept) >= most:
            break
        kept += [c for c in (true, said) if c not in kept][:most - len(kept)]
    return sorted(kept)


def confusion_figure(matrix: list[list[int]], label_names: list[str]) -> Figure:
    """The confusion matrix, whole up to CONFUSION_MOST classes; past it, the rows and columns of the classes of
    the most confused pairs, so that its labels stay readable."""
    matrix_array = np.asarray(matrix)
    title = "confusion matrix"
    if len(label_names) > CONFUSION_MOST:
        kept = most_confused_classes(matrix_array) or list(range(CONFUSED_CLASSES))
        matrix_array = matrix_array[np.ix_(kept, kept)]
        title = f"confusion matrix of the {len(kept)} most confused of {len(label_names)} classes"
        label_names = [label_names[k] for k in kept]
    size = min(1.2 * len(label_names) + 2, 9.0)  # 20 classes fit the page at 110 dpi
    fig, ax = plt.subplots(figsize=(size, size - 1))
    ax.imshow(matrix_array, cmap="Blues")
    small = {"fontsize": 8} if len(label_names) > 10 else {}
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right", **small)
    ax.set_yticks(range(len(label_names)), label_names, **small)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = matrix_array.max() / 2 if matrix_array.size else 0
    for (i, j), count in np.ndenumerate(matrix_array):
        if count or len(label_names) <= 10:  # zeros left blank in a large matrix: the errors stand out
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black",
                    **small)
    fig.tight_layout()
    return fig


def reliability_figure(y_true: np.ndarray, probs: np.ndarray, label_names: list[str]) -> Figure:
    """One reliability diagram per label: fraction positive against mean score per score bin, with the
    expected calibration error in the title; a perfectly calibrated label follows the diagonal."""
    outcomes = one_vs_rest(y_true, len(label_names))
    columns = min(len(label_names), 4)
    rows = -(-len(label_names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for j, name in enumerate(label_names):
        ax = axes[j // columns][j % columns]
        reliability_panel(ax, outcomes[:, j], probs[:, j], name)
        if j % columns == 0:
            ax.set_ylabel("fraction positive")
        if j // columns == rows - 1:
            ax.set_xlabel("mean score in bin")
    for k in range(len(label_names), rows * columns):
        axes[k // columns][k % columns].axis("off")
    fig.tight_layout()
    return fig


def reliability_panel(ax: Any, outcome: np.ndarray, score: np.ndarray, name: str) -> None:
    """One reliability diagram on `ax`: a dot per non-empty bin, sized by its texts, and the ECE in the title."""
    table = reliability_bins(outcome, score)
    points = [(s, f, c) for s, f, c in zip(table["mean_score"], table["fraction_positive"], table["count"],
                                           strict=True) if c]
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.5)
    if points:
        scores, fractions, counts = map(np.array, zip(*points, strict=True))
        ax.plot(scores, fractions, "-", color="tab:blue", linewidth=1)
        ax.scatter(scores, fractions, s=12 + 60 * counts / counts.max(), color="tab:blue", zorder=3)
    ece = expected_calibration_error(outcome, score)
    ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name}: ECE {ece:.3f}")
    ax.title.set_fontsize(9)


def pooled_reliability_figure(task: str, y_true: np.ndarray, probs: np.ndarray) -> Figure:
    """One reliability diagram for many labels: multi-class, the top class's score against being right (the
    summary's top-class ECE); multi-label, every (text, label) score pooled against its outcome."""
    if task == "multiclass":
        outcome = (probs.argmax(axis=1) == np.asarray(y_true, dtype=int)).astype(float)
        score, name, xlabel = probs.max(axis=1), "top class", "top class's score (mean in bin)"
    else:
        outcome, score = np.asarray(y_true, dtype=float).ravel(), probs.ravel()
        name, xlabel = f"all {probs.shape[1]} labels pooled", "mean score in bin"
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    reliability_panel(ax, outcome, score, name)
    ax.set(xlabel=xlabel, ylabel="fraction right" if task == "multiclass" else "fraction positive")
    fig.tight_layout()
    return fig


def training_figure(log: list[dict[str, Any]]) -> Figure | None:
    """The validation metric (left axis) and the training loss (right axis) at each evaluation of a run's
    metrics.jsonl; None when it holds no validation metric."""
    rows = [row for row in log if any(key.startswith("val_") for key in row)]
    if not rows:
        return None
    metric = next(key for key in rows[0] if key.startswith("val_"))
    steps = [row["step"] for row in rows]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(steps, [row.get(metric) for row in rows], "o-", color="tab:blue", label=metric)
    best = [row for row in rows if row.get("best")]
    if best:
        ax.plot(best[-1]["step"], best[-1][metric], "*", color="tab:red", markersize=14, label="kept model")
    ax.set(xlabel="training step", ylabel=metric.removeprefix("val_").replace("_", " "),
           title="validation metric over training")
    if any("loss" in row for row in rows):
        loss_ax = ax.twinx()
        loss_ax.plot(steps, [row.get("loss") for row in rows], "s--", color="tab:grey", markersize=4,
                     label="training loss")
        loss_ax.set_ylabel("training loss")
        loss_ax.legend(loc="lower right", fontsize=8)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def none_scores_figure(none: dict[str, Any]) -> Figure:
    """The none score of the in-scope texts against the texts of no class (each side's share of its texts per
    bin), with the checkpoint's threshold: what lies right of it is answered "none of these"."""
    histogram = none["histogram"]
    edges = np.asarray(histogram["edges"])
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for side, colour, name in (("in_scope", "#0969da", "in-scope texts"), ("none", "#cf222e", "texts of no class")):
        counts = np.asarray(histogram[side], dtype=float)
        if counts.sum():
            ax.stairs(counts / counts.sum(), edges, fill=True, alpha=0.45, color=colour,
                      label=f"{name} ({int(counts.sum())})")
    ax.axvline(none["threshold"], color="black", linestyle="--", label=f"threshold {none['threshold']:.3g}")
    ax.set_xscale("logit")
    ax.set_xlabel("none score (log-odds scale)")
    ax.set_ylabel("share of the side's texts")
    ax.set_xlim(edges[0], edges[-1])
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def save_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    path.write_bytes(png_bytes(fig, dpi))
    return path


def plot_curves(y_true: np.ndarray, probs: np.ndarray, label_names: list[str], path: Path,
                thresholds: np.ndarray | None = None) -> Path:
    """ROC and precision-recall curves as a PNG file."""
    return save_png(curves_figure(y_true, probs, label_names, thresholds), path)


def plot_confusion_matrix(matrix: list[list[int]], label_names: list[str], path: Path) -> Path:
    return save_png(confusion_figure(matrix, label_names), path)
