"""Extraction stage: one code path for every dataset in UCF101 layout.

For each listed clip: the middle frame (seeked, resized and centre-cropped for the visual
backbone) and the SSAST log-mel fbank of its first seconds of audio. The audio comes from a
sidecar `<video stem>.wav` beside the video when there is one (CREMA-D ships its audio as
separate WAVs, which the literature uses), else from the video file. Output per dataset:

- manifest.tsv   every listed clip with its status and, if left out, the reason;
- frames.npy     (M, S, S, 3) uint8, one row per usable clip;
- fbank.npy      (M, T, B) float32, unnormalised, zero-padded after `audio_frames`;
- norm_stats.json  per official split, mean and std of the training clips' fbank frames.

A bad file never stops the stage: it is recorded in the manifest and left out.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from avfl import paths
from avfl.data import audio, ucf101, video
from avfl.data.manifest import (
    STATUS_DROPPED,
    STATUS_FAILED,
    STATUS_OK,
    ManifestRow,
    summarise,
    write_manifest,
)

__all__ = [
    "OUTPUT_FILES",
    "ClipResult",
    "extract_clip",
    "extract_dataset",
    "norm_stats",
    "sidecar_audio",
    "summarise",
]

OUTPUT_FILES = paths.VIDEO_FEATURES
SIDECAR_AUDIO_SUFFIX = ".wav"


@dataclass
class ClipResult:
    """What one worker returns for one clip."""

    status: str
    reason: str
    duration_s: float = 0.0
    has_audio: bool = False
    has_video: bool = False
    sample_rate: int = 0
    channels: int = 0
    audio_frames: int = 0
    frame: np.ndarray | None = None
    fbank: np.ndarray | None = None


def extract_clip(path: str, settings: Mapping[str, Any]) -> ClipResult:
    """Features of one clip, or the reason it is left out. Never raises."""
    try:
        return _extract_clip(path, settings)
    except Exception as exc:  # one bad file must not stop the stage
        return ClipResult(STATUS_FAILED, f"unexpected error: {type(exc).__name__}: {exc}")


def sidecar_audio(path: str) -> str | None:
    """`<video stem>.wav` beside the video, if any (a dangling link counts: extraction reports it)."""
    candidate = os.path.splitext(path)[0] + SIDECAR_AUDIO_SUFFIX
    return candidate if candidate != path and os.path.lexists(candidate) else None


def _extract_clip(path: str, settings: Mapping[str, Any]) -> ClipResult:
    if not os.path.exists(path):
        return ClipResult(STATUS_FAILED, "file not found")
    if os.path.getsize(path) == 0:
        return ClipResult(STATUS_FAILED, "empty file (0 bytes)")
    try:
        with av.open(path) as probe:
            has_video = bool(probe.streams.video)
            has_audio = bool(probe.streams.audio)
    except av.error.FFmpegError as exc:
        return ClipResult(STATUS_FAILED, f"unreadable container: {exc}")
    audio_path = sidecar_audio(path) or path
    if audio_path != path:
        try:
            with av.open(audio_path) as probe:
                has_audio = bool(probe.streams.audio)
        except av.error.FFmpegError as exc:
            reason = f"unreadable sidecar audio {os.path.basename(audio_path)}: {exc}"
            return ClipResult(STATUS_FAILED, reason, has_video=has_video)
    result = ClipResult(STATUS_OK, "", has_audio=has_audio, has_video=has_video)
    if not has_video:
        result.status, result.reason = STATUS_FAILED, "no video stream"
        return result
    try:
        middle = video.middle_frame_seek(path)
    except video.VideoError as exc:
        result.status, result.reason = STATUS_FAILED, str(exc)
        return result
    result.duration_s = middle.duration_s
    if not has_audio:
        result.status, result.reason = STATUS_DROPPED, "no audio stream"
        return result
    try:
        decoded = audio.decode_audio(audio_path, settings["audio_seconds"])
        result.sample_rate, result.channels = decoded.sample_rate, decoded.channels
        mono = audio.to_mono_resampled(
            decoded.samples, decoded.sample_rate, settings["sample_rate"]
        )
        fbank, n_frames = audio.log_mel_fbank(
            mono, settings["sample_rate"], settings["num_mel_bins"], settings["target_frames"]
        )
    except audio.AudioError as exc:
        result.status, result.reason = STATUS_FAILED, str(exc)
        return result
    result.frame = video.resize_center_crop(middle.image, settings["frame_size"])
    result.fbank, result.audio_frames = fbank, n_frames
    return result


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _job(args: tuple[str, Mapping[str, Any]]) -> ClipResult:
    return extract_clip(*args)


def extract_dataset(
    raw_dir: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    threads: int = 1,
    progress: bool = True,
) -> list[ManifestRow]:
    """Run extraction over every listed clip of a UCF101-layout folder and write the outputs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _classes, clips = ucf101.read_layout(raw_dir)
    jobs = [(str(ucf101.resolve_video(raw_dir, c.rel_path)), dict(settings)) for c in clips]
    n = len(jobs)
    size, frames_t, bins = (
        settings["frame_size"],
        settings["target_frames"],
        settings["num_mel_bins"],
    )
    tmp_frames = np.lib.format.open_memmap(
        out / "frames.tmp.npy", mode="w+", dtype=np.uint8, shape=(max(n, 1), size, size, 3)
    )
    tmp_fbank = np.lib.format.open_memmap(
        out / "fbank.tmp.npy", mode="w+", dtype=np.float32, shape=(max(n, 1), frames_t, bins)
    )
    results: list[ClipResult] = []
    pool = (
        ProcessPoolExecutor(max_workers=threads, initializer=_worker_init) if threads > 1 else None
    )
    import torch

    caller_threads = torch.get_num_threads()
    if pool is None:
        _worker_init()  # same single-threaded numerics in-process: same bytes for any `threads`
    try:
        iterator = pool.map(_job, jobs, chunksize=4) if pool else map(_job, jobs)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(
                iterator, total=n, desc="extract", unit="clip", file=sys.stderr, mininterval=2.0
            )
        for i, result in enumerate(iterator):
            if result.status == STATUS_OK:
                tmp_frames[i] = result.frame
                tmp_fbank[i] = result.fbank
            result.frame = result.fbank = None
            results.append(result)
    finally:
        if pool:
            pool.shutdown()
        torch.set_num_threads(caller_threads)
    rows = _build_rows(clips, results, settings["min_clips_per_class"])
    keep = [i for i, r in enumerate(rows) if r.status == STATUS_OK]
    _compact(tmp_frames, keep, out / paths.FRAMES)
    _compact(tmp_fbank, keep, out / paths.FBANK)
    del tmp_frames, tmp_fbank
    (out / "frames.tmp.npy").unlink()
    (out / "fbank.tmp.npy").unlink()
    write_manifest(out / paths.MANIFEST, rows)
    stats = norm_stats(rows, np.load(out / paths.FBANK, mmap_mode="r"))
    (out / paths.NORM_STATS).write_text(
        json.dumps({"settings": dict(settings), "folds": stats}, indent=2, sort_keys=True) + "\n"
    )
    return rows


def _build_rows(
    clips: Sequence[ucf101.ClipRef], results: Sequence[ClipResult], min_per_class: int
) -> list[ManifestRow]:
    usable = Counter(
        c.class_name for c, r in zip(clips, results, strict=True) if r.status == STATUS_OK
    )
    kept = sorted({c.class_index for c in clips if usable[c.class_name] >= min_per_class})
    label_of = {idx: label for label, idx in enumerate(kept)}
    rows: list[ManifestRow] = []
    next_row = 0
    for clip, res in zip(clips, results, strict=True):
        status, reason = res.status, res.reason
        if status == STATUS_OK and clip.class_index not in label_of:
            status = STATUS_DROPPED
            reason = f"class has {usable[clip.class_name]} usable clips, fewer than min_clips_per_class={min_per_class}"
        ok = status == STATUS_OK
        rows.append(
            ManifestRow(
                clip_id=clip.clip_id,
                rel_path=clip.rel_path,
                class_name=clip.class_name,
                class_index=clip.class_index,
                label=label_of[clip.class_index] if ok else -1,
                group=clip.group,
                fold1=clip.folds.get(1, ""),
                fold2=clip.folds.get(2, ""),
                fold3=clip.folds.get(3, ""),
                duration_s=res.duration_s,
                has_audio=res.has_audio,
                has_video=res.has_video,
                sample_rate=res.sample_rate,
                channels=res.channels,
                audio_frames=res.audio_frames,
                status=status,
                reason=reason,
                row=next_row if ok else -1,
            )
        )
        next_row += ok
    return rows


def _compact(source: np.ndarray, keep: Sequence[int], path: Path, chunk: int = 256) -> None:
    """Copy the kept rows of a temporary memmap into the final .npy, a chunk at a time."""
    target = np.lib.format.open_memmap(
        path, mode="w+", dtype=source.dtype, shape=(len(keep), *source.shape[1:])
    )
    for start in range(0, len(keep), chunk):
        idx = list(keep[start : start + chunk])
        target[start : start + len(idx)] = source[idx]
    target.flush()
    del target


def norm_stats(rows: Sequence[ManifestRow], fbank: np.ndarray) -> dict[str, dict[str, float]]:
    """Per split, mean and std of the fbank frames of usable training clips (padding excluded)."""
    stats: dict[str, dict[str, float]] = {}
    for k in range(1, ucf101.N_SPLITS + 1):
        total, total_sq, count, n_clips = 0.0, 0.0, 0, 0
        for r in rows:
            if r.status != STATUS_OK or r.fold(k) != "train":
                continue
            values = np.asarray(fbank[r.row, : r.audio_frames], dtype=np.float64)
            total += float(values.sum())
            total_sq += float(np.square(values).sum())
            count += values.size
            n_clips += 1
        if n_clips == 0:
            continue
        mean = total / count
        std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
        stats[f"fold{k}"] = {"mean": round(mean, 6), "std": round(std, 6), "n_clips": n_clips}
    return stats
