"""The job contract between the planner and the trainer: one set of types, serialised in one
place, parsed strictly; and the plans of the shipped configs, pinned."""

from __future__ import annotations

import json

import pytest

from avfl.config import load_config
from avfl.jobspec import JobSpec, JobSpecError
from avfl.plan import Plan

from .conftest import REPO
from .plan_digests import GOLDEN, all_digests, shipped_configs


@pytest.mark.parametrize("name", list(shipped_configs()))
def test_every_job_of_every_shipped_config_round_trips(name):
    plan = Plan(load_config([REPO / "config/config.yaml", *shipped_configs()[name]]))
    assert plan.jobs
    for job in plan.jobs:
        text = job.spec.to_json()
        back = JobSpec.from_json(text)
        assert back == job.spec and back.to_json() == text


def _job_json() -> dict:
    plan = Plan(load_config([REPO / "config/config.yaml"]))
    return json.loads(plan.jobs[0].spec.to_json())


@pytest.mark.parametrize("key", ["config_hash", "gpu", "variant", "health", "embeddings"])
def test_a_missing_key_is_refused(key):
    raw = _job_json()
    del raw[key]
    with pytest.raises(JobSpecError, match=f"missing {key}"):
        JobSpec.from_json(json.dumps(raw))


def test_an_unknown_key_and_a_run_missing_its_reference_are_refused():
    raw = _job_json()
    raw["checkpoint_every"] = 3
    with pytest.raises(JobSpecError, match="unknown checkpoint_every"):
        JobSpec.from_json(json.dumps(raw))
    raw = _job_json()
    del raw["runs"][0]["reference"]
    with pytest.raises(JobSpecError, match=r"run 0's JSON .*missing reference"):
        JobSpec.from_json(json.dumps(raw))
    with pytest.raises(JobSpecError, match="not valid JSON"):
        JobSpec.from_json("{")


def test_the_plans_of_the_shipped_configs_are_the_pinned_ones():
    """Every training job's params, inputs and outputs, the targets and the report, embed and
    partition settings of every shipped config equal tests/golden/plans.json (regenerate it
    with `python -m tests.plan_digests --write` when a change is meant to move jobs)."""
    golden = json.loads(GOLDEN.read_text())
    found = all_digests()
    assert found.keys() == golden.keys()
    for name in golden:
        moved = sorted(k for k in set(golden[name]["jobs"]) | set(found[name]["jobs"])
                       if golden[name]["jobs"].get(k) != found[name]["jobs"].get(k))  # fmt: skip
        assert not moved, f"{name}: these jobs changed: {moved[:10]}"
        assert {k: v for k, v in found[name].items() if k != "jobs"} == {
            k: v for k, v in golden[name].items() if k != "jobs"
        }, name
