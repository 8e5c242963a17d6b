"""Digests of every shipped config's plan: what the workflow's rules receive (each training
job's params, inputs, outputs, group and priority; the targets; the report, embed and partition
settings). tests/test_jobspec.py compares them with tests/golden/plans.json, so that a change
meant to move no job (a refactor) cannot move one unnoticed. A change that is meant to move jobs
(a new setting, a new output) regenerates the file:

    python -m tests.plan_digests --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests/golden/plans.json"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def shipped_configs() -> dict[str, list[Path]]:
    from avfl.config import config_layers

    overlays = sorted(p for p in (REPO / "config").glob("*.yaml") if p.name != "config.yaml")
    return {"config": []} | {p.stem: config_layers(p) for p in overlays}


def plan_digests(files: list[Path]) -> dict:
    from avfl.config import load_config
    from avfl.plan import Plan

    plan = Plan(load_config([REPO / "config/config.yaml", *files]))
    jobs = {
        j.name: _digest({"params": json.loads(j.spec.to_json()), "inputs": j.inputs,
                         "metrics": [r.metrics for r in j.runs], "models": [r.model for r in j.runs],
                         "priority": j.priority, "group": j.group, "gpu": j.gpu})
        for j in plan.jobs
    }  # fmt: skip
    return {
        "jobs": jobs,
        "all_targets": _digest(plan.all_targets()),
        "report": _digest({"dir": plan.report_dir(), "files": plan.report_files(), "runs": plan.report_runs(),
                           "settings": json.loads(plan.report_settings())}),
        "embed": _digest({f"{d}/{v}/{m}": json.loads(plan.embed_settings(d, v, m))
                          for d in plan.datasets for v in plan.variants for m in ("audio", "visual")}),
        "partition": _digest({f"{d}/{v}": json.loads(plan.partition_settings(d, v))
                              for d in plan.datasets for v in plan.variants}),
    }  # fmt: skip


def all_digests() -> dict:
    return {name: plan_digests(files) for name, files in shipped_configs().items()}


if __name__ == "__main__":
    if "--write" in sys.argv:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(all_digests(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN.relative_to(REPO)}")
