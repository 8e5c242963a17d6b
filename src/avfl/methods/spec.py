"""How a method describes itself: one declaration that the config schema, the workflow and
the reports are generated from.

Torch-free on purpose: the workflow reads every method's declaration when Snakemake parses
the Snakefile, and the scheduler's environment need not hold the ML stack. A method module
therefore imports torch-using code inside its `run` function, not at the top.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
ROLES = ("method", "reference", "ablation")


@dataclass(frozen=True)
class Setting:
    """One setting of a method: its default and the one-line reason for that default."""

    name: str
    default: Any
    reason: str
    schema: Mapping[str, Any] = field(default_factory=dict)  # JSON schema of the value

    def json_schema(self) -> dict[str, Any]:
        return {**self.schema, "default": self.default, "description": self.reason}


def rounds_of(share: float, rounds: int) -> int:
    """A phase's rounds as a share of the federated rounds (at least one)."""
    return max(1, round(share * rounds))


def setting(name: str, default: Any, reason: str, **schema: Any) -> Setting:
    """`setting("mu", 0.01, "why", type="number", minimum=0)`: schema keywords as JSON schema."""
    return Setting(name, default, reason, schema)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method (or a reference, such as centralised training).

    - `uses_rate`: whether the reported audio model depends on the video-missing rate
      (False: one run per fold and seed serves every rate, as Harmony's stage-1 audio model);
    - `consumes`: methods whose saved result a run of this one loads instead of retraining
      (ModalityMirror's phase 1 is MultiFL's run); a function of the settings when it depends
      on them;
    - `consumed_federated`: a function of (the settings, the federated block) giving, per
      consumed method, the federated settings its consumed run trains with where they differ
      from its own row's (ModalityMirror's phase 1 at an equal budget trains fewer rounds
      than the MultiFL row); the planner trains such a run under a derived variant;
    - `role`: "method" (a row of Table 1 and a line of Figure 3), "reference" (upper-bound
      rows and dashed lines that every method is compared with) or "ablation" (a method that
      runs only where an experiment names it, in `experiment.ablation_methods`, and is
      reported in the ablation table beside the methods, not in Table 1: CMRF, whose fit to
      this setting is weak).
    """

    name: str
    display: str
    colour: str
    run: Callable[[RunContext], MethodResult]
    uses_rate: bool = True
    settings: tuple[Setting, ...] = ()
    consumes: tuple[str, ...] | Callable[[Mapping[str, Any]], tuple[str, ...]] = ()
    consumed_federated: (
        Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Mapping[str, Any]]] | None
    ) = None
    role: str = "method"
    cite: str = ""
    summary: str = ""
    module: str = ""
    # True when the local objective changes from round to round by design (weights or
    # targets set by the server): its training loss may grow while the model learns, so the
    # health guard does not read growth as failure (a non-finite loss still is).
    objective_drifts: bool = False
    # A run's time per round relative to MultiFL's, as measured on the rehearsal grid. It only
    # orders the workflow's jobs (longest chains first, so that few cores are not left with
    # one long job at the end); it never changes a result.
    cost: float = 1.0
    # Runs only where `experiment.methods` names it (a method), or where that list names it
    # beside the methods (a reference): the self-supervised methods train a backbone from the
    # raw inputs, hours of a CPU where the whole default grid takes minutes.
    opt_in: bool = False
    # Trains its own backbone from the stored fbank and frames, whatever `model.mode` says: its
    # jobs read the features, not the frozen backbones' embeddings, and build their own model
    # (the run's `ctx.model` is None).
    raw_inputs: bool = False
    # Configured by another method's block (`methods.<settings_of>`, its settings and its
    # `federated` overrides): FASSL and the random-init probe are parts of FSSUAVL's
    # comparison, which holds only if all three run with the same settings.
    settings_of: str = ""
    # A note under Table 1 wherever the method is in it: what its cell is, where that differs
    # from what the method optimises (M3Fed's server-built consensus model).
    table1_note: str = ""

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"method name {self.name!r}: use lower-case letters, digits and _")
        if not self.cost > 0:
            raise ValueError(f"method {self.name}: cost must be positive, got {self.cost}")
        if self.role not in ROLES:
            raise ValueError(f"method {self.name}: role must be one of {ROLES}")
        if self.settings_of and self.settings:
            raise ValueError(f"method {self.name}: settings_of={self.settings_of!r} takes that "
                             "method's settings; declare none of its own")  # fmt: skip
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names) or "federated" in names:
            raise ValueError(
                f"method {self.name}: setting names must be unique and not 'federated'"
            )

    def defaults(self) -> dict[str, Any]:
        return {s.name: s.default for s in self.settings}

    def requires(self, settings: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The methods a run of this one consumes, under `settings` (the method's block)."""
        if callable(self.consumes):
            return tuple(self.consumes({**self.defaults(), **(settings or {})}))
        return tuple(self.consumes)

    def consumed_overrides(
        self, settings: Mapping[str, Any] | None, federated: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """Per consumed method: the federated settings its consumed run differs in (or none)."""
        if self.consumed_federated is None:
            return {}
        found = self.consumed_federated({**self.defaults(), **(settings or {})}, federated)
        return {m: dict(o) for m, o in found.items() if o and m in self.requires(settings)}


def method(
    *,
    name: str,
    display: str,
    colour: str,
    uses_rate: bool = True,
    settings: tuple[Setting, ...] | list[Setting] = (),
    consumes: tuple[str, ...] | Callable[[Mapping[str, Any]], tuple[str, ...]] = (),
    consumed_federated: Callable[..., Mapping[str, Mapping[str, Any]]] | None = None,
    role: str = "method",
    cite: str = "",
    objective_drifts: bool = False,
    cost: float = 1.0,
    opt_in: bool = False,
    raw_inputs: bool = False,
    settings_of: str = "",
    table1_note: str = "",
) -> Callable[[Callable[[RunContext], MethodResult]], MethodSpec]:
    """Decorator: the decorated `run(ctx)` becomes the method's MethodSpec."""

    def wrap(run: Callable[[RunContext], MethodResult]) -> MethodSpec:
        summary = (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else ""
        return MethodSpec(
            name=name, display=display, colour=colour, run=run, uses_rate=uses_rate,
            settings=tuple(settings), consumes=consumes, consumed_federated=consumed_federated, role=role, cite=cite, summary=summary,
            module=run.__module__, objective_drifts=objective_drifts, cost=cost, opt_in=opt_in,
            raw_inputs=raw_inputs, settings_of=settings_of, table1_note=table1_note,
        )  # fmt: skip

    return wrap
