"""Dropout whose masks are a function of (run seed, phase, round, client, step), not of batching.

The engine trains many (run, client) rows at once. With PyTorch's dropout the masks come
from one global generator, so a client's masks would depend on which other rows share its
step: the same run trained alone or in a batch would differ. Here each row draws a pool of
uniform noise per step from its own generator (the one that also orders its batches), and
every dropout site reads its own fixed slice of that pool. Outside the engine (no pool
set), the modules are ordinary dropout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn import functional as F

_POOL: ContextVar[torch.Tensor | None] = ContextVar("avfl_dropout_pool", default=None)


class PooledDropout(nn.Module):
    """Dropout over (batch, width) activations; site `site` reads pool[offset : offset + b*width]."""

    def __init__(self, p: float, width: int):
        super().__init__()
        self.p = float(p)
        self.width = int(width)
        self.offset = 0  # set by `assign_sites` once the whole model is built

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        pool = _POOL.get()
        if pool is None:
            return F.dropout(x, self.p, training=True)
        noise = pool[self.offset : self.offset + x.numel()].view_as(x)
        return x * (noise >= self.p).to(x.dtype) / (1.0 - self.p)


def assign_sites(model: nn.Module, batch_size: int) -> int:
    """Give every PooledDropout its own region of the pool; returns the pool size per step."""
    offset = 0
    for module in model.modules():
        if isinstance(module, PooledDropout):
            module.offset = offset
            offset += batch_size * module.width
    return offset


def pool_size(model: nn.Module, batch_size: int) -> int:
    """Noise values one step needs (0 when no dropout site is active), after `assign_sites`."""
    sites = [m for m in model.modules() if isinstance(m, PooledDropout)]
    if not any(m.p > 0 for m in sites):
        return 0
    return assign_sites(model, batch_size)


@contextmanager
def noise_pool(pool: torch.Tensor | None) -> Iterator[None]:
    """Make `pool` the noise the model's dropout sites read during this forward pass."""
    token = _POOL.set(pool)
    try:
        yield
    finally:
        _POOL.reset(token)
