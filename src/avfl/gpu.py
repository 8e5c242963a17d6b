"""GPU slots for concurrent jobs.

Snakemake's `--resources gpu=N` limits how many GPU jobs run at once but does not say which
GPU each one gets. Every GPU job therefore takes a slot: an exclusive `flock` on one lock
file per visible GPU, then restricts itself to that GPU by setting CUDA_VISIBLE_DEVICES
before CUDA is initialised. The kernel drops a lock when its process ends, however it
ends, so a killed job never leaves a GPU taken.

The visible GPUs are those of CUDA_VISIBLE_DEVICES when it is set (as SLURM and other
schedulers do for the GPUs they assign to a job), else every device the driver reports.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

LOCK_DIR_ENV = "AVFL_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(".snakemake") / "avfl-gpu-locks"


def visible_gpus() -> list[str]:
    """GPU ids this process may use, as CUDA_VISIBLE_DEVICES entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA runtime: no GPUs
        return []


def slot_for(device: str):
    """The GPU slot of a job configured with `device` (none when the job is forced onto the CPU)."""
    return nullcontext(None) if device == "cpu" else gpu_slot()


@contextmanager
def gpu_slot(
    lock_dir: str | Path | None = None, timeout_s: float = 24 * 3600, poll_s: float = 0.2
) -> Iterator[str | None]:
    """Hold one visible GPU for the duration of the block; yields its id (None without GPUs).

    Must be entered before CUDA is initialised in this process.
    """
    gpus = visible_gpus()
    if not gpus:
        yield None
        return
    lock_dir = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        for gpu in gpus:
            handle = open(lock_dir / f"gpu{gpu}.lock", "a+")  # noqa: SIM115 (held across the yield)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            previous = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            try:
                yield gpu
            finally:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {gpus} in {lock_dir} after {timeout_s} s")
        time.sleep(poll_s)
