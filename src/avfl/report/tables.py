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


def markdown_table(
    cells: dict[tuple[str, float], dict[str, float]], rates: Sequence[float], metric: str
) -> str:
    """Methods as rows, rates as columns, best mean per column in bold."""
    header = f"| method ({metric}, %) | " + " | ".join(f"r = {r:g}" for r in rates) + " |"
    lines = [header, "|" + " --- |" * (len(rates) + 1)]
    best = {
        r: max((c["mean"] for (m, rr), c in cells.items() if rr == float(r)), default=None)
        for r in rates
    }
    for method in [m for m in METHOD_ORDER if any(k[0] == m for k in cells)]:
        row = [METHOD_NAMES.get(method, method)]
        for r in rates:
            cell = cells.get((method, float(r)))
            if cell is None:
                row.append("")
                continue
            text = f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={cell['n_runs']})"
            row.append(f"**{text}**" if cell["mean"] == best[r] else text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
