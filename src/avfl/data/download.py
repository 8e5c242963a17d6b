"""Downloads that survive the real world: resume, mirrors, pinned checksums, safe extraction.

- A download goes to `<name>.part` and resumes from its size with an HTTP Range request
  (restarting if the server ignores ranges); a cut connection is retried, then the next
  mirror is tried.
- The finished file's size and SHA-256 are checked against pinned values; a mismatch is an
  error and the file is moved aside to `<name>.bad-checksum`, never silently deleted.
- Archives are checked before extraction: a member whose path would leave the target
  folder (absolute, `..`, or a link) refuses the whole archive.
- A full disk is reported with the path being written.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avfl.errors import UserError


class DownloadError(UserError, RuntimeError):
    """A file could not be fetched; the message names the file, the URLs and what to do."""


class ChecksumError(DownloadError):
    """The fetched file is not the pinned one; it was moved aside."""


class UnsafeArchiveError(UserError, ValueError):
    """An archive member would be written outside the target folder."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the downloads folder
    urls: Sequence[str]  # primary first, then mirrors
    size: int | None = None  # bytes, pinned
    sha256: str | None = None  # pinned


def remote_from_config(
    spec: Mapping[str, Any] | None, default: RemoteFile | None = None
) -> RemoteFile:
    """A RemoteFile from a config block; keys it omits come from `default`."""
    spec = spec or {}
    base = default or RemoteFile(name=spec["name"], urls=spec["urls"])
    return RemoteFile(
        name=spec.get("name", base.name),
        urls=tuple(spec.get("urls", base.urls)),
        size=spec.get("size", base.size),
        sha256=spec.get("sha256", base.sha256),
    )


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, remote: RemoteFile) -> None:
    size = path.stat().st_size
    problem = None
    if remote.size is not None and size != remote.size:
        problem = f"{size} bytes, expected {remote.size}"
    elif remote.sha256 and (actual := sha256_of(path)) != remote.sha256.lower():
        problem = f"SHA-256 {actual}, expected {remote.sha256}"
    if problem:
        bad = path.with_name(remote.name + ".bad-checksum")
        os.replace(path, bad)
        raise ChecksumError(
            f"{remote.name}: downloaded file has {problem}; moved to {bad}. "
            f"The source may have changed or the transfer was corrupted: delete it and run again."
        )


def _copy_response(
    response, out, total: int | None, done: int, progress: Callable[[int, int | None], None] | None
) -> int:
    while True:
        block = response.read(1 << 20)
        if not block:
            return done
        out.write(block)
        done += len(block)
        if progress:
            progress(done, total)


def _fetch_once(url: str, part: Path, timeout: float, progress) -> None:
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = start > 0 and response.status == 206
        length = response.headers.get("Content-Length")
        total = (int(length) + (start if resumed else 0)) if length else None
        try:
            with open(part, "ab" if resumed else "wb") as out:
                done = _copy_response(response, out, total, start if resumed else 0, progress)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(
                    f"disk full while writing {part}: free space there or set data_dir to a larger disk"
                ) from exc
            raise
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def fetch(
    remote: RemoteFile,
    downloads: str | Path,
    retries: int = 3,
    timeout: float = 60.0,
    backoff_s: float = 1.0,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> Path:
    """The verified local copy of `remote` in `downloads` (fetched, or resumed, if needed)."""
    downloads = Path(downloads)
    downloads.mkdir(parents=True, exist_ok=True)
    dest = downloads / remote.name
    if dest.exists():
        _check(dest, remote)
        return dest
    part = downloads / (remote.name + ".part")
    errors: list[str] = []
    last_report = [0.0]

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last_report[0] > 5:
            last_report[0] = now
            share = f" ({100 * done / total:.1f} %)" if total else ""
            log(f"{remote.name}: {done / 2**20:.1f} MiB{share}")

    for url in remote.urls:
        for attempt in range(1, retries + 1):
            try:
                _fetch_once(url, part, timeout, progress)
            except DownloadError:
                raise
            except (
                urllib.error.URLError,
                http.client.HTTPException,
                ConnectionError,
                TimeoutError,
                OSError,
            ) as exc:
                errors.append(f"{url} (attempt {attempt}): {exc}")
                log(
                    f"{remote.name}: {exc}; {'retrying' if attempt < retries else 'giving up on this URL'}"
                )
                time.sleep(backoff_s * attempt)
                continue
            os.replace(part, dest)
            _check(dest, remote)
            log(f"{remote.name}: downloaded and verified ({dest.stat().st_size} bytes)")
            return dest
    raise DownloadError(
        f"could not download {remote.name} from {', '.join(remote.urls)}: {errors[-1] if errors else 'no URL'}. "
        f"The partial file {part} is kept; run again to resume."
    )


def safe_extract_zip(
    archive: str | Path, target: str | Path, required: Iterable[str] = ()
) -> list[str]:
    """Extract `archive` into `target` after checking every member stays inside it.

    `required`: member names that must be present (each missing one is named). Returns the
    member names.
    """
    archive, target = Path(archive), Path(target)
    root = target.resolve()
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        for info in zf.infolist():
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            dest = (root / info.filename).resolve()
            if is_link or info.filename.startswith("/") or not dest.is_relative_to(root):
                raise UnsafeArchiveError(
                    f"{archive}: member {info.filename!r} would be written outside {target}; the archive is refused"
                )
        missing = sorted(set(required) - set(names))
        if missing:
            shown = ", ".join(missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            raise DownloadError(f"{archive} lacks {len(missing)} expected member(s): {shown}")
        target.mkdir(parents=True, exist_ok=True)
        try:
            zf.extractall(target)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError(f"disk full while extracting {archive} into {target}") from exc
            raise
    return names


def move_tree(source: Path, target: Path) -> None:
    """Move a folder into place (replacing an older copy)."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))
