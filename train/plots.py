"""PNG reports of a run: loss/score curves and the confusion matrix (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stethoedge.runtime.outputs import output_path


def _save(fig: Any, path: Path) -> None:
    with output_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Training loss and validation Score / macro-F1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    if all("val_loss" in h for h in history):
        ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [h["val_score"] for h in history], marker="o", label="val Score")
    ax2.plot(epochs, [h["val_macro_f1"] for h in history], marker="o", label="val macro-F1")
    ax2.set_xlabel("epoch"), ax2.set_ylim(0, 1), ax2.legend()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(cm: np.ndarray | list, labels: Sequence[str], path: Path, title: str = "") -> None:
    """Confusion matrix (rows: truth, columns: prediction) with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30), ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
    _save(fig, path)
    plt.close(fig)
