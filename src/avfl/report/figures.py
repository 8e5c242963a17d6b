"""Figure 2 (per-label F1 change, ModalityMirror minus Harmony) and Figure 3 (accuracy against
the video-missing rate, every method, the centralised references as dashed lines), from run
records only, in one paper style. Names, order and colours come from the method registry."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from avfl.methods import registry
from avfl.report.style import paper_style, save_figure
from avfl.report.tables import DATASET_NAMES, accuracy_cells, display_name, row_keys

# Reference lines drawn on Figure 3 (the audio model's upper bounds) and their dash styles.
REFERENCE_LINES = {"audio": (6, 2), "probe_audio": (2, 2)}
FALLBACK_COLOURS = ("#64B5CD", "#8C8C8C", "#CCB974", "#DA8BC3")


def colour(method: str, index: int = 0) -> str:
    spec = registry().get(method)
    return spec.colour if spec else FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)]


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


def _panel(ax, runs, metric: str, rates: Sequence[float], methods: Sequence[str],
           references: Sequence[str], title: str) -> None:  # fmt: skip
    """One Figure 3 panel: a line with a +-std band per method, dashed reference lines."""
    if not rates:
        return
    x_range = (100 * min(rates), 100 * max(rates))
    for i, (method, _) in enumerate(row_keys(methods, [])):
        cells = accuracy_cells([r for r in runs if r["method"] == method], metric, rates)
        points = [(r, cells[(method, float(r))]) for r in rates if (method, float(r)) in cells]
        if not points:
            continue
        x = np.array([100 * r for r, _ in points])
        mean = np.array([c["mean"] for _, c in points])
        std = np.array([c["std"] for _, c in points])
        c = colour(method, i)
        flagged = any(cell["unhealthy"] for _, cell in points)
        ax.plot(x, mean, marker="o", markersize=3, linewidth=1.2, color=c,
                label=display_name(method) + (" †" if flagged else ""))  # fmt: skip
        ax.fill_between(x, mean - std, mean + std, color=c, alpha=0.18, linewidth=0)
    for reference in references:
        for model, dashes in REFERENCE_LINES.items():
            cells = accuracy_cells(
                [r for r in runs if r["method"] == reference], metric, rates[:1], model
            )
            cell = cells.get((reference, float(rates[0])))
            if cell is None:
                continue
            ax.plot(x_range, [cell["mean"]] * 2, color=colour(reference), linewidth=0.9,
                    dashes=dashes, label=display_name(reference, model))  # fmt: skip
    ax.set_xlabel("video modality missing rate (%)")
    ax.set_ylabel(f"audio {metric.replace('top', 'top-')} accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, linewidth=0.5)


def figure3(runs_by_dataset: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Mapping[str, str], rates: Sequence[float],
            methods: Sequence[str], paths: Sequence[str | Path], references: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """Draw Figure 3; returns the legend's labels (what a reader will find in it)."""
    datasets = list(runs_by_dataset)
    with paper_style():
        fig, axes = plt.subplots(
            1, max(1, len(datasets)), figsize=(3.6 * max(1, len(datasets)), 2.8), squeeze=False
        )
        for ax, dataset in zip(axes[0], datasets, strict=False):
            _panel(ax, runs_by_dataset[dataset], metrics[dataset], rates, methods, references,
                   DATASET_NAMES.get(dataset, dataset))  # fmt: skip
        labels = _legend_and_save(fig, axes, paths, max_columns=4)
    return labels


def figure3_variants(
    runs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]], metrics: Mapping[str, str],
    rates: Sequence[float], methods: Sequence[str], references: Sequence[str],
    paths: Sequence[str | Path],
) -> None:  # fmt: skip
    """Figure 3 for each variant: runs[dataset][variant] -> one panel each (4 per row)."""
    panels = [(d, v) for d in runs for v in runs[d]]
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    with paper_style():
        fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.5 * rows), squeeze=False)
        for ax, (dataset, variant) in zip(axes.flat, panels, strict=False):
            title = f"{DATASET_NAMES.get(dataset, dataset)}: {variant}"
            _panel(ax, runs[dataset][variant], metrics[dataset], rates, methods, references, title)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        _legend_and_save(fig, axes, paths, max_columns=5)


def _legend_and_save(fig, axes, paths: Sequence[str | Path], max_columns: int) -> list[str]:
    """One legend under the panels (the first panel's entries), then every format, closed."""
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(max_columns, len(labels)), frameon=False)  # fmt: skip
    fig.tight_layout()
    for path in paths:
        save_figure(fig, path)
    plt.close(fig)
    return labels
