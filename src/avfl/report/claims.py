"""The paper's claims, tested on the grid: claims.{md,csv,tex} beside Table 1.

Each claim the grid can test becomes a paired comparison over the (fold, seed) runs that both
sides have: ModalityMirror against each baseline of the paper at each Table 1 rate (Section 5.1,
observations 1-3), the slope of ModalityMirror's accuracy and of its margin against
the video-missing rate (Section 5.2, Figure 3; the margin over MultiFL, its phase 1, since
Harmony's audio model does not depend on the rate), and its F1 gain over Harmony on the labels whose
audio alone carries least (Section 5.3, Figure 2). Every difference gets a mean, a Student-t 95 %
interval over those runs, and a verdict: supported (the interval lies on the paper's side of
zero), contradicted (on the other side) or inconclusive (it holds zero, or too few runs). The
verdicts repeat under every reported variant, so that a reader sees which claims hold only under
one reading of the paper's open choices.

Pure functions of the run records: unit-tested on synthetic ones.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from avfl.report.tables import LATEX_END, latex_row

PAPER_RATES = (0.1, 0.2, 0.3, 0.4, 0.5)
# The paper's Table 1: audio-only accuracy (%) at PAPER_RATES (UCF101 top-1, ActivityNet top-5).
PAPER_TABLE1 = {
    "ucf101": {
        "unifl": (31.28, 32.92, 28.96, 29.63, 28.03),
        "multifl": (28.08, 31.11, 31.79, 33.49, 32.52),
        "harmony": (36.93,) * 5,
        "modalitymirror": (41.77, 40.12, 40.43, 39.51, 40.48),
    },
    "activitynet": {
        "unifl": (6.97, 6.98, 7.45, 6.14, 6.79),
        "multifl": (11.19, 11.70, 11.91, 12.55, 13.09),
        "harmony": (14.35,) * 5,
        "modalitymirror": (15.82, 15.10, 15.75, 15.05, 15.63),
    },
}
# Other papers' claims, as one gain in points: FSSUAVL's linear probe over FASSL's, the mean
# of its Table 3 (Epic-Kitchens -2.70, VGG-Sound audio +2.47, Kinetics-Sound +6.94).
PAPER_GAINS = {("fssuavl", "fassl"): 2.24}
BASELINES = ("harmony", "multifl", "unifl")  # the paper's, in the order of its observations
WEAK_LABEL_SHARE = 0.25  # Figure 2's claim: the quarter of labels audio alone classifies worst
# untested: no paired runs; untrusted: every paired run includes one that failed the health check
VERDICTS = ("supported", "contradicted", "inconclusive", "untested", "untrusted")


@dataclass(frozen=True)
class Claim:
    """One testable statement: `kind` "difference" (a minus b at `rate`), "slope" (points per
    +10 % of missing rate; of a, or of a minus b) or "weak_labels" (a minus b in mean F1 over
    the weak labels at `rate`). `sign`: the paper's direction (+1 positive, -1 negative)."""

    id: str
    text: str
    kind: str
    a: str
    b: str | None
    rate: float | None
    sign: int
    rates: tuple[float, ...] = ()  # a slope's rates (Table 1's, as the paper's own values)


def paper_source(source: str) -> str:
    """Whose numbers a dataset is compared with: ActivityNet's, else UCF101's (the embedded and
    rehearsal datasets have UCF101's layout and shape)."""
    return "activitynet" if source == "activitynet" else "ucf101"


def claims_for(
    methods: Sequence[str], table1_rates: Sequence[float], figure2_rate: float
) -> list[Claim]:
    present = set(methods)
    found: list[Claim] = []
    if {"fssuavl", "fassl"} <= present:  # FSSUAVL's claim: the frames help the audio probe
        for rate in table1_rates:
            found.append(Claim(f"fssuavl_gt_fassl@{rate:g}", "FSSUAVL > FASSL (audio linear probe)",
                               "difference", "fssuavl", "fassl", float(rate), +1))  # fmt: skip
    if "modalitymirror" not in present:
        return found
    for b in (m for m in BASELINES if m in present):
        for rate in table1_rates:
            found.append(Claim(f"mm_gt_{b}@{rate:g}", f"ModalityMirror > {_name(b)}", "difference",
                               "modalitymirror", b, float(rate), +1))  # fmt: skip
    rates = tuple(float(r) for r in table1_rates)
    found.append(Claim("mm_slope", "ModalityMirror's accuracy falls as the missing rate grows (Fig. 3)",
                       "slope", "modalitymirror", None, None, -1, rates))  # fmt: skip
    if "multifl" in present:  # distillation's gain over MultiFL (Harmony's model is rate-free)
        found.append(Claim("mm_margin_slope", "ModalityMirror's margin over MultiFL shrinks as the rate grows",
                           "slope", "modalitymirror", "multifl", None, -1, rates))  # fmt: skip
    if "harmony" in present:
        found.append(Claim("mm_weak_labels", "ModalityMirror beats Harmony on the labels audio alone classifies worst (Fig. 2)",
                           "weak_labels", "modalitymirror", "harmony", float(figure2_rate), +1))  # fmt: skip
    return found


def _name(method: str) -> str:
    return {"harmony": "Harmony", "multifl": "MultiFL", "unifl": "UniFL", "fassl": "FASSL"}.get(
        method, method
    )


# --- the paper's values ------------------------------------------------------------------------


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope, in points per +10 % of missing rate."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return 0.1 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def paper_value(claim: Claim, source: str) -> float | None:
    table = PAPER_TABLE1[paper_source(source)]
    if (claim.a, claim.b) in PAPER_GAINS:
        return PAPER_GAINS[(claim.a, claim.b)]
    if claim.kind == "difference":
        i = next((i for i, r in enumerate(PAPER_RATES) if math.isclose(r, claim.rate)), None)
        return None if i is None else round(table[claim.a][i] - table[claim.b][i], 2)
    if claim.kind == "slope":  # from Table 1's rates: Figure 3's values are not printed
        ys = table[claim.a] if claim.b is None else [
            a - b for a, b in zip(table[claim.a], table[claim.b], strict=True)
        ]  # fmt: skip
        return round(_slope(PAPER_RATES, ys), 2)
    return None  # Figure 2 prints ten labels' bars, not an aggregate


# --- our values --------------------------------------------------------------------------------


def _units(runs: Iterable[Mapping[str, Any]], method: str, rate: float | None, metric: str):
    """(fold, seed) -> (value in %, healthy) of `method` at `rate` (a rate-free run serves every rate)."""
    found = {}
    for r in runs:
        if r["method"] != method:
            continue
        if rate is not None and r["rate"] is not None and not math.isclose(r["rate"], rate):
            continue
        found[(r["fold"], r["seed"])] = (100.0 * r["test"][metric], bool(r["health"]["ok"]), r)
    return found


def interval(
    values: Sequence[float], level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """Mean and Student-t interval of the mean (None, None below two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    from scipy.stats import t

    half = (
        t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    )
    return mean, mean - half, mean + half


def verdict(low: float | None, high: float | None, sign: int) -> str:
    if low is None or high is None:
        return "inconclusive"
    if (low > 0 and sign > 0) or (high < 0 and sign < 0):
        return "supported"
    if (high < 0 and sign > 0) or (low > 0 and sign < 0):
        return "contradicted"
    return "inconclusive"


def _present(record: Mapping[str, Any]) -> dict[str, float]:
    """label -> test F1 of the labels with test clips (a label without any has F1 0 by
    convention, which says nothing about the model)."""
    test = record["test"]
    return {
        name: f1
        for name, f1, row in zip(
            record["classes"], test["per_class_f1"], test["confusion"], strict=True
        )
        if sum(row) > 0
    }


def weak_labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The labels the centralised audio model classifies worst (its mean F1 over its runs):
    where audio alone carries least, chosen without looking at the two methods compared."""
    f1: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        if r["method"] == "centralised":
            for name, value in _present(r).items():
                f1[name].append(value)
    if not f1:
        return []
    ranked = sorted(f1, key=lambda n: (statistics.fmean(f1[n]), n))
    return ranked[: max(1, round(WEAK_LABEL_SHARE * len(ranked)))]


def _label_f1(record: Mapping[str, Any], labels: Sequence[str]) -> float | None:
    present = _present(record)
    found = [present[n] for n in labels if n in present]
    return 100.0 * statistics.fmean(found) if found else None


def evaluate(
    claim: Claim,
    runs: Sequence[Mapping[str, Any]],
    metric: str,
    source: str,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One claim on one variant's records: the paired differences, their interval, the verdict.
    `labels`: the weak labels (default: from these records' centralised runs)."""
    row: dict[str, Any] = {"claim": claim.id, "text": claim.text, "rate": claim.rate,
                           "paper": paper_value(claim, source), "a": None, "b": None}  # fmt: skip
    diffs: list[float] = []
    flagged = 0
    if claim.kind == "difference":
        a, b = _units(runs, claim.a, claim.rate, metric), _units(runs, claim.b, claim.rate, metric)
        keys = sorted(set(a) & set(b))
        diffs = [a[k][0] - b[k][0] for k in keys]
        flagged = sum(not (a[k][1] and b[k][1]) for k in keys)
        if keys:
            row["a"] = statistics.fmean(a[k][0] for k in keys)
            row["b"] = statistics.fmean(b[k][0] for k in keys)
    elif claim.kind == "slope":  # over the claim's rates, all of which every unit must have
        rates = list(claim.rates)
        per_rate = {rate: _units(runs, claim.a, rate, metric) for rate in rates}
        other = {rate: _units(runs, claim.b, rate, metric) for rate in rates} if claim.b else {}
        sides = [*per_rate.values(), *other.values()]
        keys = sorted(set.intersection(*(set(u) for u in sides))) if rates else []
        if len(rates) >= 3:
            for k in keys:
                ys = [
                    per_rate[rate][k][0] - (other[rate][k][0] if other else 0.0) for rate in rates
                ]
                diffs.append(_slope(rates, ys))
            flagged = sum(any(not side[k][1] for side in sides) for k in keys)
    else:  # weak_labels
        labels = weak_labels(runs) if labels is None else list(labels)
        a, b = _units(runs, claim.a, claim.rate, metric), _units(runs, claim.b, claim.rate, metric)
        for k in sorted(set(a) & set(b)) if labels else []:
            fa, fb = _label_f1(a[k][2], labels), _label_f1(b[k][2], labels)
            if fa is not None and fb is not None:
                diffs.append(fa - fb)
                flagged += not (a[k][1] and b[k][1])
        row["labels"] = labels
    if not diffs:
        return {**row, "diff": None, "low": None, "high": None, "n": 0, "flagged": 0,
                "verdict": "untested"}  # fmt: skip
    mean, low, high = interval(diffs)
    # Runs that did not learn say nothing about a method's claim, whatever the interval.
    found = "untrusted" if flagged == len(diffs) else verdict(low, high, claim.sign)
    return {**row, "diff": mean, "low": low, "high": high, "n": len(diffs), "flagged": flagged,
            "verdict": found}  # fmt: skip


def claim_rows(
    runs_by_variant: Mapping[str, Sequence[Mapping[str, Any]]], variants: Sequence[str],
    claims: Sequence[Claim], metric: str, source: str, dataset: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every claim under every variant (default first). The weak labels are chosen once, from
    the default's centralised runs, so that every variant is read on the same labels."""
    labels = weak_labels(runs_by_variant.get("default", []))
    ordered = ["default", *[v for v in variants if v != "default"]]
    return [
        {"dataset": dataset, "variant": v, "metric": metric,
         **evaluate(c, runs_by_variant[v], metric, source, labels)}
        for v in ordered
        if v in runs_by_variant
        for c in claims
    ]  # fmt: skip


# --- the three formats ---------------------------------------------------------------------------

COLUMNS = ["dataset", "variant", "metric", "claim", "text", "rate", "paper", "a", "b", "diff",
           "low", "high", "n", "flagged", "verdict"]  # fmt: skip


def claims_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else f"{r[c]:.4f}" if isinstance(r[c], float) else r[c]
                         for c in COLUMNS])  # fmt: skip
    return handle.getvalue()


def _num(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "--"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _ci(r: Mapping[str, Any]) -> str:
    if r["diff"] is None:
        return "--"
    if r["low"] is None:
        return f"{_num(r['diff'])} (one run)"
    return f"{_num(r['diff'])} [{_num(r['low'])}, {_num(r['high'])}]"


def _rate(r: Mapping[str, Any]) -> str:
    return "Table 1's" if r["rate"] is None else f"{100 * r['rate']:g} %"


def _verdict(r: Mapping[str, Any]) -> str:
    return r["verdict"] + ("†" if r["flagged"] else "")


def tally(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}


def _first(rows: Sequence[Mapping[str, Any]]) -> str:
    """The column of the claims' first sides: ModalityMirror, unless a claim of another
    paper's (FSSUAVL > FASSL) is among them."""
    return "ModalityMirror" if all(r["claim"].startswith("mm_") for r in rows) else "method"


def claims_markdown(rows: Sequence[Mapping[str, Any]], experiment: str) -> str:
    if not rows:
        return (f"# The paper's claims, tested: {experiment}\n\nNo claim of the paper can be "
                "tested on this grid: it has no ModalityMirror runs.\n")  # fmt: skip
    lines = [
        f"# The paper's claims, tested: {experiment}",
        "",
        "Each claim is a paired difference over the (fold, seed) runs both sides have, in "
        "points of the dataset's Table 1 metric (slopes: points per +10 % of video-missing "
        "rate), with a Student-t 95 % interval. Supported: the interval lies on the paper's "
        "side of zero; contradicted: on the other side; inconclusive: it holds zero (or there "
        "are fewer than two runs). Paper: the paper's Table 1 value (UCF101's for datasets "
        "that are not the paper's; slopes over its Table 1 rates, as ours). Untested: no "
        "paired runs (a variant that does not run the rate). † some of the paired runs failed "
        "the learning-health check (runs.csv); untrusted: all of them did, so the difference "
        "says nothing about the claim. The intervals treat the (fold, seed) runs as "
        "independent, though seeds share a fold's test split (and its partition, where "
        "partition.seed is fixed), and no correction is made for testing many claims: read a "
        "verdict whose interval barely clears zero as weak.",
    ]
    if any(r["claim"].startswith("fssuavl_") for r in rows):
        lines[-1] += (" FSSUAVL > FASSL is FSSUAVL's claim, not ModalityMirror's: its paper value "
                      "is the mean linear-probe gain of FSSUAVL's Table 3.")  # fmt: skip
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        default = [r for r in mine if r["variant"] == "default"]
        counts = tally(default)
        lines += [
            "", f"## {dataset} ({mine[0]['metric']})", "",
            "Under the configuration: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n) + ".", "",
            f"| Claim | Rate | Paper | Ours: {_first(default)} | Ours: other | Difference [95 % CI] | Runs | Verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in default:
            lines.append(
                f"| {r['text']} | {_rate(r)} | {_num(r['paper'])} | {_num(r['a'], False)} | "
                f"{_num(r['b'], False)} | {_ci(r)} | {r['n']} | {_verdict(r)} |"
            )
        variants = [v for v in dict.fromkeys(r["variant"] for r in mine) if v != "default"]
        if variants:
            lines += ["", "### Under the variants", "",
                      "The difference [95 % CI] and verdict of each claim under each reported variant.", "",
                      "| Claim | Rate | " + " | ".join(["default", *variants]) + " |",
                      "|---|---|" + "---|" * (len(variants) + 1)]  # fmt: skip
            index = {(r["variant"], r["claim"]): r for r in mine}
            for r in default:
                cells = [index.get((v, r["claim"])) for v in ["default", *variants]]
                lines.append(f"| {r['text']} | {_rate(r)} | " + " | ".join(
                    f"{_ci(c)} {_verdict(c)}" if c else "--" for c in cells) + " |")  # fmt: skip
            lines += ["", "Verdicts per variant: " + "; ".join(
                f"{v}: " + ", ".join(f"{n} {k}" for k, n in tally([r for r in mine if r["variant"] == v]).items() if n)
                for v in ["default", *variants]) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return (
        text.replace("%", "\\%").replace("_", "\\_").replace(">", "$>$").replace("†", "$^\\dagger$")
    )


def claims_latex(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return (
            "% No claim of the paper can be tested on this grid (it has no ModalityMirror runs).\n"
        )
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    index = {(r["dataset"], r["variant"], r["claim"]): r for r in rows}
    lines = [
        "\\begin{table}[t]", "\\centering", "\\small",
        "\\caption{The paper's claims on our grid: paired difference [95\\% CI] and verdict "
        "(S supported, C contradicted, ? inconclusive, ! untrusted: every paired run includes one "
        "that failed the health check) under each variant.}",
        "\\begin{tabular}{ll" + "c" * (1 + len(variants)) + "}", "\\toprule",
        "Claim & Rate & Paper & " + " & ".join(_tex(v) for v in variants) + " \\\\", "\\midrule",
    ]  # fmt: skip
    mark = {
        "supported": "S",
        "contradicted": "C",
        "inconclusive": "?",
        "untested": "--",
        "untrusted": "!",
    }
    if any(r["claim"].startswith("fssuavl_") for r in rows):
        lines[-1] += (" FSSUAVL > FASSL is FSSUAVL's claim, not ModalityMirror's: its paper value "
                      "is the mean linear-probe gain of FSSUAVL's Table 3.")  # fmt: skip
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        lines.append(
            f"\\multicolumn{{{3 + len(variants)}}}{{l}}{{\\textit{{{_tex(dataset)}}}}} \\\\"
        )
        for r in (r for r in rows if r["dataset"] == dataset and r["variant"] == variants[0]):
            cells = []
            for v in variants:
                c = index.get((dataset, v, r["claim"]))
                cells.append(
                    _tex(f"{_ci(c)} {mark[c['verdict']]}" + ("†" if c["flagged"] else ""))
                    if c
                    else "--"
                )
            lines.append(
                latex_row([_tex(r["text"]), _tex(_rate(r)), _tex(_num(r["paper"])), *cells])
            )
    lines += LATEX_END
    return "\n".join(lines) + "\n"
