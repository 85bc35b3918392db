"""The figures of study 002, for any run: time vs accuracy (Fig. 2/3), accuracy vs unlabeled fraction (Fig. 4),
and ROC curves. Matplotlib with the Agg backend, so they render on a headless machine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kd_keras.evaluation.metrics import binary_auc, roc_curve  # noqa: E402


def plot_time_vs_accuracy(points: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Scatter of per-volume inference time against validation accuracy, one colour per family.

    Args:
        points: dicts with ``name``, ``family``, ``seconds_per_volume``, ``accuracy`` and optionally
            ``low``/``high`` (accuracy CI) and ``marker`` (e.g. ``"o"`` baseline, ``"^"`` student-teacher).
        path: the PNG to write.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    families = sorted({p["family"] for p in points})
    colours = dict(zip(families, plt.cm.tab10(np.linspace(0, 1, max(len(families), 1))), strict=False))
    for p in points:
        acc = 100 * p["accuracy"]
        yerr = None
        if p.get("low") is not None and p.get("high") is not None:
            yerr = [[acc - 100 * p["low"]], [100 * p["high"] - acc]]
        ax.errorbar(p["seconds_per_volume"], acc, yerr=yerr, fmt=p.get("marker", "o"),
                    color=colours[p["family"]], capsize=2, ms=6)
        ax.annotate(p["name"], (p["seconds_per_volume"], acc), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    for fam in families:
        ax.plot([], [], "o", color=colours[fam], label=fam)
    ax.set_xlabel("inference time per volume (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "Time vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_accuracy_vs_fraction(curves: Mapping[str, Sequence[Mapping]], path: str | Path, title: str = "") -> Path:
    """Best validation accuracy against the percentage of the unlabeled pool used (Fig. 4 of 002).

    Args:
        curves: student name -> points with ``fraction`` (0-1), ``accuracy`` and optional ``low``/``high``.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["fraction"])
        x = [100 * p["fraction"] for p in pts]
        y = [100 * p["accuracy"] for p in pts]
        if all(p.get("low") is not None for p in pts):
            err = [[yy - 100 * p["low"] for yy, p in zip(y, pts, strict=True)],
                   [100 * p["high"] - yy for yy, p in zip(y, pts, strict=True)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        else:
            ax.plot(x, y, marker="o", label=name)
    ax.set_xlabel("unlabeled images used (%)")
    ax.set_ylabel("best validation accuracy (%)")
    ax.set_title(title or "Accuracy vs unlabeled fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """ROC curves, one per model: ``name -> (y_true, positive-class scores)``; the legend carries the AUC."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {binary_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title or "ROC")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
