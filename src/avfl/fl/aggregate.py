"""Server-side aggregation: FedAvg, and its modality-aware form.

Each client reports which parameter groups it trained. A parameter is averaged, weighted
by sample counts, over exactly the clients that trained it; a parameter that no sampled
client trained keeps its global value. With every client training every group this is
plain FedAvg (McMahan et al., 2017); with audio-only and multimodal clients it is the
modality-aware aggregation of the paper's Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from avfl.models.heads import group_of


class Aggregator:
    """Accumulates weighted client states one at a time (no list of client models is kept)."""

    def __init__(self, global_state: Mapping[str, torch.Tensor]):
        self.global_state = global_state
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, float] = {}
        self.contributors: dict[str, list[int]] = {}

    def add(
        self, client: int, state: Mapping[str, torch.Tensor], groups: Iterable[str], weight: float
    ) -> None:
        groups = set(groups)
        for name, value in state.items():
            if group_of(name) not in groups or not value.is_floating_point():
                continue
            contribution = value.detach().double() * weight
            if name in self.sums:
                self.sums[name] += contribution
            else:
                self.sums[name] = contribution
            self.weights[name] = self.weights.get(name, 0.0) + weight
            self.contributors.setdefault(name, []).append(client)

    def result(self) -> dict[str, torch.Tensor]:
        new_state = {}
        for name, value in self.global_state.items():
            if name in self.sums:
                new_state[name] = (self.sums[name] / self.weights[name]).to(value.dtype)
            else:
                new_state[name] = value.clone()
        return new_state
