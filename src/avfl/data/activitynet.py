"""Acquiring ActivityNet v1.3 and laying it out in UCF101 layout.

- Annotations: `activity_net.v1-3.min.json` (200 classes; subsets training, validation,
  testing). No checksum is published for it, so none is pinned by default (set
  `datasets.<name>.download.annotations.sha256` to pin yours).
- Videos: from YouTube with yt-dlp (resumable, with retries and a rate limit); many videos
  are gone, so every id that fails is recorded in `failed.tsv` and the rest goes on. Or
  `source_dir`: the organisers' full copy (files named `v_<id>.<ext>` or `<id>.<ext>`).
- Layout: `UCF-101/<Class>/v_<Class>_g00_c<NNNNN>.<ext>` (links to the videos; group 0: no
  groups, so the dev split is by clip), `ucfTrainTestlist/` with split 1 = training ->
  train, validation -> test (the test labels are withheld), and `clip_ids.tsv` mapping
  each clip to its YouTube id. Each video's label is its first annotation's.

The whole video is used, as the paper describes (middle frame, first 5 s of audio).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avfl.data import ucf101
from avfl.data.download import RemoteFile, fetch, remote_from_config

ANNOTATIONS = RemoteFile(
    name="activity_net.v1-3.min.json",
    urls=(
        "http://ec2-52-25-205-214.us-west-2.compute.amazonaws.com/files/activity_net.v1-3.min.json",
        "https://raw.githubusercontent.com/activitynet/ActivityNet/master/Evaluation/data/activity_net.v1-3.min.json",
    ),
)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class Video:
    youtube_id: str
    subset: str  # training | validation | testing
    label: str | None
    url: str


def read_annotations(path: str | Path) -> list[Video]:
    """Videos of the annotation file, in id order."""
    data = json.loads(Path(path).read_text())
    if "database" not in data:
        raise ValueError(f"{path}: not an ActivityNet annotation file (no 'database')")
    videos = []
    for vid, entry in sorted(data["database"].items()):
        annotations = entry.get("annotations") or []
        label = annotations[0]["label"] if annotations else None
        videos.append(
            Video(
                vid,
                entry["subset"],
                label,
                entry.get("url") or f"https://www.youtube.com/watch?v={vid}",
            )
        )
    return videos


def class_folder(label: str) -> str:
    """'Playing congas' -> 'PlayingCongas' (UCF101 clip names allow letters and digits only)."""
    return "".join(
        word[:1].upper() + word[1:] for word in re.split(r"[^A-Za-z0-9]+", label) if word
    )


def find_video(folder: Path, youtube_id: str) -> Path | None:
    for stem in (f"v_{youtube_id}", youtube_id):
        for ext in VIDEO_EXTENSIONS:
            candidate = folder / f"{stem}{ext}"
            if candidate.exists() and candidate.stat().st_size > 0:
                return candidate
    return None


def download_videos(
    videos: Sequence[Video],
    dest: Path,
    downloader: Sequence[str],
    retries: int,
    rate_limit: str | None,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """yt-dlp each labelled video not yet present; returns {id: reason} of those that failed."""
    dest.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    for i, video in enumerate(videos, start=1):
        if find_video(dest, video.youtube_id):
            continue  # resumption: already downloaded
        cmd = [*downloader, "--continue", "--no-playlist", "--retries", str(retries),
               "-f", "best[height<=480]/best", "-o", str(dest / f"v_{video.youtube_id}.%(ext)s")]  # fmt: skip
        if rate_limit:
            cmd += ["--limit-rate", rate_limit]
        try:
            done = subprocess.run([*cmd, video.url], capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed[video.youtube_id] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, FileNotFoundError):
                raise RuntimeError(
                    f"downloader {downloader[0]!r} not found: pip install -e '.[activitynet]' (yt-dlp), or set source_dir"
                ) from exc
            continue
        if done.returncode != 0 or not find_video(dest, video.youtube_id):
            reason = (done.stderr.strip().splitlines() or ["no file written"])[-1]
            failed[video.youtube_id] = reason.replace("\t", " ")
        if i % 100 == 0:
            log(f"ActivityNet: {i}/{len(videos)} videos tried, {len(failed)} failed")
    return failed


def build_layout(videos: Sequence[Video], video_dir: Path, raw: Path) -> tuple[int, int, int]:
    """Write the UCF101-layout view of the labelled, present videos; returns (classes, clips, missing)."""
    labelled = [v for v in videos if v.label and v.subset in ("training", "validation")]
    classes = sorted({class_folder(v.label) for v in labelled})
    index = {c: i + 1 for i, c in enumerate(classes)}
    split_dir = raw / ucf101.SPLIT_DIR
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "classInd.txt").write_text("".join(f"{i} {c}\n" for c, i in index.items()))
    train, test, ids, missing = [], [], [], 0
    for number, video in enumerate(labelled, start=1):
        source = find_video(video_dir, video.youtube_id)
        if source is None:
            missing += 1
            continue
        folder = class_folder(video.label)
        name = ucf101.clip_file_name(folder, 0, number, source.suffix.lstrip("."))
        target = raw / ucf101.VIDEO_DIR / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(source.resolve())
        rel = f"{folder}/{name}"
        (train if video.subset == "training" else test).append((rel, index[folder]))
        ids.append(f"{Path(name).stem}\t{video.youtube_id}\t{video.subset}\t{video.label}\n")
    (split_dir / "trainlist01.txt").write_text("".join(f"{rel} {idx}\n" for rel, idx in train))
    (split_dir / "testlist01.txt").write_text("".join(f"{rel}\n" for rel, _ in test))
    for split in (2, 3):  # ActivityNet has one official split
        (split_dir / f"trainlist0{split}.txt").write_text("")
        (split_dir / f"testlist0{split}.txt").write_text("")
    (raw / "clip_ids.tsv").write_text("clip_id\tyoutube_id\tsubset\tlabel\n" + "".join(ids))
    return len(classes), len(train) + len(test), missing


def acquire_activitynet(
    downloads: str | Path,
    raw: str | Path,
    settings: Mapping[str, Any],
    log: Callable[[str], None] = print,
) -> tuple[int, int, int]:
    """Annotations + videos (downloaded or from source_dir) -> UCF101 layout under `raw`."""
    downloads, raw = Path(downloads), Path(raw)
    annotations = fetch(
        remote_from_config(settings.get("annotations"), ANNOTATIONS), downloads, log=log
    )
    videos = [
        v
        for v in read_annotations(annotations)
        if v.label and v.subset in ("training", "validation")
    ]
    if settings.get("source_dir"):
        video_dir = Path(settings["source_dir"]).expanduser()
        if not video_dir.is_dir():
            raise FileNotFoundError(
                f"source_dir {video_dir} not found: point it at the folder of ActivityNet videos"
            )
    else:
        video_dir = downloads / "videos"
        failed = download_videos(
            videos,
            video_dir,
            settings["downloader"],
            settings["retries"],
            settings["rate_limit"],
            log,
        )
        with open(downloads / "failed.tsv", "w") as handle:
            handle.write("youtube_id\treason\n")
            handle.writelines(f"{vid}\t{reason}\n" for vid, reason in sorted(failed.items()))
        log(
            f"ActivityNet: {len(videos) - len(failed)} of {len(videos)} videos downloaded; failures in {downloads / 'failed.tsv'}"
        )
    staging = raw.with_name(raw.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    n_classes, n_clips, missing = build_layout(videos, video_dir, staging)
    if raw.exists():
        shutil.rmtree(raw)
    os.replace(staging, raw)
    log(
        f"ActivityNet in {raw}: {n_classes} classes, {n_clips} clips ({missing} labelled videos missing)"
    )
    return n_classes, n_clips, missing
