"""The learning-health guard: a run that learned nothing must never pass as a result.

Checks on a finished run's reported models (the audio model, and the audio-visual model
where there is one), against the centralised reference of the same fold and seed when it
exists:

- `near_chance`: test or dev top-1 within `near_chance_fraction` of the gap between chance
  and the reference (chance = the larger of 1/K and the majority class's share), while the
  reference is well above chance; without a reference, below 1.5 x chance;
- `one_class`: one class takes at least `one_class_share` of the test predictions and at
  least twice its true share;
- `loss`: the training loss is not finite, or its last recorded value exceeds its first by
  more than `loss_growth` (relative), in any phase.

Findings go to the run's log as warnings, into metrics.json (`health`), and the reports mark
the affected cells; `health.fatal: true` makes a finding fail the job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CHECKED_MODELS = ("audio", "av", "visual")
DEFAULTS = {"fatal": False, "near_chance_fraction": 0.1, "one_class_share": 0.5, "loss_growth": 0.1}


def chance_level(confusion: Sequence[Sequence[int]]) -> float:
    """max(1/K, share of the most frequent true class) over the classes present."""
    totals = [sum(row) for row in confusion]
    n = sum(totals)
    present = sum(1 for t in totals if t > 0)
    if n == 0 or present == 0:
        return 0.0
    return max(1.0 / present, max(totals) / n)


def _dev_top1(record: Mapping[str, Any], model: str) -> float | None:
    """The best dev top-1 of `model` over the run's phases, if recorded (the selected state's
    score where models are selected on top-1)."""
    key = f"dev_{model}_top1"
    values = [
        p[key]
        for curve in record["dev_curve"].values()
        for p in curve
        if key in p and not math.isnan(p[key])
    ]
    return max(values) if values else None


def check_model(
    name: str,
    test: Mapping[str, Any],
    dev_top1: float | None,
    reference_top1: float | None,
    settings: Mapping[str, Any],
) -> list[dict[str, str]]:
    findings = []
    chance = chance_level(test["confusion"])
    top1 = test["top1"]
    if reference_top1 is not None and reference_top1 >= 2 * chance:
        threshold = chance + settings["near_chance_fraction"] * (reference_top1 - chance)
        basis = f"the centralised reference reaches {reference_top1:.3f}"
    else:
        threshold = 1.5 * chance
        basis = "no centralised reference well above chance to compare with"
    for split, value in (("test", top1), ("dev", dev_top1)):
        if value is not None and not math.isnan(value) and value <= threshold:
            findings.append({
                "check": "near_chance", "model": name,
                "message": f"{name} model {split} top-1 {value:.3f} is near chance ({chance:.3f}; threshold {threshold:.3f}); {basis}",
            })  # fmt: skip
    confusion = test["confusion"]
    n = sum(map(sum, confusion))
    if n:
        predicted = [sum(row[j] for row in confusion) for j in range(len(confusion))]
        top = max(range(len(predicted)), key=lambda j: predicted[j])
        share, true_share = predicted[top] / n, sum(confusion[top]) / n
        if share >= settings["one_class_share"] and share >= 2 * true_share:
            findings.append({
                "check": "one_class", "model": name,
                "message": f"{name} model predicts class {top} for {share:.0%} of the test clips (its true share: {true_share:.0%})",
            })  # fmt: skip
    return findings


def check_losses(
    dev_curve: Mapping[str, Sequence[Mapping[str, float]]], settings: Mapping[str, Any],
    growth: bool = True,
) -> list[dict[str, str]]:  # fmt: skip
    findings = []
    for phase, curve in dev_curve.items():
        losses = [p["train_loss"] for p in curve if "train_loss" in p]
        if not losses:
            continue
        if any(not math.isfinite(v) for v in losses):
            findings.append(
                {
                    "check": "loss",
                    "model": phase,
                    "message": f"phase {phase}: training loss is not finite",
                }
            )
        elif (
            growth
            and losses[-1] > losses[0] * (1 + settings["loss_growth"])
            and losses[-1] - losses[0] > 1e-6
        ):
            findings.append({
                "check": "loss", "model": phase,
                "message": f"phase {phase}: training loss grew from {losses[0]:.4f} to {losses[-1]:.4f}",
            })  # fmt: skip
    return findings


def check_run(
    record: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    objective_drifts: bool = False,
) -> dict[str, Any]:
    """The `health` entry of a run record (`objective_drifts`: the method's loss may grow by
    design, so only a non-finite loss is a finding)."""
    settings = {**DEFAULTS, **settings}
    models = {"audio": record["test"], **record["test_by_model"]}
    findings = []
    for name, test in models.items():
        if name not in CHECKED_MODELS:
            continue  # extra evaluations (probes, alternative classifiers) are not the run's models
        ref_top1 = None
        if reference is not None:
            ref_models = {"audio": reference["test"], **reference["test_by_model"]}
            if name in ref_models:
                ref_top1 = ref_models[name]["top1"]
        findings += check_model(name, test, _dev_top1(record, name), ref_top1, settings)
    findings += check_losses(record.get("dev_curve", {}), settings, growth=not objective_drifts)
    return {
        "ok": not findings,
        "findings": findings,
        "reference": None if reference is None else reference.get("config_hash"),
    }
