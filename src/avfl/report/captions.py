"""Captions of Snakemake's HTML report (`snakemake --report`), written beside the tables and
figures from what the run holds: its methods, rates, seeds and folds, the number of runs in
each cell, the budget notes and the health footnote. A caption that read the configuration
instead would describe what was asked for, not what ran (an unset `experiment.methods` once
printed "methods None")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from avfl.report.tables import display_name, health_footnote


def _listing(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def _rates(rates: Sequence[float]) -> str:
    return _listing([f"{100 * float(r):g} %" for r in rates])


def what_ran(runs: Sequence[Mapping[str, Any]], datasets: Mapping[str, str],
             order: Sequence[str] = ()) -> str:  # fmt: skip
    """One sentence per dataset: its methods (in `order`, Table 1's), rates, folds and seeds,
    from the records."""
    parts = []
    rank = {m: i for i, m in enumerate(order)}
    for dataset, metric in datasets.items():
        mine = [r for r in runs if r["dataset"] == dataset]
        found = {r["method"] for r in mine if r["role"] != "reference"}
        methods = sorted(found, key=lambda m: (rank.get(m, len(rank)), m))
        rates = sorted({r["rate"] for r in mine if r["rate"] is not None})
        folds = sorted({r["fold"] for r in mine})
        seeds = sorted({r["seed"] for r in mine})
        references = sum(r["role"] == "reference" for r in mine)
        parts.append(
            f"{dataset}: {len(mine) - references} runs of "
            f"{_listing([display_name(m) for m in methods])} at video-missing rates "
            f"{_rates(rates)}, folds {_listing(folds)}, seeds {_listing(seeds)}, and "
            f"{references} runs of the references; {metric} of the audio model"
        )
    return "; ".join(parts) + "."


def table1_caption(
    runs: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
    datasets: Mapping[str, str], rates: Sequence[float], notes: Sequence[str],
    order: Sequence[str] = (),
) -> str:  # fmt: skip
    n_runs = sorted({r["n_runs"] for r in rows})
    lines = [
        "Table 1: accuracy of the audio model that audio-only clients use, by method and "
        f"video-missing rate ({_rates(rates)}). Each cell: mean (± std) over seeds of the "
        f"fold-averaged value, from {_listing(n_runs)} runs per cell; the best per column in "
        "bold (Markdown and LaTeX versions beside this CSV). " + what_ran(runs, datasets, order),
        "",
    ]
    footnote = health_footnote(rows)
    lines += [f"- {note}" for note in ([footnote] if footnote else []) + list(notes)]
    return "\n".join(lines).rstrip() + "\n"


def figure2_caption(rate: float, datasets: Mapping[str, str]) -> str:
    return (
        "Figure 2: the ten labels whose audio-model F1 changes most between Harmony and "
        f"ModalityMirror at a video-missing rate of {_rates([rate])}, averaged over folds and "
        f"seeds ({_listing(list(datasets))}); bars are ModalityMirror minus Harmony, in F1 "
        "points.\n"
    )


def figure3_caption(runs: Sequence[Mapping[str, Any]], datasets: Mapping[str, str],
                    rates: Sequence[float], order: Sequence[str] = ()) -> str:  # fmt: skip
    return (
        f"Figure 3: audio-model accuracy against the video-missing rate ({_rates(rates)}) for "
        "every method; lines are means over seeds of the fold-averaged accuracy, bands ± one "
        "standard deviation, dashed lines the centralised references. "
        + what_ran(runs, datasets, order)
        + "\n"
    )
