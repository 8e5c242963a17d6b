"""Evaluation of a model on a split: top-1, top-k, macro-F1, per-class F1, confusion matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from avfl.fl.data import FederatedData
    from avfl.models.heads import AVModel


@torch.no_grad()
def predict(
    model: AVModel,
    data: FederatedData,
    indices: torch.Tensor,
    kind: str = "audio",
    batch: int = 256,
) -> torch.Tensor:
    """Logits of the audio ("audio"), audio-visual ("av") or visual ("visual") model."""
    model.eval()
    out = []
    for start in range(0, indices.numel(), batch):
        idx = indices[start : start + batch]
        if kind == "audio":
            out.append(model.audio_logits(data.audio[idx]))
        elif kind == "av":
            out.append(model.av_logits(data.audio[idx], data.visual[idx]))
        elif kind == "visual":
            out.append(model.visual_logits(data.visual[idx]))
        else:
            raise ValueError(f"unknown model kind {kind!r}")
    return torch.cat(out).float()


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, n_classes: int
) -> dict[str, Any]:
    """Metrics of predictions; F1 per class over all classes (0 where a class never occurs).

    Macro-F1 averages over the classes present in `labels`, as scikit-learn does when
    given the labels that occur.
    """
    pred = logits.argmax(axis=1)
    k = min(5, n_classes)
    topk = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion).astype(float)
    precision_den = confusion.sum(axis=0)
    recall_den = confusion.sum(axis=1)
    f1 = np.divide(
        2 * tp,
        precision_den + recall_den,
        out=np.zeros(n_classes),
        where=(precision_den + recall_den) > 0,
    )
    present = recall_den > 0
    return {
        "n": len(labels),
        "top1": float((pred == labels).mean()),
        "top5": float((topk == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": [round(float(v), 6) for v in f1],
        "confusion": confusion.tolist(),
    }


def evaluate(
    model: AVModel, data: FederatedData, indices: torch.Tensor, kind: str = "audio"
) -> dict[str, Any]:
    logits = predict(model, data, indices, kind).cpu().numpy()
    labels = data.labels[indices].cpu().numpy()
    metrics = classification_metrics(logits, labels, data.n_classes)
    for key in ("top1", "top5", "macro_f1"):
        metrics[key] = round(metrics[key], 6)
    return metrics
