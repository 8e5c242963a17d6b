"""The federated round loop, shared by every method.

A method is described as phases. A phase says which clients are eligible, how many are
sampled per round, what each client trains (a Task: parameter groups and a loss) and by
which metric the server selects the round to keep. The engine owns everything else:
sampling, local training, aggregation, dev evaluation, checkpoints and resumption.

Randomness is a pure function of (seed, phase, round, client): client sampling uses
`default_rng([seed, phase, round])`, local training seeds torch with the same tuple plus the
client. A run resumed from a checkpoint therefore gives exactly the uninterrupted result.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from avfl.evaluate import predict
from avfl.fl.aggregate import Aggregator
from avfl.fl.data import FederatedData
from avfl.fl.optimizer import make_optimizer
from avfl.fl.parallel import parallel_local_train, supports_parallel
from avfl.models.heads import AVModel, group_of


class Task(Protocol):
    """What one client trains locally."""

    name: str
    groups: tuple[str, ...]  # parameter groups trained, and so sent to the server

    def loss(
        self, model: AVModel, audio: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass
class Phase:
    name: str
    clients: Sequence[int]  # eligible clients
    task_of: Callable[[int], Task]
    rounds: int
    clients_per_round: int
    select_by: str  # "audio" | "av" | "visual": the dev metric that picks the round kept


@dataclass
class PhaseResult:
    state: dict[str, torch.Tensor]  # the selected global state
    last_state: dict[str, torch.Tensor]  # the global state after the last round
    selected_round: int
    dev_curve: list[dict[str, float]] = field(default_factory=list)
    rounds: int = 0  # rounds of the phase in total (resumed or not)
    resumed_from: int = 0


@dataclass
class TrainSettings:
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    eval_every: int
    selection: str  # "best_dev" | "last"
    checkpoint_every: int
    seed: int
    # Train a round's clients in lockstep (fl/parallel.py) where the model allows it.
    parallel: bool = True


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple, stable across processes and Python versions."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def trainable(model: AVModel, groups: Sequence[str]) -> list[torch.nn.Parameter]:
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(group_of(name) in groups)
        if param.requires_grad:
            params.append(param)
    return params


def local_train(
    model: AVModel, task: Task, indices: torch.Tensor, data: FederatedData, cfg: TrainSettings
) -> None:
    """Local epochs of minibatch training on one client's samples (indexing on the device)."""
    params = trainable(model, task.groups)
    if not params:
        return
    optimizer = make_optimizer(params, cfg)
    model.train()
    for _ in range(cfg.local_epochs):
        order = indices[torch.randperm(indices.numel(), device="cpu").to(indices.device)]
        for start in range(0, order.numel(), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            loss = task.loss(model, data.audio[batch], data.visual[batch], data.labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def dev_score(model: AVModel, data: FederatedData, metric: str) -> float:
    """Top-1 accuracy on the dev split of the audio, audio-visual or visual model."""
    if data.dev.numel() == 0:
        return float("nan")
    logits = predict(model, data, data.dev, metric)
    return float((logits.argmax(dim=1) == data.labels[data.dev]).float().mean())


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_phase(
    phase: Phase,
    model: AVModel,
    initial_state: Mapping[str, torch.Tensor],
    data: FederatedData,
    cfg: TrainSettings,
    checkpoint_dir: Path | None = None,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> PhaseResult:
    """Run one phase; resumes from `checkpoint_dir/<phase>.ckpt` if present.

    `stop_after` ends the call after that many rounds in total (a checkpoint is written
    first): the tests use it to simulate an interruption.
    """
    ckpt_path = checkpoint_dir / f"{phase.name}.ckpt" if checkpoint_dir else None
    state = {k: v.clone() for k, v in initial_state.items()}
    best_state, best_score, best_round = copy.deepcopy(state), -float("inf"), 0
    curve: list[dict[str, float]] = []
    start_round = 0
    if ckpt_path is not None and ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        state = {k: v.to(initial_state[k].device) for k, v in saved["state"].items()}
        best_state = {k: v.to(initial_state[k].device) for k, v in saved["best_state"].items()}
        best_score, best_round, curve, start_round = (
            saved["best_score"],
            saved["best_round"],
            saved["curve"],
            saved["round"],
        )
        log(f"[{phase.name}] resumed from round {start_round}")
    eligible = sorted(phase.clients)
    if not eligible:
        raise RuntimeError(f"phase {phase.name}: no eligible clients")
    parallel = cfg.parallel and supports_parallel(model)
    for rnd in range(start_round, phase.rounds):
        tic = time.perf_counter()
        rng = np.random.default_rng(derive_seed(cfg.seed, phase.name, rnd) % 2**63)
        k = min(phase.clients_per_round, len(eligible))
        sampled = sorted(rng.choice(eligible, size=k, replace=False).tolist())
        aggregator = Aggregator(state)
        if parallel:
            _train_round_parallel(phase, model, state, sampled, rnd, data, cfg, aggregator)
        else:
            for client in sampled:
                model.load_state_dict(state)
                torch.manual_seed(derive_seed(cfg.seed, phase.name, rnd, client))
                task = phase.task_of(client)
                local_train(model, task, data.clients[client], data, cfg)
                aggregator.add(
                    client, model.state_dict(), task.groups, float(data.client_size(client))
                )
        state = aggregator.result()
        last = rnd + 1 == phase.rounds
        if (rnd + 1) % cfg.eval_every == 0 or last:
            model.load_state_dict(state)
            score = dev_score(model, data, phase.select_by)
            curve.append({"round": rnd + 1, f"dev_{phase.select_by}_top1": round(score, 6)})
            if cfg.selection == "best_dev" and (np.isnan(score) or score > best_score):
                best_state, best_score, best_round = copy.deepcopy(state), score, rnd + 1
            log(
                f"[{phase.name}] round {rnd + 1}/{phase.rounds} dev {phase.select_by} top1 {score:.4f} ({time.perf_counter() - tic:.2f} s)"
            )
        done = rnd + 1
        if ckpt_path is not None and (
            done % cfg.checkpoint_every == 0 or last or done == stop_after
        ):
            _save_atomic(
                {
                    "state": state,
                    "best_state": best_state,
                    "best_score": best_score,
                    "best_round": best_round,
                    "curve": curve,
                    "round": done,
                },
                ckpt_path,
            )
        if stop_after is not None and done >= stop_after and not last:
            raise Interrupted(f"stopped after round {done}")
    selected = best_state if cfg.selection == "best_dev" else state
    return PhaseResult(
        state=selected,
        last_state=state,
        selected_round=best_round if cfg.selection == "best_dev" else phase.rounds,
        dev_curve=curve,
        rounds=phase.rounds,
        resumed_from=start_round,
    )


def _train_round_parallel(phase, model, state, sampled, rnd, data, cfg, aggregator) -> None:
    """Clients with the same task train in lockstep; each client's batch order has its own seed."""
    buckets: list[tuple[Task, list[int]]] = []
    for client in sampled:
        task = phase.task_of(client)
        for known, members in buckets:
            if known == task:
                members.append(client)
                break
        else:
            buckets.append((task, [client]))
    model.load_state_dict(state)
    for number, (task, members) in enumerate(buckets):
        torch.manual_seed(derive_seed(cfg.seed, phase.name, rnd, "parallel", number))  # dropout
        seeds = [derive_seed(cfg.seed, phase.name, rnd, c) for c in members]
        stacked = parallel_local_train(
            model, task, state, [data.clients[c] for c in members], seeds, data, cfg
        )
        for i, client in enumerate(members):
            aggregator.add(
                client,
                {n: v[i] for n, v in stacked.items()},
                task.groups,
                float(data.client_size(client)),
            )


class Interrupted(RuntimeError):
    """Raised by `run_phase(stop_after=...)` to simulate a killed run."""
