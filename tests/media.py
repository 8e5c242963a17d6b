"""Helpers that write small, precisely known media files for the extraction tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_media(
    path: Path,
    *,
    frames: np.ndarray | None = None,
    fps: int = 10,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    gop: int = 5,
) -> Path:
    """Write `frames` (T, H, W, 3) uint8 and/or `audio` (C, N) float32 to `path`."""
    ext = path.suffix.lstrip(".")
    video_codec = video_codec or ("libx264" if ext == "mp4" else "mpeg4")
    audio_codec = audio_codec or ("aac" if ext == "mp4" else "pcm_s16le")
    with av.open(str(path), "w", format=ext) as container:
        vstream = astream = None
        if frames is not None:
            vstream = container.add_stream(video_codec, rate=fps)
            vstream.height, vstream.width = frames.shape[1:3]
            vstream.pix_fmt = "yuv420p"
            vstream.codec_context.gop_size = gop
            if video_codec == "libx264":
                vstream.options = {"preset": "ultrafast", "qp": "0"}
        if audio is not None:
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            astream = container.add_stream(audio_codec, rate=sample_rate, layout=layout)
        if vstream is not None:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            fmt = "s16" if audio_codec == "pcm_s16le" else "fltp"
            data = audio
            if fmt == "s16":
                data = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data), format=fmt, layout=astream.layout.name
            )
            aframe.sample_rate = sample_rate
            aframe.pts = 0
            container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    return path


def moving_square(n_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames whose content changes every frame, so picking the wrong one is visible."""
    frames = np.zeros((n_frames, height, width, 3), dtype=np.uint8)
    for t in range(n_frames):
        x = int(t * (width - 8) / max(1, n_frames - 1))
        frames[t, 10:26, x : x + 8] = (255, 40 + 4 * t % 200, 0)
        frames[t, -4:, :, 2] = (t * 7) % 256
    return frames


def sine(
    freq: float, seconds: float, sample_rate: int, channels: int = 1, amplitude: float = 0.5
) -> np.ndarray:
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)
