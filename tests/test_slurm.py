"""The workflow through the SLURM profile on a real (local, single-node) SLURM cluster.

Every job is an sbatch job; job status works without accounting; GPU jobs get a GPU each and
concurrent ones different CUDA_VISIBLE_DEVICES; the table equals a local run's; a cancelled
training job is reported as failed and a rerun resumes it from its checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import REPO
from .helpers import snakemake, tiny_workflow_config

pytestmark = pytest.mark.slow

PROFILE = REPO / "workflow/profiles/slurm"


def slurm_args(tmp_path: Path) -> list[str]:
    """The shipped profile, with this cluster's partitions and fast status polling."""
    partitions = tmp_path / "partitions.yaml"
    partitions.write_text(yaml.safe_dump({"partitions": {
        "cpu": {"max_threads": 2, "max_gpu": 0}, "gpu": {"max_threads": 2, "max_gpu": 2}}}))  # fmt: skip
    return ["--workflow-profile", str(PROFILE), "--slurm-partition-config", str(partitions),
            "--slurm-init-seconds-before-status-checks", "2", "--max-threads", "2", "--jobs", "4"]  # fmt: skip


def gpu_config(path: Path, rounds: int = 3, seeds=(0, 1)) -> Path:
    """Frozen small CNNs: backbones with parameters, so the embed and train jobs ask for a GPU."""
    config = tiny_workflow_config(
        path, seeds=seeds, experiment={"methods": ["multifl", "harmony", "modalitymirror"]}
    )
    data = yaml.safe_load(config.read_text())
    data["datasets"]["tiny"]["folds"] = [1]
    data["model"] = {"audio": {"backbone": "small_cnn"}, "visual": {"backbone": "small_cnn"}}
    data["federated"].update(
        device="auto", rounds=rounds, checkpoint_every=1, checkpoint_interval_s=0
    )
    config.write_text(yaml.safe_dump(data))
    return config


def test_the_dag_runs_through_the_profile_as_sbatch_jobs(slurm_cluster, tmp_path):
    config = gpu_config(tmp_path / "c.yaml")
    run = snakemake(tmp_path / "slurm", "all", "--configfile", str(config), *slurm_args(tmp_path),
                    env=slurm_cluster.client_env(), timeout=1200)  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    records = [
        json.loads(p.read_text())
        for p in (tmp_path / "slurm/results/tiny/runs").rglob("metrics.json")
    ]
    assert records and all(r["slurm_job_id"] for r in records)  # every training job was a SLURM job
    # Every run trained on one of the node's two GPUs, taken from its SLURM job's allocation
    # (gres) through a GPU slot (avfl/gpu.py). Which one depends on timing: a group job's
    # training processes take distinct GPUs only while they overlap, and the two seeds' group
    # jobs (2 CPUs each, on a 2-CPU node) run one after the other. Concurrent jobs getting
    # distinct GPUs is tested deterministically in test_gpu.py.
    devices = {r["cuda_visible_devices"] for r in records}
    assert devices and devices <= {"0", "1"}, devices
    assert len({r["slurm_job_id"] for r in records}) == 2  # one group job per seed
    accounting = slurm_cluster.run("squeue", "-h", "-t", "all", "-o", "%j").stdout
    assert accounting.count("\n") >= 10  # generate, extract, partitions, embeds, training, reports
    local = snakemake(tmp_path / "local", "all", "--configfile", str(config))
    assert local.returncode == 0, local.stderr[-3000:]
    table = "results/report/tiny/table1.csv"
    assert (tmp_path / "slurm" / table).read_text() == (tmp_path / "local" / table).read_text()


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
    env = {**__import__("os").environ, **slurm_cluster.client_env()}
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
    rerun = snakemake(work, *args, env=slurm_cluster.client_env(), timeout=1200)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    record = json.loads(
        (work / "results/tiny/runs/default/fold1/harmony/seed0/metrics.json").read_text()
    )
    assert record["resumed_from"].get("stage1_audio", 0) > 0
