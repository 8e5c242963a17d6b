"""Table 1, the ablation table and the figures, from hand-made run records."""

from __future__ import annotations

from avfl.report import figures, tables


def record(method, rate, seed, top1, fold=1, ok=True, role="method", variant="default", **models):
    confusion = [[1, 0], [0, 1]]
    test = {
        "n": 2,
        "top1": top1,
        "top5": 1.0,
        "macro_f1": top1,
        "per_class_f1": [top1, top1],
        "confusion": confusion,
    }
    by_model = {k: {**test, "top1": v} for k, v in models.items()}
    return {"dataset": "synthetic", "method": method, "rate": rate, "seed": seed, "fold": fold, "role": role,
            "variant": variant, "test": test, "test_by_model": by_model, "classes": ["a", "b"],
            "health": {"ok": ok, "findings": [] if ok else [{"check": "near_chance", "model": "audio", "message": "x"}]},
            "budget": {"total": {"client_trainings": 10, "local_steps": 30}}}  # fmt: skip


RUNS = [
    record("multifl", 0.5, 0, 0.40), record("multifl", 0.5, 1, 0.50),
    record("multifl", 0.5, 0, 0.60, fold=2), record("multifl", 0.5, 1, 0.70, fold=2, ok=False),
    record("harmony", None, 0, 0.55), record("harmony", None, 1, 0.65),
    record("centralised", None, 0, 0.90, role="reference", visual=0.95, av=0.97, probe_audio=0.92, probe_visual=0.96),
    record("centralised", None, 1, 0.80, role="reference", visual=0.85, av=0.87, probe_audio=0.82, probe_visual=0.86),
]  # fmt: skip


def test_cells_are_mean_and_std_over_seeds_of_the_fold_mean_with_references_and_daggers():
    rows = tables.table1_rows(
        {"synthetic": RUNS}, {"synthetic": "top1"}, [0.5], ["multifl", "harmony"], ["centralised"]
    )
    cell = {(r["method"], r["model"]): r for r in rows}
    multifl = cell[("multifl", "audio")]
    # seed 0: (40 + 60) / 2 = 50; seed 1: (50 + 70) / 2 = 60
    assert abs(multifl["mean"] - 55.0) < 1e-9 and abs(multifl["std"] - 7.0710678) < 1e-6
    assert multifl["n_runs"] == 4 and multifl["unhealthy"] == 1
    assert cell[("harmony", "audio")]["mean"] == 60.0  # the rate-free run fills every rate
    assert (
        cell[("centralised", "av")]["mean"] == 92.0
        and cell[("centralised", "probe_visual")]["mean"] == 91.0
    )
    markdown = tables.table1_markdown(rows, [0.5], tables.budget_notes(RUNS, ["multifl"]))
    assert "55.00† (± 7.07)" in markdown and "*Centralised (audio-visual)*" in markdown
    assert (
        "**60.00 (± 7.07) n=2**" in markdown
    )  # the best method in bold; references are not competitors
    assert (
        "failed the learning-health check" in markdown
        and "MultiFL: 10 client trainings" in markdown
    )
    latex = tables.table1_latex(rows, [0.5])
    assert (
        "$^\\dagger$" in latex
        and "\\cmidrule" in latex
        and "Centralised (linear probe, audio)" in latex
    )


def test_ablation_rows_give_the_paired_change_against_default():
    variant = [
        dict(r, variant="hot", test={**r["test"], "top1": r["test"]["top1"] + 0.1})
        for r in RUNS
        if r["method"] == "multifl"
    ]
    rows = tables.ablation_rows(
        {"default": RUNS, "hot": variant}, {"hot": ["multifl"]}, "top1", [0.5], "synthetic"
    )
    (row,) = rows
    assert (
        abs(row["mean"] - 65.0) < 1e-9
        and abs(row["delta"] - 10.0) < 1e-9
        and row["delta_std"] < 1e-9
    )
    assert "| hot | MultiFL | 65.00† (+10.00 ± 0.00) |" in tables.ablation_markdown(rows, [0.5])


def test_ablation_methods_sit_beside_multifl_and_modalitymirror_with_their_paired_change():
    """CMRF's audio and audio-visual cells, each against MultiFL's model of the same kind (per
    seed, fold means); MultiFL itself has no change, and ModalityMirror no audio-visual row
    (its audio-visual model is MultiFL's)."""
    runs = [
        record("multifl", 0.5, 0, 0.40, av=0.70), record("multifl", 0.5, 1, 0.50, av=0.80),
        record("modalitymirror", 0.5, 0, 0.45, av=0.70), record("modalitymirror", 0.5, 1, 0.55, av=0.80),
        record("cmrf", 0.5, 0, 0.42, av=0.60, role="ablation"),
        record("cmrf", 0.5, 1, 0.56, av=0.90, role="ablation"),
    ]  # fmt: skip
    rows = tables.method_ablation_rows(runs, ["cmrf"], "top1", [0.5], "synthetic")
    cell = {(r["method"], r["model"]): r for r in rows}
    assert set(cell) == {("multifl", "audio"), ("modalitymirror", "audio"), ("cmrf", "audio"),
                         ("multifl", "av"), ("cmrf", "av")}  # fmt: skip
    assert cell[("multifl", "audio")]["delta"] is None
    assert abs(cell[("cmrf", "audio")]["delta"] - 4.0) < 1e-9  # (+2 and +6) / 2
    assert abs(cell[("cmrf", "av")]["delta"] - 0.0) < 1e-9  # -10 and +10
    assert abs(cell[("cmrf", "av")]["delta_std"] - 14.1421356) < 1e-6
    markdown = tables.method_ablation_markdown(rows, [0.5])
    assert "| Embedded | CMRF | audio-visual | 75.00 (+0.00 ± 14.14) |" in markdown
    assert "tab:ablation-methods" in tables.method_ablation_latex(rows, [0.5])
    csv = tables.ablation_csv(rows).splitlines()
    assert csv[0].startswith("dataset,variant,method,model,against,rate")
    assert "synthetic,default,cmrf,av,multifl,0.5,75.0000,21.2132,0.0000,14.1421,2,0" in csv


def test_figure3_draws_every_method_and_the_reference_lines(tmp_path):
    labels = figures.figure3({"synthetic": RUNS}, {"synthetic": "top1"}, [0.5], ["multifl", "harmony"],
                             [tmp_path / "f.png", tmp_path / "f.pdf"], ["centralised"])  # fmt: skip
    assert labels == [
        "MultiFL †",
        "Harmony",
        "Centralised (audio)",
        "Centralised (linear probe, audio)",
    ]
    first = (tmp_path / "f.pdf").read_bytes()
    figures.figure3(
        {"synthetic": RUNS},
        {"synthetic": "top1"},
        [0.5],
        ["multifl", "harmony"],
        [tmp_path / "f.pdf"],
        ["centralised"],
    )
    assert (tmp_path / "f.pdf").read_bytes() == first  # no timestamps: the same bytes on rerun


def test_captions_say_what_the_runs_hold():
    from avfl.report import captions

    rows = tables.table1_rows(
        {"synthetic": RUNS}, {"synthetic": "top1"}, [0.5], ["multifl", "harmony"], ["centralised"]
    )
    notes = tables.budget_notes(RUNS, ["multifl", "harmony"])
    text = captions.table1_caption(
        RUNS, rows, {"synthetic": "top1"}, [0.5], notes, ["multifl", "harmony"]
    )
    assert "video-missing rate (50 %)" in text and "from 2, 4 runs per cell" in text
    assert (
        "synthetic: 6 runs of MultiFL, Harmony at video-missing rates 50 %, folds 1, 2, seeds 0, 1, "
        "and 2 runs of the references" in text
    )
    assert "failed the learning-health check" in text and "- MultiFL: 10 client trainings" in text
    healthy = [r for r in RUNS if r["health"]["ok"]]
    rows = tables.table1_rows({"synthetic": healthy}, {"synthetic": "top1"}, [0.5], ["multifl"], [])
    assert "learning-health" not in captions.table1_caption(
        healthy, rows, {"synthetic": "top1"}, [0.5], []
    )
    assert "rate (10 %, 50 %)" in captions.figure3_caption(RUNS, {"synthetic": "top1"}, [0.1, 0.5])


def test_runs_that_kept_their_phases_start_are_counted_in_runs_csv_and_a_footnote():
    """start_is_candidate lets a phase keep its start (round 0): runs.csv names the phase and
    Table 1's footnote counts such runs per method, at Table 1's rates only."""
    from avfl.report.runs_table import start_selected

    def run(rate, seed, chosen):
        return {
            "method": "modalitymirror",
            "rate": rate,
            "seed": seed,
            "selected_round": {"distill": chosen},
        }

    runs = [run(0.1, 0, 0), run(0.1, 1, 25), run(0.3, 0, 0), run(0.9, 0, 0)]
    assert start_selected(runs[0]) == ["distill"] and start_selected(runs[1]) == []
    (note,) = tables.start_notes(runs, ["modalitymirror"], [0.1, 0.3])
    assert note.startswith("ModalityMirror: 2 of 3 runs kept their phase's starting model")
    assert tables.start_notes([runs[1]], ["modalitymirror"], [0.1]) == []
