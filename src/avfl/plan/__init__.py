"""The experiment's plan: every file the workflow makes, and which job makes it.

Torch-free: Snakemake builds the DAG from this when it parses the Snakefile. Everything the
rules need is computed here from the validated config, so the rules stay thin and the logic
is tested like any other module. By concern:

- `variants`: each variant's configuration, the effective settings and config hash of a
  method's runs, the variant that trains them, and the shared inputs (partitions,
  features, embeddings) with their rules' settings;
- `runs`: the grid of reported runs and what they consume (`RunPaths`);
- `jobs`: runs chunked into training jobs, named and prioritised (`PlannedJob`, whose
  `JobSpec` is the rule's params);
- `targets`: what the reports read and write, and everything `all` asks for.

`Plan` composes them for the workflow.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from avfl.plan.jobs import RULE_NAME_MAX, PlannedJob, plan_jobs, short_rule_name
from avfl.plan.runs import Grid, RunPaths, rate_label
from avfl.plan.targets import Targets
from avfl.plan.variants import Variants, needs_gpu

__all__ = [
    "RULE_NAME_MAX",
    "Plan",
    "PlannedJob",
    "RunPaths",
    "needs_gpu",
    "rate_label",
    "short_rule_name",
]


class Plan:
    """The workflow's view of one validated configuration."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.configuration = Variants(config)
        self.grid = Grid(self.configuration)
        self.targets = Targets(self.configuration, self.grid)
        self.name = self.targets.name
        self.variants = self.configuration.variants
        self.datasets = self.grid.datasets

    @functools.cached_property
    def jobs(self) -> list[PlannedJob]:
        return plan_jobs(self.configuration, self.grid)

    # What the rules and the tests ask for, by where it lives.
    def __getattr__(self, name: str):
        for part in ("configuration", "grid", "targets"):
            owner = self.__dict__.get(part)
            if owner is not None and hasattr(type(owner), name):
                return getattr(owner, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def changed_methods(self, dataset: str) -> dict[str, list[str]]:
        return self.configuration.changed_methods(
            dataset, self.grid.methods + self.grid.ablation_methods
        )
