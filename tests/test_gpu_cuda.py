"""The training path on a CUDA device: every built-in method end to end, a repeat equal to the
first run, batched runs equal to single runs within float rounding, and a resumed job equal to
an uninterrupted one.

Marked `gpu` and skipped with the reason where no CUDA device is visible; `pytest -m gpu`
runs them (benchmarks/gpu_check.py does, on a lent GPU machine). They need neither PyAV nor
Snakemake: the data is a small rehearsal (generated features, no videos), and jobs come from
the plan as the workflow's rules would pass them. `AVFL_GPU_TESTS_DEVICE=cpu` runs the same
checks on the CPU (a rehearsal of the GPU run where no GPU is lent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from avfl.fl.types import Interrupted

DEVICE = os.environ.get("AVFL_GPU_TESTS_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device visible"
    ),
]
REPO = Path(__file__).resolve().parents[1]
# Fields that differ between two runs of the same numbers.
VOLATILE = {"wall_time_s", "peak_memory_mb", "peak_gpu_memory_mb", "batch_size", "resumed_from",
            "cuda_visible_devices", "slurm_job_id", "device", "compute"}  # fmt: skip
# Batched and single runs take other cuBLAS kernels (chosen by batch count): equal only to
# float rounding, which a few rounds of training carry into the states.
STATE_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _config(root: Path, runs_per_job: int) -> dict:
    from avfl.config import load_config

    config = load_config([REPO / "config/config.yaml", REPO / "config/rehearsal.yaml"])
    config["data_dir"] = str(root / "data")
    config["datasets"]["rehearsal"]["folds"] = [1]
    config["datasets"]["rehearsal"]["rehearsal"] = {"n_classes": 12, "clips_per_group": [3, 4],
                                                    "clips_per_group_weights": None}  # fmt: skip
    config["partition"].update(n_clients=24)
    config["federated"].update(rounds=4, clients_per_round=6, eval_every=2, checkpoint_every=2,
                               checkpoint_interval_s=0, device=DEVICE)  # fmt: skip
    config["experiment"].update(seeds=[0, 1], table1_rates=[0.3, 0.7], figure3_rates=[],
                                figure2_rate=0.3, runs_per_job=runs_per_job)  # fmt: skip
    return config


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> Path:
    from avfl import partition
    from avfl.data.rehearsal import generate_rehearsal

    root = tmp_path_factory.mktemp("gpu")
    config = _config(root, 0)
    features = root / "data/features/rehearsal"
    settings = {"extract": config["datasets"]["rehearsal"]["extract"],
                **config["datasets"]["rehearsal"]["rehearsal"]}  # fmt: skip
    generate_rehearsal(settings, features, root / "data/embeddings/rehearsal/default")
    for seed in (0, 1):
        out = root / f"results/rehearsal/partition/default/fold1_seed{seed}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        partition.write_partition(features / "manifest.tsv", out, dataset="rehearsal", fold=1,
                                  seed=seed, settings=config["partition"])  # fmt: skip
    return root


def _jobs(root: Path, runs_per_job: int, out: str, methods=None):
    """The plan's training jobs (references first, then producers before consumers), their runs
    written under root/out."""
    from avfl.jobspec import JobSpec
    from avfl.plan import Plan

    jobs = []
    for job in Plan(_config(root, runs_per_job)).jobs:
        if methods and job.method not in methods and job.method != "centralised":
            continue
        spec = json.loads(job.spec.to_json())
        assert spec["gpu"] == (DEVICE == "cuda")
        for run in spec["runs"]:
            run["out"] = str(root / out / run["out"])
            run["partition"] = str(root / run["partition"])
            run["consumes"] = {m: str(root / out / d) for m, d in run["consumes"].items()}
            run["reference"] = str(root / out / run["reference"]) if run["reference"] else None
        jobs.append(JobSpec.from_json(json.dumps(spec)))
    order = {"centralised": 0, "multifl": 1}
    return sorted(jobs, key=lambda j: order.get(j.method, 2))


def _train(jobs, **kwargs) -> list[dict]:
    """Every job's records, each with the folder of its run (`dir`, not part of the record)."""
    from avfl.train import run_job

    records = []
    for job in jobs:
        done = run_job(job, log=lambda m: None, threads=2, device=torch.device(DEVICE), **kwargs)
        records += [{**r, "dir": str(run.out)} for r, run in zip(done, job.runs, strict=True)]
    return records


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE | {"dir"}}


def _states(record: dict) -> dict:
    return torch.load(Path(record["dir"]) / "model.pt", map_location="cpu", weights_only=True)[
        "states"
    ]


def test_every_method_trains_end_to_end_and_a_repeat_is_bit_identical(rehearsal):
    records = _train(_jobs(rehearsal, 0, "first"))
    from avfl.methods import methods

    assert {r["method"] for r in records} == set(methods("method")) | {"centralised"}
    assert all(r["device"].startswith(DEVICE) for r in records)
    assert all(r["compute"]["precision"]["float32"] == "ieee" for r in records)
    if DEVICE == "cuda":
        assert all(r["peak_gpu_memory_mb"] > 0 for r in records)
    repeat = _train(_jobs(rehearsal, 0, "repeat", methods={"multifl", "bmsfed"}))
    first = {(r["method"], r["rate"], r["seed"]): r for r in records}
    for record in repeat:
        assert _stable(record) == _stable(first[(record["method"], record["rate"], record["seed"])])


def test_batched_runs_equal_single_runs_within_float_rounding(rehearsal):
    batched = _train(_jobs(rehearsal, 0, "batched", methods={"multifl"}))
    single = _train(_jobs(rehearsal, 1, "single", methods={"multifl"}))
    assert len(batched) == len(single) == 2 + 4  # the references of both seeds, 2 rates x 2 seeds
    by_run = {(r["method"], r["rate"], r["seed"]): r for r in single}
    for record in batched:
        twin = by_run[(record["method"], record["rate"], record["seed"])]
        ours, theirs = _states(record), _states(twin)
        assert ours.keys() == theirs.keys()
        for model, state in ours.items():
            for name, value in state.items():
                torch.testing.assert_close(
                    value,
                    theirs[model][name],
                    **STATE_TOLERANCE,
                    msg=(record["method"], model, name),
                )


def test_a_resumed_job_equals_the_uninterrupted_one(rehearsal):
    whole = _train(_jobs(rehearsal, 0, "whole", methods={"multifl"}))
    jobs = _jobs(rehearsal, 0, "resumed", methods={"multifl"})
    _train(jobs[:1])  # the reference
    with pytest.raises(Interrupted):
        _train(jobs[1:], stop_after=2)
    resumed = _train(jobs[1:])
    assert all(r["resumed_from"] == {"multifl": 2} for r in resumed)
    first = {(r["rate"], r["seed"]): r for r in whole if r["method"] == "multifl"}
    for record in resumed:
        assert _stable(record) == _stable(first[(record["rate"], record["seed"])])
