"""A whole run: the run record, determinism, resumption after a kill, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avfl.train import run

from .conftest import tiny_spec

VOLATILE = {"wall_time_s", "peak_memory_mb", "resumed_from"}


def stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def test_run_record_has_what_reports_need(tiny_training, tmp_path):
    record = run(tiny_spec(tiny_training, tmp_path, "multifl", rate=0.5), log=lambda m: None)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    for key in ("dataset", "fold", "method", "rate", "seed", "config_hash", "versions", "device", "rounds",
                "wall_time_s", "peak_memory_mb", "selected_round", "dev_curve", "config"):  # fmt: skip
        assert key in record, key
    test = record["test"]
    n_classes = len(record["classes"])
    assert {"top1", "top5", "macro_f1", "per_class_f1", "confusion"} <= set(test)
    assert len(test["per_class_f1"]) == n_classes and len(test["confusion"]) == n_classes
    assert sum(map(sum, test["confusion"])) == test["n"]
    assert 0 <= test["top1"] <= test["top5"] <= 1
    assert record["versions"]["torch"] == torch.__version__
    assert record["device"].startswith("cpu")
    assert (tmp_path / "model.pt").exists()


def test_same_seed_same_metrics(tiny_training, tmp_path):
    a = run(tiny_spec(tiny_training, tmp_path / "a", "unifl", rate=0.5), log=lambda m: None)
    b = run(tiny_spec(tiny_training, tmp_path / "b", "unifl", rate=0.5), log=lambda m: None)
    c = run(tiny_spec(tiny_training, tmp_path / "c", "unifl", rate=0.5, seed=1), log=lambda m: None)
    assert stable(a) == stable(b)
    assert a["dev_curve"] != c["dev_curve"]


def _cli(spec) -> list[str]:
    cmd = [sys.executable, "-m", "avfl", "train", "--dataset", spec.dataset, "--fold", str(spec.fold),
           "--method", spec.method, "--rate", str(spec.rate), "--seed", str(spec.seed),
           "--partition", str(spec.partition), "--features", str(spec.features),
           "--audio-embeddings", str(spec.embeddings[0]), "--visual-embeddings", str(spec.embeddings[1]),
           "--settings", json.dumps(dict(spec.settings)), "--out", str(spec.out)]  # fmt: skip
    return cmd


def test_killed_run_resumes_to_the_same_metrics(tiny_training, tmp_path):
    slow = {"rounds": 60, "checkpoint_every": 2}
    whole = run(
        tiny_spec(tiny_training, tmp_path / "whole", "multifl", rate=0.5, federated=slow),
        log=lambda m: None,
    )
    spec = tiny_spec(tiny_training, tmp_path / "killed", "multifl", rate=0.5, federated=slow)
    proc = subprocess.Popen(
        _cli(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )

    def checkpoints() -> list:
        return list(spec.out.glob("checkpoints/*/multifl.ckpt"))

    deadline = time.time() + 120
    while not checkpoints() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoints() and not (spec.out / "metrics.json").exists(), (
        "the run finished before it was killed"
    )
    done = subprocess.run(_cli(spec), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from round" in done.stderr
    resumed = json.loads((spec.out / "metrics.json").read_text())
    assert resumed["resumed_from"]["multifl"] > 0
    assert stable(resumed) == stable(json.loads(json.dumps(whole)))


def test_cli_reports_a_missing_phase1_clearly(tiny_training, tmp_path):
    spec = tiny_spec(tiny_training, tmp_path / "mm", "modalitymirror", rate=0.5)
    done = subprocess.run(
        [*_cli(spec), "--phase1", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "run that method first" in done.stderr


def test_auto_device_warns_when_no_gpu(tiny_training, tmp_path, recwarn):
    if torch.cuda.is_available():
        return
    record = run(
        tiny_spec(
            tiny_training, tmp_path, "harmony", rate=None, federated={"device": "auto", "rounds": 2}
        ),
        log=lambda m: None,
    )
    assert record["device"].startswith("cpu")
    assert any("no CUDA device visible" in str(w.message) for w in recwarn)


def test_config_hash_changes_with_method_settings_only_for_that_method(
    tiny_training, tmp_path: Path
):
    a = run(
        tiny_spec(tiny_training, tmp_path / "a", "harmony", rate=None, federated={"rounds": 2}),
        log=lambda m: None,
    )
    b = run(
        tiny_spec(
            tiny_training,
            tmp_path / "b",
            "harmony",
            rate=None,
            federated={"rounds": 2},
            method={"fusion_rounds": 7},
        ),
        log=lambda m: None,
    )
    assert a["shared_hash"] == b["shared_hash"] and a["config_hash"] != b["config_hash"]


def test_rerun_with_other_settings_does_not_resume_and_finished_runs_keep_no_checkpoint(
    tiny_training, tmp_path
):
    from avfl.fl.engine import Interrupted

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run(tiny_spec(tiny_training, out, "multifl", rate=0.5), log=lambda m: None, stop_after=5)
    assert list(out.glob("checkpoints/*/multifl.ckpt"))  # an interrupted run leaves its checkpoint
    changed = {"client_lr": 1e-3}
    rerun = run(
        tiny_spec(tiny_training, out, "multifl", rate=0.5, federated=changed), log=lambda m: None
    )
    fresh = run(
        tiny_spec(tiny_training, tmp_path / "fresh", "multifl", rate=0.5, federated=changed),
        log=lambda m: None,
    )
    assert rerun["resumed_from"] == {} and stable(rerun) == stable(fresh)
    assert not (
        out / "checkpoints"
    ).exists()  # a finished run's checkpoints are gone: --force retrains
