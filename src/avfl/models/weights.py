"""Pretrained weights: found by path or fetched from a URL, verified by checksum, never faked.

If weights are requested and cannot be had, loading fails with a message that says where
to put the file and where to get it; nothing falls back to a random initialisation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avfl.errors import UserError


class WeightsError(UserError, RuntimeError):
    """Requested pretrained weights are missing or corrupt; the message says what to do."""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, sha256: str | None, what: str) -> None:
    """Check the file's SHA-256 (a full hash or a prefix, as torchvision names its files)."""
    if not sha256:
        return
    actual = sha256_of(path)
    if not actual.startswith(sha256.lower()):
        bad = path.with_name(path.name + ".bad-checksum")
        os.replace(path, bad)
        raise WeightsError(
            f"{what}: {path} has SHA-256 {actual[:16]}..., expected {sha256}; the file was moved to {bad}. "
            f"Download it again."
        )


def resolve(spec: Mapping[str, Any], what: str, config_key: str) -> Path:
    """The local path of verified weights described by spec = {path, url, sha256, download}."""
    path = Path(spec["path"]).expanduser()
    if not path.is_file() and spec.get("url") and spec.get("download", False):
        _download(spec["url"], path)
    if not path.is_file():
        hint = f" from {spec['url']}" if spec.get("url") else ""
        raise WeightsError(
            f"{what}: pretrained weights not found at {path}. Download them{hint} and put the file there "
            f"(or set {config_key}.path to where it is, or {config_key}.download: true to fetch it). "
            f"Random initialisation is never used in their place."
        )
    verify(path, spec.get("sha256"), what)
    return path


def _download(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise WeightsError(f"could not download {url} to {path}: {exc}") from exc
    os.replace(part, path)


def load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
