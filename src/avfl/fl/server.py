"""Server strategies: how a phase's clients are chosen and their updates combined.

The default is modality-aware FedAvg (McMahan et al., 2017): each parameter is averaged,
weighted by sample counts, over exactly the clients that trained it, and a parameter that no
sampled client trained keeps its global value. With every client training every group this
is plain FedAvg; with audio-only and multimodal clients it is the modality-aware aggregation
of the ModalityMirror paper's Algorithm 1. Other strategies (a server optimizer, a method's
own client selection) subclass `FedAvgServer` and override one step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from avfl.fl.types import ClientUpdate, Phase, PhaseContext, Task


def weighted_average(
    state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
) -> dict[str, torch.Tensor]:
    """Per tensor, the sample-weighted mean over the updates that carry it (float64 sums).

    Multi-tensor ops: one accumulation per update over all the tensors it carries, instead of
    one kernel per (tensor, update), which on a GPU would be most of a round's launches. The
    arithmetic is the per-tensor one: each float64 total gets `total += weight * value`, update
    after update in their order, then one division by its carriers' weight and one rounding to
    the tensor's dtype (on the CPU the multi-tensor ops run exactly these per-tensor kernels).
    """
    carried: dict[str, float] = {}  # name -> the sum of its carriers' weights
    for update in updates:
        for name, value in update.state.items():
            if value.is_floating_point():
                carried[name] = carried.get(name, 0.0) + update.weight
    names = [n for n in state if n in carried]
    new_state = {n: v.clone() for n, v in state.items() if n not in carried}
    if not names:
        return new_state
    device = state[names[0]].device
    totals = dict(zip(names, _zeros64([state[n] for n in names]), strict=True))
    gpu = device.type == "cuda"
    for update in updates:
        mine = [n for n in names if n in update.state and update.state[n].is_floating_point()]
        if not mine:
            continue
        values = [update.state[n] for n in mine]
        if gpu:  # one same-dtype list: the fused kernels' fast path
            values64 = _zeros64(values)
            torch._foreach_copy_(values64, values)
            values = values64
        torch._foreach_add_([totals[n] for n in mine], values, alpha=update.weight)
    sums = [totals[n] for n in names]
    torch._foreach_div_(sums, [carried[n] for n in names])
    out = [torch.empty_like(state[n]) for n in names]
    torch._foreach_copy_(out, sums)
    averaged = dict(zip(names, out, strict=True))
    return {n: averaged[n] if n in averaged else new_state[n] for n in state}


def _zeros64(like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Float64 zeros shaped like each tensor: views of one buffer (one allocation)."""
    sizes = [t.numel() for t in like]
    flat = torch.zeros(sum(sizes), dtype=torch.float64, device=like[0].device)
    return [part.view(t.shape) for part, t in zip(flat.split(sizes), like, strict=True)]


class FedAvgServer:
    """Uniform sampling of `clients_per_round`, `phase.task_of` per client, modality-aware FedAvg."""

    def __init__(self, phase: Phase, context: PhaseContext | None = None):
        self.phase = phase
        self.context = context

    def start(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(state)

    def select(
        self, rnd: int, rng: np.random.Generator, eligible: Sequence[int], k: int
    ) -> list[int]:
        return sorted(rng.choice(eligible, size=min(k, len(eligible)), replace=False).tolist())

    def assign_tasks(
        self, rnd: int, clients: Sequence[int], state: Mapping[str, torch.Tensor]
    ) -> dict[int, Task]:
        return {c: self.phase.task_of(c) for c in clients}

    def aggregate(
        self, rnd: int, state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]:
        return weighted_average(state, updates)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")
