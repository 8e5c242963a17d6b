"""Figure 2 (per-label F1 change, ModalityMirror minus Harmony) and Figure 3 (accuracy
against the video-missing rate), from run records only, in one paper style."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from avfl.report.style import paper_style, save_figure
from avfl.report.tables import DATASET_NAMES, METHOD_NAMES, METHOD_ORDER, accuracy_cells

COLOURS = {
    "unifl": "#4C72B0",
    "multifl": "#DD8452",
    "harmony": "#55A868",
    "modalitymirror": "#C44E52",
}


def mean_per_class_f1(
    runs: Sequence[Mapping[str, Any]], method: str, rate: float | None
) -> tuple[np.ndarray, list[str]] | None:
    """Per-class F1 (%) of a method at a rate, averaged over its runs (folds and seeds)."""
    chosen = [
        r
        for r in runs
        if r["method"] == method and (r["rate"] is None or rate is None or r["rate"] == rate)
    ]
    if not chosen:
        return None
    return 100.0 * np.mean([r["test"]["per_class_f1"] for r in chosen], axis=0), chosen[0][
        "classes"
    ]


def label_changes(
    runs: Sequence[Mapping[str, Any]], rate: float, top: int = 10
) -> list[tuple[str, float]]:
    """The `top` labels with the largest |F1(ModalityMirror) - F1(Harmony)| at `rate`, largest gain first."""
    mirror = mean_per_class_f1(runs, "modalitymirror", rate)
    harmony = mean_per_class_f1(runs, "harmony", None)
    if mirror is None or harmony is None:
        return []
    diff = mirror[0] - harmony[0]
    order = sorted(range(len(diff)), key=lambda i: (-abs(diff[i]), mirror[1][i]))[:top]
    return sorted(((mirror[1][i], float(diff[i])) for i in order), key=lambda item: -item[1])


def figure2(
    runs_by_dataset: Mapping[str, Sequence[Mapping[str, Any]]],
    rate: float,
    paths: Sequence[str | Path],
) -> None:
    datasets = [d for d in runs_by_dataset if label_changes(runs_by_dataset[d], rate)]
    with paper_style():
        fig, axes = plt.subplots(
            1, max(1, len(datasets)), figsize=(3.4 * max(1, len(datasets)), 2.8), squeeze=False
        )
        for ax, dataset in zip(axes[0], datasets, strict=False):
            changes = label_changes(runs_by_dataset[dataset], rate)
            labels = [name for name, _ in changes][::-1]
            values = [value for _, value in changes][::-1]
            ax.barh(labels, values, color=["#C44E52" if v >= 0 else "#4C72B0" for v in values])
            ax.axvline(0, color="black", linewidth=0.6)
            ax.set_xlabel("F1 change, ModalityMirror - Harmony (points)")
            ax.set_title(f"{DATASET_NAMES.get(dataset, dataset)}, r = {rate:g}")
        if not datasets:
            axes[0][0].text(0.5, 0.5, "no ModalityMirror/Harmony runs", ha="center", va="center")
        fig.tight_layout()
        for path in paths:
            save_figure(fig, path)
        plt.close(fig)


def figure3(runs_by_dataset: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Mapping[str, str], rates: Sequence[float],
            methods: Sequence[str], paths: Sequence[str | Path]) -> None:  # fmt: skip
    datasets = list(runs_by_dataset)
    with paper_style():
        fig, axes = plt.subplots(
            1, max(1, len(datasets)), figsize=(3.4 * max(1, len(datasets)), 2.6), squeeze=False
        )
        for ax, dataset in zip(axes[0], datasets, strict=False):
            cells = accuracy_cells(runs_by_dataset[dataset], metrics[dataset], rates)
            for method in [m for m in METHOD_ORDER if m in methods]:
                points = [
                    (r, cells[(method, float(r))]) for r in rates if (method, float(r)) in cells
                ]
                if not points:
                    continue
                x = np.array([100 * r for r, _ in points])
                mean = np.array([c["mean"] for _, c in points])
                std = np.array([c["std"] for _, c in points])
                colour = COLOURS.get(method)
                ax.plot(
                    x,
                    mean,
                    marker="o",
                    markersize=3,
                    linewidth=1.2,
                    color=colour,
                    label=METHOD_NAMES.get(method, method),
                )
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)
            ax.set_xlabel("video modality missing rate (%)")
            ax.set_ylabel(f"audio {metrics[dataset].replace('top', 'top-')} accuracy (%)")
            ax.set_title(DATASET_NAMES.get(dataset, dataset))
            ax.grid(alpha=0.3, linewidth=0.5)
        axes[0][0].legend(frameon=False)
        fig.tight_layout()
        for path in paths:
            save_figure(fig, path)
        plt.close(fig)
