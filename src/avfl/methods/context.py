"""What a method's `run` receives and returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avfl.errors import UserError
from avfl.fl.data import FederatedData
from avfl.fl.engine import PhaseRequest
from avfl.fl.types import Phase, PhaseResult, TrainSettings


@dataclass
class RunContext:
    """Everything a method needs for one (dataset, fold, rate, seed) run."""

    data: FederatedData
    model: torch.nn.Module | None  # None for a method that builds its own (MethodSpec.raw_inputs)
    initial_state: dict[str, torch.Tensor]
    train: TrainSettings
    federated: Mapping[str, Any]  # the `federated` block in effect for this method
    method_settings: Mapping[str, Any]  # the method's own config block (methods.<name>)
    seed: int
    runner: Callable[[PhaseRequest], PhaseResult]  # executes a phase (alone or in a batch)
    checkpoint_dir: Path | None = None
    rate: float | None = None  # None: a rate-independent run (e.g. Harmony's audio model)
    log: Callable[[str], None] = print
    consumed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> saved states
    stop_after: int | None = None  # tests: simulate an interruption

    def run(
        self,
        phase: Phase,
        model: torch.nn.Module | None = None,
        initial_state: Mapping[str, torch.Tensor] | None = None,
        data: FederatedData | None = None,
        train: TrainSettings | None = None,
    ) -> PhaseResult:
        """Run one federated phase (resuming from its checkpoint) and return its result."""
        return self.runner(
            PhaseRequest(
                phase,
                model if model is not None else self.model,
                initial_state if initial_state is not None else self.initial_state,
                data if data is not None else self.data,
                train if train is not None else self.train,
                self.seed,
                self.checkpoint_dir,
                self.log,
                self.stop_after,
            )
        )

    def consumed_states(self, method: str) -> Mapping[str, Any]:
        try:
            return self.consumed[method]["states"]
        except KeyError:
            raise UserError(
                f"this run consumes {method}'s saved result, which was not given"
            ) from None


@dataclass
class MethodResult:
    """The trained models of a run.

    - `evaluate`: model kind -> state to test: "audio" (the reported audio model; required
      for methods), "av", "visual";
    - `saved`: states kept in model.pt for the methods that consume this one;
    - `metrics`: evaluations the method made itself (e.g. the reference's linear probes).
    """

    model: torch.nn.Module
    phases: dict[str, PhaseResult]
    evaluate: dict[str, Mapping[str, torch.Tensor]]
    saved: dict[str, Mapping[str, torch.Tensor]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What a client fine-tunes in the personalised evaluation (avfl/personalise.py), where it
    # is not the audio model of `model`, `evaluate["audio"]` and the run's data: FSSUAVL's
    # probe on its frozen features, M3Fed's clients' own models.
    personalise: Personalise | None = None
    # Method-specific numbers for the record's `diagnostics` (M3Fed's cluster agreement).
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Personalise:
    """The personalised evaluation's inputs for a method that differs from the default:
    `states` one per client (each client's own model) or one for all; `task` what a
    fine-tuning step trains (default: the audio model, AudioTask); `train` its optimizer
    settings (default: the run's)."""

    model: torch.nn.Module
    states: Mapping[str, torch.Tensor] | list[Mapping[str, torch.Tensor]]
    data: FederatedData
    task: Any = None
    train: TrainSettings | None = None
