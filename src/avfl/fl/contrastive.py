"""Contrastive losses that couple a batch's samples, with lockstep padding kept out.

NT-Xent (SimCLR; Chen et al., 2020), the loss FSSUAVL trains each modality with: 2N views of
N items, every view an anchor, its item's other view the positive, the other 2N - 2 views the
negatives, cosine similarity over a temperature. The self term is left out of the
denominator, as SimCLR's paper writes it. A sample with weight 0 (the padding lockstep adds
to a short batch) is neither an anchor the caller counts nor a negative of anyone, so a
padded batch gives the loss and gradients of the unpadded one.
"""

from __future__ import annotations

import torch


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
