"""Tables and figures, in one paper style, byte-identical on rerun.

`write_reports` reads only the runs' metrics.json files and writes an experiment's Table 1
(csv, md, tex), Figures 2 and 3 (pdf, svg, png) and, with variants, the ablation table and
Figure 3 of every variant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from avfl import paths, runrecord


def _select(runs, dataset: str, sources: Mapping[str, str]) -> list[dict[str, Any]]:
    """The records behind one variant: each method's runs from the variant that trained them."""
    return [
        r for r in runs
        if r["dataset"] == dataset and r["method"] in sources and r["variant"] == sources[r["method"]]
    ]  # fmt: skip


def write_reports(
    metrics: Iterable[str | Path], settings: Mapping[str, Any], out: str | Path
) -> str:
    """Write every report file into `out`; returns Table 1 in Markdown (for the log)."""
    from avfl.records import write_json
    from avfl.report import captions, claims, figures, personalised, tables

    p = paths

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [runrecord.read(p) for p in sorted(map(str, metrics))]
    datasets = settings["datasets"]
    sources = settings["sources"]
    methods, references = settings["methods"], settings["references"]
    extra = settings.get("ablation_methods", [])
    by_variant = {d: {v: _select(runs, d, sources[d][v]) for v in sources[d]} for d in datasets}
    # Table 1, the figures and their captions: the methods and references, not the ablation methods.
    default = {
        d: [r for r in by_variant[d]["default"] if r["method"] not in extra] for d in datasets
    }
    rates = settings["table1_rates"]
    rows = tables.table1_rows(default, datasets, rates, methods, references)
    notes = [n for d in datasets for n in tables.budget_notes(default[d], methods)]
    notes += [
        n
        for d in datasets
        for n in tables.start_notes(default[d], methods, [float(r) for r in rates])
    ]
    notes += tables.method_notes(methods, default)
    (out / f"{p.TABLE1}.csv").write_text(tables.table1_csv(rows))
    markdown = tables.table1_markdown(rows, rates, notes)
    (out / f"{p.TABLE1}.md").write_text(markdown)
    (out / f"{p.TABLE1}.tex").write_text(tables.table1_latex(rows, rates, notes))
    figures.figure2(default, settings["figure2_rate"], p.figure_files(out, p.FIGURE2))
    lines = figures.figure3(default, datasets, settings["figure3_rates"], methods,
                            p.figure_files(out, p.FIGURE3), references)  # fmt: skip
    markdown_log = markdown + "\nFigure 3 lines: " + "; ".join(lines) + "\n"
    shown = [r for d in datasets for r in default[d]]
    texts = {
        "table1": captions.table1_caption(shown, rows, datasets, rates, notes, methods),
        "fig2": captions.figure2_caption(settings["figure2_rate"], datasets),
        "fig3": captions.figure3_caption(shown, datasets, settings["figure3_rates"], methods),
    }
    for name in p.CAPTIONS:
        caption = out / p.fill(p.CAPTION, name=name)
        caption.parent.mkdir(exist_ok=True)
        caption.write_text(texts[name])
    # What this folder reports: the workflow refuses to write another configuration's report
    # over it (avfl.plan.Plan.check_report_folder).
    write_json(out / p.IDENTITY, settings["identity"])
    # The paper's claims under the configuration and every reported variant.
    tested = claims.claims_for(methods, rates, settings["figure2_rate"])
    shown_variants = settings.get("report_variants") or settings["variants"]
    found = []
    for d in datasets:
        source = settings["identity"]["datasets"][d]["source"]
        found += claims.claim_rows(by_variant[d], shown_variants, tested, datasets[d], source, d)
    (out / f"{p.CLAIMS}.csv").write_text(claims.claims_csv(found))
    (out / f"{p.CLAIMS}.md").write_text(
        claims.claims_markdown(found, settings["identity"]["experiment"])
    )
    (out / f"{p.CLAIMS}.tex").write_text(claims.claims_latex(found))
    # Beside Table 1: each client's model on its own label mix, after k fine-tuning steps.
    mine = personalised.personalised_rows(
        default, settings["table1_rates"], [*methods, *references]
    )
    (out / f"{p.PERSONALISED}.csv").write_text(personalised.personalised_csv(mine))
    (out / f"{p.PERSONALISED}.md").write_text(personalised.personalised_markdown(mine, rates))
    (out / f"{p.PERSONALISED}.tex").write_text(personalised.personalised_latex(mine, rates))
    if len(settings["variants"]) > 1 or extra:
        ablation, by_method = [], []
        for d in datasets:
            ablation += tables.ablation_rows(
                by_variant[d], settings["changed"][d], datasets[d], rates, d
            )
            if extra:
                by_method += tables.method_ablation_rows(
                    by_variant[d]["default"], extra, datasets[d], rates, d
                )
        (out / f"{p.ABLATIONS}.csv").write_text(tables.ablation_csv(ablation + by_method))
        md = tex = ""  # the variants' table, where there are variants; then the methods'
        if len(settings["variants"]) > 1:
            md = tables.ablation_markdown(ablation, rates)
            tex = tables.ablation_latex(ablation, rates)
        if by_method:
            md += ("\n" if md else "") + tables.method_ablation_markdown(by_method, rates)
            tex += ("\n" if tex else "") + tables.method_ablation_latex(by_method, rates)
        (out / f"{p.ABLATIONS}.md").write_text(md)
        (out / f"{p.ABLATIONS}.tex").write_text(tex)
        shown = settings.get("report_variants") or settings["variants"]
        panels = {d: {v: by_variant[d][v] for v in shown if v in by_variant[d]} for d in datasets}
        panels = {d: {v: [r for r in runs if r["method"] not in extra] for v, runs in ps.items()}
                  for d, ps in panels.items()}  # fmt: skip
        figures.figure3_variants(panels, datasets, settings["figure3_rates"], methods, references,
                                 p.figure_files(out, p.FIGURE3_VARIANTS))  # fmt: skip
    return markdown_log
