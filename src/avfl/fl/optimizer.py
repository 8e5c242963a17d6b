"""The local optimizer, built one way for both training paths (one client at a time, and in lockstep).

Adam uses PyTorch's fused kernel (CPU and CUDA): one kernel per step for all parameters;
SGD its multi-tensor (foreach) form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from avfl.fl.engine import TrainSettings


def make_optimizer(params: Iterable[torch.Tensor], cfg: TrainSettings) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
