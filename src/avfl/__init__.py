"""avfl: a reproducible pipeline for audio classification in federated learning with missing video.

Reproduces "ModalityMirror" (Feng, Zhang et al.) and sets its neighbours beside it on the same
partitions, missing-video rates and seeds: data acquisition, middle-frame and log-mel fbank
extraction, client partitioning, federated training of every registered method (UniFL,
MultiFL, Harmony, ModalityMirror, FedProx, FedAdam, BMSFed, and third-party ones) with
centralised references, and the paper's table and figures. `python -m avfl methods` lists
the methods.
"""

import functools
import subprocess
from pathlib import Path

__version__ = "0.2.0"


@functools.cache
def code_version() -> str:
    """The version of the code that is running: `git describe` of its checkout (tag or commit,
    `-dirty` with uncommitted changes) where there is one, else the package version."""
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip():
            return f"{__version__}+git.{done.stdout.strip()}"
    return __version__
