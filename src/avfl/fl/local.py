"""Local training: the one implementation, for any number of (run, client) rows at once.

A row is one client of one run, starting from its run's global state. Rows that share a
task train in lockstep: every tensor the task reads is stacked along a leading row axis,
and each step is one forward/backward and one optimizer update for all rows. This is what
makes small federated models fast: per step, k small kernels per layer become one batched
kernel, and a batch of runs (seeds, missing rates) shares them too. The built-in tasks on
the built-in frozen-mode model step through written-out kernels (fl/stacked.py); any other
task or model through a vmapped forward/backward (torch.func), the same for every row.

Determinism does not depend on the company a row keeps: its batch order and its dropout
noise come from its own generator (seeded by run seed, phase, round and client), every
tensor it reads is its own slice (no weight is shared across rows, so every matrix product
is a per-row batched product of the same shape), and the optimizer is elementwise. A run
trained alone or in a batch of runs gives the same numbers.

Each row keeps its own number of steps. Rows are ordered by their number of steps, longest
first, so the rows still training at any step are a prefix of the stack: a step computes and
updates only that prefix (a contiguous slice of every buffer), and a row that has finished
simply stops changing. No step is spent on padding, however unequal the clients' sizes.
Models whose layers update state in place during the forward pass
(BatchNorm) or whose backbones are trained (fine-tuning mode) take the same steps one row
at a time through autograd (`lockstep=False` does so for any model: the tests' reference,
equal to the lockstep paths up to float rounding).

Pre-drawn per-sample randoms (the vmapped path runs with randomness="error", so a loss may
call no random function): a task with `randoms_per_sample = m > 0` gets `randoms=` in
`sample_loss`, a (batch, m) tensor of uniforms in [0, 1), one row per sample position of the
step's batch. They are drawn in advance by `row_schedule` from the row's own generator, after
its batch orders and dropout noise (so those stay what they are without the seam), and so
depend only on (run seed, phase, round, client, step, position): never on the row's company,
the same on the lockstep and the one-row path (which passes the rows of its real samples).
Padding positions get values too; a loss weighs them out as it weighs out the padding itself.
Such a task trains through the vmapped or the one-row path: fl/stacked.py's Batch carries
no randoms (CMRF's mixing ratios, avfl/methods/cmrf.py, use the seam).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from avfl.fl import stacked
from avfl.fl.optimizer import RowOptimizer
from avfl.fl.types import Task, TrainSettings, derive_seed
from avfl.models.dropout import noise_pool, pool_size
from avfl.models.heads import group_of


@dataclass
class RowResult:
    state: dict[str, torch.Tensor]  # trained tensors of the task's groups
    loss: float  # mean training loss over the row's real steps
    steps: int


def supports_lockstep(model: nn.Module) -> bool:
    """vmap needs pure layers: no BatchNorm (running statistics) and no trained backbone."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    return not any(group_of(n).endswith("_backbone") for n, _ in model.named_parameters())


class _TaskLoss(nn.Module):
    """Makes a task's per-sample loss the module's forward, for functional_call."""

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, audio, visual, labels, weight, randoms=None, **values):
        if getattr(self.task, "uses_sample_weight", False):  # a loss that couples its samples
            values = {**values, "weight": weight}
        if randoms is not None:  # pre-drawn per-sample uniforms (randoms_per_sample)
            values = {**values, "randoms": randoms}
        return self.task.sample_loss(self.model, audio, visual, labels, **values)


def randoms_per_sample(task: Task) -> int:
    """Uniforms a task's loss reads per sample and step (0: none, the loss gets no `randoms=`)."""
    return int(getattr(task, "randoms_per_sample", 0) or 0)


def row_schedule(
    sizes: Sequence[int], seeds: Sequence[int], epochs: int, batch: int, noise: int,
    randoms: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Per row: batch positions (rows, steps, batch), their weights (0 = padding), the
    dropout noise of each step (rows, steps, noise) and, with `randoms` > 0, that many uniforms
    per sample position (rows, steps, batch, randoms), all drawn from the row's own generator
    in that order (so the randoms change nothing drawn before them)."""
    per_epoch = [math.ceil(n / batch) for n in sizes]
    total = epochs * max(per_epoch)
    positions = torch.zeros(len(sizes), total, batch, dtype=torch.long)
    weights = torch.zeros(len(sizes), total, batch)
    pools = torch.zeros(len(sizes), total, noise) if noise else None
    draws = torch.zeros(len(sizes), total, batch, randoms) if randoms else None
    for i, (n, seed) in enumerate(zip(sizes, seeds, strict=True)):
        generator = torch.Generator().manual_seed(seed)
        steps = per_epoch[i]
        for epoch in range(epochs):  # an epoch's batches: its permutation, cut in rows of `batch`
            span = slice(epoch * steps, (epoch + 1) * steps)
            positions[i, span].view(-1)[:n] = torch.randperm(n, generator=generator)
            weights[i, span].view(-1)[:n] = 1.0
        if pools is not None:
            pools[i, : epochs * steps] = torch.rand(epochs * steps, noise, generator=generator)
        if draws is not None:
            draws[i, : epochs * steps] = torch.rand(
                epochs * steps, batch, randoms, generator=generator
            )
    return positions, weights, pools, draws


def _read_names(model: nn.Module, task: Task, state: Mapping[str, torch.Tensor]) -> list[str]:
    reads = getattr(task, "reads", None)
    if reads is None:
        return list(state)
    groups = set(reads) | set(task.groups)
    return [n for n in state if group_of(n) in groups]


def trains_in_lockstep(model: nn.Module, task: Task, cfg: TrainSettings) -> bool:
    """Whether `train_rows` steps a bucket's rows together (else one row at a time)."""
    if not cfg.lockstep:
        return False
    return supports_lockstep(model) or (hasattr(task, "stacked") and stacked.supports(model))


def lockstep_key(task: Task):
    """What rows must share to train in one step: the task, or its `lockstep_key` when the
    task varies per row only in `row_values` (numbers passed to its loss per row)."""
    return getattr(task, "lockstep_key", task)


def train_rows(
    model: nn.Module,
    tasks: Task | Sequence[Task],
    starts: Sequence[Mapping[str, torch.Tensor]],
    indices: Sequence[torch.Tensor],
    seeds: Sequence[int],
    data,
    cfg: TrainSettings,
) -> list[RowResult]:
    """Train each row from `starts[i]` on samples `indices[i]`; rows share `model`'s structure.

    `model` is a template: its own tensors are never read for a row (every tensor the task
    reads is passed per row); it supplies the structure and the train/eval modes. `tasks` is
    one task for every row, or one per row sharing a `lockstep_key`.
    """
    rows = len(starts)
    tasks = list(tasks) if isinstance(tasks, list | tuple) else [tasks] * rows
    # Longest rows first: the rows still training at a step are then a prefix of the stack.
    n_steps = [cfg.local_epochs * math.ceil(int(i.numel()) / cfg.batch_size) for i in indices]
    order = sorted(range(rows), key=lambda i: (-n_steps[i], i))
    if order != list(range(rows)):
        results = train_rows(
            model, [tasks[i] for i in order], [starts[i] for i in order],
            [indices[i] for i in order], [seeds[i] for i in order], data, cfg,
        )  # fmt: skip
        unsorted: list[RowResult] = [None] * rows  # type: ignore[list-item]
        for position, i in enumerate(order):
            unsorted[i] = results[position]
        return unsorted
    task = tasks[0]
    trained = [n for n, _ in model.named_parameters() if group_of(n) in task.groups]
    if not trained:
        return [RowResult({}, float("nan"), 0) for _ in range(rows)]
    stacked_step = getattr(task, "stacked", None) if cfg.lockstep else None
    if stacked_step is not None and not stacked.supports(model):
        stacked_step = None
    n_randoms = randoms_per_sample(task)
    if stacked_step is not None and n_randoms:
        raise ValueError(
            f"task {task.name}: written-out kernels (stacked) get no per-sample randoms; a task "
            "with randoms_per_sample trains through sample_loss"
        )
    lockstep = cfg.lockstep and supports_lockstep(model)
    if not trains_in_lockstep(model, task, cfg) and rows > 1:
        # The row path trains one row at a time anyway: give each row its own optimizer
        # buffers, freed when it is done, instead of every row's parameters, gradients and
        # moments at once (fine-tuning SSAST-Base + ResNet-18 holds about 2 GB per row). A
        # row's numbers do not depend on its company, so this is the same arithmetic.
        return [
            train_rows(model, [tasks[i]], [starts[i]], [indices[i]], [seeds[i]], data, cfg)[0]
            for i in range(rows)
        ]
    trained_set = set(trained)
    buffers = {n for n, _ in model.named_buffers()}
    names = _read_names(model, task, starts[0])
    device = data.audio.device
    optimizer = RowOptimizer(starts, trained, cfg)
    fixed = {n: torch.stack([s[n].detach() for s in starts]) for n in names if n not in trained_set}
    # Float buffers of trained groups (BatchNorm statistics) travel with the trained state.
    moving = [
        n
        for n in fixed
        if n in buffers and group_of(n) in task.groups and fixed[n].is_floating_point()
    ]
    for n in moving:
        fixed[n] = fixed[n].clone()
    start_params = (
        {n: torch.stack([s[n].detach() for s in starts]) for n in trained}
        if hasattr(task, "penalty")
        else None
    )
    sizes = [int(i.numel()) for i in indices]
    noise = pool_size(model, cfg.batch_size)
    positions, weights, pools, draws = row_schedule(
        sizes, seeds, cfg.local_epochs, cfg.batch_size, noise, n_randoms
    )
    last_step = [n - 1 for n in n_steps]
    # The schedules are drawn on the CPU (the same batch orders and dropout noise on every
    # device) and copied over once per bucket, without waiting, from pinned memory.
    padded = nn.utils.rnn.pad_sequence(list(indices), batch_first=True)
    sample_rows = torch.gather(padded, 1, _to(positions.flatten(1), device)).view(positions.shape)
    weights = _to(weights, device)
    pools = _to(pools, device) if pools is not None else None
    draws = _to(draws, device) if draws is not None else None
    wrapper = _TaskLoss(model, task)
    per_row = None
    if hasattr(task, "row_values"):
        per_row = {
            k: _to(torch.tensor([t.row_values[k] for t in tasks], dtype=torch.float32), device)
            for k in task.row_values
        }

    def loss_fn(p, fix, start, audio, visual, labels, w, pool, vals, rand):
        tensors = {f"model.{n}": v for n, v in {**fix, **p}.items()}
        with noise_pool(pool):
            per_sample = functional_call(
                wrapper, tensors, (audio, visual, labels, w, rand), vals or {}
            )
        loss = (per_sample * w).sum() / w.sum().clamp_min(1.0)
        if start is not None:
            loss = loss + task.penalty(p, start)
        return loss

    # On the device: a step never waits for the host (its loss is read once, at the end).
    loss_sums = torch.zeros(rows, dtype=torch.float64, device=device)
    model.train()
    if stacked_step is not None:
        _train_stacked(
            model, stacked_step, optimizer, fixed, start_params, sample_rows, weights, pools,
            per_row, data, last_step, loss_sums,
        )  # fmt: skip
        return _results(optimizer, moving, fixed, loss_sums, last_step)
    params = optimizer.params
    step_fn = grad_and_value(loss_fn)
    if lockstep:
        in_dims = (0, 0, 0 if start_params is not None else None, 0, 0, 0, 0,
                   0 if pools is not None else None, 0 if per_row is not None else None,
                   0 if draws is not None else None)  # fmt: skip
        step_fn = vmap(step_fn, in_dims=in_dims, randomness="error")
    for step in range(sample_rows.shape[1]):
        k = sum(1 for last in last_step if last >= step)  # the rows still training: a prefix
        batch = sample_rows[:k, step]
        if lockstep:
            grads, losses = step_fn(
                {n: p[:k] for n, p in params.items()}, {n: t[:k] for n, t in fixed.items()},
                {n: p[:k] for n, p in start_params.items()} if start_params is not None else None,
                data.audio[batch], data.visual[batch], data.labels[batch], weights[:k, step],
                pools[:k, step] if pools is not None else None,
                {name: v[:k] for name, v in per_row.items()} if per_row is not None else None,
                draws[:k, step] if draws is not None else None,
            )  # fmt: skip
        else:  # one row (see above): its own step through autograd
            real = sizes[0] - step % math.ceil(sizes[0] / cfg.batch_size) * cfg.batch_size
            take = batch[0, : min(real, cfg.batch_size)]
            torch.manual_seed(derive_seed(seeds[0], "step", step))  # layers with their own dropout
            g, losses = step_fn(
                {n: p[0] for n, p in params.items()}, {n: t[0] for n, t in fixed.items()},
                {n: p[0] for n, p in start_params.items()} if start_params is not None else None,
                data.audio[take], data.visual[take], data.labels[take], weights[0, step, : take.numel()],
                pools[0, step] if pools is not None else None,
                {k: v[0] for k, v in per_row.items()} if per_row is not None else None,
                draws[0, step, : take.numel()] if draws is not None else None,
            )  # fmt: skip
            grads = {n: v.unsqueeze(0) for n, v in g.items()}
        optimizer.step(grads, k)
        loss_sums[:k] += losses.detach().double()
    return _results(optimizer, moving, fixed, loss_sums, last_step)


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`: from pinned memory without waiting, on a GPU."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _results(optimizer, moving, fixed, loss_sums, last_step) -> list[RowResult]:
    results = []
    sums = loss_sums.tolist()  # the one read of the losses
    for i, last in enumerate(last_step):
        state = optimizer.row_state(i) | {n: fixed[n][i].clone() for n in moving}
        results.append(RowResult(state, sums[i] / (last + 1), last + 1))
    return results


def _train_stacked(
    model, step_fn, optimizer, fixed, start_params, sample_rows, weights, pools, per_row, data,
    last_step, loss_sums,
) -> None:  # fmt: skip
    """The steps of every row through the task's written-out kernels (fl/stacked.py). Rows are
    sorted longest first, so the rows still training at a step are a prefix of the stack."""
    # Each sample's share of its row's step loss: padding weighs 0, a row's real samples 1/n.
    shares = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
    views: tuple = (None,)  # (k, tensors, grads, start, per_row): k only falls, so each k's
    for step in range(last_step[0] + 1):  # prefix views are sliced once, not every step
        k = sum(1 for last in last_step if last >= step)
        if views[0] != k:

            def prefix(tensors, k=k):
                return tensors if k == optimizer.rows else {n: t[:k] for n, t in tensors.items()}

            views = (k, prefix(optimizer.params) | prefix(fixed), prefix(optimizer.grad_views),
                     prefix(start_params) if start_params is not None else None,
                     prefix(per_row) if per_row is not None else {})  # fmt: skip
        _, tensors, grads, start, values = views
        stack = stacked.Rows(
            model, tensors, grads, pools[:k, step] if pools is not None else None, start, step
        )
        take = sample_rows[:k, step]
        batch = stacked.Batch(
            data.audio[take], data.visual[take], data.labels[take], shares[:k, step], values
        )
        with torch.no_grad():
            losses = step_fn(stack, batch)
        for name in stack.trained - stack.written:  # a trained tensor the loss did not reach
            stack.grads[name].zero_()
        optimizer.step(active=k)
        loss_sums[:k] += losses.double()
