"""Writing result records: sorted keys, atomic replace, so a killed job never leaves half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def replace_durably(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a temporary file, flush it to disk, then rename it over `path`: a killed
    job, or a machine that loses power, leaves either the previous file or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    replace_durably(
        path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    )


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save, replaced durably (models and checkpoints)."""
    import torch

    replace_durably(path, lambda tmp: torch.save(obj, tmp))
