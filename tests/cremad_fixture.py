"""A small CREMA-D copy in the official layout, for the adapter and extraction tests.

`VideoFlash/<name>.flv` (FLV: Sorenson H.263 video and an MP3 track, as the real ones) and
`AudioWAV/<name>.wav` (16 kHz mono 16-bit PCM). As on real CREMA-D, audio is the strong
modality: each emotion has its own pitch and rhythm, while the frames differ only by a
faint patch over an actor-specific picture. Helpers turn files into git-lfs pointers.
"""

from __future__ import annotations

import hashlib
import shutil
import wave
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import av
import numpy as np

EMOTION_CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
# Emotion -> (pitch Hz, syllables per second): clearly separable in a log-mel fbank.
VOICE = {
    "ANG": (240.0, 6.0),
    "DIS": (150.0, 2.5),
    "FEA": (320.0, 8.0),
    "HAP": (280.0, 4.5),
    "NEU": (190.0, 3.5),
    "SAD": (120.0, 1.5),
}
WAV_RATE = 16000
FLV_AUDIO_RATE = 22050  # FLV allows 44.1/22.05/11.025 kHz for MP3; the WAV is 16 kHz
FPS = 10
WIDTH, HEIGHT = 64, 48
POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def clip_names(
    actors: Iterable[int] = range(1001, 1010), sentences: Sequence[str] = ("IEO", "DFA")
) -> list[str]:
    """Official-style names; IEO carries an intensity level (LO/MD/HI, NEU: XX), the rest XX."""
    names = []
    for actor in actors:
        for sentence in sentences:
            for emotion in EMOTION_CODES:
                level = "XX"
                if sentence == "IEO" and emotion != "NEU":
                    level = ("LO", "MD", "HI")[actor % 3]
                names.append(f"{actor}_{sentence}_{emotion}_{level}")
    return names


def voice(name: str, rate: int) -> np.ndarray:
    """(n,) float32 speech stand-in: emotion pitch with harmonics, syllable envelope, noise."""
    actor, sentence, emotion, _ = name.split("_")
    rng = np.random.default_rng(zlib.crc32(f"{name}@{rate}".encode()))
    pitch, syllables = VOICE[emotion]
    pitch *= 1 + 0.04 * ((int(actor) % 5) - 2)  # speakers differ a little
    seconds = 1.0 + 0.1 * (sum(map(ord, sentence)) % 5)
    t = np.arange(round(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in (1, 2, 3))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * syllables * t))
    signal = 0.25 * tone * envelope + 0.01 * rng.standard_normal(t.size)
    return signal.astype(np.float32)


def frames(name: str, seconds: float) -> np.ndarray:
    """(T, H, W, 3) uint8: an actor-specific picture and a faint per-emotion patch (weak cue)."""
    actor, _, emotion, _ = name.split("_")
    rng = np.random.default_rng(int(actor))
    base = rng.integers(60, 190, size=3)
    n = max(2, round(seconds * FPS))
    video = np.empty((n, HEIGHT, WIDTH, 3), dtype=np.uint8)
    shade = 12 * (EMOTION_CODES.index(emotion) - 2.5)  # about +-30 grey levels at most
    noise = np.random.default_rng(zlib.crc32(name.encode()))
    for i in range(n):
        image = np.broadcast_to(base, (HEIGHT, WIDTH, 3)).astype(np.float32)
        image[28:40, 20:44] += shade  # the "mouth"
        image += noise.normal(0, 8, size=image.shape)
        video[i] = np.clip(image, 0, 255).astype(np.uint8)
    return video


def write_wav(path: Path, samples: np.ndarray, rate: int = WAV_RATE) -> None:
    """16-bit PCM mono WAV, as AudioWAV/ holds."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


def _first_encoder(names: Sequence[str]) -> str:
    for name in names:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise RuntimeError(f"none of the encoders {names} is available in this PyAV build")


def write_flv(path: Path, video: np.ndarray, samples: np.ndarray, rate: int) -> None:
    """FLV with Sorenson H.263 video (flv) and MP3 audio, falling back to codecs FLV accepts."""
    video_codec = _first_encoder(("flv", "libx264", "h264"))
    audio_codec = _first_encoder(("libmp3lame", "adpcm_swf", "pcm_s16le"))
    with av.open(str(path), "w", format="flv") as container:
        vstream = container.add_stream(video_codec, rate=FPS)
        vstream.height, vstream.width = video.shape[1:3]
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.gop_size = 5
        astream = container.add_stream(audio_codec, rate=rate, layout="mono")
        if audio_codec == "libmp3lame":
            astream.codec_context.options = {"compression_level": "9"}  # fastest
        for i, image in enumerate(video):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        aframe = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        aframe.sample_rate, aframe.pts = rate, 0
        container.mux(astream.encode(aframe))
        container.mux(astream.encode(None))


def write_cremad(root: Path, names: Iterable[str] | None = None) -> list[str]:
    """Write VideoFlash/ and AudioWAV/ under `root`; returns the clip names."""
    names = list(clip_names() if names is None else names)
    (root / "VideoFlash").mkdir(parents=True, exist_ok=True)
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    for name in names:
        wav = voice(name, WAV_RATE)
        write_wav(root / "AudioWAV" / f"{name}.wav", wav)
        seconds = wav.size / WAV_RATE
        write_flv(
            root / "VideoFlash" / f"{name}.flv",
            frames(name, seconds),
            voice(name, FLV_AUDIO_RATE),
            FLV_AUDIO_RATE,
        )
    return names


def make_pointer(path: Path) -> None:
    """Replace a media file by the git-lfs pointer a zip download holds in its place."""
    data = path.read_bytes()
    path.write_text(POINTER_TEMPLATE.format(oid=hashlib.sha256(data).hexdigest(), size=len(data)))


def pointer_copy(source: Path, dest: Path, keep: float = 0.2) -> Path:
    """Copy of the fixture where all but the first `keep` share of each folder are pointers."""
    shutil.copytree(source, dest)
    for folder in ("VideoFlash", "AudioWAV"):
        files = sorted((dest / folder).iterdir())
        for path in files[round(keep * len(files)) :]:
            make_pointer(path)
    return dest


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tests.cremad_fixture DIR`: a CREMA-D copy for `config/cremad_fixture.yaml`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--actors", type=int, default=30, help="actors 1001, 1002, ...")
    parser.add_argument("--sentences", nargs="+", default=["IEO", "DFA", "ITS"])
    args = parser.parse_args(argv)
    names = write_cremad(args.root, clip_names(range(1001, 1001 + args.actors), args.sentences))
    print(f"wrote {len(names)} clips under {args.root}")


if __name__ == "__main__":
    main()
