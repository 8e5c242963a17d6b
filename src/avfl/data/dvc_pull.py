"""`dvc pull`, then mark the pulled outputs up to date for Snakemake.

DVC does not keep file times: after a pull, a raw-data folder can look newer than the
features made from it, and Snakemake would extract again. Touching the pulled targets
through Snakemake (`--touch`, in DAG order) restores a consistent order.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from avfl import paths


def dvc_pull(
    remote: str | None,
    data_dir: str,
    snakemake_args: Sequence[str],
    log: Callable[[str], None] = print,
) -> int:
    tools = Path(sys.executable).parent
    dvc = str(tools / "dvc") if (tools / "dvc").exists() else "dvc"
    snakemake = str(tools / "snakemake") if (tools / "snakemake").exists() else "snakemake"
    pull = subprocess.run([dvc, "pull", *(["-r", remote] if remote else [])])
    if pull.returncode != 0:
        log("error: dvc pull failed (see above); nothing was touched")
        return pull.returncode
    root = Path(paths.fill(paths.FEATURES_ROOT, data=data_dir))
    datasets = sorted(p.name.removesuffix(".dvc") for p in root.glob("*.dvc"))
    if not datasets:
        log(f"no {root}/*.dvc files: nothing to mark up to date")
        return 0
    targets = [paths.feature(data_dir, d, name) for d in datasets for name in paths.VIDEO_FEATURES]
    touch = subprocess.run([snakemake, "--touch", "--cores", "1", *targets, *snakemake_args])
    if touch.returncode == 0:
        log(f"pulled and marked up to date: {', '.join(datasets)}")
    return touch.returncode
