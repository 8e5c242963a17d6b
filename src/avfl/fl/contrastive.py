"""Contrastive losses that couple a batch's samples, with lockstep padding kept out.

NT-Xent (SimCLR; Chen et al., 2020), the loss FSSUAVL trains each modality with: 2N views of
N items, every view an anchor, its item's other view the positive, the other 2N - 2 views the
negatives, cosine similarity over a temperature. The self term is left out of the
denominator, as SimCLR's paper writes it. A sample with weight 0 (the padding lockstep adds
to a short batch) is neither an anchor the caller counts nor a negative of anyone, so a
padded batch gives the loss and gradients of the unpadded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from avfl.models import views


def nt_xent(
    view1: torch.Tensor, view2: torch.Tensor, weight: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per item: the mean of its two views' NT-Xent losses.

    `view1`, `view2`: (N, d) embeddings of the items' two views (normalised here); `weight`:
    (N,) sample weights, 0 for padding. A view's loss is
    -sim(u, v+)/t + log sum over v in {v+} and the real other views of exp(sim(u, v)/t).
    """
    z = torch.cat([view1, view2])
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = view1.shape[0]
    sim = (z @ z.T) / temperature
    real = torch.cat([weight, weight]) > 0
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    # Out of every denominator: the view itself and the padding (a large negative, not -inf,
    # so a padded anchor's own row stays finite and its zero weight gives a zero gradient).
    logits = torch.where(real[None, :] & ~eye, sim, torch.full_like(sim, -1e9))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    positive = sim.gather(1, partner[:, None]).squeeze(1)
    per_view = logits.logsumexp(dim=-1) - positive
    return 0.5 * (per_view[:n] + per_view[n:])


# Per sample and step: two audio views' draws, then two image views' (models/views.py). The
# audio draws come first, so an audio-only client's audio views are the ones a multimodal
# client would take: FSSUAVL at rate 1 is FASSL, bit for bit.
AUDIO_VIEWS = slice(0, 2 * views.AUDIO_DRAWS)
IMAGE_VIEWS = (
    slice(2 * views.AUDIO_DRAWS, 2 * views.AUDIO_DRAWS + views.IMAGE_DRAWS),
    slice(2 * views.AUDIO_DRAWS + views.IMAGE_DRAWS, 2 * (views.AUDIO_DRAWS + views.IMAGE_DRAWS)),
)
DRAWS = 2 * (views.AUDIO_DRAWS + views.IMAGE_DRAWS)


@dataclass(frozen=True)
class ContrastiveTask:
    """SimCLR per modality on a client's own clips (FSSUAVL Eq. 1): two views of each clip's
    audio and, for `modalities` ("audio", "visual"), of its frame, through one backbone.

    A batch is all audio or all images: each modality is one forward pass of both views (its
    own BatchNorm batch statistics), and the step minimises the sum of the two modalities'
    mean losses (one optimizer step; the paper's "sequentially" leaves separate steps open).
    There is no cross-modal term. The per-sample loss is each clip's mean view loss summed
    over its modalities, so the trainer's sample mean is exactly that sum.
    """

    modalities: tuple[str, ...]
    temperature: float
    uses_sample_weight: ClassVar[bool] = True  # the loss couples a batch's samples
    randoms_per_sample: ClassVar[int] = DRAWS
    groups: ClassVar[tuple[str, ...]] = ("shared_backbone", "projection")
    reads: ClassVar[tuple[str, ...]] = ("shared_backbone", "projection")

    @property
    def name(self) -> str:
        return "simclr_" + "_".join(self.modalities)

    def sample_loss(
        self, model: Any, audio: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor,
        weight: torch.Tensor, randoms: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        loss = torch.zeros(audio.shape[0], device=audio.device)
        n = audio.shape[0]
        if "audio" in self.modalities:
            u = randoms[:, AUDIO_VIEWS]
            both = torch.cat([model.audio_views(audio, u[:, 0]), model.audio_views(audio, u[:, 1])])
            z = model.embed(both)
            loss = loss + nt_xent(z[:n], z[n:], weight, self.temperature)
        if "visual" in self.modalities:
            both = torch.cat([model.image_views(visual, randoms[:, s]) for s in IMAGE_VIEWS])
            z = model.embed(both)
            loss = loss + nt_xent(z[:n], z[n:], weight, self.temperature)
        return loss
