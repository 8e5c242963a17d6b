"""The claims report's rules on synthetic run records: a clear win is supported, a coin flip
inconclusive, a clear loss contradicted; slopes and the weak-label claim read what they say."""

import random

import pytest

from avfl.report import claims

CLASSES = ["a", "b", "c", "d", "e", "f", "g", "h"]


def record(method, rate, fold, seed, top1, f1=None, ok=True, absent=()):
    """A run record; the classes in `absent` have no test clips (a zero confusion row)."""
    confusion = [[0 if name in absent else 5] + [0] * (len(CLASSES) - 1) for name in CLASSES]
    return {
        "method": method, "rate": rate, "fold": fold, "seed": seed, "classes": CLASSES,
        "test": {"top1": top1, "top5": min(1.0, top1 + 0.2), "per_class_f1": f1 or [top1] * len(CLASSES),
                 "confusion": confusion},
        "health": {"ok": ok},
    }  # fmt: skip


def grid(mm, other, rates=(0.1, 0.3, 0.5), units=6, harmony=0.30, noise=0.0, seed=0):
    """Records of ModalityMirror (`mm(rate)`) and MultiFL (`other(rate)`) over `units` (fold,
    seed) pairs, plus rate-free Harmony, with Gaussian noise of `noise` (accuracy, 0-1)."""
    rng = random.Random(seed)
    runs = []
    for u in range(units):
        fold, s = u % 3 + 1, u // 3
        runs.append(record("harmony", None, fold, s, harmony + rng.gauss(0, noise)))
        for rate in rates:
            runs.append(record("modalitymirror", rate, fold, s, mm(rate) + rng.gauss(0, noise)))
            runs.append(record("multifl", rate, fold, s, other(rate) + rng.gauss(0, noise)))
    return runs


def claim(claim_id, **kw):
    (found,) = [c for c in claims.claims_for(["modalitymirror", "multifl", "harmony"], [0.1, 0.3, 0.5], 0.3)
                if c.id == claim_id]  # fmt: skip
    return found


def test_a_clear_win_is_supported_a_loss_contradicted():
    win = grid(lambda r: 0.45, lambda r: 0.30, noise=0.01)
    row = claims.evaluate(claim("mm_gt_multifl@0.1"), win, "top1", "ucf101")
    assert row["verdict"] == "supported" and row["n"] == 6
    assert row["diff"] == pytest.approx(15.0, abs=2.0) and row["low"] > 0
    assert row["paper"] == pytest.approx(41.77 - 28.08, abs=0.01)
    loss = grid(lambda r: 0.30, lambda r: 0.45, noise=0.01)
    assert (
        claims.evaluate(claim("mm_gt_multifl@0.1"), loss, "top1", "ucf101")["verdict"]
        == "contradicted"
    )


def test_a_coin_flip_is_inconclusive():
    flips = [
        claims.evaluate(claim("mm_gt_multifl@0.3"), grid(lambda r: 0.4, lambda r: 0.4, noise=0.05, seed=s),
                        "top1", "ucf101")["verdict"]
        for s in range(20)
    ]  # fmt: skip
    # Same means: the 95 % interval holds zero in about 19 of 20 draws.
    assert flips.count("inconclusive") >= 16
    # The same noise with a real 15-point gap is decided (nearly) every time: the test has power.
    wins = [
        claims.evaluate(claim("mm_gt_multifl@0.3"), grid(lambda r: 0.55, lambda r: 0.4, noise=0.05, seed=s),
                        "top1", "ucf101")["verdict"]
        for s in range(20)
    ]  # fmt: skip
    assert wins.count("supported") >= 18


def test_one_run_cannot_decide_and_unhealthy_runs_are_counted():
    runs = grid(lambda r: 0.6, lambda r: 0.2, units=1)
    row = claims.evaluate(claim("mm_gt_multifl@0.5"), runs, "top1", "ucf101")
    assert row["n"] == 1 and row["low"] is None and row["verdict"] == "inconclusive"
    runs = grid(lambda r: 0.6, lambda r: 0.2, noise=0.01)
    runs[2]["health"]["ok"] = False
    row = claims.evaluate(claim("mm_gt_multifl@0.1"), runs, "top1", "ucf101")
    assert row["flagged"] == 1 and row["verdict"] == "supported"
    # Where every paired run includes one that did not learn, no verdict is drawn.
    for r in runs:
        r["health"]["ok"] = r["method"] != "multifl"
    row = claims.evaluate(claim("mm_gt_multifl@0.1"), runs, "top1", "ucf101")
    assert row["flagged"] == row["n"] == 6 and row["verdict"] == "untrusted"


def test_rate_free_harmony_pairs_with_every_rate():
    runs = grid(lambda r: 0.5, lambda r: 0.2, noise=0.01, harmony=0.3)
    for rate in (0.1, 0.3, 0.5):
        row = claims.evaluate(claim(f"mm_gt_harmony@{rate:g}"), runs, "top1", "activitynet")
        assert row["verdict"] == "supported" and row["n"] == 6
    assert row["paper"] == pytest.approx(15.63 - 14.35, abs=0.01)  # ActivityNet's own values


def test_slopes_read_accuracy_and_margin_against_the_rate():
    falling = grid(lambda r: 0.5 - 0.2 * r, lambda r: 0.3, noise=0.005)
    row = claims.evaluate(claim("mm_slope"), falling, "top1", "ucf101")
    # -20 points per unit of rate = -2 points per +10 % of missing rate.
    assert row["verdict"] == "supported" and row["diff"] == pytest.approx(-2.0, abs=0.3)
    assert row["paper"] < 0  # the paper's Table 1 row falls too
    rising = grid(lambda r: 0.3 + 0.2 * r, lambda r: 0.3, noise=0.005)
    assert claims.evaluate(claim("mm_slope"), rising, "top1", "ucf101")["verdict"] == "contradicted"
    margin = claims.evaluate(claim("mm_margin_slope"), rising, "top1", "ucf101")
    assert margin["verdict"] == "contradicted"  # MultiFL is flat here: the margin grows
    assert margin["paper"] < 0  # the paper's margin over MultiFL shrinks with the rate
    # A variant that runs fewer rates than the claim's has no slope: untested, not a tie.
    two_rates = grid(lambda r: 0.5 - 0.2 * r, lambda r: 0.3, rates=(0.1, 0.5))
    row = claims.evaluate(claim("mm_slope"), two_rates, "top1", "ucf101")
    assert row["n"] == 0 and row["verdict"] == "untested"
    assert claims.tally([row])["inconclusive"] == 0


def test_weak_labels_are_the_centralised_audio_models_worst_and_the_gain_is_theirs():
    # The centralised audio model is worst on a and b: those are the weak quarter of 8 labels.
    # h has no test clips (its F1 is 0 by convention): it is not a weak label.
    runs = []
    for fold, seed in [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (3, 1)]:
        runs.append(record("centralised", None, fold, seed, 0.6, [0.1, 0.2] + [0.8] * 5 + [0.0],
                           absent=("h",)))  # fmt: skip
        runs.append(record("harmony", None, fold, seed, 0.4, [0.0, 0.1] + [0.6] * 6))
        # ModalityMirror gains on the weak labels and loses a little on the others.
        mm = [0.3 + 0.01 * seed, 0.35] + [0.55] * 6
        runs.append(record("modalitymirror", 0.3, fold, seed, 0.4, mm))
    assert claims.weak_labels(runs) == ["a", "b"]
    row = claims.evaluate(claim("mm_weak_labels"), runs, "top1", "ucf101")
    assert row["labels"] == ["a", "b"] and row["verdict"] == "supported"
    assert row["diff"] == pytest.approx(100 * (0.325 + 0.0025 - 0.05), abs=0.01)
    # Labels that a run's records do not hold leave that run out instead of failing.
    assert (
        claims.evaluate(claim("mm_weak_labels"), runs, "top1", "ucf101", ["zz"])["verdict"]
        == "untested"
    )


def test_the_report_repeats_each_verdict_under_each_variant_in_three_formats():
    by_variant = {
        "default": grid(lambda r: 0.45, lambda r: 0.30, noise=0.01),
        "equal_budget": grid(lambda r: 0.31, lambda r: 0.30, noise=0.03, seed=4),
    }
    tested = claims.claims_for(["modalitymirror", "multifl", "harmony"], [0.1, 0.3, 0.5], 0.3)
    rows = claims.claim_rows(
        by_variant, ["default", "equal_budget"], tested, "top1", "synthetic", "tiny"
    )
    assert {r["variant"] for r in rows} == {"default", "equal_budget"}
    assert len(rows) == 2 * len(tested)
    markdown = claims.claims_markdown(rows, "tiny")
    assert "### Under the variants" in markdown and "| default | equal_budget |" in markdown
    assert "supported" in markdown
    csv_text = claims.claims_csv(rows)
    assert csv_text.splitlines()[0].split(",") == claims.COLUMNS
    assert len(csv_text.splitlines()) == 1 + len(rows)
    latex = claims.claims_latex(rows)
    assert latex.count("\\\\") > len(tested) and "equal\\_budget" in latex
    # Without ModalityMirror there is nothing to test, and the files say so.
    assert claims.claims_for(["multifl", "harmony"], [0.1], 0.3) == []
    assert "No claim" in claims.claims_markdown([], "tiny") and claims.claims_latex([]).startswith(
        "%"
    )


def test_the_interval_is_students_t():
    mean, low, high = claims.interval([1.0, 2.0, 3.0])
    assert mean - low == pytest.approx(high - mean)
    # t(0.975, 2) = 4.303; sd = 1; half-width = 4.303 / sqrt(3).
    assert mean == 2.0 and high - mean == pytest.approx(4.3027 / 3**0.5, abs=1e-3)
    assert claims.verdict(0.1, 2.0, +1) == "supported"
    assert claims.verdict(-2.0, -0.1, +1) == "contradicted"
    assert claims.verdict(-2.0, -0.1, -1) == "supported"
    assert claims.verdict(-1.0, 1.0, -1) == "inconclusive"
