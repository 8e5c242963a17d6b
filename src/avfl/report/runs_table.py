"""runs.csv: one row per (run, evaluated model), from the runs' metrics.json only."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from avfl import runrecord

COLUMNS = [
    "dataset", "variant", "fold", "method", "role", "model", "rate", "seed", "top1", "top5",
    "macro_f1", "n_test", "health_ok", "health_findings", "start_selected", "client_trainings", "local_steps",
    "batch_size", "device", "wall_time_s", "peak_memory_mb", "config_hash", "path",
]  # fmt: skip


def start_selected(record) -> list[str]:
    """The phases whose kept model is their start (round 0): a phase that starts from a
    consumed model and may keep it (start_is_candidate) fell back to it."""
    return sorted(phase for phase, chosen in record["selected_round"].items() if chosen == 0)


def runs_csv(paths: Iterable[str | Path]) -> str:
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(COLUMNS)
    for path in sorted(map(str, paths)):
        r = runrecord.read(path)
        models = {"audio": r["test"], **r["test_by_model"]}
        health = r["health"]
        total = r["budget"]["total"]
        for model, test in models.items():
            findings = sorted(
                {f["check"] for f in health["findings"] if f["model"] in (model, *r["rounds"])}
            )
            writer.writerow([
                r["dataset"], r["variant"], r["fold"], r["method"], r["role"],
                model, "" if r["rate"] is None else r["rate"], r["seed"], test["top1"], test["top5"],
                test["macro_f1"], test["n"], int(health["ok"]), ";".join(findings),
                ";".join(start_selected(r)),
                total["client_trainings"], total["local_steps"], r["batch_size"],
                r["device"].split(" ")[0], r["wall_time_s"], r["peak_memory_mb"], r["config_hash"], path,
            ])  # fmt: skip
    return handle.getvalue()


def write_runs_csv(paths: Iterable[str | Path], out: str | Path) -> None:
    Path(out).write_text(runs_csv(paths))
