"""A real single-node SLURM cluster on localhost accepts, runs and reports jobs.

Skipped unless root with ``slurm-wlm`` and ``munge`` installed (the ``slurm_cluster`` fixture
in conftest.py, tests/slurm_cluster.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .slurm_cluster import Cluster

pytestmark = pytest.mark.slow  # a SLURM cluster


def wait_for_job(cluster: Cluster, job_id: str, timeout: float = 60) -> str:
    """Poll squeue until the job leaves PENDING/RUNNING/COMPLETING; return its final state."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = cluster.run("squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T").stdout.strip()
        if state and state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {state or 'unknown'} after {timeout} s")


def test_sbatch_hostname_completes(slurm_cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "hostname.out"
    job_id = slurm_cluster.run(
        "sbatch", "--parsable", "-o", str(out), "--wrap", "hostname"
    ).stdout.strip()
    assert job_id.isdigit()
    assert wait_for_job(slurm_cluster, job_id) == "COMPLETED"
    info = slurm_cluster.run("scontrol", "show", "job", job_id).stdout
    assert "JobState=COMPLETED" in info and "ExitCode=0:0" in info
    assert out.read_text().strip() == slurm_cluster.nodename


def test_concurrent_gpu_jobs_get_distinct_gpus(slurm_cluster: Cluster, tmp_path: Path) -> None:
    script = "echo $CUDA_VISIBLE_DEVICES; sleep 2"  # both run at once: each holds its GPU while the other starts
    ids = [
        slurm_cluster.run(
            "sbatch",
            "--parsable",
            "-p",
            "gpu",
            "--gpus=1",
            "-o",
            str(tmp_path / f"{i}.out"),
            "--wrap",
            script,
        ).stdout.strip()
        for i in range(2)
    ]
    assert [wait_for_job(slurm_cluster, j) for j in ids] == ["COMPLETED", "COMPLETED"]
    assert sorted((tmp_path / f"{i}.out").read_text().strip() for i in range(2)) == ["0", "1"]
