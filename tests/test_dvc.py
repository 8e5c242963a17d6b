"""DVC: push the raw data and features to a local remote, pull them into a fresh checkout,
and the workflow schedules no generation or extraction there."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, TINY_EXTRACT, VENV_BIN
from .helpers import scheduled, snakemake

SMALL = {
    "seed": 3, "n_classes": 4, "n_silent_classes": 1, "n_audio_twins": 0, "n_groups": 21, "clips_per_group": [1, 1],
    "duration_s": [0.8, 2.0], "frame_width": 64, "frame_height": 48, "fps": 10, "gop": 4, "n_corrupt": 0,
}  # fmt: skip


def run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-1500:]} {done.stderr[-1500:]}"
    return done


@pytest.mark.slow
def test_push_then_pull_into_a_fresh_checkout_needs_no_extraction(tmp_path: Path):
    origin, fresh, remote = tmp_path / "origin", tmp_path / "fresh", tmp_path / "remote"
    origin.mkdir()
    config = {
        "run_datasets": ["tiny"],
        "experiment": {
            "seeds": [0],
            "methods": ["harmony"],
            "table1_rates": [0.5],
            "figure3_rates": [],
            "figure2_rate": 0.5,
        },
        "federated": {"rounds": 1, "device": "cpu"},
        "partition": {"n_clients": 4, "alpha": 1.0},
        "datasets": {
            "tiny": {
                "source": "synthetic",
                "folds": [1],
                "synthetic": SMALL,
                "extract": TINY_EXTRACT,
            }
        },
    }
    (origin / "tiny.yaml").write_text(yaml.safe_dump(config))
    features = "data/features/tiny/manifest.tsv"
    built = snakemake(origin, features, "--configfile", str(origin / "tiny.yaml"))
    assert built.returncode == 0, built.stderr[-2000:]
    run(origin, f"{VENV_BIN}/dvc", "init", "--no-scm", "-q")
    run(origin, f"{VENV_BIN}/dvc", "remote", "add", "-d", "lab", str(remote))
    run(origin, f"{VENV_BIN}/dvc", "add", "-q", "data/raw/tiny", "data/features/tiny")
    run(origin, f"{VENV_BIN}/dvc", "push", "-q")

    # A fresh checkout holds what git carries: the DVC config, the .dvc files, the config.
    fresh.mkdir()
    shutil.copytree(origin / ".dvc", fresh / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    for name in ("data/raw/tiny.dvc", "data/features/tiny.dvc", "tiny.yaml"):
        (fresh / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(origin / name, fresh / name)
    before = snakemake(fresh, "all", "-n", "--configfile", str(fresh / "tiny.yaml"))
    assert "generate_synthetic" in scheduled(before)

    run(fresh, f"{VENV_BIN}/python", "-m", "avfl", "dvc-pull", "--", "--snakefile", str(REPO / "Snakefile"),
        "--configfile", str(fresh / "tiny.yaml"))  # fmt: skip
    assert (fresh / features).read_bytes() == (origin / features).read_bytes()
    after = snakemake(fresh, "all", "-n", "--configfile", str(fresh / "tiny.yaml"))
    assert after.returncode == 0, after.stderr[-2000:]
    jobs = scheduled(after)
    assert "generate_synthetic" not in jobs and "extract_features" not in jobs
    assert "partition" in jobs  # what was not pulled still runs
