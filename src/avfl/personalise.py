"""Personalised evaluation: each client's own model on its own label mix.

Under Dirichlet(0.1) label skew a client holds a few classes, and what many FL users ask of a
method is how well the model a client ends up with classifies *its* clips. Clients hold 2-45
clips, too few for a local test split, so a client's score is the global test split
reweighted to its label mix: a test clip of class y weighs p_client(y) / p_test(y), where
p_client is the class distribution of the client's training clips and p_test that of the test
split. For a client whose mix equals the test split's, every weight is 1 and the score is the
plain test accuracy. A class the client holds but the test split lacks cannot be scored, and
its share of the client's mix is left out (the weights are normalised over what is scored).

A client's model is the run's reported audio model after k local fine-tuning steps on its own
training clips (k = 0: the global model itself), with the run's local optimizer, learning
rate and batch size, trained from the client's own generator; the steps train the audio
model's groups only. The scores are averaged over the clients, and separately over the
audio-only and the multimodal clients of a run with a rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from avfl.evaluate import predict
from avfl.fl.data import FederatedData
from avfl.fl.local import train_rows
from avfl.fl.tasks import AudioTask
from avfl.fl.types import TrainSettings, derive_seed


def label_mix_weights(
    client_labels: torch.Tensor, test_labels: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """Per test clip: p_client(y) / p_test(y) (float64)."""
    p_client = torch.bincount(client_labels.cpu(), minlength=n_classes).double()
    p_test = torch.bincount(test_labels.cpu(), minlength=n_classes).double()
    p_client, p_test = p_client / p_client.sum(), p_test / p_test.sum()
    y = test_labels.cpu()
    return p_client[y] / p_test[y]


def weighted_accuracy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    """sum of weights of the correct clips over the sum of all weights (NaN if none weigh)."""
    correct = (logits.argmax(dim=1).cpu() == labels.cpu()).double()
    total = float(weights.sum())
    return float((weights * correct).sum()) / total if total > 0 else float("nan")


def step_indices(indices: torch.Tensor, steps: int, batch: int, seed: int) -> torch.Tensor:
    """Exactly `steps` batches of the client's clips: permutations of them, one after another,
    cut to steps x batch, so that one local epoch over them is `steps` steps (a client with
    fewer clips than a batch repeats them within it)."""
    generator = torch.Generator().manual_seed(seed)
    need = steps * batch
    parts, have = [], 0
    while have < need:
        parts.append(indices.cpu()[torch.randperm(indices.numel(), generator=generator)])
        have += indices.numel()
    return torch.cat(parts)[:need].to(indices.device)


def personalised_scores(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    data: FederatedData, cfg: TrainSettings, steps: Sequence[int], seed: int, has_rate: bool,
    task: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """{"k<steps>": {"mean", "audio_only", "multimodal", "per_client"}} for each k in `steps`.
    `state`: the model every client starts from, or one per client (a personalised method's
    own models); `task`: what a fine-tuning step trains (default AudioTask: the audio model)."""
    clients = range(len(data.clients))
    own = list(state) if isinstance(state, list | tuple) else [state] * len(data.clients)
    task = task or AudioTask()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    test_labels = data.labels[data.test]
    weights = [
        label_mix_weights(data.labels[data.clients[c]], test_labels, data.n_classes)
        for c in clients
    ]
    out: dict[str, Any] = {}
    for k in steps:
        shared = all(s is own[0] for s in own)
        if k == 0 and shared:  # one model for all: one forward pass
            model.load_state_dict({**base, **own[0]})
            logits = predict(model, data, data.test, "audio")
            per_client = [weighted_accuracy(logits, test_labels, w) for w in weights]
        else:
            trained = [{} for _ in clients]
            if k > 0:
                one_epoch = replace(cfg, local_epochs=1)
                starts = [{**base, **own[c]} for c in clients]
                indices = [
                    step_indices(data.clients[c], k, cfg.batch_size, derive_seed(seed, "personalise", k, c))
                    for c in clients
                ]  # fmt: skip
                seeds = [derive_seed(seed, "personalise_rows", k, c) for c in clients]
                trained = [
                    r.state
                    for r in train_rows(model, task, starts, indices, seeds, data, one_epoch)
                ]
            per_client = []
            for c in clients:
                model.load_state_dict({**base, **own[c], **trained[c]})
                logits = predict(model, data, data.test, "audio")
                per_client.append(weighted_accuracy(logits, test_labels, weights[c]))
        model.load_state_dict(base)

        def mean(values: list[float]) -> float | None:
            found = [v for v in values if v == v]
            return round(sum(found) / len(found), 6) if found else None

        audio_only = [per_client[c] for c in clients if c in data.audio_only]
        multimodal = [per_client[c] for c in clients if c not in data.audio_only]
        out[f"k{k}"] = {
            "mean": mean(per_client),
            "audio_only": mean(audio_only) if has_rate else None,
            "multimodal": mean(multimodal) if has_rate else None,
            "per_client": [round(v, 6) for v in per_client],
        }
    return out
