"""Shared fixtures: a tiny embedded dataset, generated once per test session."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest

from avfl.config import validate_config
from avfl.data import extract, synthetic

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)

TINY_SYNTHETIC = {
    "seed": 7,
    "n_classes": 5,
    "n_silent_classes": 1,
    "n_audio_twins": 1,
    "n_groups": 21,
    "clips_per_group": [2, 2],
    "duration_s": [0.8, 6.0],
    "frame_width": 64,
    "frame_height": 48,
    "fps": 10,
    "gop": 4,
    "sample_rates": [8000, 22050, 48000],
    "channels": [1, 2],
    "snr_db": [0.0, 10.0],
    "avi_fraction": 0.3,
    "n_corrupt": 2,
}
TINY_EXTRACT = {"frame_size": 32, "target_frames": 256, "num_mel_bins": 64}


def tiny_config() -> dict:
    """A complete, validated config for the tiny dataset (as the workflow would see it)."""
    return validate_config(
        {
            "run_datasets": ["tiny"],
            "datasets": {
                "tiny": {
                    "source": "synthetic",
                    "synthetic": copy.deepcopy(TINY_SYNTHETIC),
                    "extract": copy.deepcopy(TINY_EXTRACT),
                }
            },
        }
    )


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    return tiny_config()["datasets"]["tiny"]


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_settings) -> Path:
    root = tmp_path_factory.mktemp("raw")
    synthetic.generate(tiny_settings["synthetic"], root, workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, tiny_raw, tiny_settings) -> Path:
    out = tmp_path_factory.mktemp("features")
    extract.extract_dataset(tiny_raw, out, tiny_settings["extract"], threads=2, progress=False)
    return out


@pytest.fixture()
def raw_copy(tmp_path, tiny_raw) -> Path:
    """A writable copy of the tiny dataset, for tests that damage files."""
    dest = tmp_path / "raw"
    shutil.copytree(tiny_raw, dest)
    return dest


# --- training fixtures ----------------------------------------------------------------------

TINY_FEDERATED = {
    "rounds": 20,
    "clients_per_round": 4,
    "local_epochs": 2,
    "batch_size": 8,
    "client_lr": 3e-3,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "eval_every": 5,
    "selection": "best_dev",
    "checkpoint_every": 5,
    "checkpoint_interval_s": 0,  # every multiple of checkpoint_every: tests kill runs mid-way
    "device": "cpu",
}


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory, tiny_features, tiny_settings):
    """Partition (8 clients) and frozen embeddings of the tiny dataset, fold 1, seed 0."""
    import json

    import numpy as np
    import torch

    from avfl import partition
    from avfl.data.manifest import read_manifest
    from avfl.embed import compute_embeddings

    root = tmp_path_factory.mktemp("training")
    config = tiny_config()
    rows = read_manifest(tiny_features / "manifest.tsv")
    settings = {**config["partition"], "n_clients": 8, "alpha": 1.0, "dev_fraction": 0.3}
    record = partition.build_partition(rows, dataset="tiny", fold=1, seed=0, settings=settings)
    (root / "partition.json").write_text(json.dumps(record))
    extract_cfg = tiny_settings["extract"]
    cpu = torch.device("cpu")
    np.save(
        root / "audio.npy",
        compute_embeddings(tiny_features, "audio", config["model"]["audio"], extract_cfg, 1, cpu),
    )
    np.save(
        root / "visual.npy",
        compute_embeddings(
            tiny_features, "visual", config["model"]["visual"], extract_cfg, None, cpu
        ),
    )
    return {"root": root, "config": config, "features": tiny_features, "extract": extract_cfg}


def tiny_job(
    training: dict, out, method: str, rates=(0.5,), seeds=(0,), *, federated=None, settings=None,
    model=None, consumes=None, reference=None, health=None,
):  # fmt: skip
    """A training JobSpec for the tiny dataset (fold 1): one run per (seed, rate), in `out/r<rate>_seed<seed>`.

    `consumes`: {method: folder} where that method's runs of the same (rate, seed) live
    (its `out` of an earlier tiny_job); `reference`: the centralised reference's folder.
    """
    from avfl.config import stable_hash
    from avfl.jobspec import JobSpec, RunSpec
    from avfl.methods import get_method

    config = training["config"]
    spec = get_method(method)
    block = {**config["methods"][spec.settings_of or method], **(settings or {})}
    block.pop("federated", None)
    effective = {
        "model": {**config["model"], **(model or {})},
        "federated": {**config["federated"], **TINY_FEDERATED, **(federated or {})},
        "partition": config["partition"],
        "extract": training["extract"],
        "selection_metric": "top1",
        "method": block,
        "evaluation": config["evaluation"],
        "consumes": {},
    }
    root = training["root"]
    runs = []
    for seed in seeds:
        for rate in rates if spec.uses_rate else [None]:
            folder = run_folder(rate, seed)
            runs.append(RunSpec(
                rate=rate, seed=seed, out=Path(out) / folder, partition=root / "partition.json",
                consumes={m: Path(d) / run_folder(rate if get_method(m).uses_rate else None, seed)
                          for m, d in (consumes or {}).items()},
                reference=Path(reference) / run_folder(None, seed) / "metrics.json" if reference else None,
            ))  # fmt: skip
    return JobSpec(
        dataset="tiny", variant="default", fold=1, method=method, settings=effective,
        config_hash=stable_hash(effective), features=training["features"],
        embeddings={"audio": root / "audio.npy", "visual": root / "visual.npy"},
        consumed_hashes={}, health=health or {}, gpu=False, runs=runs,
    )  # fmt: skip


def run_folder(rate, seed) -> str:
    return f"r{rate}_seed{seed}"


def quiet(_message: str) -> None:
    """A log function that drops messages."""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM cluster (2 fake GPUs, partitions cpu and gpu), stopped
    after the session; skipped with the reason where it cannot start (not root, no packages)."""
    from .slurm_cluster import ClusterError, cluster_unavailable_reason, start_cluster

    reason = cluster_unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"), gpus=2)
    except ClusterError as exc:
        pytest.skip(f"local SLURM cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()
