"""The federated round loop, shared by every method and every run of a batch.

A method is described as phases (fl/types.py). The engine owns everything else: sampling,
local training, aggregation through the phase's server strategy, dev evaluation, model
selection, checkpoints and resumption. `run_phases` advances any number of runs together,
one round each per step, and trains all their clients of a round in lockstep where their
tasks agree; a single run is a batch of one.

Randomness is a pure function of (seed, phase, round, client): client sampling uses
`default_rng([seed, phase, round])`, a client's batch order and dropout noise a generator
seeded with the same tuple plus the client. A run resumed from a checkpoint, or trained in
another batch, therefore gives exactly the same result.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avfl import paths
from avfl.evaluate import predict
from avfl.fl import memory
from avfl.fl.data import FederatedData
from avfl.fl.local import lockstep_key, train_rows, trains_in_lockstep
from avfl.fl.server import FedAvgServer
from avfl.fl.types import (
    ClientUpdate,
    Interrupted,
    Phase,
    PhaseContext,
    PhaseResult,
    Server,
    Task,
    TrainSettings,
    derive_seed,
)
from avfl.models.heads import group_of
from avfl.records import save_torch, verify_checksum, with_checksum

CHECKPOINT_FORMAT = 4  # 3: BMSFed's server keeps its rows' norms; 4: a checksum (records.py)
# Formats this version resumes from, each with whether its checksum is required. Format 3 is
# format 4 less the checksum: a job interrupted before an upgrade resumes after it, read
# unchecked as the version that wrote it read it, instead of training from round 0.
RESUMABLE_FORMATS = {3: False, CHECKPOINT_FORMAT: True}
clock = time.monotonic  # when checkpoints are due (checkpoint_interval_s); tests replace it
NO_DEV = "none"  # a phase's select_by when it has no dev metric: its last round is kept


@dataclass
class PhaseRequest:
    """One run's phase: what `run_phases` needs to advance it."""

    phase: Phase
    model: torch.nn.Module  # the run's model instance (also the structure its clients train)
    initial_state: Mapping[str, torch.Tensor]
    data: FederatedData
    cfg: TrainSettings
    seed: int
    checkpoint_dir: Path | None = None
    log: Callable[[str], None] = print
    stop_after: int | None = None  # end after this many rounds in total (tests simulate a kill)


def dev_score(model: torch.nn.Module, data: FederatedData, metric: str, k: int = 1) -> float:
    """Top-k accuracy on the dev split of the audio, audio-visual or visual model."""
    return dev_scores(model, data, metric, k)[k]


def dev_scores(
    model: torch.nn.Module, data: FederatedData, metric: str, k: int = 1
) -> dict[int, float]:
    """Top-1 and top-k accuracy on the dev split, from one forward pass."""
    if data.dev.numel() == 0:
        return {1: float("nan"), k: float("nan")}
    logits = predict(model, data, data.dev, metric)
    labels = data.labels[data.dev]
    scores = {1: float((logits.argmax(dim=1) == labels).float().mean())}
    if k != 1:
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        scores[k] = float((top == labels.unsqueeze(1)).any(dim=1).float().mean())
    return scores


def _save_atomic(obj: Any, path: Path) -> None:
    """With its checksum, flushed to disk before it replaces the previous checkpoint
    (records.replace_durably)."""
    save_torch(path, with_checksum(obj))


# What torch.load raises for a file cut short (EOFError; RuntimeError or OSError from the
# archive reader, by where the cut falls), filled with something else (UnpicklingError),
# pickled against other library versions (ImportError, AttributeError), or of an unexpected
# layout. Not among them: a file the process may not read, and memory that ran out.
UNREADABLE = (
    EOFError, OSError, RuntimeError, pickle.UnpicklingError, ImportError, AttributeError,
    ValueError, KeyError, TypeError,
)  # fmt: skip


def unreadable(error: BaseException) -> bool:
    """True when `error`, raised by torch.load, says the file is damaged or foreign; False for
    what says nothing about the file (permissions, memory), which must not cost a checkpoint."""
    if isinstance(error, PermissionError | MemoryError) or not isinstance(error, UNREADABLE):
        return False
    return not any(m in str(error) for m in ("allocate memory", "out of memory"))


def _load_checkpoint(
    path: Path, log: Callable[[str], None], rounds: int | None = None
) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when it cannot be resumed from.

    A checkpoint only saves time: one that is unreadable or of a format this version cannot
    resume from (RESUMABLE_FORMATS) is moved aside
    (`<name>.unreadable`, removed with the run's checkpoints when its job succeeds) and the
    phase starts again from round 0, instead of failing every retry of the job until someone
    deletes the file. That includes a file damaged inside a tensor's bytes, which torch.load
    reads without complaint (it does not check the archive's CRC-32, runtime.py): the
    checkpoint's own checksum (records.fingerprint) does not match.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        found = saved.get("format") if isinstance(saved, dict) else None
        if found not in RESUMABLE_FORMATS:
            raise ValueError(f"format {found}, this version resumes from formats "
                             f"{sorted(RESUMABLE_FORMATS)}")  # fmt: skip
        saved = verify_checksum(saved, required=RESUMABLE_FORMATS[found])
        if rounds is not None and saved["server"] is None and saved["round"] < rounds:
            raise ValueError(f"round {saved['round']} of {rounds} without the server's state")
    except UNREADABLE as error:
        if not unreadable(error):
            raise
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        log(f"{path}: cannot resume from this checkpoint ({type(error).__name__}: "
            f"{str(error)[:200]}); moved it to {aside.name} and started the phase from round 0")  # fmt: skip
        return None
    return saved


def _copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


@dataclass
class PhaseProgress:
    """A run's phase in progress."""

    run: PhaseRequest
    server: Server
    state: dict[str, torch.Tensor]
    metrics: tuple[str, ...]
    structure: tuple[tuple[str, tuple[int, ...]], ...]  # what rows of one lockstep bucket share
    best: dict[str, tuple[float, int, dict[str, torch.Tensor]]] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    round: int = 0
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)  # per round since the last evaluation
    client_updates: int = 0
    local_steps: int = 0
    tic: float = field(default_factory=time.perf_counter)

    @property
    def ckpt_path(self) -> Path | None:
        d = self.run.checkpoint_dir
        return (
            d / paths.fill(paths.CHECKPOINT, phase=self.run.phase.name) if d is not None else None
        )

    @property
    def done(self) -> bool:
        return self.round >= self.run.phase.rounds

    def checkpoint(self) -> dict[str, Any]:
        """What resuming needs. A finished phase never aggregates again, so its server's
        state (BMSFed's stores of every client's update, hundreds of MB per run at the paper's
        scale) is left out: None, unless the strategy keeps what the method reads after the
        phase (`keeps_state_when_done`: M3Fed's clients' own layers and cluster models)."""
        keep = not self.done or getattr(self.server, "keeps_state_when_done", False)
        server = self.server.state_dict() if keep else None
        return {
            "format": CHECKPOINT_FORMAT, "state": self.state, "best": self.best, "curve": self.curve,
            "round": self.round, "losses": self.losses, "server": server,
            "client_updates": self.client_updates, "local_steps": self.local_steps,
        }  # fmt: skip

    def restore(self, saved: Mapping[str, Any]) -> None:
        device = self.run.data.audio.device
        move = lambda s: {k: v.to(device) for k, v in s.items()}  # noqa: E731
        self.state = move(saved["state"])
        self.best = {m: (score, rnd, move(s)) for m, (score, rnd, s) in saved["best"].items()}
        self.curve, self.round, self.losses = saved["curve"], saved["round"], saved["losses"]
        self.client_updates, self.local_steps = saved["client_updates"], saved["local_steps"]
        if saved["server"] is not None:  # None: a finished phase's (checkpoint)
            self.server.load_state_dict(saved["server"])
        self.resumed_from = self.round


def _start(run: PhaseRequest) -> PhaseProgress:
    phase = run.phase
    if not phase.clients:
        raise RuntimeError(f"phase {phase.name}: no eligible clients")
    make_server = phase.server or (lambda p, c: FedAvgServer(p, c))
    server = make_server(phase, PhaseContext(run.data, run.model, run.seed, run.cfg))
    metrics = (phase.select_by, *[m for m in phase.also_select if m != phase.select_by])
    structure = tuple((n, tuple(v.shape)) for n, v in run.model.state_dict().items())
    live = PhaseProgress(run, server, _copy(run.initial_state), metrics, structure)
    path = live.ckpt_path
    saved = (
        _load_checkpoint(path, run.log, phase.rounds)
        if path is not None and path.exists()
        else None
    )
    if saved is not None:
        live.restore(saved)
        run.log(f"[{phase.name}] resumed from round {live.round}")
    else:
        live.state = live.server.start(live.state)
        if phase.start_is_candidate:
            _evaluate(live, first=True)
    return live


def _evaluate(live: PhaseProgress, first: bool = False) -> None:
    """Dev scores of the current state; the state becomes the best of a metric if it beats it.
    A phase selected by NO_DEV (self-supervised pre-training: it has no classifier to score)
    records its training loss only and keeps its latest state."""
    run = live.run
    point: dict[str, float] = {"round": live.round}
    k = 5 if run.cfg.selection_metric == "top5" else 1
    if run.phase.select_by == NO_DEV:
        live.best[NO_DEV] = (float("nan"), live.round, _copy(live.state))
    else:
        run.model.load_state_dict(live.state)
    for metric in [m for m in live.metrics if m != NO_DEV]:
        scores = dev_scores(run.model, run.data, metric, k)  # top-1 too: the health guard's
        for at, value in sorted(scores.items()):
            point[f"dev_{metric}_top{at}"] = round(value, 6)
        score = scores[k]
        best = live.best.get(metric)
        if (
            first
            or run.cfg.selection == "last"
            or best is None
            or np.isnan(score)
            or score > best[0]
        ):
            live.best[metric] = (score, live.round, _copy(live.state))
    if live.losses:
        point["train_loss"] = round(float(np.mean(live.losses)), 6)
        live.losses = []
    live.curve.append(point)
    loss = f" loss {point['train_loss']:.4f}" if "train_loss" in point else ""
    dev = (
        f" dev {run.phase.select_by} top{k} {point[f'dev_{run.phase.select_by}_top{k}']:.4f}"
        if run.phase.select_by != NO_DEV
        else ""
    )
    run.log(
        f"[{run.phase.name}] round {live.round}/{run.phase.rounds}{dev}{loss} "
        f"({time.perf_counter() - live.tic:.2f} s)"
    )
    live.tic = time.perf_counter()


def _same_bucket(a: tuple[PhaseProgress, Task], b: tuple[PhaseProgress, Task]) -> bool:
    (la, ta), (lb, tb) = a, b
    ra, rb = la.run, lb.run
    return (
        lockstep_key(ta) == lockstep_key(tb)
        and ra.cfg == rb.cfg
        and ra.data.audio is rb.data.audio
        and ra.data.visual is rb.data.visual
        and ra.data.labels is rb.data.labels
        and type(ra.model) is type(rb.model)
        and la.structure == lb.structure
    )


def _client_start(live: PhaseProgress, client: int) -> Mapping[str, torch.Tensor]:
    """The state a client's local training starts from: the round's global state, or what the
    phase's server gives that client (`Server.client_start`: a personalised method's cluster
    model and the client's own layers)."""
    hook = getattr(live.server, "client_start", None)
    return live.state if hook is None else hook(live.round, client, live.state)


def _train_round(active: Sequence[PhaseProgress]) -> None:
    """One round of every active run: select clients, assign their tasks, train in lockstep
    buckets, aggregate."""
    assignments: list[tuple[PhaseProgress, int, Task]] = []  # (run's phase, client, task)
    for live in active:
        run = live.run
        rng = np.random.default_rng(derive_seed(run.seed, run.phase.name, live.round) % 2**63)
        eligible = sorted(run.phase.clients)
        sampled = live.server.select(live.round, rng, eligible, run.phase.clients_per_round)
        tasks = live.server.assign_tasks(live.round, sampled, live.state)
        assignments += [(live, client, tasks[client]) for client in sampled]
    buckets: list[list[tuple[PhaseProgress, int, Task]]] = []
    for assignment in assignments:
        for bucket in buckets:
            if _same_bucket((bucket[0][0], bucket[0][2]), (assignment[0], assignment[2])):
                bucket.append(assignment)
                break
        else:
            buckets.append([assignment])
    updates: dict[int, list[ClientUpdate]] = {id(live): [] for live in active}
    free = memory.free_bytes(active[0].run.data.audio.device)
    held = 0  # bytes of the clients trained so far this round (fl/memory.py)
    for bucket in buckets:
        first = bucket[0][0].run
        live0, _, task0 = bucket[0]
        trained = sum(v.numel() for n, v in live0.state.items()
                      if group_of(n) in task0.groups and v.is_floating_point())  # fmt: skip
        per_row = memory.row_bytes(
            trained, 4, first.cfg.optimizer == "adam", first.cfg.momentum > 0
        )
        at_once = memory.rows_per_chunk(
            len(bucket), per_row, trains_in_lockstep(first.model, task0, first.cfg), free, held,
            where=f"phase {first.phase.name}, round {live0.round}",
        )  # fmt: skip
        for part in memory.chunks(len(bucket), at_once):
            chunk = [bucket[i] for i in part]
            results = train_rows(
                first.model,
                [task for _, _, task in chunk],
                [_client_start(live, c) for live, c, _ in chunk],
                [live.run.data.clients[c] for live, c, _ in chunk],
                [
                    derive_seed(live.run.seed, live.run.phase.name, live.round, c)
                    for live, c, _ in chunk
                ],
                first.data,
                first.cfg,
            )
            for (live, client, task), result in zip(chunk, results, strict=True):
                size = float(live.run.data.client_size(client))
                updates[id(live)].append(
                    ClientUpdate(client, task, result.state, size, result.loss)
                )
                live.local_steps += result.steps
        held += len(bucket) * per_row.held
    for live in active:
        received = sorted(updates[id(live)], key=lambda u: u.client)
        live.state = live.server.aggregate(live.round, live.state, received)
        live.client_updates += len(received)
        total = sum(u.weight for u in received)
        live.losses.append(
            sum(u.loss * u.weight for u in received) / total if total else float("nan")
        )
        live.round += 1


def run_phases(runs: Sequence[PhaseRequest]) -> list[PhaseResult]:
    """Run each run's phase to its end (resuming from checkpoints); runs advance together."""
    lives = [_start(run) for run in runs]
    saved_at = clock()  # the job's last checkpoint (its start counts as one)
    while active := [live for live in lives if not live.done]:
        _train_round(active)
        now, saved = clock(), False
        for live in active:
            run, done = live.run, live.round
            last = done == run.phase.rounds
            if done % run.cfg.eval_every == 0 or last:
                _evaluate(live)
            due = (
                done % run.cfg.checkpoint_every == 0
                and now - saved_at >= run.cfg.checkpoint_interval_s
            )
            if live.ckpt_path is not None and (due or last or done == run.stop_after):
                _save_atomic(live.checkpoint(), live.ckpt_path)
                saved |= due
            if run.stop_after is not None and done >= run.stop_after and not last:
                raise Interrupted(f"stopped after round {done}")
        if saved:
            saved_at = clock()
    return [_result(live) for live in lives]


def _result(live: PhaseProgress) -> PhaseResult:
    phase = live.run.phase
    _, selected_round, selected = live.best[phase.select_by]
    return PhaseResult(
        state=selected,
        last_state=live.state,
        selected_round=selected_round,
        dev_curve=live.curve,
        rounds=phase.rounds,
        resumed_from=live.resumed_from,
        also_selected={m: live.best[m][2] for m in phase.also_select},
        client_updates=live.client_updates,
        local_steps=live.local_steps,
    )


def run_phase(
    phase: Phase,
    model: torch.nn.Module,
    initial_state: Mapping[str, torch.Tensor],
    data: FederatedData,
    cfg: TrainSettings,
    seed: int,
    checkpoint_dir: Path | None = None,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> PhaseResult:
    """One run's phase on its own (a batch of one)."""
    return run_phases(
        [
            PhaseRequest(
                phase, model, initial_state, data, cfg, seed, checkpoint_dir, log, stop_after
            )
        ]
    )[0]
