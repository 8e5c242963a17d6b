"""The trainable parts: a per-modality encoder on each backbone, an audio head, a visual head
(Harmony's unimodal visual model) and a late-fusion head over the concatenated embeddings.

Parameter names start with their group (`audio_encoder.`, `fusion_head.`, ...): the unit
that clients train and the server averages. In fine-tuning mode the backbones are groups
too (`audio_backbone.`, `visual_backbone.`); in frozen mode they are not part of the model
and the inputs are their precomputed embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

GROUPS = (
    "audio_backbone",
    "visual_backbone",
    "audio_encoder",
    "visual_encoder",
    "audio_head",
    "visual_head",
    "fusion_head",
)
AUDIO_MODEL = ("audio_backbone", "audio_encoder", "audio_head")
VISUAL_MODEL = ("visual_backbone", "visual_encoder", "visual_head")
AV_MODEL = ("audio_backbone", "audio_encoder", "visual_backbone", "visual_encoder", "fusion_head")


def group_of(name: str) -> str:
    return name.split(".", 1)[0]


def encoder(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(in_dim),
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
    )


class AVModel(nn.Module):
    """Dual-encoder audio-visual model with an audio-only path (the model audio-only clients use)."""

    def __init__(
        self,
        audio_dim: int,
        visual_dim: int,
        n_classes: int,
        hidden: int,
        dropout: float,
        audio_backbone: nn.Module | None = None,
        visual_backbone: nn.Module | None = None,
    ):
        super().__init__()
        self.audio_backbone = audio_backbone if audio_backbone is not None else nn.Identity()
        self.visual_backbone = visual_backbone if visual_backbone is not None else nn.Identity()
        self.audio_encoder = encoder(audio_dim, hidden, dropout)
        self.visual_encoder = encoder(visual_dim, hidden, dropout)
        self.audio_head = nn.Linear(hidden, n_classes)
        self.visual_head = nn.Linear(hidden, n_classes)
        self.fusion_head = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )

    def audio_embedding(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder(self.audio_backbone(audio))

    def visual_embedding(self, visual: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(self.visual_backbone(visual))

    def audio_logits(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_head(self.audio_embedding(audio))

    def visual_logits(self, visual: torch.Tensor) -> torch.Tensor:
        return self.visual_head(self.visual_embedding(visual))

    def av_logits(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        return self.fusion_head(
            torch.cat([self.audio_embedding(audio), self.visual_embedding(visual)], dim=-1)
        )
