"""GPU slots: concurrent jobs never over-share a GPU, every visible GPU is used, locks die with
jobs, locks are keyed by GPU UUID in a node-local folder, and a scheduler's own allocation
takes no lock."""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from avfl.errors import UserError
from avfl.gpu import (
    DriverReport,
    GpuInfo,
    check_lock_dir,
    filesystem_of,
    gpu_slot,
    lock_key,
    parse_smi,
    visible_gpus,
)

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from avfl.gpu import gpu_slot
    with gpu_slot(sys.argv[1], poll_s=0.02) as slot:
        start = time.time()
        seen = os.environ["CUDA_VISIBLE_DEVICES"]
        time.sleep(0.4)
        print(json.dumps({"gpu": slot.gpu, "env": seen, "start": start, "end": time.time()}))
    """
)

NO_SLURM = {k: "" for k in ("SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")}


def report(*uuids: str) -> DriverReport:
    return DriverReport(
        "test", "580.65", tuple(GpuInfo(i, u, "H200", (9, 0), 143771) for i, u in enumerate(uuids))
    )


def workers(tmp_path: Path, n: int, env: dict) -> list[dict]:
    env = {**os.environ, **NO_SLURM, **env}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(n)]  # fmt: skip
    records = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return records


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    return max(itertools.accumulate(d for _, d in events))


def test_visible_gpus_honours_the_scheduler(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(report("GPU-a", "GPU-b")) == ["0", "1"]


def test_no_gpu_means_no_slot(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with gpu_slot(tmp_path) as slot:
        assert slot is None


@pytest.mark.slow
def test_concurrent_jobs_get_distinct_gpus(tmp_path: Path):
    records = workers(tmp_path, 6, {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert {r["gpu"] for r in records} == {"0", "1"}  # both GPUs used
    assert all(r["env"] == r["gpu"] for r in records)  # each job sees only its GPU
    for gpu in ("0", "1"):  # never two jobs on one GPU at the same time
        assert most_at_once([(r["start"], r["end"]) for r in records if r["gpu"] == gpu]) == 1


@pytest.mark.slow
def test_jobs_per_device_lets_that_many_share_a_gpu(tmp_path: Path):
    records = workers(tmp_path, 5, {"CUDA_VISIBLE_DEVICES": "0", "AVFL_GPU_JOBS_PER_DEVICE": "2"})
    assert most_at_once([(r["start"], r["end"]) for r in records]) == 2


@pytest.mark.slow
def test_a_killed_job_releases_its_gpu(tmp_path: Path):
    env = {**os.environ, **NO_SLURM, "CUDA_VISIBLE_DEVICES": "0"}
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from avfl.gpu import gpu_slot\nwith gpu_slot({str(tmp_path)!r}):\n    print('held', flush=True)\n    import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    start = time.time()
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=30)  # fmt: skip
    assert json.loads(done.stdout)["gpu"] == "0" and time.time() - start < 20


def test_locks_are_keyed_by_uuid_so_two_nodes_gpu_0_do_not_block_each_other(monkeypatch, tmp_path):
    """Nodes A and B (or two cgroup-confined jobs) each see their own GPU as "0": distinct
    UUIDs, distinct locks, even in one shared folder. The same UUID is the same GPU."""
    for name, value in {**NO_SLURM, "CUDA_VISIBLE_DEVICES": "0"}.items():
        monkeypatch.setenv(name, value)
    with (
        gpu_slot(tmp_path, report=report("GPU-node-a")) as a,
        gpu_slot(tmp_path, report=report("GPU-node-b")) as b,
    ):
        assert (a.gpu, b.gpu) == ("0", "0")
        assert {p.name for p in tmp_path.iterdir()} == {
            "gpu-GPU-node-a-0.lock",
            "gpu-GPU-node-b-0.lock",
        }
        with (
            pytest.raises(TimeoutError),
            gpu_slot(tmp_path, timeout_s=0.1, poll_s=0.02, report=report("GPU-node-a")),
        ):
            pass
    assert lock_key("MIG-1234", report()) == "MIG-1234"
    assert lock_key("1", report("GPU-x", "GPU-y")) == "GPU-y"
    assert lock_key("7", report()) == "index7"


def test_a_gpu_the_scheduler_gave_takes_no_lock(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_GPUS", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    locks = tmp_path / "locks"
    with gpu_slot(locks) as slot:
        assert slot.gpu == "0" and "SLURM job 42: no lock" in str(slot)
    assert not locks.exists()
    monkeypatch.setenv(
        "CUDA_VISIBLE_DEVICES", "0,1"
    )  # several GPUs: jobs of the allocation share them
    with gpu_slot(locks) as slot:
        assert slot.gpu == "0" and locks.exists()


MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
server:/home /home nfs4 rw 0 0
lustre@tcp:/scratch /scratch lustre rw 0 0
"""


def test_a_lock_folder_on_a_shared_filesystem_is_refused():
    assert filesystem_of(Path("/home/me/project/.snakemake"), MOUNTS) == "nfs4"
    assert filesystem_of(Path("/tmp/avfl-gpu-locks-0"), MOUNTS) == "tmpfs"
    assert filesystem_of(Path("/opt/x"), MOUNTS) == "ext4"
    for shared in ("/home/me/locks", "/scratch/locks"):
        with pytest.raises(UserError, match=r"shared filesystem.*AVFL_GPU_LOCK_DIR"):
            check_lock_dir(Path(shared), MOUNTS)
    check_lock_dir(Path("/tmp/locks"), MOUNTS)


def test_flock_unsupported_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    for name in NO_SLURM:
        monkeypatch.delenv(name, raising=False)

    def no_flock(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(UserError, match=r"does not support flock.*node-local"), gpu_slot(tmp_path):
        pass


def test_nvidia_smi_output_is_read():
    parsed = parse_smi("0, GPU-aaa, NVIDIA H200, 9.0, 143771, 580.65.06\n"
                       "1, GPU-bbb, Tesla V100-SXM2-32GB, 7.0, 32768, 580.65.06\n")  # fmt: skip
    assert parsed.driver == "580.65.06"
    assert [(g.index, g.uuid, g.capability, g.memory_mb) for g in parsed.gpus] == [
        (0, "GPU-aaa", (9, 0), 143771), (1, "GPU-bbb", (7, 0), 32768)]  # fmt: skip


def _embed(tiny_training, tmp_path, env, gpu: bool):
    import numpy as np

    settings = {"spec": tiny_training["config"]["model"]["visual"], "extract": tiny_training["extract"],
                "device": "auto", "float32_precision": "ieee", "gpu": gpu}  # fmt: skip
    out = tmp_path / f"v{int(gpu)}.npy"
    done = subprocess.run(
        [sys.executable, "-m", "avfl", "embed", "--features", str(tiny_training["features"]), "--modality", "visual",
         "--settings", json.dumps(settings), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    return done, (np.load(out) if out.exists() else None)


@pytest.mark.slow
def test_gpu_jobs_take_a_slot_and_cpu_jobs_do_not(tmp_path: Path, tiny_training):
    """The embed and train commands hold a slot exactly when their job asked for a GPU; on
    stand-in GPUs (the test clusters' fake devices) such a job computes on the CPU and says so."""
    from .conftest import tiny_job
    from .test_train import _cli

    locks = tmp_path / "locks"
    env = {**os.environ, **NO_SLURM, "CUDA_VISIBLE_DEVICES": "3", "AVFL_GPU_LOCK_DIR": str(locks),
           "AVFL_STAND_IN_GPUS": "1"}  # fmt: skip
    done, cpu_embedding = _embed(tiny_training, tmp_path, env, gpu=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not locks.exists() and "asked for no GPU" in done.stderr
    done, gpu_embedding = _embed(tiny_training, tmp_path, env, gpu=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (locks / "gpu-index3-0.lock").exists() and "stand-ins" in done.stderr
    assert (gpu_embedding == cpu_embedding).all() and gpu_embedding.shape[1] == 70
    sidecar = json.loads((tmp_path / "v1.json").read_text())
    assert (
        sidecar["device"]["type"] == "cpu" and sidecar["device"]["precision"]["float32"] == "ieee"
    )
    job = tiny_job(
        tiny_training, tmp_path / "run", "harmony", federated={"rounds": 1, "device": "auto"}
    )
    train = subprocess.run(
        _cli(job, gpu=True), capture_output=True, text=True, env=env, timeout=300
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert "GPU: CUDA_VISIBLE_DEVICES=3 (slot 0 of index3" in train.stderr


@pytest.mark.slow
def test_a_gpu_job_without_a_usable_gpu_fails_at_once(tmp_path: Path, tiny_training):
    """No silent fallback: the rule asked for a GPU, none works, the job stops (exit 2) with
    the reason and the fix, and writes nothing."""
    env = {
        **os.environ,
        **NO_SLURM,
        "CUDA_VISIBLE_DEVICES": "3",
        "AVFL_GPU_LOCK_DIR": str(tmp_path / "l"),
    }
    env.pop("AVFL_STAND_IN_GPUS", None)
    done, embedding = _embed(tiny_training, tmp_path, env, gpu=True)
    assert done.returncode == 2 and embedding is None
    assert "asked for a GPU" in done.stderr and "federated.device: cpu" in done.stderr
