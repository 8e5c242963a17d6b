"""The manifest: one row per listed clip, usable or not, and why.

Written as a tab-separated table next to the feature arrays. `row` indexes the arrays
(frames.npy, fbank.npy) for usable clips and is -1 otherwise; `label` is the contiguous
class label over the kept classes (-1 for clips left out). Fold columns hold "train",
"test" or "" for each official split.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

STATUS_OK = "ok"
STATUS_DROPPED = "dropped"  # expected exclusions: no audio track, class without audio
STATUS_FAILED = "failed"  # broken input: unreadable, truncated, empty, ...


@dataclass
class ManifestRow:
    clip_id: str
    rel_path: str
    class_name: str
    class_index: int
    label: int
    group: int
    fold1: str
    fold2: str
    fold3: str
    duration_s: float
    has_audio: bool
    has_video: bool
    sample_rate: int
    channels: int
    audio_frames: int
    status: str
    reason: str
    row: int

    def fold(self, k: int) -> str:
        return getattr(self, f"fold{k}")


COLUMNS = [f.name for f in fields(ManifestRow)]
_TYPES = {f.name: f.type for f in fields(ManifestRow)}


def _parse(name: str, value: str):
    kind = _TYPES[name]
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return value == "1"
    return value


def _format(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("\t", " ").replace("\n", " ")


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_format(v) for v in asdict(row).values()])


def read_manifest(path: str | Path) -> list[ManifestRow]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader)
        if header != COLUMNS:
            raise ValueError(
                f"{path}: unexpected manifest columns {header}; re-run the extract rule"
            )
        return [
            ManifestRow(**{k: _parse(k, v) for k, v in zip(header, values, strict=True)})
            for values in reader
        ]


def summarise(rows: Sequence[ManifestRow]) -> str:
    """Human-readable counts by status and reason, for the log and the terminal."""
    status = Counter(r.status for r in rows)
    reasons = Counter((r.status, r.reason.split(":")[0]) for r in rows if r.status != STATUS_OK)
    kept = sorted({r.class_name for r in rows if r.status == STATUS_OK})
    lines = [
        f"{len(rows)} clips listed: {status.get(STATUS_OK, 0)} usable, "
        f"{status.get(STATUS_DROPPED, 0)} dropped, {status.get(STATUS_FAILED, 0)} failed",
        f"{len(kept)} classes kept of {len({r.class_name for r in rows})}",
    ]
    lines += [f"  {s}: {reason} x{n}" for (s, reason), n in sorted(reasons.items())]
    return "\n".join(lines)
