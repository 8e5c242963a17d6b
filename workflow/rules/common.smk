# Config validation and the experiment's plan (avfl.plan: every file and the job that makes it).
# Nothing here imports torch: parsing the workflow needs only the config and method metadata.

import copy
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
os.environ.update(
    PATH=os.pathsep.join(filter(None, (os.path.dirname(sys.executable), os.environ.get("PATH"))))
)

from avfl import paths  # noqa: E402
from avfl.config import validate_config  # noqa: E402
from avfl.errors import UserError  # noqa: E402
from avfl.plan import Plan  # noqa: E402

try:
    _validated = validate_config(config)
    PLAN = Plan(_validated)
    PLAN.check_report_folder()
except UserError as exc:
    raise WorkflowError(str(exc)) from None
config.clear()
config.update(copy.deepcopy(_validated))  # the plan keeps its own: the lines below change this one
# What ran, for the report's front page (workflow/report/workflow.rst): null means every
# registered method.
config["experiment"]["methods"] = PLAN.methods
# How GPU jobs share the GPUs (avfl/gpu.py): jobs inherit these, and no job's params carry
# them, so changing them reruns nothing.
os.environ.update(AVFL_GPU_JOBS_PER_DEVICE=str(config["gpu"]["jobs_per_device"]))
if config["gpu"]["lock_dir"]:
    os.environ.update(AVFL_GPU_LOCK_DIR=config["gpu"]["lock_dir"])

DATA = config["data_dir"]
RAW = paths.fill(paths.RAW, data=DATA)


def feature(name):
    """A feature file's pattern: {dataset} left to Snakemake."""
    return paths.fill(paths.FEATURE, data=DATA, name=name)


DATASETS = config["datasets"]
ENV = "../../envs/avfl.yaml"


def datasets_from(*sources, copy=None):
    """Configured datasets whose raw data comes from one of `sources` (copy: has a source_dir or not)."""
    return [
        name
        for name, ds in DATASETS.items()
        if ds["source"] in sources and (copy is None or bool(ds.get("source_dir")) == copy)
    ]


def ucf101_sources(dataset):
    """JSON of the UCF101 archives to fetch: the pinned defaults unless the config overrides them."""
    from avfl.data.acquire import UCF101_SPLITS, UCF101_VIDEOS

    pinned = {
        part: {"name": r.name, "urls": list(r.urls), "size": r.size, "sha256": r.sha256}
        for part, r in (("splits", UCF101_SPLITS), ("videos", UCF101_VIDEOS))
    }
    overrides = {k: v for k, v in DATASETS[dataset]["download"].items() if k in pinned}
    return json.dumps({**pinned, **overrides}, sort_keys=True)


def rehearsal_embeddings(dataset):
    """The frozen-mode embeddings the rehearsal generator writes (where the embed rules would)."""
    files = [PLAN.embedding_files(dataset, "default", fold) for fold in (1, 2, 3)]
    return sorted({f for group in files for f in group.values()})


def report_caption(name):
    """The caption the report rule writes from what the run holds (avfl/report/captions.py)."""
    return os.path.abspath(f"{PLAN.report_dir()}/{paths.fill(paths.CAPTION, name=name)}")


def one_of(names):
    """A wildcard constraint that matches exactly these names (never empty)."""
    return "|".join(map(str, names)) if names else "(?!x)x"


wildcard_constraints:
    dataset=one_of(DATASETS),
    variant=one_of(PLAN.variants),
    fold=r"\d+",
    seed=r"\d+",
