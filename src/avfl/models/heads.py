"""The trainable parts: a per-modality encoder on each backbone, an audio head, a visual head
(Harmony's unimodal visual model) and a late-fusion head over the concatenated embeddings.

Parameter names start with their group (`audio_encoder.`, `fusion_head.`, ...): the unit
that clients train and the server averages. In fine-tuning mode the backbones are groups
too (`audio_backbone.`, `visual_backbone.`); in frozen mode they are not part of the model
and the inputs are their precomputed embeddings.

Frozen embeddings enter through a fixed standardisation (groups `audio_input`,
`visual_input`: per-feature mean and std of the run's training clips, never trained or
averaged). Embeddings of real clips often vary little around a large common offset (long
digital silence, a shared background); the encoders' LayerNorm normalises each sample over
its features and does not remove a per-feature offset, and federated training under label
skew then stalls. The statistics are part of the model, so every method and every
evaluation applies exactly the same transform.
"""

from __future__ import annotations

import torch
from torch import nn

from avfl.models.dropout import PooledDropout

GROUPS = (
    "audio_input",
    "visual_input",
    "audio_backbone",
    "visual_backbone",
    "audio_encoder",
    "visual_encoder",
    "audio_head",
    "visual_head",
    "fusion_head",
    "audio_prototypes",
    "visual_prototypes",
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
        PooledDropout(dropout, hidden),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
    )


class Standardise(nn.Module):
    """(x - mean) / std with fixed per-feature statistics (identity until `set_stats`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std (float64 sums); a constant feature gets std 1, as scikit-learn's StandardScaler."""
    x = x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    return mean.float(), std.float()


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
        # In fine-tuning mode the backbones normalise their own inputs: the input groups stay identity.
        self.audio_input = Standardise(audio_dim if audio_backbone is None else 1)
        self.visual_input = Standardise(visual_dim if visual_backbone is None else 1)
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
        return self.audio_encoder(self.audio_input(self.audio_backbone(audio)))

    def visual_embedding(self, visual: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(self.visual_input(self.visual_backbone(visual)))

    def audio_logits(self, audio: torch.Tensor) -> torch.Tensor:
        return self.audio_head(self.audio_embedding(audio))

    def visual_logits(self, visual: torch.Tensor) -> torch.Tensor:
        return self.visual_head(self.visual_embedding(visual))

    def fused_logits(
        self, audio_embedding: torch.Tensor, visual_embedding: torch.Tensor
    ) -> torch.Tensor:
        return self.fusion_head(torch.cat([audio_embedding, visual_embedding], dim=-1))

    def av_logits(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        return self.fused_logits(self.audio_embedding(audio), self.visual_embedding(visual))


def seeded_linear(in_dim: int, out_dim: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with nn.Linear's initialisation drawn from `generator`: a part a method adds
    to the run's model inside its `run` must not draw from PyTorch's global generator, which
    the runs of a job share (they build their models in parallel threads, avfl.train)."""
    import math

    linear = torch.nn.utils.skip_init(nn.Linear, in_dim, out_dim)
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(in_dim)
        linear.bias.uniform_(-bound, bound, generator=generator)
    return linear


class WithTeacher(AVModel):
    """An AVModel (the student) whose parameters also hold a teacher AVModel (group `teacher`).

    One model, so that the engine trains, checkpoints and averages student and teacher as
    parameter groups like any other (a trainable teacher is averaged; a frozen one is not).
    """

    def __init__(self, student: AVModel, teacher: AVModel):
        nn.Module.__init__(self)
        for name, module in student.named_children():
            self.add_module(name, module)
        self.teacher = teacher


class PrototypeHead(nn.Module):
    """Logits = minus the Euclidean distance of an embedding to each class prototype.

    The prototypes are a buffer that the server sets (BMSFed's global prototypes): clients
    read them, nobody trains them.
    """

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(n_classes, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # |z|^2 - 2 z.p + |p|^2: one matrix product instead of a (batch, classes, dim)
        # difference tensor, which made BMSFed's local steps three times as slow.
        p = self.prototypes
        squared = (z * z).sum(dim=-1, keepdim=True) - 2.0 * (z @ p.T) + (p * p).sum(dim=-1)
        return -squared.clamp_min(0.0).add(1e-12).sqrt()
