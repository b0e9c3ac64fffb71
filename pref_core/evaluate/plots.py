"""Diagnostic figures of (n, 3) preference probabilities: pure functions returning matplotlib figures."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pref_core.data.labels import LABEL_COLUMNS, NUM_CLASSES

_SHORT = ("a", "b", "tie")


def _figure(width: float = 5.0, height: float = 4.0):
    # The object-oriented API with the Agg canvas: no global pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_fold_log_loss(fold_losses: Mapping[int, float], oof_log_loss: float, prior_log_loss: float):
    fig = _figure()
    ax = fig.add_subplot()
    folds = sorted(fold_losses)
    ax.bar([str(k) for k in folds], [fold_losses[k] for k in folds], color="#4c72b0")
    ax.axhline(oof_log_loss, color="black", linestyle="-", label=f"OOF {oof_log_loss:.4f}")
    ax.axhline(prior_log_loss, color="#c44e52", linestyle="--", label=f"class prior {prior_log_loss:.4f}")
    ax.set_xlabel("fold")
    ax.set_ylabel("validation log loss")
    ax.set_title("Log loss per fold")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def compute_reliability(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10):
    """Per class and confidence bin: (mean predicted probability, observed frequency, count)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = {}
    for k in range(NUM_CLASSES):
        p = probs[:, k]
        hit = (labels == k).astype(float)
        bins = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
        rows = []
        for b in range(n_bins):
            sel = bins == b
            if sel.any():
                rows.append((float(p[sel].mean()), float(hit[sel].mean()), int(sel.sum())))
        out[LABEL_COLUMNS[k]] = rows
    return out


def plot_reliability(labels: Sequence[int], probs: np.ndarray, n_bins: int = 10):
    labels, probs = np.asarray(labels), np.asarray(probs)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for (column, rows), short in zip(compute_reliability(labels, probs, n_bins).items(), _SHORT):
        if rows:
            mean_p, freq, _ = zip(*rows)
            ax.plot(mean_p, freq, marker="o", label=short)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Reliability diagram (OOF)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def compute_confusion(labels: Sequence[int], probs: np.ndarray) -> np.ndarray:
    """(3, 3) counts: rows are true classes, columns the argmax prediction."""
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
    np.add.at(matrix, (np.asarray(labels), np.asarray(probs).argmax(axis=1)), 1)
    return matrix


def plot_confusion(labels: Sequence[int], probs: np.ndarray):
    matrix = compute_confusion(labels, probs)
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    ax.set_xticks(range(NUM_CLASSES), _SHORT)
    ax.set_yticks(range(NUM_CLASSES), _SHORT)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (OOF)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def compute_top_class_calibration(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10):
    """Confidence of the predicted class per bin: (mean confidence, accuracy, count) rows, empty bins left out."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1]), 0, n_bins - 1)
    return [
        (float(confidence[bins == b].mean()), float(correct[bins == b].mean()), int((bins == b).sum()))
        for b in range(n_bins)
        if (bins == b).any()
    ]


def plot_calibration_before_after(
    labels: Sequence[int], probs: np.ndarray, calibrated: np.ndarray, temperature: float, n_bins: int = 10
):
    """Reliability of the top class before and after temperature scaling, with both log losses in the legend."""
    from pref_core.evaluate.metrics import compute_log_loss

    labels = np.asarray(labels)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for name, p, style in (("before", probs, "o--"), (f"after (T={temperature:.2f})", calibrated, "s-")):
        rows = compute_top_class_calibration(labels, p, n_bins)
        ax.plot(
            [r[0] for r in rows],
            [r[1] for r in rows],
            style,
            label=f"{name}: log loss {compute_log_loss(labels, p):.4f}",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title("Calibration before / after temperature scaling")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def compute_log_loss_by_length(labels: np.ndarray, probs: np.ndarray, lengths: np.ndarray, n_buckets: int = 5):
    """Rows split into length quantile buckets: [(low, high, log loss, count)] in increasing length."""
    from pref_core.evaluate.metrics import compute_log_loss

    labels, probs, lengths = np.asarray(labels), np.asarray(probs), np.asarray(lengths)
    edges = np.unique(np.quantile(lengths, np.linspace(0.0, 1.0, n_buckets + 1)))
    if len(edges) < 2:
        edges = np.array([lengths.min(), lengths.max()])
    bucket = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(edges) - 2)
    return [
        (
            int(edges[b]),
            int(edges[b + 1]),
            float(compute_log_loss(labels[bucket == b], probs[bucket == b])),
            int((bucket == b).sum()),
        )
        for b in range(len(edges) - 1)
        if (bucket == b).any()
    ]


def plot_log_loss_by_length(
    labels: Sequence[int],
    probs: np.ndarray,
    lengths: Sequence[int],
    overall: float,
    unit: str = "characters",
    n_buckets: int = 5,
):
    """OOF log loss per prompt+response length bucket: long rows lose most to truncation."""
    rows = compute_log_loss_by_length(np.asarray(labels), np.asarray(probs), np.asarray(lengths), n_buckets)
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    names = [f"{lo}-{hi}" for lo, hi, _, _ in rows]
    bars = ax.bar(names, [r[2] for r in rows], color="#55a868")
    for bar, (_, _, _, count) in zip(bars, rows):
        ax.annotate(
            f"n={count}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize="small",
        )
    ax.axhline(overall, color="black", label=f"all rows {overall:.4f}")
    ax.set_xlabel(f"prompt + responses length ({unit})")
    ax.set_ylabel("OOF log loss")
    ax.set_title("Log loss by length")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_blend_log_loss(member_log_loss: Mapping[str, float], mean_log_loss: float, blend_log_loss: float, method: str):
    """OOF log loss of each blend member, their plain mean and the blend (honest: fitted on the other folds)."""
    names = [*member_log_loss, "mean", f"blend ({method})"]
    values = [*member_log_loss.values(), mean_log_loss, blend_log_loss]
    fig = _figure(width=max(5.0, 1.2 * len(names)))
    ax = fig.add_subplot()
    colors = ["#4c72b0"] * len(member_log_loss) + ["#8c8c8c", "#55a868"]
    ax.bar(names, values, color=colors)
    for x, value in enumerate(values):
        ax.annotate(f"{value:.4f}", (x, value), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("OOF log loss")
    ax.set_title("Blend members, mean and blend")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig
