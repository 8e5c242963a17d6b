"""The grid: which runs the experiment reports, which runs those consume, and where each lives."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from avfl import paths
from avfl.methods import get_method, methods
from avfl.plan.variants import Variants


def rate_label(rate: float) -> str:
    return f"{float(rate):g}"


@dataclass(frozen=True)
class RunPaths:
    """One training run: what identifies it, where it lives and what it reads."""

    dataset: str
    variant: str  # the variant it is trained under (its canonical variant)
    fold: int
    method: str
    rate: float | None
    seed: int
    dir: str
    partition: str
    consumes: tuple[tuple[str, str], ...] = ()  # (method, run directory)
    reference: str | None = None  # the centralised reference's metrics.json

    @property
    def metrics(self) -> str:
        return paths.in_run(self.dir, paths.METRICS)

    @property
    def model(self) -> str:
        return paths.in_run(self.dir, paths.MODEL)


class Grid:
    """Methods x variants x datasets x folds x seeds x rates, and what each run consumes."""

    def __init__(self, variants: Variants):
        self.v = variants
        self.experiment = variants.config["experiment"]
        self.datasets = variants.config["run_datasets"]

    @functools.cached_property
    def methods(self) -> list[str]:
        named = self.experiment["methods"]
        if not named:
            return methods("method")
        return [m for m in named if get_method(m).role != "reference"]

    @functools.cached_property
    def ablation_methods(self) -> list[str]:
        """Methods run for the ablation table only (`experiment.ablation_methods`)."""
        return [m for m in self.experiment["ablation_methods"] or [] if m not in self.methods]

    @functools.cached_property
    def references(self) -> list[str]:
        """Every reference that is not opt-in (the first, centralised, is the health guard's),
        then the opt-in ones `experiment.methods` names."""
        named = self.experiment["methods"] or []
        chosen = [r for r in methods("reference", opt_in=True) if r in named]
        return methods("reference") + [r for r in chosen if r not in methods("reference")]

    @functools.cached_property
    def rates(self) -> list[float]:
        exp = self.experiment
        rates = {rate_label(r) for r in exp["table1_rates"] + exp["figure3_rates"]}
        if {"modalitymirror", "harmony"} <= set(self.methods):
            rates.add(rate_label(exp["figure2_rate"]))
        return sorted((float(r) for r in rates), key=float)

    def variant_rates(self, variant: str) -> list[float]:
        """The rates a variant runs: the experiment's, or `variant_rates` for the non-default ones
        (the default variant keeps the experiment's grid, so its jobs stay those of the
        configuration it overlays and nothing of it reruns)."""
        chosen = self.experiment["variant_rates"]
        if variant == "default" or chosen is None:
            return self.rates
        return sorted({float(rate_label(r)) for r in chosen})

    def run(self, dataset: str, variant: str, fold: int, method: str, rate: float | None,
            seed: int) -> RunPaths:  # fmt: skip
        spec = get_method(method)
        rate = rate if spec.uses_rate else None
        trained_under = self.v.run_variant(dataset, variant, method)
        where = paths.run_dir(dataset, trained_under, fold, method,
                              rate_label(rate) if rate is not None else None, seed)  # fmt: skip
        block = self.v.variants[variant]["methods"][method]
        consumes = tuple(
            (
                c,
                self.run(
                    dataset, self.v.consumed_variant(variant, method, c), fold, c, rate, seed
                ).dir,
            )
            for c in spec.requires(block)
        )
        reference = None
        if spec.role != "reference" and self.references:
            reference = self.run(dataset, variant, fold, self.references[0], None, seed).metrics
        return RunPaths(dataset, trained_under, fold, method, rate, seed, where,
                        self.v.partition_file(dataset, variant, fold, seed), consumes, reference)  # fmt: skip

    def reported_runs(self, dataset: str, variant: str) -> list[RunPaths]:
        """The runs behind a variant's Table 1 and figures (methods and references)."""
        runs = []
        for fold in self.v.dataset(dataset)["folds"]:
            for seed in self.experiment["seeds"]:
                for method in self.methods + self.references + self.ablation_methods:
                    rates = self.variant_rates(variant) if get_method(method).uses_rate else [None]
                    if method in self.ablation_methods and rates != [None]:
                        # At the rates of the ablation table (Table 1's), not Figure 3's.
                        table = {float(rate_label(r)) for r in self.experiment["table1_rates"]}
                        rates = [r for r in rates if r in table]
                    runs += [self.run(dataset, variant, fold, method, rate, seed) for rate in rates]
        return runs

    @functools.cached_property
    def all_runs(self) -> list[RunPaths]:
        """Every run to train: the reported ones and what they consume, each once."""
        found: dict[str, RunPaths] = {}
        pending = [
            r for d in self.datasets for v in self.v.reported for r in self.reported_runs(d, v)
        ]
        while pending:
            run = pending.pop()
            if run.dir in found:
                continue
            found[run.dir] = run
            for method, _ in run.consumes:
                where = self.v.consumed_variant(run.variant, run.method, method)
                pending.append(self.run(run.dataset, where, run.fold, method, run.rate, run.seed))
        return sorted(found.values(), key=lambda r: r.dir)
