"""The workflow through the SLURM profile on a real (local, single-node) SLURM cluster.

Every job is an sbatch job; job status works without accounting; GPU jobs get a GPU each and
concurrent ones different CUDA_VISIBLE_DEVICES; the table equals a local run's; a cancelled
training job is reported as failed and a rerun resumes it from its checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, VENV_BIN
from .helpers import BUILTIN_METHODS, snakemake, tiny_workflow_config

pytestmark = pytest.mark.slow

PROFILE = REPO / "workflow/profiles/slurm"


def slurm_args(tmp_path: Path) -> list[str]:
    """The shipped profile, with this cluster's partitions and fast status polling."""
    partitions = tmp_path / "partitions.yaml"
    partitions.write_text(yaml.safe_dump({"partitions": {
        "cpu": {"max_threads": 2, "max_gpu": 0}, "gpu": {"max_threads": 2, "max_gpu": 2}}}))  # fmt: skip
    return ["--workflow-profile", str(PROFILE), "--slurm-partition-config", str(partitions),
            "--slurm-init-seconds-before-status-checks", "2", "--max-threads", "2", "--jobs", "4"]  # fmt: skip


def gpu_config(path: Path, rounds: int = 3, seeds=(0, 1), methods=("multifl", "harmony", "modalitymirror"),
               rates=(0.5,)) -> Path:  # fmt: skip
    """Frozen small CNNs: backbones with parameters, so the embed and train jobs ask for a GPU."""
    config = tiny_workflow_config(
        path,
        seeds=seeds,
        experiment={
            "methods": list(methods),
            "table1_rates": list(rates),
            "figure2_rate": rates[0],
        },
    )
    data = yaml.safe_load(config.read_text())
    data["datasets"]["tiny"]["folds"] = [1]
    data["model"] = {"audio": {"backbone": "small_cnn"}, "visual": {"backbone": "small_cnn"}}
    data["federated"].update(
        device="auto", rounds=rounds, checkpoint_every=1, checkpoint_interval_s=0
    )
    config.write_text(yaml.safe_dump(data))
    return config


# The cluster's GPUs are device files that are not GPUs: GPU jobs compute on the CPU there, and
# say so (avfl/device.py), instead of failing as they would on a real machine without a GPU.
STAND_IN = {"AVFL_STAND_IN_GPUS": "1"}


def gpus_asked(cluster) -> dict[str, int]:
    """Every job the cluster has seen: its id -> the GPUs it asked for (gres:gpu:N)."""
    rows = cluster.run("squeue", "-h", "-t", "all", "-O", "JobID:12,tres-per-job:40").stdout
    asked = {}
    for line in rows.splitlines():
        job, _, tres = line.strip().partition(" ")
        found = re.search(r"gpu(?::[A-Za-z0-9_.-]+)?:(\d+)", tres)
        asked[job] = int(found.group(1)) if found else 0
    return asked


def test_a_paper_shaped_dag_runs_through_the_profile_with_one_gpu_per_job(slurm_cluster, tmp_path):
    """Every built-in method at several rates, GPU-asking backbones, the shipped profile as the
    README runs it (no --cores): no submitted job asks for more than one GPU (a group job would
    ask for the sum of its side-by-side training jobs': 7 here, more than the partition's 2),
    every GPU job is its own SLURM job, and the table equals a local run's."""
    config = gpu_config(
        tmp_path / "c.yaml", rounds=2, seeds=(0,), methods=BUILTIN_METHODS, rates=(0.3, 0.7)
    )
    before = set(gpus_asked(slurm_cluster))
    env = {**slurm_cluster.client_env(), **STAND_IN}
    work = tmp_path / "slurm"
    run = subprocess.run(
        [f"{VENV_BIN}/snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
         "all", "--configfile", str(config), *slurm_args(tmp_path)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=1800,
    )  # fmt: skip
    asked = {j: n for j, n in gpus_asked(slurm_cluster).items() if j not in before}
    assert max(asked.values()) == 1, asked  # never a job asking for several GPUs
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    records = [
        json.loads(p.read_text()) for p in (work / "results/tiny/runs").rglob("metrics.json")
    ]
    training_jobs = {r["slurm_job_id"] for r in records}
    rated = [m for m in BUILTIN_METHODS if m != "harmony"]  # harmony: one rate-free run
    assert len(records) == 2 * len(rated) + 1 + 1 and None not in training_jobs  # + the reference
    # Every training job (one per method: a seed's runs share one) and both embed jobs each asked
    # for its own GPU, and had one of the node's two.
    assert len(training_jobs) == len(BUILTIN_METHODS) + 1
    assert sum(asked.values()) == len(training_jobs) + 2
    assert all(asked[j] == 1 for j in training_jobs)
    assert {r["cuda_visible_devices"] for r in records} <= {"0", "1"}
    local = snakemake(tmp_path / "local", "all", "--configfile", str(config), env=STAND_IN)
    assert local.returncode == 0, local.stderr[-3000:]
    table = "results/report/tiny/table1.csv"
    assert (work / table).read_text() == (tmp_path / "local" / table).read_text()


def test_a_cancelled_training_job_fails_the_run_and_a_rerun_resumes_it(slurm_cluster, tmp_path):
    config = gpu_config(tmp_path / "c.yaml", rounds=400, seeds=(0,))
    work = tmp_path / "w"
    args = [
        "results/tiny/runs/default/fold1/harmony/seed0/metrics.json",
        "--configfile",
        str(config),
        *slurm_args(tmp_path),
    ]
    from .helpers import VENV_BIN

    command = [
        f"{VENV_BIN}/snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--cores",
        "2",
        *args,
    ]
    env = {**os.environ, **slurm_cluster.client_env(), **STAND_IN}
    running = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    checkpoint = work / "results/tiny/runs/default/fold1/harmony/seed0/checkpoints"
    deadline = time.time() + 600
    job = None
    while time.time() < deadline and running.poll() is None:
        if list(checkpoint.glob("*/harmony_audio.ckpt")):
            # The training job is the only one running by now (its inputs are done).
            queue = slurm_cluster.run("squeue", "-h", "-t", "running", "-o", "%i").stdout.split()
            job = queue[0] if len(queue) == 1 else None
            if job:
                break
        time.sleep(0.5)
    assert job, "the training job never ran with a checkpoint"
    slurm_cluster.run("scancel", job)
    output, _ = running.communicate(timeout=600)
    assert running.returncode != 0 and "did not complete successfully" in output, output[-3000:]
    rerun = snakemake(work, *args, env={**slurm_cluster.client_env(), **STAND_IN}, timeout=1200)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    record = json.loads(
        (work / "results/tiny/runs/default/fold1/harmony/seed0/metrics.json").read_text()
    )
    assert record["resumed_from"].get("stage1_audio", 0) > 0
