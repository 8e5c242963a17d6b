"""The embedded audio-visual dataset: real video files laid out exactly as UCF101 unpacks.

It reproduces the paper's situation rather than a toy:
- the frame is the strong modality: every class has its own shape and colour;
- audio is the weaker one: each class has a harmonic "sound", but some class pairs
  ("audio twins") sound alike (the same sound, 6 % apart in pitch, less than the spread
  between clips) while looking different, and every clip carries
  noise at a random SNR plus, often, an interfering tone;
- some classes have no audio track at all (extraction drops them, as UCF101's 101
  classes become 51);
- clip lengths vary (many are shorter than the 5 s audio window), audio comes at several
  sample rates and channel counts, and containers are MP4 (H.264 + AAC) or AVI
  (MPEG-4 Part 2 + MP3);
- optionally a few files are broken on purpose (truncated, zero bytes) so that the error
  path is exercised by every run.

Clips of one (class, group) share a background and an interfering-tone profile, as
UCF101's groups share an actor and a scene; folds split by group, so this matters.
Everything is a pure function of the settings and the seed.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from avfl.data import ucf101

# Real UCF101 class names, so the layout and the reports read like the real thing.
CLASS_NAMES: tuple[str, ...] = (
    "ApplyEyeMakeup", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
    "BaseballPitch", "Basketball", "BenchPress", "Biking", "Billiards",
    "BlowDryHair", "BlowingCandles", "BodyWeightSquats", "Bowling", "BoxingPunchingBag",
    "BoxingSpeedBag", "BreastStroke", "BrushingTeeth", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "CuttingInKitchen", "Diving", "Drumming",
    "Fencing", "FieldHockeyPenalty", "FloorGymnastics", "FrisbeeCatch", "FrontCrawl",
    "GolfSwing", "Haircut", "Hammering", "HammerThrow", "HandstandPushups",
    "HandstandWalking", "HeadMassage", "HighJump", "HorseRace", "HorseRiding",
)  # fmt: skip

SHAPES = ("disc", "square", "triangle", "cross")
# Twins differ by this pitch ratio: less than the per-clip pitch spread (+-5 %), so
# audio alone separates them only weakly, as the paper's congas and drums.
TWIN_PITCH = 1.06


@dataclass(frozen=True)
class ClassIdentity:
    """What makes a class recognisable: its look and its sound (None: no audio track)."""

    name: str
    shape: str
    rgb: tuple[int, int, int]
    sound: int | None
    pitch: float = 1.0  # a twin's sound is its partner's, a few percent higher


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip; derived from the settings and the seed."""

    index: int
    class_index: int
    group: int
    clip: int
    ext: str
    duration_s: float
    sample_rate: int
    channels: int
    snr_db: float
    corrupt: str | None  # None, "truncated" or "empty"

    def rel_path(self, class_name: str) -> str:
        return f"{class_name}/{ucf101.clip_file_name(class_name, self.group, self.clip, self.ext)}"


def class_identities(settings: Mapping[str, Any]) -> list[ClassIdentity]:
    """Assign each class a unique (shape, colour) and a sound; twins share a sound."""
    n = settings["n_classes"]
    n_silent = settings["n_silent_classes"]
    rng = np.random.default_rng([settings["seed"], 1])
    audible = list(range(n - n_silent))
    # Twins: pairs of audible classes, the second takes the first's sound.
    order = rng.permutation(audible).tolist()
    sound_of = {c: i for i, c in enumerate(audible)}
    twin_of: set[int] = set()
    for k in range(settings["n_audio_twins"]):
        a, b = order[2 * k], order[2 * k + 1]
        sound_of[b] = sound_of[a]
        twin_of.add(b)
    identities = []
    for c in range(n):
        hue = 0.92 * c / n  # a hue of its own per class (no wrap-around to red)
        sat = 0.9 if c % 2 == 0 else 0.6
        r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
        identities.append(
            ClassIdentity(
                name=CLASS_NAMES[c],
                shape=SHAPES[c % len(SHAPES)],
                rgb=(round(r * 255), round(g * 255), round(b * 255)),
                sound=sound_of.get(c),
                pitch=TWIN_PITCH if c in twin_of else 1.0,
            )
        )
    return identities


def plan_clips(settings: Mapping[str, Any]) -> list[ClipSpec]:
    """The list of clips to render, in (class, group, clip) order."""
    rng = np.random.default_rng([settings["seed"], 2])
    lo_clips, hi_clips = settings["clips_per_group"]
    lo_dur, hi_dur = settings["duration_s"]
    lo_snr, hi_snr = settings["snr_db"]
    specs: list[ClipSpec] = []
    for c in range(settings["n_classes"]):
        for g in range(1, settings["n_groups"] + 1):
            for k in range(1, int(rng.integers(lo_clips, hi_clips + 1)) + 1):
                specs.append(
                    ClipSpec(
                        index=len(specs),
                        class_index=c,
                        group=g,
                        clip=k,
                        ext="avi" if rng.random() < settings["avi_fraction"] else "mp4",
                        duration_s=round(float(rng.uniform(lo_dur, hi_dur)), 3),
                        sample_rate=int(rng.choice(settings["sample_rates"])),
                        channels=int(rng.choice(settings["channels"])),
                        snr_db=round(float(rng.uniform(lo_snr, hi_snr)), 2),
                        corrupt=None,
                    )
                )
    # Break a few clips on purpose, spread over classes with audio.
    n_corrupt = min(settings["n_corrupt"], len(specs))
    audible_idx = [
        s.index
        for s in specs
        if s.class_index < settings["n_classes"] - settings["n_silent_classes"]
    ]
    for j, idx in enumerate(
        sorted(rng.choice(audible_idx, size=n_corrupt, replace=False).tolist())
    ):
        spec = specs[idx]
        specs[idx] = ClipSpec(
            **{**spec.__dict__, "corrupt": "truncated" if j % 2 == 0 else "empty"}
        )
    return specs


def render_frames(spec: ClipSpec, ident: ClassIdentity, settings: Mapping[str, Any]) -> np.ndarray:
    """RGB frames (T, H, W, 3) uint8: the class shape moving over a group background."""
    width, height, fps = settings["frame_width"], settings["frame_height"], settings["fps"]
    n_frames = max(1, round(spec.duration_s * fps))
    group_rng = np.random.default_rng([settings["seed"], 3, spec.class_index, spec.group])
    clip_rng = np.random.default_rng([settings["seed"], 4, spec.index])
    background = group_rng.integers(20, 110, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = 0.18 * min(width, height) * float(clip_rng.uniform(0.85, 1.15))
    start = clip_rng.uniform([0.3, 0.3], [0.7, 0.7]) * [width, height]
    end = clip_rng.uniform([0.3, 0.3], [0.7, 0.7]) * [width, height]
    gain = float(clip_rng.uniform(0.8, 1.1))
    colour = np.clip(np.array(ident.rgb) * gain, 0, 255)
    distractor = clip_rng.random() < 0.5
    d_colour = clip_rng.integers(0, 256, size=3)
    d_pos = clip_rng.uniform([0.05, 0.05], [0.95, 0.95]) * [width, height]
    d_shape = SHAPES[int(clip_rng.integers(len(SHAPES)))]
    # A static sensor-noise texture (per clip) keeps frames realistic without making every
    # frame incompressible; a slow brightness flicker varies frames over time.
    texture = clip_rng.normal(0.0, 8.0, size=(height, width, 1)).astype(np.float32)
    scene = np.broadcast_to(background, (height, width, 3)).astype(np.float32) + texture
    if distractor:
        scene[_shape_mask(d_shape, xx, yy, d_pos[0], d_pos[1], radius * 0.45)] = d_colour
    flicker = 1.0 + 0.06 * np.sin(np.linspace(0.0, 3.0 * np.pi, n_frames) + clip_rng.uniform(0, 6))
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    for t in range(n_frames):
        cx, cy = start + (end - start) * (t / max(1, n_frames - 1))
        img = scene.copy()
        img[_shape_mask(ident.shape, xx, yy, cx, cy, radius)] = colour
        frames[t] = np.clip(img * flicker[t], 0, 255).astype(np.uint8)
    return frames


def _shape_mask(
    shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float
) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "disc":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "cross":
        return ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)) | (
            (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)
        )
    raise ValueError(f"unknown shape {shape!r}")


def sound_parameters(sound: int, n_sounds: int) -> tuple[float, float, int]:
    """(fundamental Hz, amplitude-modulation Hz, harmonics) of a class sound."""
    f0 = 160.0 * (1400.0 / 160.0) ** (sound / max(1, n_sounds - 1))
    am_rate = 1.0 + (sound * 5) % 7
    harmonics = 2 + sound % 3
    return f0, am_rate, harmonics


def render_audio(spec: ClipSpec, ident: ClassIdentity, settings: Mapping[str, Any]) -> np.ndarray:
    """Float32 waveform (channels, samples) in [-1, 1]: class sound + interference + noise at SNR."""
    sr = spec.sample_rate
    n = max(1, round(spec.duration_s * sr))
    t = np.arange(n, dtype=np.float64) / sr
    n_sounds = settings["n_classes"] - settings["n_silent_classes"] - settings["n_audio_twins"]
    clip_rng = np.random.default_rng([settings["seed"], 5, spec.index])
    group_rng = np.random.default_rng([settings["seed"], 6, spec.class_index, spec.group])

    def tone(f0: float, am: float, harmonics: int, phase: float) -> np.ndarray:
        wave = np.zeros(n)
        for h in range(1, harmonics + 1):
            if f0 * h < sr / 2 * 0.9:
                wave += np.sin(2 * np.pi * f0 * h * t + phase * h) / h
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * am * t + phase)
        return wave * envelope

    assert ident.sound is not None
    f0, am, harmonics = sound_parameters(ident.sound, n_sounds)
    f0 *= ident.pitch * float(clip_rng.uniform(0.95, 1.05))  # performer-to-performer spread
    signal = tone(f0, am, harmonics, float(clip_rng.uniform(0, 2 * np.pi)))
    # A group-specific interfering source (a second "instrument" in the scene).
    if group_rng.random() < 0.9:
        other = int(group_rng.integers(n_sounds))
        g_f0, g_am, g_h = sound_parameters(other, n_sounds)
        signal += float(group_rng.uniform(0.6, 1.2)) * tone(
            g_f0, g_am, g_h, float(clip_rng.uniform(0, 6))
        )
    signal /= np.sqrt(np.mean(signal**2)) + 1e-12
    noise = clip_rng.normal(0.0, 1.0, size=(spec.channels, n))
    noise *= 10 ** (-spec.snr_db / 20.0)
    pans = np.linspace(0.8, 1.2, spec.channels)[:, None]
    wave = signal[None, :] * pans + noise
    wave *= 0.3 / (np.max(np.abs(wave)) + 1e-12)
    return wave.astype(np.float32)


def write_clip(
    path: Path,
    frames: np.ndarray,
    audio: np.ndarray | None,
    spec: ClipSpec,
    settings: Mapping[str, Any],
) -> None:
    """Encode frames (+ audio) into an MP4 (H.264 + AAC) or AVI (MPEG-4 + MP3) file."""
    video_codec, audio_codec = ("libx264", "aac") if spec.ext == "mp4" else ("mpeg4", "libmp3lame")
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), mode="w", format=spec.ext) as container:
        vstream = container.add_stream(video_codec, rate=settings["fps"])
        vstream.width, vstream.height = settings["frame_width"], settings["frame_height"]
        vstream.pix_fmt = "yuv420p"
        vstream.thread_count = 1  # deterministic bitstream
        vstream.codec_context.gop_size = settings["gop"]
        if video_codec == "libx264":
            vstream.options = {"preset": "ultrafast", "crf": "26"}
        else:
            vstream.bit_rate = 400_000
        astream = None
        if audio is not None:
            layout = "mono" if spec.channels == 1 else "stereo"
            # Fastest encoder settings: the content, not the coding efficiency, matters here.
            options = {"aac_coder": "fast"} if audio_codec == "aac" else {"compression_level": "9"}
            astream = container.add_stream(
                audio_codec, rate=spec.sample_rate, layout=layout, options=options
            )
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None and audio is not None:
            aframe = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio), format="fltp", layout=astream.layout.name
            )
            aframe.sample_rate = spec.sample_rate
            aframe.pts = 0
            container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    os.replace(tmp, path)


def _render_one(job: tuple[ClipSpec, ClassIdentity, dict[str, Any], str]) -> str:
    spec, ident, settings, root = job
    path = Path(root) / spec.rel_path(ident.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.corrupt == "empty":
        path.write_bytes(b"")
        return str(path)
    frames = render_frames(spec, ident, settings)
    audio = render_audio(spec, ident, settings) if ident.sound is not None else None
    write_clip(path, frames, audio, spec, settings)
    if spec.corrupt == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: max(64, len(data) // 5)])
    return str(path)


def generate(
    settings: Mapping[str, Any], out_dir: str | Path, workers: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Write the dataset under out_dir in UCF101 layout; returns a summary."""
    settings = dict(settings)
    out = Path(out_dir)
    video_root = out / ucf101.VIDEO_DIR
    idents = class_identities(settings)
    specs = plan_clips(settings)
    jobs = [(s, idents[s.class_index], settings, str(video_root)) for s in specs]
    iterator: Any
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers)
        iterator = pool.map(_render_one, jobs, chunksize=8)
    else:
        pool = None
        iterator = map(_render_one, jobs)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(jobs), desc="generate", unit="clip", mininterval=2.0)
    for _ in iterator:
        pass
    if pool is not None:
        pool.shutdown()
    classes = [i.name for i in idents]
    entries = [
        (idents[s.class_index].name, s.group, s.rel_path(idents[s.class_index].name)) for s in specs
    ]
    ucf101.write_split_lists(out / ucf101.SPLIT_DIR, classes, entries)
    return {
        "clips": len(specs),
        "classes": len(classes),
        "silent_classes": [i.name for i in idents if i.sound is None],
        "audio_twins": _twin_pairs(idents),
        "corrupt": [s.rel_path(idents[s.class_index].name) for s in specs if s.corrupt],
    }


def _twin_pairs(idents: Sequence[ClassIdentity]) -> list[list[str]]:
    by_sound: dict[int, list[str]] = {}
    for ident in idents:
        if ident.sound is not None:
            by_sound.setdefault(ident.sound, []).append(ident.name)
    return [names for names in by_sound.values() if len(names) > 1]
