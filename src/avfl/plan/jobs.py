"""Training jobs: runs of one method and settings on one fold, chunked into jobs, named, and
prioritised. A job is one workflow rule; its `JobSpec` is the rule's params."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from avfl import paths
from avfl.jobspec import JobSpec, RunSpec
from avfl.methods import get_method
from avfl.plan.runs import Grid, RunPaths, rate_label
from avfl.plan.variants import Variants, needs_gpu

RULE_NAME_MAX = 46


def short_rule_name(name: str) -> str:
    """A training rule's name, at most RULE_NAME_MAX characters (a readable prefix and a hash).

    Cluster executors name a group job after its group and its first five rule names and use
    that name in file and log-folder names (the SLURM plugin: `group_<name>`): longer rule
    names pass the filesystem's 255-byte limit and the group job is never submitted."""
    if len(name) <= RULE_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: RULE_NAME_MAX - 9].rstrip('_')}_{digest}"


@dataclass
class PlannedJob:
    """A training job as the workflow sees it: its rule's name, inputs, outputs, group and
    priority, and the `JobSpec` its command receives."""

    name: str
    spec: JobSpec
    runs: list[RunPaths]
    inputs: list[str] = field(default_factory=list)
    priority: int = 0  # Snakemake's: see set_priorities

    @property
    def dataset(self) -> str:
        return self.spec.dataset

    @property
    def variant(self) -> str:
        return self.spec.variant

    @property
    def fold(self) -> int:
        return self.spec.fold

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def gpu(self) -> bool:
        return self.spec.gpu

    @property
    def cost(self) -> float:
        """Estimated time in units of a MultiFL run's round: runs x rounds x the method's cost."""
        rounds = self.spec.settings["federated"]["rounds"]
        return len(self.runs) * rounds * get_method(self.method).cost

    @property
    def group(self) -> str | None:
        """The rule's Snakemake group. CPU jobs that depend on each other (a seed's methods
        wait for its centralised reference; ModalityMirror for MultiFL) run as one group job
        on a cluster, so that short jobs share one allocation. GPU jobs are never grouped: a
        group job asks for the sum of its side-by-side jobs' GPUs (six for a seed of the
        paper's grid, more than a partition allows), and a GPU job is long enough that its
        own allocation costs little."""
        return None if self.gpu else "train"


def _seed_rate(run: RunPaths) -> tuple[int, float]:
    return (run.seed, -1.0 if run.rate is None else run.rate)


def chunks(runs: list[RunPaths], per_job: int | None) -> list[list[RunPaths]]:
    """Whole seeds per job (see experiment.runs_per_job), runs ordered by (seed, rate)."""
    ordered = sorted(runs, key=_seed_rate)
    if per_job == 0:
        return [ordered]
    by_seed: dict[int, list[RunPaths]] = {}
    for run in ordered:
        by_seed.setdefault(run.seed, []).append(run)
    if per_job is None:
        return list(by_seed.values())
    found: list[list[RunPaths]] = []
    current: list[RunPaths] = []
    for seed_runs in by_seed.values():
        if len(seed_runs) > per_job:
            if current:
                found.append(current)
                current = []
            found += [seed_runs[i : i + per_job] for i in range(0, len(seed_runs), per_job)]
        elif len(current) + len(seed_runs) > per_job:
            found.append(current)
            current = list(seed_runs)
        else:
            current += seed_runs
    if current:
        found.append(current)
    return found


def plan_jobs(variants: Variants, grid: Grid) -> list[PlannedJob]:
    """Every training job of the grid, prioritised."""
    groups: dict[tuple, list[RunPaths]] = {}
    for run in grid.all_runs:
        groups.setdefault((run.dataset, run.variant, run.fold, run.method), []).append(run)
    jobs = []
    for (dataset, variant, fold, method), runs in sorted(groups.items()):
        for chunk in chunks(runs, grid.experiment["runs_per_job"]):
            jobs.append(_job(variants, grid, dataset, variant, fold, method, chunk))
    set_priorities(jobs)
    return jobs


def _name(
    grid: Grid, dataset: str, variant: str, fold: int, method: str, runs: list[RunPaths]
) -> str:
    seeds = sorted({r.seed for r in runs})
    label = f"s{seeds[0]}" + (f"-{seeds[-1]}" if len(seeds) > 1 else "")
    rated = [r.rate for r in runs if r.rate is not None]
    if rated and len(runs) < len(grid.rates) * len(seeds):
        label += f"_r{rate_label(min(rated))}-{rate_label(max(rated))}"
    variant_part = "" if variant == "default" else f"_{variant}"
    full = f"train_{method}_{dataset}{variant_part}_f{fold}_{label}"
    if len(full) > RULE_NAME_MAX:  # the hash keeps it unique; the dataset is the least telling part
        full = f"train_{method}{variant_part}_f{fold}_{label}_{dataset}"
    return short_rule_name(full.replace(".", "p").replace("-", "_"))


def _job(variants: Variants, grid: Grid, dataset: str, variant: str, fold: int, method: str,
         runs: list[RunPaths]) -> PlannedJob:  # fmt: skip
    raw = get_method(method).raw_inputs  # trains its own backbone: reads the features
    frozen = variants.frozen(variant) and not raw
    embeddings = variants.embedding_files(dataset, variant, fold) if frozen else None
    features = variants.feature_files(dataset)
    inputs = [features["manifest"]]
    inputs += list(embeddings.values()) if frozen else [features["fbank"], features["frames"]]
    for run in runs:
        inputs.append(run.partition)
        inputs += [paths.in_run(d, paths.MODEL) for _, d in run.consumes]
        if run.reference:
            inputs.append(run.reference)
    block = variants.variants[variant]["methods"][method]
    settings = variants.effective(dataset, variant, method)
    backbones = [variants.variants[variant]["model"][m]["backbone"] for m in ("audio", "visual")]
    if raw:  # its backbone has parameters, whatever model.<modality>.backbone names
        backbones = ["trained"]
    spec = JobSpec(
        dataset=dataset, variant=variant, fold=fold, method=method, settings=settings,
        config_hash=variants.config_hash(dataset, variant, method),
        features=paths.fill(paths.FEATURES, data=variants.data, dataset=dataset), embeddings=embeddings,
        consumed_hashes={c: variants.config_hash(dataset, variants.consumed_variant(variant, method, c), c)
                         for c in get_method(method).requires(block)},
        health=variants.config["health"], gpu=needs_gpu(settings["federated"]["device"], backbones),
        runs=[RunSpec(rate=r.rate, seed=r.seed, out=r.dir, partition=r.partition,
                      consumes=dict(r.consumes), reference=r.reference) for r in runs],
    )  # fmt: skip
    return PlannedJob(
        _name(grid, dataset, variant, fold, method, runs), spec, runs, sorted(set(inputs))
    )


def set_priorities(jobs: list[PlannedJob]) -> None:
    """Longest chain first: a job's priority grows with its own estimated cost plus that of the
    longest chain of jobs that wait for it (the critical path to the end of the grid).

    Why: Snakemake starts ready jobs by priority and otherwise in no useful order. On few
    cores it could start a fold's costliest job (BMSFed's) last and run it alone with the
    other cores idle (measured on the rehearsal: the grid_rehearsal_fold1 records). Only the
    order changes, never a result; priorities are 1-100, scaled to the grid's longest chain.
    """
    producer = {out: job for job in jobs for run in job.runs for out in (run.metrics, run.model)}
    waiting: dict[str, list[PlannedJob]] = {job.name: [] for job in jobs}
    for job in jobs:
        for needed in {producer[i].name for i in job.inputs if i in producer}:
            waiting[needed].append(job)
    chain: dict[str, float] = {}

    def longest(job: PlannedJob) -> float:
        if job.name not in chain:
            chain[job.name] = job.cost + max((longest(j) for j in waiting[job.name]), default=0.0)
        return chain[job.name]

    top = max((longest(job) for job in jobs), default=1.0)
    for job in jobs:
        job.priority = max(1, round(100 * chain[job.name] / top))
