"""Every file the workflow makes: one pattern each, used by the rules' `output:`, by the planner
and by the code that writes and reads the files, so that renaming an output is one edit here.
No path pattern or file name of these outputs is written anywhere else (tests/test_paths.py).

Patterns use Snakemake's wildcard syntax. `{data}` is the configured data folder: the rules
fill it (`fill(pattern, data=DATA)`) and leave the other wildcards to Snakemake; the planner
fills every field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# --- raw data and features -----------------------------------------------------------------

RAW = "{data}/raw/{dataset}"
DOWNLOADS = "{data}/downloads/{dataset}"
FEATURES_ROOT = "{data}/features"  # DVC tracks each dataset's folder as <dataset>.dvc here
FEATURES = FEATURES_ROOT + "/{dataset}"
FEATURE = FEATURES + "/{name}"
MANIFEST = "manifest.tsv"
FRAMES = "frames.npy"
FBANK = "fbank.npy"
NORM_STATS = "norm_stats.json"
VIDEO_FEATURES = (MANIFEST, FRAMES, FBANK, NORM_STATS)  # what extraction writes
REHEARSAL_FEATURES = (MANIFEST, NORM_STATS)  # the rehearsal writes embeddings instead

# --- frozen-mode embeddings ----------------------------------------------------------------

AUDIO_EMBEDDING = "{data}/embeddings/{dataset}/{variant}/fold{fold}/audio_{backbone}.npy"
VISUAL_EMBEDDING = "{data}/embeddings/{dataset}/{variant}/visual_{backbone}.npy"
PROVENANCE_SUFFIX = ".json"  # beside each embedding: where and how it was made

# --- partitions ----------------------------------------------------------------------------

PARTITION = "results/{dataset}/partition/{variant}/fold{fold}_seed{seed}.json"
PARTITION_STATS_SUFFIX = "_stats.tsv"
PARTITION_HEATMAP_SUFFIX = "_heatmap.png"

# --- runs ------------------------------------------------------------------------------------

RUN = "results/{dataset}/runs/{variant}/fold{fold}/{method}/r{rate}/seed{seed}"
RATE_FREE_RUN = "results/{dataset}/runs/{variant}/fold{fold}/{method}/seed{seed}"
METRICS = "metrics.json"  # in a run's folder: the run record every report reads
MODEL = "model.pt"  # in a run's folder: its selected states, with a checksum
CHECKPOINTS = "checkpoints"  # in a run's folder, per config hash; removed when its job succeeds
CHECKPOINT = "{phase}.ckpt"
FINISHED = "done"  # a finished run's files, kept under its checkpoints until the job succeeds

# --- reports ---------------------------------------------------------------------------------

REPORT = "results/report/{experiment}"
TABLE_FORMATS = ("csv", "md", "tex")
FIGURE_FORMATS = ("pdf", "svg", "png")
TABLE1 = "table1"
FIGURE2 = "fig2_label_f1"
FIGURE3 = "fig3_missing_rate"
ABLATIONS = "ablations"
CLAIMS = "claims"  # the paper's claims, tested (report/claims.py)
PERSONALISED = "personalised"  # each client's model on its own label mix (report/personalised.py)
FIGURE3_VARIANTS = "fig3_variants"
RUNS_TABLE = "runs.csv"
IDENTITY = "experiment.json"  # what a report folder reports (its experiment and datasets)
CAPTION = "captions/{name}.rst"
CAPTIONS = ("table1", "fig2", "fig3")

_FIELD = re.compile(r"\{(\w+)\}")


def fill(pattern: str, **values: object) -> str:
    """`pattern` with the given fields filled and every other `{field}` kept (for Snakemake)."""
    return _FIELD.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], pattern)


def feature(data: str, dataset: str, name: str) -> str:
    return fill(FEATURE, data=data, dataset=dataset, name=name)


def feature_files(data: str, dataset: str, names: Iterable[str]) -> dict[str, str]:
    """stem -> path of each feature file (`manifest` -> .../manifest.tsv)."""
    return {n.split(".")[0]: feature(data, dataset, n) for n in names}


def provenance(embedding: str | Path) -> Path:
    return Path(embedding).with_suffix(PROVENANCE_SUFFIX)


def partition_companions(partition: str | Path) -> tuple[str, str]:
    """The statistics table and the heatmap written beside a partition file."""
    stem = str(partition).removesuffix(".json")
    return stem + PARTITION_STATS_SUFFIX, stem + PARTITION_HEATMAP_SUFFIX


def run_dir(dataset: str, variant: str, fold: int, method: str, rate: str | None, seed: int) -> str:
    """A run's folder; `rate` as its label (None: a rate-free method's run)."""
    fields = {"dataset": dataset, "variant": variant, "fold": fold, "method": method, "seed": seed}
    return fill(RUN, rate=rate, **fields) if rate is not None else fill(RATE_FREE_RUN, **fields)


def in_run(run: str | Path, name: str) -> str:
    return f"{run}/{name}"


def checkpoint_dir(run: str | Path, config_hash: str) -> Path:
    return Path(run) / CHECKPOINTS / config_hash


def report_dir(experiment: str) -> str:
    return fill(REPORT, experiment=experiment)


def report_files(report: str, variants: bool) -> dict[str, list[str]]:
    """Every file of a report folder, by kind (what the report rule declares and writes)."""
    files = {
        "table1": [f"{report}/{TABLE1}.{e}" for e in TABLE_FORMATS],
        "fig2": [f"{report}/{FIGURE2}.{e}" for e in FIGURE_FORMATS],
        "fig3": [f"{report}/{FIGURE3}.{e}" for e in FIGURE_FORMATS],
        "captions": [f"{report}/{fill(CAPTION, name=n)}" for n in CAPTIONS],
        "identity": [f"{report}/{IDENTITY}"],
        "claims": [f"{report}/{CLAIMS}.{e}" for e in TABLE_FORMATS],
        "personalised": [f"{report}/{PERSONALISED}.{e}" for e in TABLE_FORMATS],
    }
    if variants:
        files["ablations"] = [f"{report}/{ABLATIONS}.{e}" for e in TABLE_FORMATS]
        files["fig3_variants"] = [f"{report}/{FIGURE3_VARIANTS}.{e}" for e in FIGURE_FORMATS]
    return files


def figure_files(folder: str | Path, stem: str) -> list[Path]:
    return [Path(folder) / f"{stem}.{e}" for e in FIGURE_FORMATS]
