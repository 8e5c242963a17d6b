"""Table 1 and the ablation table, from run records (metrics.json) only.

A cell is the mean +- standard deviation over seeds of the fold-averaged value, as the
paper reports three seeds; a rate-free run (Harmony's audio model, the centralised
references) fills every rate column. Methods come in registry order with their display
names; the centralised references follow as upper-bound rows. A cell with a run that failed
the learning-health check carries a dagger, explained in a footnote.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avfl.methods import registry

DATASET_NAMES = {
    "ucf101": "UCF101", "activitynet": "ActivityNet", "synthetic": "Embedded",
    "cremad": "CREMA-D", "rehearsal": "Rehearsal",
}  # fmt: skip
REFERENCE_MODELS = {
    "audio": "audio", "visual": "visual", "av": "audio-visual",
    "probe_audio": "linear probe, audio", "probe_visual": "linear probe, visual",
}  # fmt: skip
DAGGER = "†"


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every run record under `root`, validated, sorted by path (deterministic)."""
    from avfl import paths, runrecord

    return [runrecord.read(p) for p in sorted(Path(root).rglob(paths.METRICS))]


def display_name(method: str, model: str = "audio") -> str:
    spec = registry().get(method)
    name = spec.display if spec else method
    if spec is not None and spec.role == "reference":
        return f"{name} ({REFERENCE_MODELS.get(model, model)})"
    return name


def row_keys(methods: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    """(method, model) rows in table order: methods in registry order, then the references."""
    order = list(registry())
    ordered = sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))
    rows = [(m, "audio") for m in ordered]
    rows += [(r, model) for r in references for model in REFERENCE_MODELS]
    return rows


def _test(run: Mapping[str, Any], model: str) -> Mapping[str, Any] | None:
    return run["test"] if model == "audio" else run["test_by_model"].get(model)


def accuracy_cells(
    runs: Iterable[Mapping[str, Any]], metric: str, rates: Sequence[float], model: str = "audio"
) -> dict[tuple[str, float], dict[str, Any]]:
    """(method, rate) -> {mean, std, n_runs, n_seeds, unhealthy, per_seed} in percent."""
    per_seed: dict[tuple[str, float, int], list[float]] = defaultdict(list)
    unhealthy: dict[tuple[str, float], int] = defaultdict(int)
    for run in runs:
        test = _test(run, model)
        if test is None:
            continue
        targets = rates if run["rate"] is None else [run["rate"]]
        for rate in targets:
            per_seed[(run["method"], float(rate), run["seed"])].append(100.0 * test[metric])
            if not run["health"]["ok"]:
                unhealthy[(run["method"], float(rate))] += 1
    cells: dict[tuple[str, float], dict[str, Any]] = {}
    for method in sorted({m for m, _, _ in per_seed}):
        for rate in rates:
            seeds = sorted(s for m, r, s in per_seed if m == method and r == float(rate))
            if not seeds:
                continue
            values = {s: statistics.fmean(per_seed[(method, float(rate), s)]) for s in seeds}
            cells[(method, float(rate))] = {
                "mean": statistics.fmean(values.values()),
                "std": statistics.stdev(values.values()) if len(values) > 1 else 0.0,
                "n_runs": sum(len(per_seed[(method, float(rate), s)]) for s in seeds),
                "n_seeds": len(seeds),
                "unhealthy": unhealthy[(method, float(rate))],
                "per_seed": values,
            }
    return cells


def table1_rows(
    runs_by_dataset: Mapping[str, Sequence[Mapping[str, Any]]], metrics: Mapping[str, str],
    rates: Sequence[float], methods: Sequence[str], references: Sequence[str] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    """Long-format Table 1: one row per (dataset, method, model, rate)."""
    rows = []
    for dataset, runs in runs_by_dataset.items():
        metric = metrics[dataset]
        for method, model in row_keys(methods, references):
            cells = accuracy_cells([r for r in runs if r["method"] == method], metric, rates, model)
            for rate in rates:
                cell = cells.get((method, float(rate)))
                if cell:
                    rows.append({
                        "dataset": dataset, "metric": metric, "method": method, "model": model,
                        "role": registry()[method].role if method in registry() else "method",
                        "rate": float(rate), "mean": cell["mean"], "std": cell["std"],
                        "n_runs": cell["n_runs"], "n_seeds": cell["n_seeds"], "unhealthy": cell["unhealthy"],
                    })  # fmt: skip
    return rows


def _best(rows: list[dict[str, Any]]) -> set[tuple[str, str, float]]:
    """The best method per (dataset, rate): references are bounds, not competitors."""
    best: dict[tuple[str, float], float] = {}
    for r in rows:
        if r["role"] == "method":
            key = (r["dataset"], r["rate"])
            best[key] = max(best.get(key, -1.0), r["mean"])
    return {
        (r["dataset"], r["method"], r["rate"])
        for r in rows
        if r["role"] == "method" and r["mean"] == best[(r["dataset"], r["rate"])]
    }


def table1_csv(rows: list[dict[str, Any]]) -> str:
    header = [
        "dataset",
        "metric",
        "method",
        "model",
        "role",
        "rate",
        "mean",
        "std",
        "n_runs",
        "n_seeds",
        "unhealthy",
    ]

    def value(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.4f}" if key in ("mean", "std") else str(row[key])

    lines = [",".join(header)] + [",".join(value(r, h) for h in header) for r in rows]
    return "\n".join(lines) + "\n"


def _grid(rows: list[dict[str, Any]], rates: Sequence[float]):
    """(dataset, method, model, [row or None per rate]) in table order."""
    index = {(r["dataset"], r["method"], r["model"], r["rate"]): r for r in rows}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        keys = dict.fromkeys((r["method"], r["model"]) for r in rows if r["dataset"] == dataset)
        for method, model in keys:
            yield (
                dataset,
                method,
                model,
                [index.get((dataset, method, model, float(rate))) for rate in rates],
            )


def budget_notes(runs: Iterable[Mapping[str, Any]], methods: Sequence[str]) -> list[str]:
    """Per method: mean client trainings and local optimizer steps per run (consumed runs included)."""
    totals: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for run in runs:
        total = run["budget"]["total"]
        if total:
            totals[run["method"]].append((total["client_trainings"], total["local_steps"]))
    notes = []
    for method, _ in row_keys(methods, []):
        if totals.get(method):
            trainings = statistics.fmean(t for t, _ in totals[method])
            steps = statistics.fmean(s for _, s in totals[method])
            notes.append(
                f"{display_name(method)}: {trainings:,.0f} client trainings, {steps:,.0f} local steps per run"
            )
    return notes


def method_notes(
    methods: Sequence[str], runs_by_dataset: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[str]:
    """Each method's `table1_note` (MethodSpec), where the method has runs in the table."""
    present = {r["method"] for runs in runs_by_dataset.values() for r in runs}
    return [
        f"{registry()[m].display}: {registry()[m].table1_note}"
        for m in methods
        if m in present and m in registry() and registry()[m].table1_note
    ]


def start_notes(
    runs: Iterable[Mapping[str, Any]], methods: Sequence[str], rates: Sequence[float] | None = None
) -> list[str]:
    """Per method whose runs kept a phase's start: how many, out of how many (runs.csv's
    start_selected). Such a run reports the model it started from (ModalityMirror's with
    start_is_candidate: MultiFL's), not one its own phase trained."""
    from avfl.report.runs_table import start_selected

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for run in runs:
        if rates is not None and run["rate"] is not None and float(run["rate"]) not in rates:
            continue  # the footnote is Table 1's: its rates only
        counts[run["method"]][0] += bool(start_selected(run))
        counts[run["method"]][1] += 1
    return [
        f"{display_name(m)}: {counts[m][0]} of {counts[m][1]} runs kept their phase's starting "
        "model (selected round 0, the consumed model; runs.csv start_selected)"
        for m, _ in row_keys(methods, [])
        if counts.get(m, [0])[0]
    ]


def _cell_text(r: Mapping[str, Any] | None, pm: str, missing: str) -> str:
    if r is None:
        return missing
    dagger = DAGGER if r["unhealthy"] else ""
    return f"{r['mean']:.2f}{dagger} ({pm} {r['std']:.2f})"


def health_footnote(rows: Sequence[Mapping[str, Any]]) -> str | None:
    flagged = [r for r in rows if r["unhealthy"]]
    if not flagged:
        return None
    return (
        f"{DAGGER} The cell includes runs that failed the learning-health check (near chance, "
        "one class predicted for most clips, or a non-finite or growing loss; see runs.csv and "
        "each run's metrics.json `health`)."
    )


def table1_markdown(
    rows: list[dict[str, Any]], rates: Sequence[float], notes: Sequence[str] = ()
) -> str:
    best = _best(rows)
    lines = [
        "| dataset | method | " + " | ".join(f"{r * 100:g}%" for r in rates) + " |",
        "|" + " --- |" * (len(rates) + 2),
    ]
    for dataset, method, model, found in _grid(rows, rates):
        cells = []
        for r in found:
            text = _cell_text(r, "±", "")
            if r is not None:
                text += f" n={r['n_runs']}"
            cells.append(
                f"**{text}**" if r is not None and (dataset, method, r["rate"]) in best else text
            )
        metric = next(r["metric"] for r in rows if r["dataset"] == dataset)
        name = f"{DATASET_NAMES.get(dataset, dataset)} ({metric})"
        label = display_name(method, model)
        if registry().get(method) and registry()[method].role == "reference":
            label = f"*{label}*"
        lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    footnote = health_footnote(rows)
    extra = ([footnote] if footnote else []) + list(notes)
    if extra:
        lines.append("")
        lines += [f"- {line}" for line in extra]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return text.replace("%", "\\%").replace("_", "\\_").replace("&", "\\&")


def latex_row(cells: Sequence[str]) -> str:
    """One row of a LaTeX tabular."""
    return " & ".join(cells) + " \\\\"


LATEX_END = ["\\bottomrule", "\\end{tabular}", "\\end{table}"]


def table1_latex(
    rows: list[dict[str, Any]], rates: Sequence[float], notes: Sequence[str] = ()
) -> str:
    """booktabs table as the paper's Table 1; best method per column in bold, references below a rule."""
    best = _best(rows)
    counts = sorted({r["n_runs"] for r in rows})
    caption = (
        "Audio-model accuracy (\\%) under varying video-missing rate: mean ($\\pm$ std) over seeds of the "
        f"fold-averaged value; {'/'.join(map(str, counts))} runs per cell. Centralised rows: the same models "
        "trained on the pooled training clients with the same sample budget (upper bounds)."
    )
    footnote = health_footnote(rows)
    if footnote:
        caption += " " + footnote.replace(DAGGER, "$^\\dagger$")
    if notes:
        caption += " Budgets: " + "; ".join(notes) + "."
    lines = [
        "% Generated by avfl from the runs' metrics.json; do not edit.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        "\\label{tab:audio-accuracy}",
        "\\begin{tabular}{ll" + "c" * len(rates) + "}",
        "\\toprule",
        " & & \\multicolumn{" + str(len(rates)) + "}{c}{Video modality missing rate} \\\\",
        "\\cmidrule(lr){3-" + str(len(rates) + 2) + "}",
        "Dataset & Method & " + " & ".join(f"{r * 100:g}\\%" for r in rates) + " \\\\",
        "\\midrule",
    ]
    previous, previous_role = None, None
    for dataset, method, model, found in _grid(rows, rates):
        role = registry()[method].role if method in registry() else "method"
        if previous is not None and dataset != previous:
            lines.append("\\midrule")
        elif previous is not None and role != previous_role:
            lines.append("\\cmidrule(lr){2-" + str(len(rates) + 2) + "}")
        cells = []
        for r in found:
            text = _cell_text(r, "$\\pm$", "--").replace(DAGGER, "$^\\dagger$")
            cells.append(
                f"\\textbf{{{text}}}"
                if r is not None and (dataset, method, r["rate"]) in best
                else text
            )
        label = DATASET_NAMES.get(dataset, dataset) if dataset != previous else ""
        name = display_name(method, model)
        lines.append(latex_row([label, _tex(name), *cells]))
        previous, previous_role = dataset, role
    lines += LATEX_END
    return "\n".join(lines) + "\n"


def print_table(
    runs: Sequence[Mapping[str, Any]], metric: str, rates: Sequence[float] | None
) -> str:
    """`avfl table`: every method and reference of the runs found, at the given (or all) rates."""
    found = sorted({float(r["rate"]) for r in runs if r["rate"] is not None})
    rates = sorted(rates) if rates else found
    datasets = sorted({r["dataset"] for r in runs})
    by_dataset = {d: [r for r in runs if r["dataset"] == d] for d in datasets}
    methods = sorted({r["method"] for r in runs if r["role"] == "method"})
    references = sorted({r["method"] for r in runs if r["role"] == "reference"})
    rows = table1_rows(by_dataset, dict.fromkeys(datasets, metric), rates, methods, references)
    return table1_markdown(rows, rates, budget_notes(runs, methods))


# --- ablations -------------------------------------------------------------------------------


def _paired_row(
    cell: Mapping[str, Any], base: Mapping[str, Any] | None, **keys: Any
) -> dict[str, Any]:
    """An ablation row: `cell`'s mean and std over seeds and, with `base`, the paired change
    (per seed present in both: cell minus base; mean and std over those seeds)."""
    row = {**keys, "mean": cell["mean"], "std": cell["std"], "n_seeds": cell["n_seeds"],
           "unhealthy": cell["unhealthy"], "delta": None, "delta_std": None}  # fmt: skip
    if base is not None:
        seeds = sorted(set(cell["per_seed"]) & set(base["per_seed"]))
        deltas = [cell["per_seed"][s] - base["per_seed"][s] for s in seeds]
        if deltas:
            row["delta"] = statistics.fmean(deltas)
            row["delta_std"] = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
    return row


def ablation_rows(
    runs_by_variant: Mapping[str, Sequence[Mapping[str, Any]]], changed: Mapping[str, Sequence[str]],
    metric: str, rates: Sequence[float], dataset: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per (variant, changed method, rate): the variant's cell and its paired change against
    `default` (per seed: fold mean of the variant minus fold mean of default; mean +- std)."""
    baseline = runs_by_variant["default"]
    rows = []
    for variant, methods in changed.items():
        for method in methods:
            ours = accuracy_cells(
                [r for r in runs_by_variant[variant] if r["method"] == method], metric, rates
            )
            theirs = accuracy_cells([r for r in baseline if r["method"] == method], metric, rates)
            for rate in rates:
                cell, base = ours.get((method, float(rate))), theirs.get((method, float(rate)))
                if cell is None:
                    continue
                rows.append(_paired_row(cell, base, dataset=dataset, variant=variant,
                                        method=method, rate=float(rate)))  # fmt: skip
    return rows


COMPARED = ("multifl", "modalitymirror")  # what the ablation methods are read against


def method_ablation_rows(
    runs: Sequence[Mapping[str, Any]], ablation_methods: Sequence[str], metric: str,
    rates: Sequence[float], dataset: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per (method, model, rate) of the ablation methods and of MultiFL and ModalityMirror
    beside them: the default variant's cell and its paired change against MultiFL's same model
    (per seed: fold mean minus MultiFL's fold mean; mean +- std)."""
    present = {r["method"] for r in runs}
    shown = [m for m in COMPARED if m in present] + [m for m in ablation_methods if m in present]
    rows = []
    for model in ("audio", "av"):
        cells = accuracy_cells([r for r in runs if r["method"] in shown], metric, rates, model)
        # ModalityMirror's audio-visual model is its teacher, MultiFL's: no row of its own.
        for method in [m for m in shown if model == "audio" or m != "modalitymirror"]:
            for rate in rates:
                cell = cells.get((method, float(rate)))
                if cell is None:
                    continue
                base = cells.get(("multifl", float(rate))) if method != "multifl" else None
                rows.append(_paired_row(cell, base, dataset=dataset, variant="default",
                                        method=method, model=model, rate=float(rate),
                                        against="multifl" if base is not None else ""))  # fmt: skip
    return rows


def method_ablation_markdown(rows: Sequence[Mapping[str, Any]], rates: Sequence[float]) -> str:
    lines = [
        "## Methods run as ablations",
        "",
        "| dataset | method | model | " + " | ".join(f"{r * 100:g}%" for r in rates) + " |",
        "|" + " --- |" * (len(rates) + 3),
    ]
    index = {(r["dataset"], r["method"], r["model"], r["rate"]): r for r in rows}
    for dataset, method, model in dict.fromkeys(
        (r["dataset"], r["method"], r["model"]) for r in rows
    ):
        cells = [
            _delta_text(index.get((dataset, method, model, float(rate))), "±") for rate in rates
        ]
        lines.append(
            f"| {DATASET_NAMES.get(dataset, dataset)} | {display_name(method)} | "
            f"{'audio-visual' if model == 'av' else 'audio'} | " + " | ".join(cells) + " |"
        )
    return _with_notes(lines, rows, "MultiFL's model of the same kind")


def _latex_head(
    caption: str, label: str, columns: Sequence[str], rates: Sequence[float]
) -> list[str]:
    """The opening lines of an ablation table in LaTeX: text columns, then one per rate."""
    return [
        "% Generated by avfl from the runs' metrics.json; do not edit.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        f"\\label{{{label}}}",
        "\\begin{tabular}{" + "l" * len(columns) + "c" * len(rates) + "}",
        "\\toprule",
        " & ".join([*columns, *(f"{r * 100:g}\\%" for r in rates)]) + " \\\\",
        "\\midrule",
    ]


def method_ablation_latex(rows: Sequence[Mapping[str, Any]], rates: Sequence[float]) -> str:
    lines = _latex_head(
        "Methods run as ablations, beside MultiFL and ModalityMirror: accuracy (\\%), mean over seeds "
        "of the fold mean; in brackets the paired change against MultiFL's model of the same kind (mean $\\pm$ std over seeds).",
        "tab:ablation-methods", ("Dataset", "Method", "Model"), rates,
    )  # fmt: skip
    index = {(r["dataset"], r["method"], r["model"], r["rate"]): r for r in rows}
    for dataset, method, model in dict.fromkeys(
        (r["dataset"], r["method"], r["model"]) for r in rows
    ):
        cells = [
            _delta_text(index.get((dataset, method, model, float(rate))), "$\\pm$").replace(
                DAGGER, "$^\\dagger$"
            )
            or "--"
            for rate in rates
        ]
        name = DATASET_NAMES.get(dataset, dataset)
        kind = "audio-visual" if model == "av" else "audio"
        lines.append(latex_row([name, _tex(display_name(method)), kind, *cells]))
    lines += LATEX_END
    return "\n".join(lines) + "\n"


def ablation_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    header = [
        "dataset",
        "variant",
        "method",
        "model",
        "against",
        "rate",
        "mean",
        "std",
        "delta",
        "delta_std",
        "n_seeds",
        "unhealthy",
    ]

    def value(row, key):
        v = row.get(key, {"model": "audio", "against": "default"}.get(key))
        return (
            "" if v is None else (f"{v:.4f}" if isinstance(v, float) and key != "rate" else str(v))
        )

    return (
        "\n".join([",".join(header)] + [",".join(value(r, h) for h in header) for r in rows]) + "\n"
    )


def _ablation_grid(rows, rates):
    index = {(r["dataset"], r["variant"], r["method"], r["rate"]): r for r in rows}
    for dataset, variant, method in dict.fromkeys(
        (r["dataset"], r["variant"], r["method"]) for r in rows
    ):
        yield (
            dataset,
            variant,
            method,
            [index.get((dataset, variant, method, float(rate))) for rate in rates],
        )


def _delta_text(r, pm: str) -> str:
    if r is None:
        return ""
    dagger = DAGGER if r["unhealthy"] else ""
    text = f"{r['mean']:.2f}{dagger}"
    if r["delta"] is not None:
        text += f" ({r['delta']:+.2f} {pm} {r['delta_std']:.2f})"
    return text


def _with_notes(lines: list[str], rows: Sequence[Mapping[str, Any]], against: str) -> str:
    """A Markdown ablation table's lines with what a cell holds and the health footnote."""
    lines += [
        "",
        f"- Cell: mean over seeds of the fold mean; in brackets the paired change against {against} (same seeds and partitions), mean ± std over seeds.",
    ]
    footnote = health_footnote(rows)
    if footnote:
        lines.append(f"- {footnote}")
    return "\n".join(lines) + "\n"


def ablation_markdown(rows: Sequence[Mapping[str, Any]], rates: Sequence[float]) -> str:
    lines = [
        "| dataset | variant | method | " + " | ".join(f"{r * 100:g}%" for r in rates) + " |",
        "|" + " --- |" * (len(rates) + 3),
    ]
    for dataset, variant, method, found in _ablation_grid(rows, rates):
        cells = [_delta_text(r, "±") for r in found]
        lines.append(
            f"| {DATASET_NAMES.get(dataset, dataset)} | {variant} | {display_name(method)} | "
            + " | ".join(cells)
            + " |"
        )
    return _with_notes(lines, rows, "`default`")


def ablation_latex(rows: Sequence[Mapping[str, Any]], rates: Sequence[float]) -> str:
    lines = _latex_head(
        "Ablations: audio accuracy (\\%) of each variant's changed methods, mean over seeds of the fold mean; "
        "in brackets the paired change against the default configuration (mean $\\pm$ std over seeds).",
        "tab:ablations", ("Dataset", "Variant", "Method"), rates,
    )  # fmt: skip
    for dataset, variant, method, found in _ablation_grid(rows, rates):
        cells = [_delta_text(r, "$\\pm$").replace(DAGGER, "$^\\dagger$") or "--" for r in found]
        name = DATASET_NAMES.get(dataset, dataset)
        lines.append(latex_row([name, _tex(variant), _tex(display_name(method)), *cells]))
    lines += LATEX_END
    return "\n".join(lines) + "\n"
