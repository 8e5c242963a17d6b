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


def write_silent_tone_dataset(
    root: Path, n_classes: int = 4, n_groups: int = 25, clips: int = 2
) -> Path:
    """A small dataset in the UCF101 layout whose classes have clean, distinct audio (a tone
    pattern per class) in the middle of long digital silence, and distinct frames (a colour
    per class). Its frozen audio summaries vary little around a large common offset, the
    situation in which unstandardised federated training stalls."""
    from avfl.data import ucf101

    rate, seconds = 16000, 4.0
    classes = [f"Tone{chr(65 + k)}" for k in range(n_classes)]
    entries = []
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        folder = root / ucf101.VIDEO_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        for group in range(1, n_groups + 1):
            for clip in range(1, clips + 1):
                audio = np.zeros((1, int(rate * seconds)), dtype=np.float32)
                start = int(rate * (1.6 + 0.2 * rng.random()))
                burst = sine(300.0 * (k + 1), 0.4, rate)[0] + sine(450.0 * (k + 1), 0.4, rate)[
                    0
                ] * (k % 2)
                audio[0, start : start + burst.size] = 0.4 * burst
                colour = np.array(
                    [(60 * k) % 256, (140 + 50 * k) % 256, (220 - 40 * k) % 256], dtype=np.uint8
                )
                images = np.broadcast_to(colour, (10, 32, 32, 3)).copy()
                images[:, :4] = (group * 9) % 256  # a little per-group variation
                file = ucf101.clip_file_name(name, group, clip, "mp4")
                write_media(folder / file, frames=images, audio=audio, sample_rate=rate, fps=10)
                entries.append((name, group, f"{name}/{file}"))
    ucf101.write_split_lists(root / ucf101.SPLIT_DIR, classes, entries)
    return root
