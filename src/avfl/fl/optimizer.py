"""The local optimizer over stacked rows, laid out so that a row's update does not depend on
its neighbours.

Rows of local training are stacked into one tensor per parameter, and PyTorch's fused
Adam/SGD kernels compute a tensor's body with vector instructions and its last partial
vector with scalar code, which need not round alike. A row whose elements fell in the tail
in one batch and in the body in another would get different updates, so a run's numbers
would depend on the runs it is batched with. Here each parameter lives in a flat buffer of
shape (rows, padded) whose row length is a multiple of `ALIGN` elements: every row starts at
the same vector lane and no tensor has a tail, so every element takes the same vector path
whatever the batch. Padding elements have zero gradient and stay zero. Adam uses PyTorch's
fused kernel (one pass per step), SGD its multi-tensor form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from avfl.fl.types import TrainSettings

ALIGN = 64  # elements: a multiple of every vector width and unroll of the fused kernels


class RowOptimizer:
    """Owns the stacked parameters: `params[name]` is a (rows, ...) view of a padded buffer."""

    def __init__(
        self, starts: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str], cfg: TrainSettings
    ):
        """`starts[i][name]`: row i's starting value of each parameter `name` (copied in)."""
        self.buffers: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.params: dict[str, torch.Tensor] = {}
        rows = len(starts)
        for name in names:
            first = starts[0][name]
            n = first.numel()
            padded = math.ceil(max(n, 1) / ALIGN) * ALIGN
            buffer = torch.zeros(rows, padded, dtype=first.dtype, device=first.device)
            view = buffer[:, :n].view(rows, *first.shape)
            for i, start in enumerate(starts):
                view[i].copy_(start[name])
            self.buffers[name] = buffer
            self.grads[name] = torch.zeros_like(buffer)
            self.params[name] = view
            buffer.grad = self.grads[name]
        kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
        options = {"fused": True} if cfg.optimizer == "adam" else {"foreach": True}
        self.optimizer = kind(
            list(self.buffers.values()), lr=cfg.lr, weight_decay=cfg.weight_decay, **options
        )

    def step(self, grads: Mapping[str, torch.Tensor]) -> None:
        for name, grad in grads.items():
            n = self.params[name][0].numel()
            self.grads[name][:, :n].copy_(grad.reshape(grad.shape[0], n))
        self.optimizer.step()
