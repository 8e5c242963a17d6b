"""The visual input: the middle frame of a video, found by seeking rather than decoding it all.

"Middle frame" means the frame on screen at half the video stream's duration: the last
frame whose presentation time is at or before start + duration / 2. Seeking jumps to the
key frame before that time and decodes forward from there, so the cost does not grow
with the clip length. `middle_frame_decode_all` applies the same definition to every
decoded frame; it is the reference the tests and the benchmark compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from PIL import Image


class VideoError(RuntimeError):
    """The video stream cannot give a middle frame; the message is the manifest reason."""


@dataclass(frozen=True)
class MiddleFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB, full resolution
    time_s: float  # presentation time of the chosen frame
    duration_s: float  # duration of the video stream


def _stream_span(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[float, float] | None:
    """(start, duration) of the video stream in seconds, or None if the file does not say."""
    tb = stream.time_base
    start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
    if stream.duration and tb:
        return start, float(stream.duration * tb)
    if container.duration:
        return start, container.duration / av.time_base
    return None


def _open_video(path: str):
    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "NONE"
    return container, stream


def _frame_time(frame: av.VideoFrame) -> float | None:
    return None if frame.pts is None or frame.time is None else float(frame.time)


def _truncation_check(last_time: float | None, target: float, fps: float) -> None:
    """Decoding ended before the middle: the file is cut short (its header promises more)."""
    slack = 2.0 / fps if fps else 0.1
    if last_time is None:
        raise VideoError("no decodable video frame")
    if last_time < target - slack:
        raise VideoError(
            f"video truncated: frames end at {last_time:.2f} s, before the middle at {target:.2f} s"
        )


def middle_frame_seek(path: str) -> MiddleFrame:
    """The middle frame, decoding only from the key frame before it."""
    container, stream = _open_video(path)
    try:
        span = _stream_span(container, stream)
        if span is None:
            return _middle_by_index(container, stream)
        start, duration = span
        target = start + duration / 2
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        container.seek(
            int(target / stream.time_base), stream=stream, backward=True, any_frame=False
        )
        chosen, chosen_time = _scan_to(container.decode(stream), target, fps)
        if chosen is None or chosen_time is None:
            # The seek overshot (imprecise index) or timestamps are missing: read from the start.
            container.seek(0, stream=stream, backward=True, any_frame=False)
            chosen, chosen_time = _scan_to(container.decode(stream), target, fps)
        if chosen is None:
            raise VideoError("no decodable video frame")
        return MiddleFrame(chosen.to_ndarray(format="rgb24"), chosen_time or 0.0, duration)
    except av.error.FFmpegError as exc:
        raise VideoError(f"video decode failed: {exc}") from exc
    finally:
        container.close()


def _scan_to(frames, target: float, fps: float) -> tuple[av.VideoFrame | None, float | None]:
    """Last frame at or before `target`; (None, None) if the first frame is already past it."""
    chosen: av.VideoFrame | None = None
    chosen_time: float | None = None
    for frame in frames:
        t = _frame_time(frame)
        if t is None:
            return None, None
        if t > target + 1e-9:
            if chosen is None:
                return None, None
            return chosen, chosen_time
        chosen, chosen_time = frame, t
    if chosen is None:
        return None, None
    # End of stream reached without passing the target.
    _truncation_check(chosen_time, target, fps)
    return chosen, chosen_time


def middle_frame_decode_all(path: str) -> MiddleFrame:
    """Reference implementation: decode every frame, then apply the same definition."""
    container, stream = _open_video(path)
    try:
        span = _stream_span(container, stream)
        if span is None:
            return _middle_by_index(container, stream)
        start, duration = span
        target = start + duration / 2
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        decoded = [(f, _frame_time(f)) for f in container.decode(stream)]
        if not decoded:
            raise VideoError("no decodable video frame")
        before = [(f, t) for f, t in decoded if t is not None and t <= target + 1e-9]
        if not before:
            return MiddleFrame(
                decoded[0][0].to_ndarray(format="rgb24"), decoded[0][1] or 0.0, duration
            )
        frame, t = max(before, key=lambda ft: ft[1])
        _truncation_check(max(t for _, t in decoded if t is not None), target, fps)
        return MiddleFrame(frame.to_ndarray(format="rgb24"), t, duration)
    except av.error.FFmpegError as exc:
        raise VideoError(f"video decode failed: {exc}") from exc
    finally:
        container.close()


def _middle_by_index(container, stream) -> MiddleFrame:
    """Fallback when the file states no duration: frame n // 2 of all decoded frames."""
    frames = list(container.decode(stream))
    if not frames:
        raise VideoError("no decodable video frame")
    frame = frames[len(frames) // 2]
    duration = (_frame_time(frames[-1]) or 0.0) - (_frame_time(frames[0]) or 0.0)
    return MiddleFrame(frame.to_ndarray(format="rgb24"), _frame_time(frame) or 0.0, duration)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (antialiased bilinear), then centre-crop a square."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)
