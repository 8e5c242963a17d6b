"""Training jobs: one or several runs of a method on one (dataset, fold) -> per-run records.

A job is what one workflow rule runs: the runs (rate, seed) of one method with one set of
settings on one fold. They share the fold's features in memory and train together (their
rounds in lockstep, fl/batch.py); each lands in its own run directory with its own
`metrics.json` and `model.pt`, identical to training it alone. A run that finishes is also
kept under its checkpoint folder until the whole job has succeeded, so a rerun after a
failure or an interruption restores finished runs and resumes the others.

The run record holds everything a report needs, and the configuration and library
versions that produced it. Reports read only these files.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import avfl
from avfl import health, paths, runrecord
from avfl.data.manifest import STATUS_OK, read_manifest
from avfl.device import device_record, resolve_device, set_float32_precision
from avfl.errors import UserError
from avfl.evaluate import evaluate
from avfl.fl.batch import run_batch
from avfl.fl.data import FederatedData, build_federated_data, label_tensor
from avfl.fl.engine import UNREADABLE, unreadable
from avfl.fl.types import TrainSettings, derive_seed
from avfl.jobspec import JobSpec, RunSpec
from avfl.methods import get_method
from avfl.methods.context import MethodResult, Personalise, RunContext
from avfl.models.backbones import build_audio_backbone, build_visual_backbone, valid_fbank_stats
from avfl.models.heads import AVModel, feature_stats
from avfl.personalise import personalised_scores
from avfl.records import save_torch, verify_checksum, with_checksum, write_json

# The runs of a job build their models in their own threads; PyTorch's initialisers draw from
# the one global generator, so seeding and building must not interleave between runs.
_GLOBAL_RNG = threading.Lock()


def train_settings(fed: Mapping[str, Any], selection_metric: str = "top1") -> TrainSettings:
    return TrainSettings(
        local_epochs=fed["local_epochs"], batch_size=fed["batch_size"], lr=fed["client_lr"],
        optimizer=fed["optimizer"], weight_decay=fed["weight_decay"], eval_every=fed["eval_every"],
        selection=fed["selection"], checkpoint_every=fed["checkpoint_every"],
        lockstep=fed.get("lockstep", True), checkpoint_interval_s=fed.get("checkpoint_interval_s", 0.0),
        momentum=fed.get("momentum", 0.0), grad_clip_norm=fed.get("grad_clip_norm"),
        selection_metric=selection_metric,
    )  # fmt: skip


@dataclass
class FoldTensors:
    """What every run of a job shares: the fold's inputs, on the device."""

    audio: torch.Tensor
    visual: torch.Tensor
    labels: torch.Tensor
    row_of: dict[str, int]
    label_of: dict[str, int]
    frames: dict[str, int]  # clip id -> valid fbank frames (fine-tuning statistics)


def _load_fold(job: JobSpec, device: torch.device) -> FoldTensors:
    manifest = job.feature_dir / paths.MANIFEST
    rows = [r for r in read_manifest(manifest) if r.status == STATUS_OK]
    # A method that trains its own backbone (MethodSpec.raw_inputs) reads the features in
    # either mode.
    frozen = job.settings["model"]["mode"] == "frozen" and not get_method(job.method).raw_inputs
    if frozen:
        inputs = job.embedding_paths()
        if inputs is None:
            raise UserError("frozen mode needs the backbone embeddings (the embed rules make them)")
    else:
        inputs = (job.feature_dir / paths.FBANK, job.feature_dir / paths.FRAMES)
    for path in inputs:
        if not path.exists():
            raise UserError(f"{path} not found: run the workflow's earlier stages first")
    audio, visual = (torch.from_numpy(np.load(p)).to(device) for p in inputs)
    if audio.shape[0] != len(rows) or visual.shape[0] != len(rows):
        raise UserError(
            f"{inputs[0]} ({audio.shape[0]} rows) and {inputs[1]} ({visual.shape[0]} rows) do not match "
            f"the {len(rows)} usable clips of {manifest}: rerun the embed rules"
        )
    row_of, label_of = {r.clip_id: r.row for r in rows}, {r.clip_id: r.label for r in rows}
    labels = label_tensor(row_of, label_of, audio.shape[0]).to(device)
    return FoldTensors(
        audio, visual, labels, row_of, label_of, {r.clip_id: r.audio_frames for r in rows}
    )


def _training_fbank_stats(fold: FoldTensors, data: FederatedData) -> dict[str, float]:
    """Fine-tuning mode: the fbank mean and std over the valid frames of the training clips only."""
    return valid_fbank_stats(fold.audio, data.training_indices())


def build_model(job: JobSpec, fold: FoldTensors, data: FederatedData, seed: int) -> AVModel:
    """The run's model: seeded initialisation, input statistics from its training clips only."""
    model_cfg = job.settings["model"]
    frozen = model_cfg["mode"] == "frozen"
    audio_backbone = visual_backbone = None
    audio_dim, visual_dim = fold.audio.shape[-1], fold.visual.shape[-1]
    if not frozen:
        norm = _training_fbank_stats(fold, data)
        audio_backbone = build_audio_backbone(model_cfg["audio"], norm, job.settings["extract"])
        visual_backbone = build_visual_backbone(model_cfg["visual"])
        audio_dim, visual_dim = audio_backbone.out_dim, visual_backbone.out_dim
    torch.manual_seed(derive_seed(seed, "init"))
    model = AVModel(
        audio_dim, visual_dim, data.n_classes, model_cfg["hidden_dim"], model_cfg["dropout"],
        audio_backbone, visual_backbone,
    ).to(fold.audio.device)  # fmt: skip
    if frozen and model_cfg["standardise"]:
        train_idx = data.training_indices()
        model.audio_input.set_stats(*feature_stats(fold.audio[train_idx]))
        model.visual_input.set_stats(*feature_stats(fold.visual[train_idx]))
    return model


def _load_consumed(job: JobSpec, run: RunSpec, device: torch.device) -> dict[str, dict[str, Any]]:
    consumed = {}
    for name, directory in run.consumes.items():
        path = Path(directory) / paths.MODEL
        if not path.exists():
            raise UserError(f"{path} not found: run {name} first (the workflow does this)")
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(saved, dict):
                raise TypeError(f"holds a {type(saved).__name__}, not a saved run")
            saved = verify_checksum(saved, required=False)  # older versions wrote none
        except UNREADABLE as error:
            if not unreadable(error):
                raise
            raise UserError(
                f"{path} cannot be read ({type(error).__name__}: {str(error)[:200]}): delete "
                f"its folder and rerun {name}"
            ) from error
        expected = job.consumed_hashes.get(name)
        if expected and saved.get("config_hash") != expected:
            raise UserError(
                f"{path} was trained with other settings (config hash {saved.get('config_hash')}, "
                f"expected {expected}): rerun {name}"
            )
        consumed[name] = saved
    return consumed


def _record(job: JobSpec, run: RunSpec, data: FederatedData, result: MethodResult, device: torch.device,
            partition: Mapping[str, Any], consumed: Mapping[str, Any], started: float) -> dict[str, Any]:  # fmt: skip
    model = result.model
    tests: dict[str, dict[str, Any]] = {}
    for kind, state in result.evaluate.items():
        model.load_state_dict({**model.state_dict(), **state})
        tests[kind] = evaluate(model, data, data.test, kind)
    tests |= result.metrics
    personalised = None
    steps = job.settings.get("evaluation", {}).get("personalised_steps", [])
    if steps and "audio" in result.evaluate:
        own = result.personalise or Personalise(model, result.evaluate["audio"], data)
        cfg = own.train or train_settings(
            job.settings["federated"], job.settings["selection_metric"]
        )
        personalised = personalised_scores(
            own.model, own.states, own.data, cfg, steps, run.seed, run.rate is not None, own.task
        )
    phases = result.phases
    budget = {
        "client_trainings": sum(p.client_updates for p in phases.values()),
        "local_steps": sum(p.local_steps for p in phases.values()),
    }
    total = dict(budget)
    for saved in consumed.values():
        for key, value in saved.get("budget", {}).get("total", {}).items():
            total[key] = total.get(key, 0) + value
    record: dict[str, Any] = {
        "format_version": runrecord.FORMAT_VERSION,
        "dataset": job.dataset, "variant": job.variant, "fold": job.fold, "method": job.method,
        "role": get_method(job.method).role, "rate": run.rate, "seed": run.seed,
        "config_hash": job.config_hash, "batch_size": len(job.runs),
        "config": job.settings,
        "consumed": {m: {"dir": str(run.consumes[m]), "config_hash": consumed[m].get("config_hash")} for m in consumed},
        "partition": {"file": str(run.partition), "seed": partition["seed"], "n_clients": len(partition["clients"])},
        "audio_only_clients": sorted(data.audio_only),
        "versions": versions(), "device": _device_name(device),
        "compute": device_record(device, job.settings["federated"]["float32_precision"]),
        "embeddings": _embedding_provenance(job),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "rounds": {name: p.rounds for name, p in phases.items()},
        "resumed_from": {name: p.resumed_from for name, p in phases.items() if p.resumed_from},
        "selected_round": {name: p.selected_round for name, p in phases.items()},
        "dev_curve": {name: p.dev_curve for name, p in phases.items()},
        "budget": {"own": budget, "total": total},
        "test": tests.pop("audio"),
        "test_by_model": tests,
        "classes": data.class_names,
    }  # fmt: skip
    if personalised is not None:
        record["personalised"] = personalised
    if result.diagnostics:
        record["diagnostics"] = result.diagnostics
    record["wall_time_s"] = round(time.perf_counter() - started, 3)
    record["peak_memory_mb"] = _peak_host_memory_mb()
    record["peak_gpu_memory_mb"] = (
        round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None
    )
    return record


def _embedding_provenance(job: JobSpec) -> dict[str, Any] | None:
    """Where and how the frozen-mode embeddings were made (the embed rules' sidecars; None for
    embeddings written without one, such as the rehearsal generator's)."""
    if job.embeddings is None:
        return None
    found = {}
    for modality, path in job.embeddings.items():
        sidecar = paths.provenance(path)
        found[modality] = json.loads(sidecar.read_text())["device"] if sidecar.exists() else None
    return found


def _model_file(job: JobSpec, result: MethodResult, record: Mapping[str, Any]) -> dict[str, Any]:
    states = {**result.saved, **{f"evaluated_{k}": v for k, v in result.evaluate.items()}}
    return {
        "config_hash": job.config_hash,
        "states": {name: _cpu(state) for name, state in states.items()},
        "budget": record["budget"],
    }


def _one_run(job: JobSpec, run: RunSpec, fold: FoldTensors, device: torch.device, log: Callable[[str], None],
             stop_after: int | None) -> Callable:  # fmt: skip
    """The closure that trains and records one run (called with the phase runner)."""

    def go(runner) -> dict[str, Any]:
        started = time.perf_counter()
        label = f"[r={run.rate} seed{run.seed}]"
        say = lambda m: log(f"{label} {m}")  # noqa: E731
        done = _done_dir(job, run)
        if (done / paths.METRICS).exists() and (done / paths.MODEL).exists():
            say(f"finished earlier in this job: restored from {done}")
            return _restore(done, run)
        partition = json.loads(Path(run.partition).read_text())
        data = build_federated_data(
            partition,
            fold.row_of,
            fold.label_of,
            fold.audio,
            fold.visual,
            run.rate,
            device,
            fold.labels,
        )
        spec = get_method(job.method)
        if spec.uses_rate and run.rate is None:
            raise UserError(f"method {job.method} needs a video-missing rate")
        model = None  # a method that trains its own backbone builds its own model
        if not spec.raw_inputs:
            with _GLOBAL_RNG:
                model = build_model(job, fold, data, run.seed)
        consumed = _load_consumed(job, run, device)
        checkpoints = paths.checkpoint_dir(run.out, job.config_hash)
        checkpoints.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(
            data=data, model=model, initial_state={k: v.clone() for k, v in model.state_dict().items()} if model is not None else {},
            train=train_settings(job.settings["federated"], job.settings["selection_metric"]), federated=job.settings["federated"],
            method_settings=job.settings["method"], seed=run.seed, runner=runner, checkpoint_dir=checkpoints,
            rate=run.rate, log=say, consumed=consumed, stop_after=stop_after,
        )  # fmt: skip
        result = spec.run(ctx)
        record = _record(job, run, data, result, device, partition, consumed, started)
        reference = runrecord.read(run.reference) if run.reference else None
        record["health"] = health.check_run(record, reference, job.health, spec.objective_drifts)
        runrecord.validate(record, Path(run.out) / paths.METRICS)
        for finding in record["health"]["findings"]:
            say(f"warning: health: {finding['message']}")
        files = _model_file(job, result, record)
        for directory in (done, Path(run.out)):
            directory.mkdir(parents=True, exist_ok=True)
            save_torch(directory / paths.MODEL, with_checksum(files))
            write_json(directory / paths.METRICS, record)
        return record

    return go


def _done_dir(job: JobSpec, run: RunSpec) -> Path:
    return paths.checkpoint_dir(run.out, job.config_hash) / paths.FINISHED


def _restore(done: Path, run: RunSpec) -> dict[str, Any]:
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (paths.MODEL, paths.METRICS):
        shutil.copyfile(done / name, out / name)
    return runrecord.read(out / paths.METRICS)


def run_job(
    job: JobSpec, log: Callable[[str], None] = print, threads: int | None = None,
    stop_after: int | None = None, device: torch.device | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Train every run of the job; returns their records. Raises if any run failed (the
    finished ones are written and kept for the rerun) or, with `health.fatal`, if any run
    did not learn. `device`: where to train (the `train` command passes its GPU slot's);
    None decides by the job's settings (avfl.device.resolve_device), without a slot."""
    if not threads:
        return _run_job(job, log, stop_after, device)
    # The job's threads bound every thread pool in the process: torch's, and the BLAS and
    # OpenMP pools that numpy, scipy and scikit-learn use (the linear probes). Left alone, those
    # start one thread per core for tiny products and run many times slower than one thread on
    # a busy machine (same results).
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return _run_job(job, log, stop_after, device)


def _run_job(job: JobSpec, log: Callable[[str], None], stop_after: int | None,
             device: torch.device | None) -> list[dict[str, Any]]:  # fmt: skip
    fed = job.settings["federated"]
    set_float32_precision(fed["float32_precision"])
    if device is None:
        device = resolve_device(fed["device"], job.gpu, log)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        if fed["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
    fold = _load_fold(job, device)
    outcomes = run_batch([_one_run(job, run, fold, device, log, stop_after) for run in job.runs])
    failed = [
        (run, o) for run, o in zip(job.runs, outcomes, strict=True) if isinstance(o, BaseException)
    ]
    for run, error in failed:
        log(f"[r={run.rate} seed{run.seed}] failed: {type(error).__name__}: {error}")
    if failed:
        first = failed[0][1]
        if len(failed) == 1 or not isinstance(first, UserError):
            raise first
        raise UserError(f"{len(failed)} of {len(job.runs)} runs failed; the first: {first}")
    records = list(outcomes)
    unhealthy = [r for r in records if not r["health"]["ok"]]
    if unhealthy and job.health.get("fatal"):
        lines = [
            f"  {r['method']} r={r['rate']} seed{r['seed']}: {f['message']}"
            for r in unhealthy
            for f in r["health"]["findings"]
        ]
        raise UserError("health.fatal is set and runs did not learn:\n" + "\n".join(lines))
    for run in job.runs:
        shutil.rmtree(Path(run.out) / paths.CHECKPOINTS, ignore_errors=True)
    return records


def versions() -> dict[str, str]:
    """Library versions, from the installed distributions (importing torchvision and
    torchaudio only to read their versions would cost every job a second)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"avfl": avfl.__version__, "code": avfl.code_version(),
             "python": platform.python_version(), "torch": torch.__version__,
             "numpy": np.__version__}  # fmt: skip
    for name in ("torchaudio", "torchvision", "scikit-learn", "snakemake"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)}; CUDA_VISIBLE_DEVICES={visible})"
    return f"cpu ({platform.processor() or platform.machine()})"


def _peak_host_memory_mb() -> float:
    """The process's peak resident memory (on a GPU job too: the CUDA context and libraries
    take 1-2.5 GB of host memory, which SLURM's mem_mb must cover)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}
