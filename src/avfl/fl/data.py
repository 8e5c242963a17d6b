"""Client data held as tensors on the training device.

All samples of a fold live in three tensors (audio input, visual input, labels); a client
is an index tensor into them. Local training slices batches by index: no per-client
Dataset or DataLoader is built, and nothing is copied per round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from avfl.partition import audio_only_clients


@dataclass
class FederatedData:
    audio: torch.Tensor  # (N, ...) audio input of every sample (embeddings or fbank)
    visual: torch.Tensor  # (N, ...) visual input (embeddings or frames)
    labels: torch.Tensor  # (N,)
    clients: list[torch.Tensor]  # per client: indices of its training samples
    dev: torch.Tensor
    test: torch.Tensor
    n_classes: int
    class_names: list[str]
    audio_only: frozenset[int]  # clients without video at this rate

    @property
    def multimodal(self) -> list[int]:
        return [c for c in range(len(self.clients)) if c not in self.audio_only]

    def client_size(self, client: int) -> int:
        return int(self.clients[client].numel())

    def training_indices(self) -> torch.Tensor:
        """Every training sample of the federation (the union of the clients)."""
        return torch.cat(self.clients)

    def pooled(self) -> FederatedData:
        """The same data with all training clients pooled into one (centralised training)."""
        return replace(self, clients=[self.training_indices()], audio_only=frozenset())


def label_tensor(row_of: Mapping[str, int], label_of: Mapping[str, int], n: int) -> torch.Tensor:
    """Labels by feature row (-1 for rows without a clip)."""
    labels = torch.full((n,), -1, dtype=torch.long)
    for clip_id, row in row_of.items():
        labels[row] = label_of[clip_id]
    return labels


def build_federated_data(
    partition: Mapping[str, Any],
    row_of: Mapping[str, int],
    label_of: Mapping[str, int],
    audio: torch.Tensor,
    visual: torch.Tensor,
    rate: float | None,
    device: torch.device,
    labels: torch.Tensor | None = None,
) -> FederatedData:
    """Index the partition's clip ids into the feature tensors and move everything to `device`.

    Runs that pass the same `audio`, `visual` and `labels` tensors (on the device) share
    them, and their clients can train in one lockstep step.
    """

    def index(ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([row_of[i] for i in ids], dtype=torch.long, device=device)

    if labels is None:
        labels = label_tensor(row_of, label_of, audio.shape[0])
    audio_only = (
        frozenset()
        if rate is None
        else frozenset(audio_only_clients(partition["audio_only_order"], rate))
    )
    return FederatedData(
        audio=audio.to(device),
        visual=visual.to(device),
        labels=labels.to(device),
        clients=[index(ids) for ids in partition["clients"]],
        dev=index(partition["dev"]),
        test=index(partition["test"]),
        n_classes=len(partition["classes"]),
        class_names=list(partition["classes"]),
        audio_only=audio_only,
    )
