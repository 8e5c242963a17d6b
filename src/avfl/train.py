"""One training run: (dataset, fold, method, rate, seed) -> metrics.json and model.pt.

The run record holds everything a report needs, and the configuration and library
versions that produced it. Reports read only these files.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import avfl
from avfl.config import stable_hash
from avfl.data.manifest import STATUS_OK, read_manifest
from avfl.evaluate import evaluate
from avfl.fl.data import build_federated_data
from avfl.fl.engine import TrainSettings, derive_seed
from avfl.methods import get_method
from avfl.methods.base import RunContext
from avfl.models.backbones import build_audio_backbone, build_visual_backbone
from avfl.models.heads import AVModel
from avfl.records import write_json

RUN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    fold: int
    method: str
    rate: float | None
    seed: int
    partition: Path  # partition JSON
    features: Path  # extraction outputs (manifest, arrays, norm stats)
    out: Path  # run directory
    settings: Mapping[str, Any]  # {"model", "federated", "extract", "method"}
    embeddings: tuple[Path, Path] | None = None  # (audio, visual) in frozen mode
    phase1: Path | None = None  # run directory of the method this one consumes


def shared_hash(spec: RunSpec) -> str:
    """Hash of what every method's run shares (used to check a consumed phase-1 result)."""
    s = spec.settings
    return stable_hash(
        {
            "dataset": spec.dataset,
            "fold": spec.fold,
            "rate": spec.rate,
            "seed": spec.seed,
            "model": s["model"],
            "federated": s["federated"],
            "extract": s["extract"],
        }
    )


def choose_device(requested: str, log: Callable[[str], None]) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise RuntimeError(
            "device: cuda was requested but no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
        )
    message = (
        "no CUDA device visible: training on the CPU (set federated.device: cpu to silence this)"
    )
    warnings.warn(message, stacklevel=2)
    log(f"warning: {message}")
    return torch.device("cpu")


def _load_inputs(spec: RunSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen mode: the backbones' embeddings; fine-tuning: the stored fbank and frames."""
    if spec.settings["model"]["mode"] == "frozen":
        if spec.embeddings is None:
            raise ValueError("frozen mode needs the backbone embeddings (run the embed rule)")
        paths = spec.embeddings
    else:
        paths = (spec.features / "fbank.npy", spec.features / "frames.npy")
    return torch.from_numpy(np.load(paths[0])), torch.from_numpy(np.load(paths[1]))


def build_model(
    spec: RunSpec, audio_dim: int, visual_dim: int, n_classes: int, norm: Mapping[str, float]
) -> AVModel:
    model_cfg = spec.settings["model"]
    audio_backbone = visual_backbone = None
    if model_cfg["mode"] == "finetune":
        audio_backbone = build_audio_backbone(model_cfg["audio"], norm, spec.settings["extract"])
        visual_backbone = build_visual_backbone(model_cfg["visual"])
        audio_dim, visual_dim = audio_backbone.out_dim, visual_backbone.out_dim
    torch.manual_seed(derive_seed(spec.seed, "init"))
    return AVModel(
        audio_dim,
        visual_dim,
        n_classes,
        model_cfg["hidden_dim"],
        model_cfg["dropout"],
        audio_backbone,
        visual_backbone,
    )


def run(
    spec: RunSpec, log: Callable[[str], None] = print, stop_after: int | None = None
) -> dict[str, Any]:
    """Train, evaluate, and write `metrics.json` and `model.pt` into spec.out."""
    started = time.perf_counter()
    fed = spec.settings["federated"]
    method = get_method(spec.method)
    if method.uses_rate and spec.rate is None:
        raise ValueError(f"method {spec.method} needs a video-missing rate")
    spec.out.mkdir(parents=True, exist_ok=True)
    device = choose_device(fed["device"], log)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)

    rows = [r for r in read_manifest(spec.features / "manifest.tsv") if r.status == STATUS_OK]
    norm = json.loads((spec.features / "norm_stats.json").read_text())["folds"][f"fold{spec.fold}"]
    partition = json.loads(spec.partition.read_text())
    audio, visual = _load_inputs(spec)
    data = build_federated_data(
        partition, {r.clip_id: r.row for r in rows}, {r.clip_id: r.label for r in rows}, audio, visual, spec.rate, device,
    )  # fmt: skip
    in_audio = audio.shape[-1] if spec.settings["model"]["mode"] == "frozen" else 0
    in_visual = visual.shape[-1] if spec.settings["model"]["mode"] == "frozen" else 0
    model = build_model(spec, in_audio, in_visual, data.n_classes, norm).to(device)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}

    phase1 = None
    if method.requires:
        phase1 = _load_phase1(spec, device)
    train_cfg = TrainSettings(
        local_epochs=fed["local_epochs"], batch_size=fed["batch_size"], lr=fed["client_lr"], optimizer=fed["optimizer"],
        weight_decay=fed["weight_decay"], eval_every=fed["eval_every"], selection=fed["selection"],
        checkpoint_every=fed["checkpoint_every"], seed=spec.seed,
    )  # fmt: skip
    # Checkpoints only serve to resume an interrupted run of *these* settings: keyed by the
    # config hash (a rerun after a config change starts afresh) and removed once the run's
    # record is written.
    config_hash = stable_hash(
        {"shared": shared_hash(spec), "method": spec.method, "settings": spec.settings["method"]}
    )
    checkpoints = spec.out / "checkpoints" / config_hash
    checkpoints.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(
        data=data, model=model, initial_state=initial_state, train=train_cfg, federated=fed,
        settings=spec.settings["method"], checkpoint_dir=checkpoints, rate=spec.rate,
        log=log, phase1=phase1, stop_after=stop_after,
    )  # fmt: skip
    result = method.run(ctx)

    result.model.load_state_dict({**result.model.state_dict(), **result.audio_state})
    test = evaluate(result.model, data, data.test, "audio")
    record: dict[str, Any] = {
        "format_version": RUN_FORMAT_VERSION,
        "dataset": spec.dataset,
        "fold": spec.fold,
        "method": spec.method,
        "rate": spec.rate,
        "seed": spec.seed,
        "config_hash": config_hash,
        "shared_hash": shared_hash(spec),
        "config": {k: spec.settings[k] for k in ("model", "federated", "extract", "method")},
        "partition": {
            "file": str(spec.partition),
            "seed": partition["seed"],
            "n_clients": len(partition["clients"]),
        },
        "audio_only_clients": sorted(data.audio_only),
        "versions": versions(),
        "device": _device_name(device),
        "rounds": {name: p.rounds for name, p in result.phases.items()},
        "resumed_from": {
            name: p.resumed_from for name, p in result.phases.items() if p.resumed_from
        },
        "selected_round": {name: p.selected_round for name, p in result.phases.items()},
        "dev_curve": {name: p.dev_curve for name, p in result.phases.items()},
        "test": test,
        "classes": data.class_names,
    }
    if "av_state" in result.extra:
        result.model.load_state_dict(result.extra["av_state"])
        av = evaluate(result.model, data, data.test, "av")
        record["test_av"] = {k: av[k] for k in ("n", "top1", "top5", "macro_f1")}
    last_phase = list(result.phases.values())[-1]
    torch.save(
        {
            "selected": _cpu(result.audio_state),
            "last": _cpu(last_phase.last_state),
            "shared_hash": shared_hash(spec),
        },
        spec.out / "model.pt",
    )
    record["wall_time_s"] = round(time.perf_counter() - started, 3)
    record["peak_memory_mb"] = _peak_memory_mb(device)
    write_json(spec.out / "metrics.json", record)
    shutil.rmtree(spec.out / "checkpoints", ignore_errors=True)
    return record


def _load_phase1(spec: RunSpec, device: torch.device) -> dict[str, Any]:
    if spec.phase1 is None:
        raise ValueError(f"{spec.method} consumes another method's result: pass its run directory")
    path = spec.phase1 / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run that method first (the workflow does this)")
    saved = torch.load(path, map_location=device, weights_only=True)
    if saved["shared_hash"] != shared_hash(spec):
        raise ValueError(
            f"{path} was trained with other settings (dataset/fold/rate/seed/model/federated/extract differ): rerun it"
        )
    return saved


def versions() -> dict[str, str]:
    import torchaudio
    import torchvision

    return {
        "avfl": avfl.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)}; CUDA_VISIBLE_DEVICES={visible})"
    return f"cpu ({platform.processor() or platform.machine()})"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}
