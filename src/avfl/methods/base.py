"""What a method is: phases over the shared engine, and which trained model is reported."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from avfl.fl.data import FederatedData
from avfl.fl.engine import Phase, PhaseResult, TrainSettings, run_phase
from avfl.models.heads import AVModel


@dataclass
class RunContext:
    """Everything a method needs for one (dataset, fold, rate, seed) run."""

    data: FederatedData
    model: AVModel
    initial_state: dict[str, torch.Tensor]
    train: TrainSettings
    federated: Mapping[str, Any]  # the `federated` config block
    settings: Mapping[str, Any]  # the method's own config block
    checkpoint_dir: Path
    rate: float | None = None  # None: a rate-independent run (Harmony's audio model)
    log: Callable[[str], None] = print
    phase1: Mapping[str, Any] | None = None  # a previous method's saved result (ModalityMirror)
    stop_after: int | None = None  # tests: simulate an interruption

    def run(
        self,
        phase: Phase,
        model: AVModel | None = None,
        initial_state: Mapping[str, torch.Tensor] | None = None,
    ) -> PhaseResult:
        return run_phase(
            phase,
            model if model is not None else self.model,
            initial_state if initial_state is not None else self.initial_state,
            self.data,
            self.train,
            self.checkpoint_dir,
            self.log,
            self.stop_after,
        )


@dataclass
class MethodResult:
    audio_state: dict[str, torch.Tensor]  # the reported audio model (AUDIO_MODEL groups inside)
    phases: dict[str, PhaseResult]
    model: AVModel  # a model instance that `audio_state` loads into
    extra: dict[str, Any] = field(
        default_factory=dict
    )  # e.g. an audio-visual model to evaluate too


class Method(Protocol):
    name: str
    uses_rate: bool  # False: the reported audio model does not depend on the missing rate
    requires: str | None  # a method whose saved result this one consumes

    def run(self, ctx: RunContext) -> MethodResult: ...
