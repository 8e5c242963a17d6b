"""The Snakemake workflow end to end on a tiny config, in a temporary working directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from avfl.data.manifest import read_manifest

from .conftest import REPO, TINY_EXTRACT, TINY_SYNTHETIC, VENV_BIN

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        [
            f"{VENV_BIN}/snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            "2",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def write_config(path: Path, **extract) -> Path:
    config = {
        "run_datasets": ["tiny"],
        "datasets": {
            "tiny": {
                "source": "synthetic",
                "synthetic": TINY_SYNTHETIC,
                "extract": {**TINY_EXTRACT, **extract},
            }
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def scheduled(result: subprocess.CompletedProcess) -> set[str]:
    """Rule names a dry run would execute (from its job-stats table)."""
    rules, in_table = set(), False
    for line in result.stdout.splitlines():
        if line.startswith("job "):
            in_table = True
        elif in_table and line.strip() and not line.startswith("-"):
            name = line.split()[0]
            if name == "total":
                break
            rules.add(name)
    return rules


def test_pipeline_runs_and_reruns_only_what_changed(tmp_path: Path):
    config = write_config(tmp_path / "tiny.yaml")
    run = snakemake(tmp_path, "all", "--configfile", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    features = tmp_path / "data/features/tiny"
    rows = read_manifest(features / "manifest.tsv")
    assert sum(r.status == "ok" for r in rows) > 50
    assert sum(r.status == "failed" for r in rows) == 2  # the deliberately broken clips
    assert "usable" in (tmp_path / "results/logs/tiny/extract.log").read_text()
    assert (tmp_path / "results/benchmarks/tiny/extract.tsv").exists()

    again = snakemake(tmp_path, "all", "-n", "--configfile", str(config))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # A new extraction setting reruns extraction, not the dataset generation.
    changed = write_config(tmp_path / "changed.yaml", frame_size=48)
    dry = snakemake(tmp_path, "all", "-n", "--configfile", str(changed))
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert scheduled(dry) == {"extract_features", "all"}


def test_bad_config_is_rejected_before_any_job(tmp_path: Path):
    bad = write_config(tmp_path / "bad.yaml", frame_size=2)
    run = snakemake(tmp_path, "all", "--configfile", str(bad))
    assert run.returncode != 0
    assert "datasets.tiny.extract.frame_size" in run.stderr + run.stdout
    assert not (tmp_path / "data").exists()


def test_real_dataset_without_source_dir_gets_a_clear_error(tmp_path: Path):
    run = snakemake(tmp_path, "all", "-n", "--configfile", str(REPO / "config/ucf101.yaml"))
    assert run.returncode != 0
    assert "datasets.ucf101.source_dir" in run.stderr + run.stdout


def test_ucf101_from_an_existing_copy(tmp_path: Path, tiny_raw: Path):
    config = {
        "run_datasets": ["ucf101"],
        "datasets": {"ucf101": {"source_dir": str(tiny_raw), "extract": TINY_EXTRACT}},
    }
    path = tmp_path / "ucf.yaml"
    path.write_text(yaml.safe_dump(config))
    run = snakemake(tmp_path, "all", "--configfile", str(REPO / "config/ucf101.yaml"), str(path))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = read_manifest(tmp_path / "data/features/ucf101/manifest.tsv")
    assert sum(r.status == "ok" for r in rows) > 50


def test_default_dry_run_lists_the_stages_and_lint_is_clean(tmp_path: Path):
    dry = snakemake(tmp_path, "-n", "all")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert {"generate_synthetic", "extract_features", "all"} <= scheduled(dry)
    lint = snakemake(tmp_path, "--lint")
    assert lint.returncode == 0 and "Lints for" not in lint.stdout + lint.stderr, lint.stdout[-3000:]
