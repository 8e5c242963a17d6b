"""Frozen mode: compute a backbone's embeddings of every usable clip once per dataset.

Audio embeddings depend on the fold (the fbank is normalised with the fold's training
statistics); visual embeddings do not. Training then touches only encoders and heads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avfl import paths
from avfl.models.backbones import build_audio_backbone, build_visual_backbone


@torch.inference_mode()
def compute_embeddings(
    features: Path,
    modality: str,
    spec: Mapping[str, Any],
    extract: Mapping[str, Any],
    fold: int | None,
    device: torch.device,
    batch: int = 64,
) -> np.ndarray:
    """(M, D) float32 embeddings of the M usable clips, in manifest row order."""
    if modality == "audio":
        if fold is None:
            raise ValueError("audio embeddings need a fold (its normalisation statistics)")
        norm = json.loads((features / paths.NORM_STATS).read_text())["folds"][f"fold{fold}"]
        backbone = build_audio_backbone(spec, norm, extract)
        inputs = np.load(features / paths.FBANK, mmap_mode="r")
    else:
        backbone = build_visual_backbone(spec)
        inputs = np.load(features / paths.FRAMES, mmap_mode="r")
    backbone = backbone.to(device).eval()
    out = np.empty((inputs.shape[0], backbone.out_dim), dtype=np.float32)
    pin = device.type == "cuda"
    for start in range(0, inputs.shape[0], batch):
        chunk = torch.from_numpy(np.array(inputs[start : start + batch]))
        chunk = (chunk.pin_memory() if pin else chunk).to(device, non_blocking=pin)
        out[start : start + len(chunk)] = backbone(chunk).float().cpu().numpy()
    return out


def write_embeddings(
    features: str | Path, modality: str, fold: int | None, settings: Mapping[str, Any],
    out: str | Path, log=print,
) -> np.ndarray:  # fmt: skip
    """The embed stage: compute on the job's GPU slot (or the CPU), save as .npy, and write
    beside it (`<out>.json`) the device, float32 precision and versions that made it."""
    from avfl.device import device_record, job_device, set_float32_precision
    from avfl.records import write_json
    from avfl.train import versions

    torch.manual_seed(0)
    precision = settings.get("float32_precision", "ieee")
    set_float32_precision(precision)
    with job_device(settings["device"], bool(settings.get("gpu")), log) as device:
        emb = compute_embeddings(
            Path(features), modality, settings["spec"], settings["extract"], fold, device
        )
        provenance = {"device": device_record(device, precision), "versions": versions(),
                      "shape": list(emb.shape), "settings": dict(settings), "fold": fold}  # fmt: skip
    np.save(out, emb)
    write_json(paths.provenance(out), provenance)
    log(f"{modality} embeddings {emb.shape} on {device}")
    return emb
