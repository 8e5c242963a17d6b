"""Local training of several clients in lockstep, with torch.func.

The clients of a round that share a task train at once: their copies of the trainable
parameters are stacked along a leading client axis and every step is one vmapped
forward/backward and one Adam or SGD update for all of them. Each client keeps its own
batch order (drawn from its own seed, as in the sequential path), its own optimizer
state and its own number of steps: a client with fewer samples gets zero-weight padding
batches after its last real step, whose updates are discarded. Per step this replaces
k small kernels per layer by one batched kernel, which is where small federated models
spend their time.

Models with BatchNorm (the small CNN and ResNet-18 backbones in fine-tuning mode) update
running statistics in place, which vmap cannot batch; they use the sequential path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from avfl.fl.optimizer import make_optimizer
from avfl.models.heads import group_of

if TYPE_CHECKING:
    from avfl.fl.data import FederatedData
    from avfl.fl.engine import Task, TrainSettings


def supports_parallel(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _TaskLoss(nn.Module):
    """Makes a task's per-sample loss the module's forward, for functional_call."""

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, audio, visual, labels):
        return self.task.sample_loss(self.model, audio, visual, labels)


def batch_schedule(
    sizes: Sequence[int], seeds: Sequence[int], epochs: int, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clients, steps, batch) positions into each client's index list, and their weights (0 = padding)."""
    steps = [epochs * math.ceil(n / batch) for n in sizes]
    total = max(steps)
    positions = torch.zeros(len(sizes), total, batch, dtype=torch.long)
    weights = torch.zeros(len(sizes), total, batch)
    for i, (n, seed) in enumerate(zip(sizes, seeds, strict=True)):
        generator = torch.Generator().manual_seed(seed)
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch):
                chunk = order[start : start + batch]
                positions[i, step, : len(chunk)] = chunk
                weights[i, step, : len(chunk)] = 1.0
                step += 1
    return positions, weights


def parallel_local_train(
    model: nn.Module,
    task: Task,
    state: dict[str, torch.Tensor],
    client_indices: Sequence[torch.Tensor],
    seeds: Sequence[int],
    data: FederatedData,
    cfg: TrainSettings,
) -> dict[str, torch.Tensor]:
    """Train the clients from `state`; returns their trained parameters stacked on axis 0.

    Padding steps come only after a client's last real step, so all clients can share one
    optimizer (torch's own multi-tensor Adam/SGD on the stacked tensors, one step count):
    each client's parameters are snapshotted at its last real step and the later updates,
    which only a finished client would see, are discarded.
    """
    wrapper = _TaskLoss(model, task)
    trained = [name for name, _ in model.named_parameters() if group_of(name) in task.groups]
    k = len(client_indices)
    device = data.audio.device
    params = {
        f"model.{n}": state[n].detach().unsqueeze(0).repeat(k, *([1] * state[n].dim()))
        for n in trained
    }
    fixed = {f"model.{n}": v for n, v in state.items() if n not in set(trained)}
    optimizer = make_optimizer(params.values(), cfg)
    sizes = [int(i.numel()) for i in client_indices]
    positions, weights = batch_schedule(sizes, seeds, cfg.local_epochs, cfg.batch_size)
    last_step = [cfg.local_epochs * math.ceil(n / cfg.batch_size) - 1 for n in sizes]
    padded = torch.zeros(k, max(sizes), dtype=torch.long, device=device)
    for i, idx in enumerate(client_indices):
        padded[i, : idx.numel()] = idx
    rows = torch.gather(padded, 1, positions.flatten(1).to(device)).view(positions.shape)
    weights = weights.to(device)

    def loss_fn(p, audio, visual, labels, w):
        per_sample = functional_call(wrapper, (p, fixed), (audio, visual, labels))
        return (per_sample * w).sum() / w.sum().clamp_min(1.0)

    grad_fn = vmap(grad(loss_fn), randomness="different")
    final = {name: torch.empty_like(p) for name, p in params.items()}
    model.train()
    for step in range(rows.shape[1]):
        batch = rows[:, step]
        grads = grad_fn(
            params, data.audio[batch], data.visual[batch], data.labels[batch], weights[:, step]
        )
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()
        for i in (i for i, last in enumerate(last_step) if last == step):
            for name, p in params.items():
                final[name][i] = p[i]
    return {name.removeprefix("model."): value for name, value in final.items()}
