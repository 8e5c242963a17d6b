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
    """Per tensor, the sample-weighted mean over the updates that carry it (float64 sums)."""
    carried: dict[str, list[tuple[torch.Tensor, float]]] = {}
    for update in updates:
        for name, value in update.state.items():
            if value.is_floating_point():
                carried.setdefault(name, []).append((value, update.weight))
    new_state = {}
    for name, value in state.items():
        if name not in carried:
            new_state[name] = value.clone()
            continue
        # Accumulated update by update, in float64: no stacked copy of every update.
        total = torch.zeros(value.shape, dtype=torch.float64, device=value.device)
        for update_value, weight in carried[name]:
            total.add_(update_value, alpha=weight)
        new_state[name] = total.div_(sum(w for _, w in carried[name])).to(value.dtype)
    return new_state


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

    def plan(
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
