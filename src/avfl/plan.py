"""The experiment's plan: every file the workflow makes, and which job makes it.

Torch-free: Snakemake builds the DAG from this when it parses the Snakefile. Everything the
rules need is computed here from the validated config, so the rules stay thin and the logic
is tested like any other module.

Variants (ablations) and reuse: each variant is the config with an overlay. A method's run
is identified by its *effective settings* (its own block, the shared federated block with
its overrides, model, partition, the dataset's extraction, and the effective settings of the
methods it consumes). Runs with the same effective settings are the same run: they are
trained once, under the first variant (in config order, `default` first) that needs them,
and every other variant reads them from there. Partitions and embeddings are shared the same
way, by their own settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avfl.config import stable_hash, variant_configs
from avfl.errors import UserError
from avfl.methods import get_method, methods

VIDEO_FEATURES = ("manifest.tsv", "frames.npy", "fbank.npy", "norm_stats.json")
REHEARSAL_FEATURES = ("manifest.tsv", "norm_stats.json")
PARAMETER_FREE = {"fbank_stats", "color_stats"}
REPORT_TABLES = ("csv", "md", "tex")
FIGURE_FORMATS = ("pdf", "svg", "png")


def _memo(fn):
    """Per-instance memoisation of a method (the plan is computed once per workflow parse)."""

    @functools.wraps(fn)
    def wrapper(self, *args):
        cache = self.__dict__.setdefault("_memo", {})
        key = (fn.__name__, args)
        if key not in cache:
            cache[key] = fn(self, *args)
        return cache[key]

    return wrapper


def needs_gpu(device: str, backbones: list[str]) -> bool:
    """A job asks for a GPU (its rule's `gpu` resource) under `device: cuda`, and under `auto`
    where a backbone has parameters: parameter-free backbones leave tiny heads to train, which
    are launch-bound and as fast on a CPU core. `avfl.device` then computes exactly where the
    rule asked: a GPU job that cannot use its GPU fails instead of falling back to the CPU."""
    if device == "cpu":
        return False
    return device == "cuda" or any(b not in PARAMETER_FREE for b in backbones)


def rate_label(rate: float) -> str:
    return f"{float(rate):g}"


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


@dataclass(frozen=True)
class Run:
    """One training run: where it lives and what it reads."""

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
        return f"{self.dir}/metrics.json"

    @property
    def model(self) -> str:
        return f"{self.dir}/model.pt"


@dataclass
class TrainJob:
    """Runs of one method and settings on one fold, trained together by one rule."""

    name: str
    dataset: str
    variant: str
    fold: int
    method: str
    settings: dict[str, Any]
    config_hash: str
    runs: list[Run]
    features: str
    embeddings: dict[str, str] | None
    consumed_hashes: dict[str, str]
    health: dict[str, Any]
    gpu: bool
    inputs: list[str] = field(default_factory=list)
    priority: int = 0  # Snakemake's: see Plan.jobs

    @property
    def cost(self) -> float:
        """Estimated time in units of a MultiFL run's round: runs x rounds x the method's cost."""
        return len(self.runs) * self.settings["federated"]["rounds"] * get_method(self.method).cost

    @property
    def group(self) -> str | None:
        """The rule's Snakemake group. CPU jobs that depend on each other (a seed's methods
        wait for its centralised reference; ModalityMirror for MultiFL) run as one group job
        on a cluster, so that short jobs share one allocation. GPU jobs are never grouped: a
        group job asks for the sum of its side-by-side jobs' GPUs (six for a seed of the
        paper's grid, more than a partition allows), and a GPU job is long enough that its
        own allocation costs little."""
        return None if self.gpu else "train"

    def spec(self) -> str:
        """The job's JSON for `avfl train --job` (what the rule's params carry)."""
        runs = [
            {
                "rate": r.rate, "seed": r.seed, "out": r.dir, "partition": r.partition,
                "consumes": dict(r.consumes), "reference": r.reference,
            }
            for r in self.runs
        ]  # fmt: skip
        return json.dumps(
            {
                "dataset": self.dataset, "variant": self.variant, "fold": self.fold,
                "method": self.method, "settings": self.settings, "config_hash": self.config_hash,
                "features": self.features, "embeddings": self.embeddings,
                "consumed_hashes": self.consumed_hashes, "health": self.health, "runs": runs,
                "gpu": self.gpu,
            },
            sort_keys=True,
        )  # fmt: skip


class Plan:
    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.data = config["data_dir"]
        self.experiment = config["experiment"]
        self.name = self.experiment["name"]
        self.variants = variant_configs(config)
        self.datasets = config["run_datasets"]

    # --- what is reported --------------------------------------------------------------

    @functools.cached_property
    def methods(self) -> list[str]:
        return self.experiment["methods"] or methods("method")

    @functools.cached_property
    def references(self) -> list[str]:
        return methods("reference")

    @functools.cached_property
    def rates(self) -> list[float]:
        exp = self.experiment
        rates = {rate_label(r) for r in exp["table1_rates"] + exp["figure3_rates"]}
        if {"modalitymirror", "harmony"} <= set(self.methods):
            rates.add(rate_label(exp["figure2_rate"]))
        return sorted((float(r) for r in rates), key=float)

    def dataset(self, name: str) -> dict[str, Any]:
        return self.config["datasets"][name]

    # --- shared settings and their canonical variants ------------------------------------

    def _canonical(self, key_of) -> dict[str, str]:
        """variant -> the first variant whose key_of(variant) is the same."""
        first: dict[str, str] = {}
        result = {}
        for name in self.variants:
            key = stable_hash(key_of(self.variants[name]))
            result[name] = first.setdefault(key, name)
        return result

    @_memo
    def partition_variant(self, variant: str) -> str:
        return self._canonical(lambda c: c["partition"])[variant]

    @_memo
    def embed_variant(self, variant: str) -> str:
        return self._canonical(
            lambda c: {
                **{m: c["model"][m] for m in ("audio", "visual")},
                "float32_precision": c["federated"]["float32_precision"],
            }
        )[variant]

    def partition_seed(self, variant: str, seed: int) -> int:
        pinned = self.variants[variant]["partition"]["seed"]
        return int(seed) if pinned is None else pinned

    def partition_file(self, dataset: str, variant: str, fold: int, seed: int) -> str:
        pv = self.partition_variant(variant)
        return f"results/{dataset}/partition/{pv}/fold{fold}_seed{self.partition_seed(variant, seed)}.json"

    def partition_settings(self, dataset: str, variant: str) -> str:
        return json.dumps(self.variants[variant]["partition"], sort_keys=True)

    def feature_files(self, dataset: str) -> dict[str, str]:
        names = (
            REHEARSAL_FEATURES if self.dataset(dataset)["source"] == "rehearsal" else VIDEO_FEATURES
        )
        return {n.split(".")[0]: f"{self.data}/features/{dataset}/{n}" for n in names}

    def frozen(self, variant: str) -> bool:
        return self.variants[variant]["model"]["mode"] == "frozen"

    def embedding_files(self, dataset: str, variant: str, fold: int) -> dict[str, str]:
        model = self.variants[variant]["model"]
        ev = self.embed_variant(variant)
        root = f"{self.data}/embeddings/{dataset}/{ev}"
        return {
            "audio": f"{root}/fold{fold}/audio_{model['audio']['backbone']}.npy",
            "visual": f"{root}/visual_{model['visual']['backbone']}.npy",
        }

    def embed_settings(self, dataset: str, variant: str, modality: str) -> str:
        cfg = self.variants[variant]
        fed = cfg["federated"]
        return json.dumps(
            {"spec": cfg["model"][modality], "extract": self.dataset(dataset)["extract"],
             "device": fed["device"], "float32_precision": fed["float32_precision"],
             "gpu": self.needs_gpu(variant, modality)},
            sort_keys=True,
        )  # fmt: skip

    def needs_gpu(self, variant: str, modality: str | None = None) -> bool:
        """Whether a variant's embed (one modality) or training jobs ask for a GPU."""
        cfg = self.variants[variant]
        modalities = [modality] if modality else ["audio", "visual"]
        return needs_gpu(
            cfg["federated"]["device"], [cfg["model"][m]["backbone"] for m in modalities]
        )

    # --- runs -------------------------------------------------------------------------------

    @_memo
    def effective(self, dataset: str, variant: str, method: str) -> dict[str, Any]:
        """Everything a run of `method` depends on, besides (fold, rate, seed)."""
        cfg = self.variants[variant]
        block = dict(cfg["methods"][method])
        overrides = block.pop("federated", {})
        spec = get_method(method)
        return {
            "model": cfg["model"],
            "federated": {**cfg["federated"], **overrides},
            "partition": cfg["partition"],
            "extract": self.dataset(dataset)["extract"],
            "method": block,
            "consumes": {c: self.config_hash(dataset, variant, c) for c in spec.requires(block)},
        }

    @_memo
    def config_hash(self, dataset: str, variant: str, method: str) -> str:
        return stable_hash(self.effective(dataset, variant, method))

    @_memo
    def run_variant(self, dataset: str, variant: str, method: str) -> str:
        own = self.config_hash(dataset, variant, method)
        for name in self.variants:
            if self.config_hash(dataset, name, method) == own:
                return name
        raise AssertionError("unreachable")

    def run(
        self, dataset: str, variant: str, fold: int, method: str, rate: float | None, seed: int
    ) -> Run:
        spec = get_method(method)
        rate = rate if spec.uses_rate else None
        rv = self.run_variant(dataset, variant, method)
        path = f"results/{dataset}/runs/{rv}/fold{fold}/{method}"
        path += f"/r{rate_label(rate)}/seed{seed}" if rate is not None else f"/seed{seed}"
        block = self.variants[variant]["methods"][method]
        consumes = tuple(
            (c, self.run(dataset, variant, fold, c, rate, seed).dir) for c in spec.requires(block)
        )
        reference = None
        if spec.role != "reference":
            reference = (
                self.run(dataset, variant, fold, self.references[0], None, seed).metrics
                if self.references
                else None
            )
        return Run(dataset, rv, fold, method, rate, seed, path,
                   self.partition_file(dataset, variant, fold, seed), consumes, reference)  # fmt: skip

    def variant_rates(self, variant: str) -> list[float]:
        """The rates a variant runs: the experiment's, or `variant_rates` for the non-default ones
        (the default variant keeps the experiment's grid, so its jobs stay those of the
        configuration it overlays and nothing of it reruns)."""
        chosen = self.experiment["variant_rates"]
        if variant == "default" or chosen is None:
            return self.rates
        return sorted({float(rate_label(r)) for r in chosen})

    def reported_runs(self, dataset: str, variant: str) -> list[Run]:
        """The runs behind a variant's Table 1 and figures (methods and references)."""
        runs = []
        for fold in self.dataset(dataset)["folds"]:
            for seed in self.experiment["seeds"]:
                for method in self.methods + self.references:
                    rates = self.variant_rates(variant) if get_method(method).uses_rate else [None]
                    runs += [self.run(dataset, variant, fold, method, rate, seed) for rate in rates]
        return runs

    @functools.cached_property
    def all_runs(self) -> list[Run]:
        """Every run to train: the reported ones and what they consume, each once."""
        found: dict[str, Run] = {}
        pending = [
            r for d in self.datasets for v in self.variants for r in self.reported_runs(d, v)
        ]
        while pending:
            run = pending.pop()
            if run.dir in found:
                continue
            found[run.dir] = run
            for method, _ in run.consumes:
                pending.append(
                    self.run(run.dataset, run.variant, run.fold, method, run.rate, run.seed)
                )
        return sorted(found.values(), key=lambda r: r.dir)

    # --- jobs ---------------------------------------------------------------------------------

    @functools.cached_property
    def jobs(self) -> list[TrainJob]:
        groups: dict[tuple, list[Run]] = {}
        for run in self.all_runs:
            groups.setdefault((run.dataset, run.variant, run.fold, run.method), []).append(run)
        jobs = []
        for (dataset, variant, fold, method), runs in sorted(groups.items()):
            for chunk in self._chunks(runs):
                jobs.append(self._job(dataset, variant, fold, method, chunk))
        _set_priorities(jobs)
        return jobs

    def _chunks(self, runs: list[Run]) -> list[list[Run]]:
        """Whole seeds per job (see experiment.runs_per_job), runs ordered by (seed, rate)."""
        per_job = self.experiment["runs_per_job"]
        by_seed: dict[int, list[Run]] = {}
        for run in sorted(runs, key=lambda r: (r.seed, -1.0 if r.rate is None else r.rate)):
            by_seed.setdefault(run.seed, []).append(run)
        if per_job is None:
            return list(by_seed.values())
        if per_job == 0:
            return [sorted(runs, key=lambda r: (r.seed, -1.0 if r.rate is None else r.rate))]
        chunks: list[list[Run]] = []
        current: list[Run] = []
        for seed_runs in by_seed.values():
            if len(seed_runs) > per_job:
                if current:
                    chunks.append(current)
                    current = []
                chunks += [seed_runs[i : i + per_job] for i in range(0, len(seed_runs), per_job)]
            elif len(current) + len(seed_runs) > per_job:
                chunks.append(current)
                current = list(seed_runs)
            else:
                current += seed_runs
        if current:
            chunks.append(current)
        return chunks

    def _job(self, dataset: str, variant: str, fold: int, method: str, runs: list[Run]) -> TrainJob:
        seeds = sorted({r.seed for r in runs})
        label = f"s{seeds[0]}" + (f"-{seeds[-1]}" if len(seeds) > 1 else "")
        rated = [r.rate for r in runs if r.rate is not None]
        if rated and len(runs) < len(self.rates) * len(seeds):
            label += f"_r{rate_label(min(rated))}-{rate_label(max(rated))}"
        variant_part = "" if variant == "default" else f"_{variant}"
        full = f"train_{method}_{dataset}{variant_part}_f{fold}_{label}"
        if (
            len(full) > RULE_NAME_MAX
        ):  # the hash keeps it unique; the dataset is the least telling part
            full = f"train_{method}{variant_part}_f{fold}_{label}_{dataset}"
        name = short_rule_name(full.replace(".", "p").replace("-", "_"))
        frozen = self.frozen(variant)
        embeddings = self.embedding_files(dataset, variant, fold) if frozen else None
        features = self.feature_files(dataset)
        inputs = [features["manifest"]]
        inputs += list(embeddings.values()) if frozen else [features["fbank"], features["frames"]]
        for run in runs:
            inputs.append(run.partition)
            inputs += [f"{d}/model.pt" for _, d in run.consumes]
            if run.reference:
                inputs.append(run.reference)
        spec = get_method(method)
        block = self.variants[variant]["methods"][method]
        return TrainJob(
            name=name, dataset=dataset, variant=variant, fold=fold, method=method,
            settings=self.effective(dataset, variant, method),
            config_hash=self.config_hash(dataset, variant, method), runs=runs,
            features=f"{self.data}/features/{dataset}", embeddings=embeddings,
            consumed_hashes={c: self.config_hash(dataset, variant, c) for c in spec.requires(block)},
            health=self.config["health"],
            gpu=needs_gpu(self.effective(dataset, variant, method)["federated"]["device"],
                          [self.variants[variant]["model"][m]["backbone"] for m in ("audio", "visual")]),
            inputs=sorted(set(inputs)),
        )  # fmt: skip

    # --- partitions, embeddings, reports ------------------------------------------------------

    @functools.cached_property
    def partition_targets(self) -> list[str]:
        return sorted({r.partition for r in self.all_runs})

    @functools.cached_property
    def embedding_targets(self) -> list[str]:
        found = set()
        for run in self.all_runs:
            if self.frozen(run.variant):
                found |= set(self.embedding_files(run.dataset, run.variant, run.fold).values())
        return sorted(found)

    def report_dir(self) -> str:
        return f"results/report/{self.name}"

    def report_runs(self) -> list[str]:
        """Every metrics.json the experiment's reports read."""
        return sorted(
            {
                r.metrics
                for d in self.datasets
                for v in self.variants
                for r in self.reported_runs(d, v)
            }
        )

    def report_identity(self) -> dict[str, Any]:
        """What an experiment's report folder holds: its name and datasets (where their data
        comes from). Another configuration with other datasets must not write over it."""
        return {
            "experiment": self.name,
            "datasets": {
                d: {
                    "source": self.dataset(d)["source"],
                    "source_dir": self.dataset(d).get("source_dir"),
                }
                for d in self.datasets
            },
        }

    def check_report_folder(self, root: str | Path = ".") -> None:
        """Refuse, before any job runs, to write this configuration's report over another's:
        a config that sets other datasets but keeps the experiment name of the one it overlays
        (an overlay with `source_dir`, say) would replace that report and invalidate it."""
        marker = Path(root) / self.report_dir() / "experiment.json"
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
            f"this configuration reports {', '.join(self.datasets)}: give it its own folder with "
            f"experiment.name in your config file (experiment: {{name: <a new name>}}), or delete "
            f"{self.report_dir()}/ to replace that report"
        )

    def report_settings(self) -> str:
        exp = self.experiment
        return json.dumps(
            {
                "identity": self.report_identity(),
                "datasets": {d: self.dataset(d)["report_metric"] for d in self.datasets},
                "table1_rates": exp["table1_rates"], "figure2_rate": exp["figure2_rate"],
                "figure3_rates": exp["figure3_rates"], "methods": self.methods,
                "references": self.references, "variants": list(self.variants),
                "report_variants": exp["report_variants"],
                "changed": {d: self.changed_methods(d) for d in self.datasets},
                "sources": {
                    d: {
                        v: {m: self.run_variant(d, v, m) for m in self.methods + self.references}
                        for v in self.variants
                    }
                    for d in self.datasets
                },
            },
            sort_keys=True,
        )  # fmt: skip

    def changed_methods(self, dataset: str) -> dict[str, list[str]]:
        """variant -> the methods whose runs it changes (trains under its own name)."""
        return {
            v: [m for m in self.methods if self.run_variant(dataset, v, m) == v]
            for v in self.variants
            if v != "default"
        }

    def report_files(self) -> dict[str, list[str]]:
        out = self.report_dir()
        files = {
            "table1": [f"{out}/table1.{e}" for e in REPORT_TABLES],
            "fig2": [f"{out}/fig2_label_f1.{e}" for e in FIGURE_FORMATS],
            "fig3": [f"{out}/fig3_missing_rate.{e}" for e in FIGURE_FORMATS],
            "captions": [f"{out}/captions/{name}.rst" for name in ("table1", "fig2", "fig3")],
            "identity": [f"{out}/experiment.json"],
        }
        if len(self.variants) > 1:
            files["ablations"] = [f"{out}/ablations.{e}" for e in REPORT_TABLES]
            files["fig3_variants"] = [f"{out}/fig3_variants.{e}" for e in FIGURE_FORMATS]
        return files

    def all_targets(self) -> list[str]:
        targets = []
        for name in self.datasets:
            targets += list(self.feature_files(name).values())
        targets += self.partition_targets + self.embedding_targets + self.report_runs()
        targets.append(f"{self.report_dir()}/runs.csv")
        targets += [f for files in self.report_files().values() for f in files]
        return sorted(set(targets))


def _set_priorities(jobs: list[TrainJob]) -> None:
    """Longest chain first: a job's priority grows with its own estimated cost plus that of the
    longest chain of jobs that wait for it (the critical path to the end of the grid).

    Why: Snakemake starts ready jobs by priority and otherwise in no useful order. On few
    cores it could start a fold's costliest job (BMSFed's) last and run it alone with the
    other cores idle (measured on the rehearsal: the grid_rehearsal_fold1 records). Only the order
    changes, never a result; priorities are 1-100, scaled to the grid's longest chain.
    """
    producer = {out: job for job in jobs for run in job.runs for out in (run.metrics, run.model)}
    waiting: dict[str, list[TrainJob]] = {job.name: [] for job in jobs}
    for job in jobs:
        for needed in {producer[i].name for i in job.inputs if i in producer}:
            waiting[needed].append(job)
    chain: dict[str, float] = {}

    def longest(job: TrainJob) -> float:
        if job.name not in chain:
            chain[job.name] = job.cost + max((longest(j) for j in waiting[job.name]), default=0.0)
        return chain[job.name]

    top = max((longest(job) for job in jobs), default=1.0)
    for job in jobs:
        job.priority = max(1, round(100 * chain[job.name] / top))
