"""Training jobs: the run record, determinism, batched runs equal to runs alone, resumption
after a kill, failures that keep finished work, and the command line."""

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

from avfl.errors import UserError
from avfl.records import with_checksum
from avfl.train import run_job

from .conftest import quiet, run_folder, tiny_job
from .helpers import flip_a_tensor_byte

VOLATILE = {"wall_time_s", "peak_memory_mb", "resumed_from", "batch_size"}


def stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def test_run_record_has_what_reports_need(tiny_training, tmp_path):
    (record,) = run_job(tiny_job(tiny_training, tmp_path, "multifl"), log=quiet)
    folder = tmp_path / run_folder(0.5, 0)
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(record))
    for key in ("dataset", "variant", "fold", "method", "role", "rate", "seed", "config_hash", "versions",
                "device", "rounds", "wall_time_s", "peak_memory_mb", "selected_round", "dev_curve", "config",
                "health", "budget"):  # fmt: skip
        assert key in record, key
    test = record["test"]
    n_classes = len(record["classes"])
    assert {"top1", "top5", "macro_f1", "per_class_f1", "confusion"} <= set(test)
    assert len(test["per_class_f1"]) == n_classes and sum(map(sum, test["confusion"])) == test["n"]
    assert test["top1"] <= test["top5"]
    assert record["test_by_model"]["av"]["n"] == test["n"]
    assert record["versions"]["torch"] == torch.__version__ and record["device"].startswith("cpu")
    assert record["budget"]["own"]["client_trainings"] == 20 * 4  # rounds x clients per round
    saved = torch.load(folder / "model.pt", weights_only=True)
    assert saved["config_hash"] == record["config_hash"]
    assert {"selected", "selected_av", "last", "evaluated_audio"} <= set(saved["states"])
    assert not (folder / "checkpoints").exists()


def test_same_seed_same_record_other_seed_other_record(tiny_training, tmp_path):
    (a,) = run_job(tiny_job(tiny_training, tmp_path / "a", "unifl"), log=quiet)
    (b,) = run_job(tiny_job(tiny_training, tmp_path / "b", "unifl"), log=quiet)
    (c,) = run_job(tiny_job(tiny_training, tmp_path / "c", "unifl", seeds=(1,)), log=quiet)
    assert stable(a) == stable(b)
    assert a["dev_curve"] != c["dev_curve"]


@pytest.mark.parametrize("method", ["multifl", "unifl", "fedadam", "bmsfed", "dimml", "m3fed"])
def test_runs_trained_in_one_job_equal_runs_trained_alone(tiny_training, tmp_path, method):
    torch.set_num_threads(1)
    rates, seeds = (0.25, 0.5, 0.75), (0, 1)
    together = run_job(
        tiny_job(tiny_training, tmp_path / "batch", method, rates, seeds, federated={"rounds": 12}),
        log=quiet,
    )
    assert len(together) == 6 and {r["batch_size"] for r in together} == {6}
    for record in together:
        (alone,) = run_job(tiny_job(tiny_training, tmp_path / f"alone{record['rate']}_{record['seed']}", method,
                                    (record["rate"],), (record["seed"],), federated={"rounds": 12}), log=quiet)  # fmt: skip
        assert stable(alone) == stable(record)


def test_an_interrupted_job_resumes_every_run_to_the_same_records(tiny_training, tmp_path):
    job = tiny_job(
        tiny_training, tmp_path / "a", "multifl", (0.25, 0.75), federated={"checkpoint_every": 3}
    )
    whole = run_job(job, log=quiet)
    interrupted = tiny_job(
        tiny_training, tmp_path / "b", "multifl", (0.25, 0.75), federated={"checkpoint_every": 3}
    )
    from avfl.fl.types import Interrupted

    with pytest.raises(Interrupted):
        run_job(interrupted, log=quiet, stop_after=7)
    resumed = run_job(interrupted, log=quiet)
    assert all(r["resumed_from"] for r in resumed)
    assert [stable(r) for r in resumed] == [stable(r) for r in whole]


def test_a_failing_run_fails_the_job_but_finished_runs_are_kept_for_the_rerun(
    tiny_training, tmp_path
):
    # UniFL needs audio-only clients: rate 0 fails, rate 0.5 finishes.
    job = tiny_job(tiny_training, tmp_path, "unifl", (0.0, 0.5))
    with pytest.raises(UserError, match="rate above 0"):
        run_job(job, log=quiet)
    done = tmp_path / run_folder(0.5, 0) / "checkpoints" / job.config_hash / "done" / "metrics.json"
    assert done.exists(), "the finished run must survive the job's failure"
    kept = json.loads(done.read_text())
    messages = []
    fixed = tiny_job(tiny_training, tmp_path, "unifl", (0.5,))
    (record,) = run_job(fixed, log=messages.append)
    assert any("restored" in m for m in messages)
    assert record["test"] == kept["test"]


def _cli(job, gpu: bool = False) -> list[str]:
    """`avfl train` of the job, its JSON as the workflow passes it."""
    from dataclasses import replace

    return [sys.executable, "-m", "avfl", "train", "--job", replace(job, gpu=gpu).to_json()]


@pytest.mark.slow
@pytest.mark.parametrize("damaged", [False, True])
def test_killed_job_resumes_to_the_same_metrics(tiny_training, tmp_path, damaged):
    """Killed mid-run, the job resumes from its checkpoint; with that checkpoint cut short
    (a disk that filled up, a copy that stopped), it sets the file aside and trains the phase
    again from round 0, to the same metrics."""
    slow = {"rounds": 60, "checkpoint_every": 2}
    (whole,) = run_job(
        tiny_job(tiny_training, tmp_path / "whole", "multifl", federated=slow), log=quiet
    )
    job = tiny_job(tiny_training, tmp_path / "killed", "multifl", federated=slow)
    out = Path(job.runs[0].out)
    proc = subprocess.Popen(
        _cli(job), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 120
    while (
        not list(out.glob("checkpoints/*/*.ckpt"))
        and time.time() < deadline
        and proc.poll() is None
    ):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (checkpoint,) = out.glob("checkpoints/*/*.ckpt")
    assert not (out / "metrics.json").exists()
    if damaged:
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    done = subprocess.run(_cli(job), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((out / "metrics.json").read_text())
    if damaged:
        assert "cannot resume from this checkpoint" in done.stderr
        assert "resumed from round" not in done.stderr and "Traceback" not in done.stderr
        assert resumed["resumed_from"] == {}  # no phase resumed: multifl trained from round 0
    else:
        assert "resumed from round" in done.stderr
        assert resumed["resumed_from"]["multifl"] > 0
    assert stable(resumed) == stable(json.loads(json.dumps(whole)))


@pytest.mark.slow
def test_cli_reports_a_missing_consumed_run_in_one_line(tiny_training, tmp_path):
    job = tiny_job(
        tiny_training, tmp_path / "mm", "modalitymirror", consumes={"multifl": tmp_path / "nowhere"}
    )
    done = subprocess.run(_cli(job), capture_output=True, text=True)
    assert done.returncode == 2
    assert "run multifl first" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut short", "a byte flipped in a tensor"])
def test_cli_reports_an_unreadable_consumed_model_in_one_line(tiny_training, tmp_path, damage):
    """A damaged model.pt of a consumed run stops the consumer with the fix, also when
    torch.load reads it without complaint (a flipped bit: only its checksum catches it)."""
    saved = tmp_path / "multifl" / run_folder(0.5, 0)
    saved.mkdir(parents=True)
    if damage == "cut short":
        (saved / "model.pt").write_bytes(b"cut sho")
    else:
        model = {"config_hash": "x", "states": {"multifl": {"w": torch.randn(1000)}}, "budget": {}}
        torch.save(with_checksum(model), saved / "model.pt")
        flip_a_tensor_byte(saved / "model.pt")
    job = tiny_job(
        tiny_training, tmp_path / "mm", "modalitymirror", consumes={"multifl": tmp_path / "multifl"}
    )
    done = subprocess.run(_cli(job), capture_output=True, text=True)
    assert done.returncode == 2
    assert "model.pt cannot be read" in done.stderr and "rerun multifl" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_keeps_the_traceback_of_a_bug(tiny_training, tmp_path):
    spec = json.loads(_cli(tiny_job(tiny_training, tmp_path, "multifl"))[-1])
    spec["settings"]["federated"]["local_epochs"] = (
        "two"  # a type error deep inside: a bug, not a user error
    )
    done = subprocess.run(
        [sys.executable, "-m", "avfl", "train", "--job", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_auto_device_trains_on_the_cpu_only_where_the_job_asked_for_no_gpu(tiny_training, tmp_path):
    """device auto: a job that asked for no GPU (parameter-free backbones) uses the CPU and says
    so; one that asked for a GPU and has none fails before training, naming the fix."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    messages: list[str] = []
    job = tiny_job(tiny_training, tmp_path, "harmony", federated={"device": "auto", "rounds": 2})
    (record,) = run_job(job, log=messages.append)
    assert record["device"].startswith("cpu") and record["compute"]["type"] == "cpu"
    assert (
        record["compute"]["precision"]["float32"] == "ieee" and record["peak_gpu_memory_mb"] is None
    )
    assert any("asked for no GPU" in m for m in messages)
    asking = tiny_job(
        tiny_training, tmp_path / "gpu", "harmony", federated={"device": "auto", "rounds": 2}
    )
    asking = type(job)(**{**asking.__dict__, "gpu": True})
    with pytest.raises(UserError, match=r"asked for a GPU.*federated.device: cpu"):
        run_job(asking, log=quiet)
    assert not list((tmp_path / "gpu").rglob("metrics.json"))


def test_config_hash_changes_with_the_settings_and_a_rerun_never_resumes_other_settings(
    tiny_training, tmp_path
):
    from avfl.fl.types import Interrupted

    with pytest.raises(Interrupted):
        run_job(tiny_job(tiny_training, tmp_path, "multifl"), log=quiet, stop_after=5)
    out = tmp_path / run_folder(0.5, 0)
    assert list(out.glob("checkpoints/*/*.ckpt"))
    changed = tiny_job(tiny_training, tmp_path, "multifl", federated={"client_lr": 1e-3})
    (rerun,) = run_job(changed, log=quiet)
    (fresh,) = run_job(
        tiny_job(tiny_training, tmp_path / "fresh", "multifl", federated={"client_lr": 1e-3}),
        log=quiet,
    )
    assert rerun["resumed_from"] == {} and stable(rerun) == stable(fresh)
    assert not (out / "checkpoints").exists()


def test_finetune_mode_trains_the_backbones_one_row_at_a_time(tiny_training, tmp_path):
    small = {"mode": "finetune", "audio": {"backbone": "small_cnn", "pretrained": False, "weights": {"path": "unused"}, "ssast": {}},
             "visual": {"backbone": "small_cnn", "pretrained": False, "weights": {"path": "unused"}}}  # fmt: skip
    job = tiny_job(tiny_training, tmp_path, "multifl", model=small, federated={"rounds": 2})
    job = type(job)(**{**job.__dict__, "embeddings": None})
    (record,) = run_job(job, log=quiet)
    assert record["config"]["model"]["mode"] == "finetune"
    saved = torch.load(tmp_path / run_folder(0.5, 0) / "model.pt", weights_only=True)["states"][
        "last"
    ]
    assert any(k.startswith("audio_backbone.") for k in saved) and any(
        k.startswith("visual_backbone.") for k in saved
    )
    assert record["budget"]["own"]["client_trainings"] == 2 * 4
