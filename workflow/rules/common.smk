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


def datasets_from(*sources):
    """Names of the configured datasets whose raw data comes from one of `sources`."""
    return [name for name, ds in DATASETS.items() if ds["source"] in sources]


def one_of(names):
    """A wildcard constraint that matches exactly these names (never empty)."""
    return "|".join(map(str, names)) if names else "(?!x)x"


for _name in RUN:
    _ds = DATASETS[_name]
    if _ds["source"] != "synthetic" and not _ds.get("source_dir"):
        raise WorkflowError(
            f"datasets.{_name}: automatic download of {_ds['source']} is not available in this "
            f"version; set datasets.{_name}.source_dir to a folder holding UCF-101/ and "
            f"ucfTrainTestlist/ (the layout the official archives unpack to)"
        )
    if _ds["source"] == "activitynet":
        raise WorkflowError(
            f"datasets.{_name}: ActivityNet acquisition and layout conversion are not available "
            f"in this version; run the synthetic or UCF101 configs"
        )


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


def all_targets():
    targets = []
    for name in RUN:
        targets += list(features(name).values())
        for fold in DATASETS[name]["folds"]:
            for seed in config["experiment"]["seeds"]:
                targets += list(partition_files(name, fold, seed).values())
    return sorted(set(targets))
