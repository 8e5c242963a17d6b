"""The engine's vocabulary: tasks, phases, client updates, server strategies, settings.

Kept apart from the loop (engine.py) and the local trainer (local.py) so that methods,
strategies and the trainer can all name these types without importing each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from avfl.fl.data import FederatedData


@runtime_checkable
class Task(Protocol):
    """What one client trains locally.

    `sample_loss` returns one loss per sample (the trainer pads batches with zero-weight
    samples so clients of different sizes step together). Tasks compare by value: clients
    whose tasks are equal train in lockstep. A task may also define
    `penalty(params, start) -> scalar tensor`, a term of the local objective that sees the
    round's global (starting) parameters, e.g. FedProx's proximal term.

    A loss that couples a batch's samples (a contrastive term, batch statistics) must not see
    the padding: a task with `uses_sample_weight = True` gets `weight=` in `sample_loss`, the
    batch's sample weights (1 for a real sample, 0 for padding), and its written-out
    `stacked(rows, batch)` reads `batch.weight` (0 for padding, each row's real samples
    summing to 1). A padded batch must then give the loss and gradients of the unpadded one.

    A task may define `randoms_per_sample = m > 0`: its `sample_loss` then gets `randoms=`, a
    (batch, m) tensor of uniforms in [0, 1) drawn in advance from the row's own generator
    (fl/local.py), since a vmapped loss may call no random function; such a task defines no
    `stacked`.
    """

    name: str
    groups: tuple[str, ...]  # parameter groups trained, and so sent to the server

    def sample_loss(
        self, model: Any, audio: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass
class ClientUpdate:
    """One client's result of a round, as the server receives it."""

    client: int
    task: Task
    # Trained tensors of task.groups (parameters and float buffers). Read-only: they are views
    # of one buffer shared by every client trained in the same step (fl/optimizer.py); clone
    # before changing one or before keeping it beyond the round.
    state: dict[str, torch.Tensor]
    weight: float  # number of local samples
    loss: float = float("nan")  # mean local training loss over the client's steps


class Server(Protocol):
    """The server side of a phase: who trains what, and how updates become the next state.

    Client sampling, local training, evaluation and checkpoints belong to the engine; a
    strategy only decides. `state_dict`/`load_state_dict` carry whatever it keeps across
    rounds (momentum, prototypes, each client's own layers ...) through checkpoints, so a
    resumed run is identical.

    A strategy may define `client_start(rnd, client, state) -> state`: the state that client
    starts its local training from, instead of the round's global `state` (a personalised
    method's cluster model with the client's own layers). It must not change `state`.
    """

    def start(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The phase's state before round 0 (not called when resuming from a checkpoint)."""
        ...

    def select(
        self, rnd: int, rng: np.random.Generator, eligible: Sequence[int], k: int
    ) -> list[int]: ...

    def assign_tasks(
        self, rnd: int, clients: Sequence[int], state: Mapping[str, torch.Tensor]
    ) -> dict[int, Task]: ...

    def aggregate(
        self, rnd: int, state: Mapping[str, torch.Tensor], updates: Sequence[ClientUpdate]
    ) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class PhaseContext:
    """What a strategy may look at when it is built: the phase's data and model."""

    data: FederatedData
    model: Any
    seed: int
    settings: TrainSettings


@dataclass
class Phase:
    """One federated phase of a method.

    `server` builds the phase's strategy (default: modality-aware FedAvg with uniform client
    sampling and `task_of`). `start_is_candidate`: the starting state is evaluated as round 0
    and can be selected, so a phase that starts from a trained model (a fine-tuning or
    distillation stage) never reports worse than its start. `also_select`: further dev
    metrics whose best state is kept too (e.g. the audio-visual model of a phase selected by
    its audio model).
    """

    name: str
    clients: Sequence[int]  # eligible clients
    task_of: Callable[[int], Task]
    rounds: int
    clients_per_round: int
    # "audio" | "av" | "visual": the dev metric that picks the round kept; "none": no dev
    # metric (self-supervised pre-training), the last round is kept
    select_by: str
    server: Callable[[Phase, PhaseContext], Server] | None = None
    start_is_candidate: bool = False
    also_select: tuple[str, ...] = ()


@dataclass
class PhaseResult:
    state: dict[str, torch.Tensor]  # the selected global state
    last_state: dict[str, torch.Tensor]  # the global state after the last round
    selected_round: int
    dev_curve: list[dict[str, float]] = field(default_factory=list)
    rounds: int = 0  # rounds of the phase in total (resumed or not)
    resumed_from: int = 0
    also_selected: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    client_updates: int = 0  # clients trained, summed over rounds
    local_steps: int = 0  # optimizer steps of all clients, summed over rounds


@dataclass(frozen=True)
class TrainSettings:
    """Local training, shared by every client of a run (the `federated` config block)."""

    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    eval_every: int
    selection: str  # "best_dev" | "last"
    checkpoint_every: int
    # Clients of a round train in lockstep (written-out kernels or vmapped autograd) where the
    # model allows it; False trains the same rows one at a time through autograd (a reference
    # for tests, equal up to float rounding).
    lockstep: bool = True
    # Fewest seconds between a job's checkpoints at multiples of `checkpoint_every` (0: every
    # multiple). Checkpoints cost time and disk (BMSFed's hold its update rows), not results.
    checkpoint_interval_s: float = 0.0
    momentum: float = 0.0  # SGD's
    grad_clip_norm: float | None = None  # a local step's largest gradient norm (None: no clip)
    selection_metric: str = "top1"  # the dev metric that selects a phase's model: top1 | top5


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple, stable across processes and Python versions."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


class Interrupted(RuntimeError):
    """Raised when a run is stopped on purpose after some rounds (tests simulate a kill)."""
