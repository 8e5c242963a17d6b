"""The local tasks that the methods are built from: what a client trains, and its loss.

Each task gives a per-sample loss (the trainer weighs it, so padded batches cost nothing),
the parameter groups it trains (`groups`) and the groups its loss reads (`reads`, so the
trainer passes each row only what it needs). Tasks are frozen dataclasses: clients whose
tasks are equal train in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from avfl.fl.stacked import Batch, Rows, weighted_cross_entropy
from avfl.models.heads import AUDIO_MODEL, AV_MODEL, VISUAL_MODEL, AVModel


@dataclass(frozen=True)
class UnimodalTask:
    """Cross-entropy of one modality's unimodal model: what an audio-only client can train
    ("audio"), or Harmony's first-stage visual model ("visual")."""

    modality: str

    @property
    def name(self) -> str:
        return self.modality

    @property
    def groups(self) -> tuple[str, ...]:
        return AUDIO_MODEL if self.modality == "audio" else VISUAL_MODEL

    @property
    def reads(self) -> tuple[str, ...]:
        return (f"{self.modality}_input", *self.groups)

    def sample_loss(
        self, model: AVModel, audio: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        logits = (
            model.audio_logits(audio) if self.modality == "audio" else model.visual_logits(visual)
        )
        return F.cross_entropy(logits, labels, reduction="none")

    def stacked(self, rows: Rows, batch: Batch) -> torch.Tensor:
        """`sample_loss` with its gradients written out (fl/stacked.py)."""
        m = self.modality
        encoded = rows.encode(m, batch.audio if m == "audio" else batch.visual)
        logits = rows.linear(f"{m}_head", encoded.out)
        loss, dlogits = weighted_cross_entropy(logits, batch.labels, batch.weight)
        rows.encode_backward(encoded, rows.linear_backward(f"{m}_head", encoded.out, dlogits))
        return loss


def AudioTask() -> UnimodalTask:
    """The audio-only client's task (a constructor that reads as the task it makes)."""
    return UnimodalTask("audio")


def VisualTask() -> UnimodalTask:
    return UnimodalTask("visual")


@dataclass(frozen=True)
class AVTask:
    """Cross-entropy of the late-fusion audio-visual model, optionally plus the audio head's.

    audio_head_weight > 0 lets multimodal clients also train the audio head on their audio
    embeddings (then the head is averaged over them too).
    """

    audio_head_weight: float = 0.0
    name: str = "av"

    @property
    def groups(self) -> tuple[str, ...]:
        return AV_MODEL + (("audio_head",) if self.audio_head_weight > 0 else ())

    @property
    def reads(self) -> tuple[str, ...]:
        return ("audio_input", "visual_input", *self.groups)

    def sample_loss(
        self, model: AVModel, audio: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        a = model.audio_embedding(audio)
        v = model.visual_embedding(visual)
        loss = F.cross_entropy(model.fused_logits(a, v), labels, reduction="none")
        if self.audio_head_weight > 0:
            loss = loss + self.audio_head_weight * F.cross_entropy(
                model.audio_head(a), labels, reduction="none"
            )
        return loss

    def stacked(self, rows: Rows, batch: Batch) -> torch.Tensor:
        """`sample_loss` with its gradients written out (fl/stacked.py)."""
        a = rows.encode("audio", batch.audio)
        v = rows.encode("visual", batch.visual)
        logits, fused = rows.fuse(a.out, v.out)
        loss, dlogits = weighted_cross_entropy(logits, batch.labels, batch.weight)
        da, dv = rows.fuse_backward(fused, dlogits)
        if self.audio_head_weight > 0:
            head = rows.linear("audio_head", a.out)
            head_loss, dhead = weighted_cross_entropy(
                head, batch.labels, batch.weight * self.audio_head_weight
            )
            loss = loss + head_loss
            da = da + rows.linear_backward("audio_head", a.out, dhead)
        rows.encode_backward(a, da)
        rows.encode_backward(v, dv)
        return loss
