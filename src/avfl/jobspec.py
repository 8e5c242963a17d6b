"""The job contract: what the planner hands the trainer, as one set of frozen types serialised in
one place. The planner builds a `JobSpec`; its JSON is the training rule's `params` (so any
change of it reruns exactly that job); `python -m avfl train --job` parses it back. Parsing is
strict: every key is required and an unknown one is refused, so that a planner and a trainer of
different versions fail loudly instead of filling in defaults (a missing config hash once put
every configuration's checkpoints in one folder).

Torch-free: the workflow builds these when Snakemake parses the Snakefile.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avfl.errors import UserError


class JobSpecError(UserError, ValueError):
    """A job's JSON does not match the contract (missing, unknown or malformed keys)."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a job: its rate and seed, where it writes, and what it reads."""

    rate: float | None
    seed: int
    out: str  # the run's folder (metrics.json, model.pt, checkpoints/)
    partition: str  # its partition file
    consumes: Mapping[str, str] = field(default_factory=dict)  # method -> that run's folder
    reference: str | None = None  # the centralised reference's metrics.json (health guard)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", str(self.out))
        object.__setattr__(self, "partition", str(self.partition))
        object.__setattr__(self, "consumes", {m: str(p) for m, p in dict(self.consumes).items()})
        if self.reference is not None:
            object.__setattr__(self, "reference", str(self.reference))


@dataclass(frozen=True)
class JobSpec:
    """Runs of one method, with one set of effective settings, on one (dataset, fold)."""

    dataset: str
    variant: str
    fold: int
    method: str
    settings: Mapping[
        str, Any
    ]  # the effective config: model, federated, partition, extract, method, consumes
    config_hash: str  # of `settings`: names the runs' checkpoint folders
    features: str  # the dataset's feature folder
    embeddings: Mapping[str, str] | None  # {"audio", "visual"} embedding files in frozen mode
    consumed_hashes: Mapping[str, str]  # method -> the config hash its consumed runs must have
    health: Mapping[str, Any]  # the health guard's settings
    gpu: bool  # the job's rule asked for a GPU (avfl.plan.needs_gpu)
    runs: Sequence[RunSpec]

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", str(self.features))
        if self.embeddings is not None:
            object.__setattr__(
                self, "embeddings", {k: str(v) for k, v in dict(self.embeddings).items()}
            )
        object.__setattr__(self, "runs", tuple(self.runs))

    def to_json(self) -> str:
        """The job's JSON (the rule's params and `avfl train --job`): sorted keys, stable."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise JobSpecError(
                f"the job is not valid JSON ({error}): rerun it through the workflow"
            ) from None
        fields = _exact(raw, cls, "job")
        fields["runs"] = [
            RunSpec(**_exact(r, RunSpec, f"run {i}")) for i, r in enumerate(_list(raw["runs"]))
        ]
        return cls(**fields)

    # Paths, as the trainer uses them.
    @property
    def feature_dir(self) -> Path:
        return Path(self.features)

    def embedding_paths(self) -> tuple[Path, Path] | None:
        if self.embeddings is None:
            return None
        return Path(self.embeddings["audio"]), Path(self.embeddings["visual"])


def _list(value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise JobSpecError("the job's runs must be a non-empty list: rerun it through the workflow")
    return value


def _exact(raw: Any, cls: type, what: str) -> dict[str, Any]:
    """The keys of `raw`, which must be exactly `cls`'s fields."""
    if not isinstance(raw, dict):
        raise JobSpecError(f"the {what} must be a JSON object, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = sorted(names - set(raw)), sorted(set(raw) - names)
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise JobSpecError(
            f"the {what}'s JSON does not match this version's job contract ({'; '.join(parts)}): "
            "the job was planned by another version of avfl; rerun it through the workflow"
        )
    return dict(raw)
