"""GPU slots: concurrent jobs never share a GPU, every visible GPU is used, locks die with jobs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from avfl.gpu import gpu_slot, visible_gpus

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from avfl.gpu import gpu_slot
    with gpu_slot(sys.argv[1], poll_s=0.02) as gpu:
        start = time.time()
        seen = os.environ["CUDA_VISIBLE_DEVICES"]
        time.sleep(0.4)
        print(json.dumps({"gpu": gpu, "env": seen, "start": start, "end": time.time()}))
    """
)


def test_visible_gpus_honours_the_scheduler(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_no_gpu_means_no_slot(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with gpu_slot(tmp_path) as gpu:
        assert gpu is None


def test_concurrent_jobs_get_distinct_gpus(tmp_path: Path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    records = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {r["gpu"] for r in records} == {"0", "1"}  # both GPUs used
    assert all(r["env"] == r["gpu"] for r in records)  # each job sees only its GPU
    for gpu in ("0", "1"):  # never two jobs on one GPU at the same time
        spans = sorted((r["start"], r["end"]) for r in records if r["gpu"] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_a_killed_job_releases_its_gpu(tmp_path: Path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from avfl.gpu import gpu_slot\nwith gpu_slot({str(tmp_path)!r}):\n    print('held', flush=True)\n    import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert json.loads(done.stdout)["gpu"] == "0" and time.time() - start < 20


def test_embed_and_train_commands_take_a_slot(tmp_path: Path, tiny_training):
    """Both GPU rules' commands hold a slot while they run (the lock file records the GPU)."""
    import numpy as np

    from .conftest import tiny_job
    from .test_train import _cli

    locks = tmp_path / "locks"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3", "AVFL_GPU_LOCK_DIR": str(locks)}
    settings = {
        "spec": tiny_training["config"]["model"]["visual"],
        "extract": tiny_training["extract"],
        "device": "auto",
    }
    embed = subprocess.run(
        [sys.executable, "-m", "avfl", "embed", "--features", str(tiny_training["features"]), "--modality", "visual",
         "--settings", json.dumps(settings), "--out", str(tmp_path / "v.npy")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert embed.returncode == 0, embed.stderr[-2000:]
    assert (locks / "gpu3.lock").exists() and np.load(tmp_path / "v.npy").shape[1] == 70
    (locks / "gpu3.lock").unlink()
    job = tiny_job(
        tiny_training, tmp_path / "run", "harmony", federated={"rounds": 1, "device": "auto"}
    )
    cmd = _cli(job)
    train = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "GPU slot: CUDA_VISIBLE_DEVICES=3" in train.stderr and (locks / "gpu3.lock").exists()
