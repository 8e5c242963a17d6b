"""What the experiment's reports read and write, and every file `all` asks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avfl import paths
from avfl.errors import UserError
from avfl.plan.runs import Grid
from avfl.plan.variants import Variants


class Targets:
    def __init__(self, variants: Variants, grid: Grid):
        self.v = variants
        self.grid = grid
        self.name = grid.experiment["name"]

    def report_dir(self) -> str:
        return paths.report_dir(self.name)

    def report_files(self) -> dict[str, list[str]]:
        ablations = len(self.v.reported) > 1 or bool(self.grid.ablation_methods)
        return paths.report_files(self.report_dir(), variants=ablations)

    def report_runs(self) -> list[str]:
        """Every metrics.json the experiment's reports read."""
        return sorted(
            {
                r.metrics
                for d in self.grid.datasets
                for v in self.v.reported
                for r in self.grid.reported_runs(d, v)
            }
        )

    def report_identity(self) -> dict[str, Any]:
        """What an experiment's report folder holds: its name and datasets (where their data
        comes from). Another configuration with other datasets must not write over it."""
        return {
            "experiment": self.name,
            "datasets": {
                d: {
                    "source": self.v.dataset(d)["source"],
                    "source_dir": self.v.dataset(d).get("source_dir"),
                }
                for d in self.grid.datasets
            },
        }

    def check_report_folder(self, root: str | Path = ".") -> None:
        """Refuse, before any job runs, to write this configuration's report over another's:
        a config that sets other datasets but keeps the experiment name of the one it overlays
        (an overlay with `source_dir`, say) would replace that report and invalidate it."""
        marker = Path(root) / self.report_dir() / paths.IDENTITY
        if not marker.exists():
            return
        try:
            found = json.loads(marker.read_text())
        except (OSError, ValueError):
            return  # a damaged marker: the report rule rewrites it
        if found.get("datasets") == self.report_identity()["datasets"]:
            return
        theirs = ", ".join(sorted(found.get("datasets", {}))) or "unknown datasets"
        raise UserError(
            f"{self.report_dir()}/ holds the report of experiment '{self.name}' on {theirs}, and "
            f"this configuration reports {', '.join(self.grid.datasets)}: give it its own folder with "
            f"experiment.name in your config file (experiment: {{name: <a new name>}}), or delete "
            f"{self.report_dir()}/ to replace that report"
        )

    def report_settings(self) -> str:
        exp, grid = self.grid.experiment, self.grid
        shown = grid.methods + grid.references + grid.ablation_methods
        changing = grid.methods + grid.ablation_methods
        return json.dumps(
            {
                "identity": self.report_identity(),
                "datasets": {d: self.v.dataset(d)["report_metric"] for d in grid.datasets},
                "table1_rates": exp["table1_rates"], "figure2_rate": exp["figure2_rate"],
                "figure3_rates": exp["figure3_rates"], "methods": grid.methods,
                "references": grid.references, "ablation_methods": grid.ablation_methods, "variants": self.v.reported,
                "report_variants": exp["report_variants"],
                "changed": {d: self.v.changed_methods(d, changing) for d in grid.datasets},
                "sources": {
                    d: {v: {m: self.v.run_variant(d, v, m) for m in shown} for v in self.v.reported}
                    for d in grid.datasets
                },
            },
            sort_keys=True,
        )  # fmt: skip

    def partition_targets(self) -> list[str]:
        return sorted({r.partition for r in self.grid.all_runs})

    def embedding_targets(self) -> list[str]:
        found = set()
        for run in self.grid.all_runs:
            if self.v.frozen(run.variant):
                found |= set(self.v.embedding_files(run.dataset, run.variant, run.fold).values())
        return sorted(found)

    def all_targets(self) -> list[str]:
        targets = []
        for name in self.grid.datasets:
            targets += list(self.v.feature_files(name).values())
        targets += self.partition_targets() + self.embedding_targets() + self.report_runs()
        targets.append(f"{self.report_dir()}/{paths.RUNS_TABLE}")
        targets += [f for files in self.report_files().values() for f in files]
        return sorted(set(targets))
