"""Acquiring UCF101: the official split lists and the videos, verified, in UCF101 layout.

Sources (sizes and SHA-256 as pinned by TensorFlow Datasets' url_checksums/ucf101.txt):
- split lists: the dataset site's `UCF101TrainTestSplits-RecognitionTask.zip` (113,943 bytes);
- videos: the THUMOS'14 mirror's `UCF101_videos.zip` (6,960,400,115 bytes), whose members
  are `UCF101/v_<Class>_g<GG>_c<CC>.avi`. The dataset site's own `UCF101.rar` has no
  published checksum and needs an unrar tool: to use it, unpack it yourself and point
  `source_dir` at the folder.

The videos are regrouped into `UCF-101/<Class>/` (class folder names from classInd.txt),
so the rest of the pipeline reads the same layout as the official archives unpack to.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from avfl.data import ucf101
from avfl.data.download import DownloadError, RemoteFile, fetch, move_tree, safe_extract_zip

UCF101_SPLITS = RemoteFile(
    name="UCF101TrainTestSplits-RecognitionTask.zip",
    urls=(
        "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
        "https://www.crcv.ucf.edu/wp-content/uploads/2019/03/UCF101TrainTestSplits-RecognitionTask.zip",
    ),
    size=113_943,
    sha256="5c0d1a53b8ed364a2ac830a73f405e51bece7d98ce1254fd19ed4a36b224bd27",
)
UCF101_VIDEOS = RemoteFile(
    name="UCF101_videos.zip",
    urls=("https://storage.googleapis.com/thumos14_files/UCF101_videos.zip",),
    size=6_960_400_115,
    sha256="dabf56f573cd19c79e096563529fec8126a2a34e18e10c72eb621dd687532b0d",
)


def acquire_ucf101(
    downloads: str | Path,
    raw: str | Path,
    splits: RemoteFile = UCF101_SPLITS,
    videos: RemoteFile = UCF101_VIDEOS,
    log: Callable[[str], None] = print,
) -> tuple[int, int]:
    """Fetch, verify and lay out UCF101 under `raw`; returns (classes, listed clips)."""
    raw = Path(raw)
    staging = raw.with_name(raw.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    split_zip = fetch(splits, downloads, log=log)
    safe_extract_zip(split_zip, staging / "splits", required=[f"{ucf101.SPLIT_DIR}/classInd.txt"])
    lists = staging / "splits" / ucf101.SPLIT_DIR
    classes, clips = ucf101.read_layout(staging / "splits")
    video_zip = fetch(videos, downloads, log=log)
    wanted = {f"UCF101/{Path(c.rel_path).name}" for c in clips}
    safe_extract_zip(video_zip, staging / "videos", required=wanted)
    folder_of = {c.lower(): c for c in classes}
    for clip in clips:
        name = Path(clip.rel_path).name
        target = staging / ucf101.VIDEO_DIR / folder_of[clip.class_name.lower()] / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / "videos" / "UCF101" / name).replace(target)
    move_tree(lists, staging / ucf101.SPLIT_DIR)
    shutil.rmtree(staging / "splits")
    shutil.rmtree(staging / "videos")
    move_tree(staging, raw)
    log(f"UCF101 in {raw}: {len(classes)} classes, {len(clips)} listed clips")
    return len(classes), len(clips)


__all__ = [
    "UCF101_SPLITS",
    "UCF101_VIDEOS",
    "DownloadError",
    "acquire_ucf101",
]
