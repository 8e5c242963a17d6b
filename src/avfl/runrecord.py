"""The run record (`metrics.json`): its schema (`schema/metrics.schema.yaml`), checked where a
record is written and wherever one is read, so that a renamed, missing or mistyped key fails
with the file's name instead of silently changing a table (a record without `health` once
counted as healthy)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from avfl.errors import UserError

FORMAT_VERSION = 3  # 3: compute, embeddings, peak_gpu_memory_mb, versions.code; a schema


class RunRecordError(UserError, ValueError):
    """A run record does not match this version's schema."""


@functools.cache
def schema() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(
        resources.files("avfl").joinpath("schema/metrics.schema.yaml").read_text()
    )


@functools.cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def validate(record: Mapping[str, Any], where: str | Path) -> None:
    """Raise RunRecordError, naming `where`, unless `record` is a run record of this format."""
    version = record.get("format_version") if isinstance(record, Mapping) else None
    if version != FORMAT_VERSION:
        raise RunRecordError(
            f"{where}: a run record of format {version}, and this version of avfl reads format "
            f"{FORMAT_VERSION}: rerun its job (delete its run folder, then run the workflow), or "
            "read it with the avfl version that wrote it"
        )
    error = next(iter(sorted(_validator().iter_errors(record), key=lambda e: list(e.path))), None)
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
        raise RunRecordError(f"{where}: not a valid run record at '{key}': {error.message[:300]}")


def read(path: str | Path) -> dict[str, Any]:
    """A run record from its file, validated."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunRecordError(f"{path}: not valid JSON ({error}): rerun its job") from None
    validate(record, path)
    return record
