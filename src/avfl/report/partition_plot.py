"""Heatmap of the label distribution across clients: the label skew at a glance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from avfl.report.style import paper_style, save_figure


def plot_label_heatmap(
    counts: np.ndarray, classes: Sequence[str], title: str, path: str | Path
) -> None:
    """counts: (clients, classes) samples; one column per client, one row per class."""
    n_clients, n_classes = counts.shape
    with paper_style():
        fig, ax = plt.subplots(
            figsize=(min(7.0, 1.5 + 0.06 * n_clients), min(9.0, 1.0 + 0.14 * n_classes))
        )
        sns.heatmap(
            counts.T,
            ax=ax,
            cmap="viridis",
            cbar_kws={"label": "samples"},
            xticklabels=max(1, n_clients // 10),
            yticklabels=list(classes) if n_classes <= 60 else False,
            linewidths=0,
        )
        ax.set_xlabel("client")
        ax.set_ylabel("class")
        ax.set_title(title)
        save_figure(fig, path)
        plt.close(fig)
