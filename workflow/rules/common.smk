# Config validation, paths and input functions shared by every stage.

import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The rules call `python -m avfl`: make the package importable without installing it
# (also inside conda environments) by putting src/ on the path of every job.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, (SRC, os.environ.get("PYTHONPATH")))))
# `python` in a job is the interpreter running Snakemake (a virtual environment need not be
# activated); with --sdm conda, Snakemake puts the job's environment first on PATH instead.
os.environ.update(PATH=os.pathsep.join(filter(None, (os.path.dirname(sys.executable), os.environ.get("PATH")))))

from avfl.config import ConfigError, validate_config  # noqa: E402
from avfl.methods import REGISTRY  # noqa: E402

try:
    _validated = validate_config(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
config.clear()
config.update(_validated)

DATA = config["data_dir"]
RUN = config["run_datasets"]
DATASETS = config["datasets"]
ENV = "../../envs/avfl.yaml"


def datasets_from(*sources, copy=None):
    """Configured datasets whose raw data comes from one of `sources` (copy: has a source_dir or not)."""
    return [
        name
        for name, ds in DATASETS.items()
        if ds["source"] in sources and (copy is None or bool(ds.get("source_dir")) == copy)
    ]


def one_of(names):
    """A wildcard constraint that matches exactly these names (never empty)."""
    return "|".join(map(str, names)) if names else "(?!x)x"


def ucf101_sources(dataset):
    """JSON of the UCF101 archives to fetch: the pinned defaults unless the config overrides them."""
    from avfl.data.acquire import UCF101_SPLITS, UCF101_VIDEOS

    pinned = {
        part: {"name": r.name, "urls": list(r.urls), "size": r.size, "sha256": r.sha256}
        for part, r in (("splits", UCF101_SPLITS), ("videos", UCF101_VIDEOS))
    }
    overrides = {k: v for k, v in DATASETS[dataset]["download"].items() if k in pinned}
    return json.dumps({**pinned, **overrides}, sort_keys=True)


def activitynet_settings(dataset):
    ds = DATASETS[dataset]
    return json.dumps({**ds["download"], "source_dir": ds.get("source_dir")}, sort_keys=True)


def stage_settings(dataset, section):
    """JSON of one config block of a dataset: a rule's params, so it reruns when they change."""
    return json.dumps(DATASETS[dataset][section], sort_keys=True)


def features(dataset):
    """The extraction outputs of one dataset."""
    return {
        name.split(".")[0]: f"{DATA}/features/{dataset}/{name}"
        for name in ("manifest.tsv", "frames.npy", "fbank.npy", "norm_stats.json")
    }


def partition_seed(seed):
    """The partition a training seed uses: its own, or the pinned `partition.seed`."""
    pinned = config["partition"]["seed"]
    return int(seed) if pinned is None else pinned


def partition_files(dataset, fold, seed):
    stem = f"results/{dataset}/partition/fold{fold}_seed{partition_seed(seed)}"
    return {"json": f"{stem}.json", "stats": f"{stem}_stats.tsv", "heatmap": f"{stem}_heatmap.png"}


# Harmony's reported audio model does not depend on the missing rate: one run per seed.
RATE_FREE_METHODS = [name for name, cls in REGISTRY.items() if not cls().uses_rate]
RATE_METHODS = [name for name in REGISTRY if name not in RATE_FREE_METHODS]


def rate_label(rate):
    return f"{float(rate):g}"


def run_rates():
    """Every video-missing rate the reports need (Table 1 and Figure 3)."""
    exp = config["experiment"]
    rates = exp["table1_rates"] + exp["figure3_rates"] + [exp["figure2_rate"]]
    return sorted({rate_label(r) for r in rates}, key=float)


def run_dir(dataset, fold, method, seed, rate=None):
    if method in RATE_FREE_METHODS:
        return f"results/{dataset}/runs/fold{fold}/{method}/seed{seed}"
    return f"results/{dataset}/runs/fold{fold}/{method}/r{rate}/seed{seed}"


def embed_settings(dataset, modality):
    return json.dumps(
        {"spec": config["model"][modality], "extract": DATASETS[dataset]["extract"], "device": config["federated"]["device"]},
        sort_keys=True,
    )


def embedding_files(dataset, fold):
    model = config["model"]
    return (
        f"{DATA}/embeddings/{dataset}/fold{fold}/audio_{model['audio']['backbone']}.npy",
        f"{DATA}/embeddings/{dataset}/visual_{model['visual']['backbone']}.npy",
    )


def train_settings(dataset, method):
    """What a run depends on: a ModalityMirror knob changes only ModalityMirror's params."""
    return json.dumps(
        {
            "model": config["model"],
            "federated": config["federated"],
            "extract": DATASETS[dataset]["extract"],
            "method": config["methods"][method],
        },
        sort_keys=True,
    )


def train_inputs(wildcards):
    w = wildcards
    inputs = {
        "partition": partition_files(w.dataset, w.fold, w.seed)["json"],
        **features(w.dataset),
    }
    if config["model"]["mode"] == "frozen":
        inputs["audio_embeddings"], inputs["visual_embeddings"] = embedding_files(w.dataset, w.fold)
    required = REGISTRY[w.method]().requires
    if required:
        inputs["phase1"] = os.path.join(run_dir(w.dataset, w.fold, required, w.seed, w.get("rate")), "model.pt")
    return inputs


def train_extra_args(wildcards, input):
    args = f"--partition {input.partition} --features {os.path.dirname(input.manifest)}"
    if "audio_embeddings" in input.keys():
        args += f" --audio-embeddings {input.audio_embeddings} --visual-embeddings {input.visual_embeddings}"
    if "phase1" in input.keys():
        args += f" --phase1 {os.path.dirname(input.phase1)}"
    return args


def run_targets(dataset):
    exp = config["experiment"]
    targets = []
    for fold in DATASETS[dataset]["folds"]:
        for seed in exp["seeds"]:
            for method in exp["methods"]:
                rates = [None] if method in RATE_FREE_METHODS else run_rates()
                targets += [os.path.join(run_dir(dataset, fold, method, seed, rate), "metrics.json") for rate in rates]
    return targets


REPORT = "results/report"
REPORT_FILES = {
    "table1": [f"{REPORT}/table1.{ext}" for ext in ("csv", "md", "tex")],
    "fig2": [f"{REPORT}/fig2_label_f1.{ext}" for ext in ("pdf", "svg", "png")],
    "fig3": [f"{REPORT}/fig3_missing_rate.{ext}" for ext in ("pdf", "svg", "png")],
}


def report_settings():
    exp = config["experiment"]
    return json.dumps(
        {
            "datasets": {name: DATASETS[name]["report_metric"] for name in RUN},
            "table1_rates": exp["table1_rates"],
            "figure2_rate": exp["figure2_rate"],
            "figure3_rates": exp["figure3_rates"],
            "methods": exp["methods"],
        },
        sort_keys=True,
    )


def all_targets():
    targets = []
    for name in RUN:
        targets += list(features(name).values())
        for fold in DATASETS[name]["folds"]:
            for seed in config["experiment"]["seeds"]:
                targets += list(partition_files(name, fold, seed).values())
        targets += run_targets(name)
        targets.append(f"results/{name}/runs.csv")
    targets += [f for files in REPORT_FILES.values() for f in files]
    return sorted(set(targets))
