"""Helpers shared by the workflow tests: running Snakemake in a temporary folder and reading
what a dry run would do."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from .conftest import REPO, TINY_EXTRACT, TINY_SYNTHETIC, VENV_BIN

# The built-in methods in registry order: what the registry, the plan and the DAG must hold.
BUILTIN_METHODS = [
    "unifl",
    "multifl",
    "harmony",
    "modalitymirror",
    "fedprox",
    "fedadam",
    "bmsfed",
    "dimml",
    "m3fed",
]


def snakemake(
    workdir: Path, *args: str, env: dict | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    base = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(
        [f"{VENV_BIN}/snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args],
        capture_output=True, text=True, env={**base, **(env or {})}, timeout=timeout,
    )  # fmt: skip


def tiny_workflow_config(path: Path, partition: dict | None = None, seeds: tuple = (0, 1), methods: dict | None = None,
                         experiment: dict | None = None, dataset: dict | None = None, **extract) -> Path:  # fmt: skip
    """A tiny config: 8 clients, 3 rounds, 2 folds, one rate."""
    config = {
        "run_datasets": ["tiny"],
        "partition": {"n_clients": 8, "alpha": 0.5, **(partition or {})},
        "experiment": {
            "name": "tiny",
            "seeds": list(seeds),
            "table1_rates": [0.5],
            "figure3_rates": [],
            "figure2_rate": 0.5,
            "methods": ["unifl", "multifl", "harmony", "modalitymirror"],
            "runs_per_job": None,  # one job per seed (the default): a new seed adds jobs only
            **(experiment or {}),
        },
        "federated": {"rounds": 3, "clients_per_round": 4, "eval_every": 1, "device": "cpu"},
        "methods": methods or {},
        "datasets": {
            "tiny": dataset
            or {
                "source": "synthetic",
                "folds": [1, 2],
                "synthetic": TINY_SYNTHETIC,
                "extract": {**TINY_EXTRACT, **extract},
            }
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def family(rule: str) -> str:
    """A rule's family: the generated per-job training rules are all `train`."""
    for prefix in ("train_", "generate_rehearsal_"):
        if rule.startswith(prefix):
            return prefix.rstrip("_")
    return rule


def scheduled(result: subprocess.CompletedProcess) -> set[str]:
    """Rule families a dry run would execute (from its job-stats table)."""
    rules, in_table = set(), False
    for line in result.stdout.splitlines():
        if line.startswith("job "):
            in_table = True
        elif in_table and line.strip() and not line.startswith("-"):
            name = line.split()[0]
            if name == "total":
                break
            rules.add(family(name))
    return rules


def job_outputs(result: subprocess.CompletedProcess, rule: str) -> list[str]:
    """Output files of the jobs of a rule family that a dry run would execute."""
    outputs, current = [], None
    for line in result.stdout.splitlines():
        if line.strip().startswith(("rule ", "localrule ")):  # indented inside a group job
            current = family(line.split()[1].rstrip(":"))
        elif line and not line[0].isspace():
            current = None  # another block (a group job, a summary)
        elif current == rule and line.strip().startswith("output:"):
            outputs += [item.strip() for item in line.split(":", 1)[1].split(",")]
    return outputs


def flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor record of a torch.save archive: the
    damage a disk or a copy can do that torch.load reads without complaint (no CRC check)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        tensors = [info for info in archive.infolist() if "/data/" in info.filename]
    record = max(tensors, key=lambda info: info.file_size)  # a tensor's bytes, not the pickle
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", data, record.header_offset + 26)
    start = record.header_offset + 30 + name_length + extra_length
    data[start + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))
