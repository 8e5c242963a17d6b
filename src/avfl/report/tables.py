"""Accuracy tables from run records (metrics.json) only.

A cell is the mean +- standard deviation over seeds of the fold-averaged value, as the
paper reports three seeds; Harmony's rate-independent run fills every rate column.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

METHOD_ORDER = ("unifl", "multifl", "harmony", "modalitymirror")
METHOD_NAMES = {
    "unifl": "UniFL",
    "multifl": "MultiFL",
    "harmony": "Harmony",
    "modalitymirror": "ModalityMirror",
}


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every metrics.json under `root`, sorted by path (deterministic)."""
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("metrics.json"))]


def accuracy_cells(
    runs: Iterable[dict[str, Any]], metric: str, rates: Sequence[float]
) -> dict[tuple[str, float], dict[str, float]]:
    """(method, rate) -> {mean, std, n_runs, n_seeds} in percent."""
    per_seed: dict[tuple[str, float, int], list[float]] = defaultdict(list)
    for run in runs:
        targets = rates if run["rate"] is None else [run["rate"]]
        for rate in targets:
            per_seed[(run["method"], float(rate), run["seed"])].append(100.0 * run["test"][metric])
    cells: dict[tuple[str, float], dict[str, float]] = {}
    for method in {m for m, _, _ in per_seed}:
        for rate in rates:
            seeds = sorted(s for m, r, s in per_seed if m == method and r == float(rate))
            if not seeds:
                continue
            values = [statistics.fmean(per_seed[(method, float(rate), s)]) for s in seeds]
            cells[(method, float(rate))] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n_runs": sum(len(per_seed[(method, float(rate), s)]) for s in seeds),
                "n_seeds": len(seeds),
            }
    return cells


DATASET_NAMES = {"ucf101": "UCF101", "activitynet": "ActivityNet", "synthetic": "Embedded"}


def table1_rows(runs_by_dataset: dict[str, list[dict[str, Any]]], metrics: dict[str, str], rates: Sequence[float],
                methods: Sequence[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Long-format Table 1: one row per (dataset, method, rate) with mean, std and counts."""
    rows = []
    for dataset in runs_by_dataset:
        cells = accuracy_cells(runs_by_dataset[dataset], metrics[dataset], rates)
        for method in [m for m in METHOD_ORDER if m in methods] + [
            m for m in methods if m not in METHOD_ORDER
        ]:
            for rate in rates:
                cell = cells.get((method, float(rate)))
                if cell:
                    rows.append({"dataset": dataset, "metric": metrics[dataset], "method": method, "rate": float(rate),
                                 "mean": cell["mean"], "std": cell["std"],
                                 "n_runs": cell["n_runs"], "n_seeds": cell["n_seeds"]})  # fmt: skip
    return rows


def _best(rows: list[dict[str, Any]]) -> set[tuple[str, str, float]]:
    best: dict[tuple[str, float], float] = {}
    for r in rows:
        key = (r["dataset"], r["rate"])
        best[key] = max(best.get(key, -1.0), r["mean"])
    return {
        (r["dataset"], r["method"], r["rate"])
        for r in rows
        if r["mean"] == best[(r["dataset"], r["rate"])]
    }


def table1_csv(rows: list[dict[str, Any]]) -> str:
    header = ["dataset", "metric", "method", "rate", "mean", "std", "n_runs", "n_seeds"]

    def value(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.4f}" if key in ("mean", "std") else str(row[key])

    lines = [",".join(header)] + [",".join(value(r, h) for h in header) for r in rows]
    return "\n".join(lines) + "\n"


def _grid(rows: list[dict[str, Any]], rates: Sequence[float]):
    """(dataset, method, [row or None per rate]) in table order."""
    index = {(r["dataset"], r["method"], r["rate"]): r for r in rows}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == dataset):
            yield dataset, method, [index.get((dataset, method, float(rate))) for rate in rates]


def table1_markdown(rows: list[dict[str, Any]], rates: Sequence[float]) -> str:
    best = _best(rows)
    lines = [
        "| dataset | method | " + " | ".join(f"{r * 100:g}%" for r in rates) + " |",
        "|" + " --- |" * (len(rates) + 2),
    ]
    for dataset, method, found in _grid(rows, rates):
        cells = []
        for r in found:
            text = "" if r is None else f"{r['mean']:.2f} (± {r['std']:.2f}) n={r['n_runs']}"
            cells.append(
                f"**{text}**" if r is not None and (dataset, method, r["rate"]) in best else text
            )
        metric = next(r["metric"] for r in rows if r["dataset"] == dataset)
        name = f"{DATASET_NAMES.get(dataset, dataset)} ({metric})"
        lines.append(f"| {name} | {METHOD_NAMES.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table1_latex(rows: list[dict[str, Any]], rates: Sequence[float]) -> str:
    """booktabs table as the paper's Table 1; best per column in bold, runs per cell in the caption."""
    best = _best(rows)
    counts = sorted({r["n_runs"] for r in rows})
    lines = [
        "% Generated by avfl from the runs' metrics.json; do not edit.",
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{Audio-model accuracy (\\%) under varying video-missing rate: mean ($\\pm$ std) over seeds of the "
        f"fold-averaged value; {'/'.join(map(str, counts))} runs per cell.}}",
        "\\label{tab:audio-accuracy}",
        "\\begin{tabular}{ll" + "c" * len(rates) + "}",
        "\\toprule",
        " & & \\multicolumn{" + str(len(rates)) + "}{c}{Video modality missing rate} \\\\",
        "\\cmidrule(lr){3-" + str(len(rates) + 2) + "}",
        "Dataset & Method & " + " & ".join(f"{r * 100:g}\\%" for r in rates) + " \\\\",
        "\\midrule",
    ]
    previous = None
    for dataset, method, found in _grid(rows, rates):
        if previous is not None and dataset != previous:
            lines.append("\\midrule")
        cells = []
        for r in found:
            text = "--" if r is None else f"{r['mean']:.2f} ($\\pm$ {r['std']:.2f})"
            cells.append(
                f"\\textbf{{{text}}}"
                if r is not None and (dataset, method, r["rate"]) in best
                else text
            )
        label = DATASET_NAMES.get(dataset, dataset) if dataset != previous else ""
        lines.append(
            f"{label} & {METHOD_NAMES.get(method, method)} & " + " & ".join(cells) + " \\\\"
        )
        previous = dataset
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"
