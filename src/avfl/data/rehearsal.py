"""A UCF101-sized rehearsal dataset: frozen-mode features without any video.

Running the paper's full grid (100 clients, 200 rounds, 3 folds x 3 seeds x 9 rates x every
method) through the normal DAG needs UCF101-sized inputs, but not UCF101 itself: this module
writes, in one go and in seconds, the files that extraction and the embed rules would write
for UCF101's 51 audio classes, so every later stage (partition, train, report) runs on data
of the real size and shape:

- `features_dir/manifest.tsv`: 51 classes (real UCF101 class names), 25 groups, 4-7 clips
  per (class, group), about 6,800 clips, official fold columns (split k tests groups
  7(k-1)+1..7k), every clip usable, with plausible duration, sample rate, channels and
  fbank length (5 s of 16 kHz audio: at most 498 frames);
- `features_dir/norm_stats.json`: extraction's format. No fbank exists: each clip has a
  notional fbank (a loudness level, a spread and `audio_frames` frames) and the statistics
  are exactly what `extract.norm_stats` would compute over such fbanks of each fold's
  training clips;
- `embeddings_dir/fold{k}/audio_{backbone}.npy`: (M, audio_dim) float32 per fold. As real
  SSAST embeddings, they depend on the fold through the fbank normalisation: the clip's
  notional loudness, normalised with the fold's statistics, is one input of the audio map,
  so the three files differ slightly (and only by that);
- `embeddings_dir/visual_{backbone}.npy`: (M, visual_dim) float32, non-negative as
  ResNet-18's pooled features.

frames.npy and fbank.npy are not written: fine-tuning mode is not available for the
rehearsal dataset, only frozen mode.

Class structure, chosen so that audio is the weak modality as with SSAST/ResNet-18 features
on UCF101 (the paper's federated audio top-1 is 30-40 %): each class has a point in a
low-dimensional latent space per modality, mapped to the embedding space by a fixed random
linear map and a nonlinearity. Every (class, group) has its own latent offset, shared by
its clips (UCF101's groups share actor and scene, and folds split by group, so unseen
groups must be generalised to). Audio has smaller, uneven class separation, named clusters
of classes that sound alike but look different (two hand drums, two boxing bags, ...),
and heavy noise; it also carries a large common offset with small per-clip variation, as
real frozen embeddings do, so per-feature standardisation matters: without it (the
encoders' LayerNorm does not remove a per-feature offset) federated audio training stays
near chance on this data. The frame is well separated. Everything is a pure function of the
settings: same settings, same bytes (checked across BLAS thread counts).

Calibration (seed 0, fold 1, `linear_probe`: centralised logistic regression on standardised
features): audio 51 %, visual 89 %, audio+visual 94 % test top-1 (benchmarks/rehearsal_probe.py).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avfl import paths
from avfl.data import ucf101
from avfl.data.manifest import STATUS_OK, ManifestRow, write_manifest

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_SETTINGS",
    "generate_rehearsal",
    "linear_probe",
    "plan_clips",
]

# UCF101 class names, taken among its classes with an audio track (51 of 101 are kept).
CLASS_NAMES: tuple[str, ...] = (
    "ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam",
    "BandMarching", "BasketballDunk", "BlowDryHair", "BlowingCandles", "BodyWeightSquats",
    "Bowling", "BoxingPunchingBag", "BoxingSpeedBag", "BrushingTeeth", "CliffDiving",
    "CricketBowling", "CricketShot", "CuttingInKitchen", "FieldHockeyPenalty", "FloorGymnastics",
    "FrisbeeCatch", "FrontCrawl", "Haircut", "Hammering", "HammerThrow",
    "HandstandPushups", "HandstandWalking", "HeadMassage", "IceDancing", "Knitting",
    "LongJump", "MoppingFloor", "ParallelBars", "PlayingCello", "PlayingDaf",
    "PlayingDhol", "PlayingFlute", "PlayingSitar", "Rafting", "ShavingBeard",
    "Shotput", "SkyDiving", "SoccerPenalty", "StillRings", "SumoWrestling",
    "Surfing", "TableTennisShot", "Typing", "UnevenBars", "WallPushups",
    "WritingOnBoard",
)  # fmt: skip

DEFAULT_SETTINGS: dict[str, Any] = {
    "seed": 0,
    "n_classes": 51,
    "n_groups": 25,
    "clips_per_group": [4, 7],
    # Weights of 4, 5, 6, 7 clips: mean 5.34, about 6,800 clips as UCF101's 51 audio classes.
    "clips_per_group_weights": [0.28, 0.30, 0.22, 0.20],
    "audio_dim": 768,
    "visual_dim": 512,
    "latent_dim": 32,
    # Visual: class points at distance class_scale * sqrt(latent_dim) from the origin of the
    # latent space; a (class, group) offset and a clip's own deviation (standard normal times
    # the scale, per latent coordinate) on top; then noise in the embedding space.
    "visual_class_scale": 1.0,
    "visual_group_scale": 0.8,
    "visual_clip_scale": 0.8,
    "visual_noise": 1.0,
    # Audio: smaller and uneven class separation (per-class strengths evenly spaced over
    # audio_strength, in a random order), clusters of classes that sound alike, heavy noise.
    "audio_class_scale": 0.7,
    "audio_strength": [0.5, 1.3],
    "audio_group_scale": 0.6,
    "audio_clip_scale": 0.6,
    "audio_noise": 1.0,
    # Classes of a cluster share one sound: their audio means lie this far apart, relative
    # to the distance between unrelated classes. Names absent from the dataset are skipped.
    "audio_cluster_spread": 0.2,
    "audio_clusters": [
        ["PlayingDaf", "PlayingDhol"],
        ["BoxingPunchingBag", "BoxingSpeedBag"],
        ["ApplyEyeMakeup", "ApplyLipstick"],
        ["CricketBowling", "CricketShot"],
        ["FieldHockeyPenalty", "SoccerPenalty"],
        ["Typing", "Knitting"],
        ["BlowDryHair", "Haircut", "HeadMassage"],
        ["ParallelBars", "UnevenBars", "StillRings"],
        ["Shotput", "HammerThrow", "LongJump"],
        ["Rafting", "Surfing", "FrontCrawl"],
    ],
    # Share of the (class, group)s that look and sound like another class: moved 50-90 % of
    # the way to it in both modalities, so that the modalities' errors are correlated.
    "confusing_groups": 0.06,
    # Std over features of the audio embeddings' common offset; a feature's spread over clips
    # is about 1.2, so the clips vary little around a large offset (|x - mean| is about a
    # quarter of |mean|). 0 rehearses a model without input standardisation.
    "audio_offset": 5.0,
    # Weight of the clip's normalised loudness in the audio map (what makes folds differ).
    "audio_loudness": 0.5,
    # The extraction settings the notional fbank follows (config/ucf101.yaml's values).
    "extract": {
        "frame_size": 224,
        "audio_seconds": 5.0,
        "sample_rate": 16000,
        "num_mel_bins": 128,
        "target_frames": 512,
        "min_clips_per_class": 1,
    },
}

# As avfl.data.audio (not imported here: it pulls in torch and torchaudio).
WINDOW_MS = 25.0
SHIFT_MS = 10.0

# Clip metadata: UCF101 clips last 1-71 s (median about 6 s); their audio is mostly 44.1 kHz
# stereo.
_DURATION_MEDIAN_S, _DURATION_SIGMA, _DURATION_RANGE_S = 6.0, 0.5, (1.1, 60.0)
_SAMPLE_RATES, _SAMPLE_RATE_WEIGHTS = (44100, 48000, 22050), (0.85, 0.10, 0.05)
_STEREO_SHARE = 0.9
# The notional fbank's per-clip level and spread (Kaldi log-mel of a [-1, 1] waveform).
_LOUDNESS_MEAN, _LOUDNESS_STD, _SPREAD_RANGE = -5.0, 1.2, (3.5, 5.0)


@dataclass(frozen=True)
class ClipPlan:
    """The clips of the dataset in (class, group, clip) order, as parallel arrays."""

    class_of: np.ndarray  # 0-based class (the label: every class is kept)
    group: np.ndarray  # 1-based group
    clip: np.ndarray  # 1-based clip number within its (class, group)

    def __len__(self) -> int:
        return len(self.class_of)


def _settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by `overrides`; unknown keys are refused (typos fail loudly)."""
    unknown = sorted(set(overrides) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"unknown rehearsal settings {unknown}; known: {sorted(DEFAULT_SETTINGS)}")
    settings = copy.deepcopy(DEFAULT_SETTINGS)
    for key, value in overrides.items():
        settings[key] = {**settings[key], **value} if key == "extract" else copy.deepcopy(value)
    if settings["n_classes"] < 2:
        raise ValueError(f"n_classes={settings['n_classes']}: need at least 2")
    lo, hi = settings["clips_per_group"]
    if not 1 <= lo <= hi:
        raise ValueError(f"clips_per_group {settings['clips_per_group']}: need 1 <= low <= high")
    weights = settings["clips_per_group_weights"]
    if weights is not None and len(weights) != hi - lo + 1:
        raise ValueError(
            f"clips_per_group_weights has {len(weights)} entries for {hi - lo + 1} clip counts "
            f"({lo}..{hi}); give one weight per count or null for uniform"
        )
    if settings["n_groups"] < ucf101.N_SPLITS * ucf101.GROUPS_PER_SPLIT + 1:
        raise ValueError(
            f"n_groups={settings['n_groups']}: the official splits test groups 1-21, and "
            f"training needs more"
        )
    return settings


def class_names(n_classes: int) -> list[str]:
    """UCF101 names first, then `Action052`, ... beyond the 51."""
    return [
        CLASS_NAMES[c] if c < len(CLASS_NAMES) else f"Action{c + 1:03d}" for c in range(n_classes)
    ]


def plan_clips(settings: Mapping[str, Any]) -> ClipPlan:
    """How many clips each (class, group) has: drawn from the seed, in manifest order."""
    settings = _settings(settings)
    lo, hi = settings["clips_per_group"]
    weights = settings["clips_per_group_weights"]
    p = None if weights is None else np.asarray(weights, dtype=float) / float(np.sum(weights))
    n_classes, n_groups = settings["n_classes"], settings["n_groups"]
    rng = np.random.default_rng([settings["seed"], 1])
    counts = rng.choice(np.arange(lo, hi + 1), size=(n_classes, n_groups), p=p)
    class_of = np.repeat(np.repeat(np.arange(n_classes), n_groups), counts.ravel())
    group = np.repeat(np.tile(np.arange(1, n_groups + 1), n_classes), counts.ravel())
    clip = np.concatenate([np.arange(1, n + 1) for n in counts.ravel()])
    return ClipPlan(class_of, group, clip)


def _audio_frames(duration_s: np.ndarray, extract: Mapping[str, Any]) -> np.ndarray:
    """fbank frames of the first `audio_seconds` (Kaldi snip_edges), cut to target_frames."""
    sr = extract["sample_rate"]
    samples = np.floor(np.minimum(duration_s, extract["audio_seconds"]) * sr)
    window, shift = int(sr * WINDOW_MS / 1000), int(sr * SHIFT_MS / 1000)
    frames = 1 + (samples - window) // shift
    return np.minimum(frames, extract["target_frames"]).astype(np.int64)


def _fold_norm_stats(
    plan: ClipPlan, frames: np.ndarray, level: np.ndarray, spread: np.ndarray
) -> dict[str, dict[str, float]]:
    """What `extract.norm_stats` would give over the notional fbanks, per official split."""
    stats = {}
    for k in range(1, ucf101.N_SPLITS + 1):
        train = ~np.isin(plan.group, ucf101.test_groups(k))
        n = frames[train].astype(np.float64)
        count = n.sum()
        mean = float((n * level[train]).sum() / count)
        second = float((n * (spread[train] ** 2 + level[train] ** 2)).sum() / count)
        stats[f"fold{k}"] = {
            "mean": round(mean, 6),
            "std": round(math.sqrt(max(second - mean * mean, 0.0)), 6),
            "n_clips": int(train.sum()),
        }
    return stats


def _clusters(settings: Mapping[str, Any], names: Sequence[str]) -> list[list[int]]:
    """The sound-alike clusters as class indices, keeping only classes present."""
    index = {name: i for i, name in enumerate(names)}
    clusters, seen = [], set()
    for cluster in settings["audio_clusters"]:
        members = [index[n] for n in cluster if n in index]
        if seen.intersection(members):
            raise ValueError(f"audio_clusters: class in more than one cluster ({cluster})")
        seen.update(members)
        if len(members) > 1:
            clusters.append(members)
    return clusters


def _on_sphere(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n random points of norm sqrt(dim), the typical norm of a standard normal vector."""
    points = rng.standard_normal((n, dim))
    return points * (math.sqrt(dim) / np.linalg.norm(points, axis=1, keepdims=True))


def _latents(
    settings: Mapping[str, Any], plan: ClipPlan, clusters: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Per clip, the visual and audio points in the latent space: class + group + clip."""
    n_classes, n_groups, dim = settings["n_classes"], settings["n_groups"], settings["latent_dim"]
    rng = np.random.default_rng([settings["seed"], 3])
    # Class points on a sphere and strengths evenly spaced (in a random order): the same
    # difficulty for every seed, only the geometry changes.
    visual_means = settings["visual_class_scale"] * _on_sphere(rng, n_classes, dim)
    sound = _on_sphere(rng, n_classes, dim)
    strength = rng.permutation(np.linspace(*settings["audio_strength"], n_classes))
    for members in clusters:  # one sound per cluster, members a little apart
        head = members[0]
        for m in members[1:]:
            # Unrelated classes lie about sqrt(2 dim) apart; members spread times that.
            step = math.sqrt(2.0) * _on_sphere(rng, 1, dim)[0]
            sound[m] = sound[head] + settings["audio_cluster_spread"] * step
            strength[m] = strength[head]
    audio_means = settings["audio_class_scale"] * strength[:, None] * sound

    rng = np.random.default_rng([settings["seed"], 4])
    shape = (n_classes, n_groups + 1, dim)  # group g at index g
    visual_groups = settings["visual_group_scale"] * rng.standard_normal(shape)
    audio_groups = settings["audio_group_scale"] * rng.standard_normal(shape)
    # Some groups look and sound like another class (its scene, its instrument): both
    # modalities err on the same clips, so fusion cannot fix them, as with real data.
    own = np.arange(n_classes)[:, None]
    other = (own + rng.integers(1, n_classes, size=shape[:2])) % n_classes
    confusing = rng.random(shape[:2]) < settings["confusing_groups"]
    drift = (confusing * rng.uniform(0.5, 0.9, size=shape[:2]))[..., None]
    visual_groups += drift * (visual_means[other] - visual_means[own])
    audio_groups += drift * (audio_means[other] - audio_means[own])

    rng = np.random.default_rng([settings["seed"], 5])
    c, g, n = plan.class_of, plan.group, len(plan)
    visual = (
        visual_means[c]
        + visual_groups[c, g]
        + settings["visual_clip_scale"] * rng.standard_normal((n, dim))
    )
    audio = (
        audio_means[c]
        + audio_groups[c, g]
        + settings["audio_clip_scale"] * rng.standard_normal((n, dim))
    )
    return visual, audio


def generate_rehearsal(
    settings: Mapping[str, Any],
    features_dir: str | Path,
    embeddings_dir: str | Path,
    audio_backbone: str = "ssast",
    visual_backbone: str = "resnet18",
) -> dict[str, Any]:
    """Write the manifest, norm stats and frozen embeddings; return a summary of what was written."""
    started = time.perf_counter()
    settings = _settings(settings)
    features, embeddings = Path(features_dir), Path(embeddings_dir)
    names = class_names(settings["n_classes"])
    clusters = _clusters(settings, names)
    plan = plan_clips(settings)
    n = len(plan)

    # Clip metadata and the notional fbank behind the audio embeddings.
    rng = np.random.default_rng([settings["seed"], 2])
    lo, hi = _DURATION_RANGE_S
    duration = np.round(
        np.clip(_DURATION_MEDIAN_S * np.exp(_DURATION_SIGMA * rng.standard_normal(n)), lo, hi), 3
    )
    sample_rate = rng.choice(_SAMPLE_RATES, size=n, p=_SAMPLE_RATE_WEIGHTS)
    channels = np.where(rng.random(n) < _STEREO_SHARE, 2, 1)
    level = _LOUDNESS_MEAN + _LOUDNESS_STD * rng.standard_normal(n)
    spread = rng.uniform(*_SPREAD_RANGE, size=n)
    frames = _audio_frames(duration, settings["extract"])
    stats = _fold_norm_stats(plan, frames, level, spread)

    visual_z, audio_z = _latents(settings, plan, clusters)
    dim = settings["latent_dim"]
    rng = np.random.default_rng([settings["seed"], 6])
    visual_map = rng.standard_normal((dim, settings["visual_dim"])) / math.sqrt(dim)
    visual_bias = 0.5 * rng.standard_normal(settings["visual_dim"])
    audio_map = rng.standard_normal((dim + 1, settings["audio_dim"])) / math.sqrt(dim)
    audio_bias = 0.5 * rng.standard_normal(settings["audio_dim"])
    offset = settings["audio_offset"] * rng.standard_normal(settings["audio_dim"])

    rng = np.random.default_rng([settings["seed"], 7])
    visual_noise = settings["visual_noise"] * rng.standard_normal((n, settings["visual_dim"]))
    audio_noise = settings["audio_noise"] * rng.standard_normal((n, settings["audio_dim"]))

    # ResNet-18's pooled features come after a ReLU: non-negative.
    visual = np.maximum(visual_z @ visual_map + visual_bias + visual_noise, 0.0).astype(np.float32)

    rows = _manifest_rows(settings, plan, names, duration, sample_rate, channels, frames)
    features.mkdir(parents=True, exist_ok=True)
    write_manifest(features / paths.MANIFEST, rows)
    (features / paths.NORM_STATS).write_text(
        json.dumps(
            {"settings": settings["extract"], "folds": stats, "rehearsal": settings},
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    written = [features / name for name in paths.REHEARSAL_FEATURES]
    for k in range(1, ucf101.N_SPLITS + 1):
        norm = stats[f"fold{k}"]
        # The backbone sees (fbank - mean) / (2 std) with the fold's statistics.
        loudness = settings["audio_loudness"] * (level - norm["mean"]) / (2 * norm["std"])
        inputs = np.concatenate([audio_z, loudness[:, None]], axis=1)
        audio = (offset + np.tanh(inputs @ audio_map + audio_bias) + audio_noise).astype(np.float32)
        path = embeddings / f"fold{k}" / f"audio_{audio_backbone}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, audio)
        written.append(path)
    path = embeddings / f"visual_{visual_backbone}.npy"
    np.save(path, visual)
    written.append(path)
    return {
        "clips": n,
        "classes": settings["n_classes"],
        "groups": settings["n_groups"],
        "test_clips": {
            f"fold{k}": int(np.isin(plan.group, ucf101.test_groups(k)).sum())
            for k in range(1, ucf101.N_SPLITS + 1)
        },
        "audio_clusters": [[names[c] for c in members] for members in clusters],
        "norm_stats": stats,
        "files": {str(p): p.stat().st_size for p in written},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _manifest_rows(
    settings: Mapping[str, Any],
    plan: ClipPlan,
    names: Sequence[str],
    duration: np.ndarray,
    sample_rate: np.ndarray,
    channels: np.ndarray,
    frames: np.ndarray,
) -> list[ManifestRow]:
    held = {k: set(ucf101.test_groups(k)) for k in range(1, ucf101.N_SPLITS + 1)}
    rows = []
    for i, (c, g, clip) in enumerate(
        zip(plan.class_of.tolist(), plan.group.tolist(), plan.clip.tolist(), strict=True)
    ):
        name = names[c]
        file_name = ucf101.clip_file_name(name, g, clip, "avi")
        folds = ["test" if g in held[k] else "train" for k in (1, 2, 3)]
        rows.append(
            ManifestRow(
                clip_id=Path(file_name).stem,
                rel_path=f"{name}/{file_name}",
                class_name=name,
                class_index=c + 1,
                label=c,
                group=g,
                fold1=folds[0],
                fold2=folds[1],
                fold3=folds[2],
                duration_s=float(duration[i]),
                has_audio=True,
                has_video=True,
                sample_rate=int(sample_rate[i]),
                channels=int(channels[i]),
                audio_frames=int(frames[i]),
                status=STATUS_OK,
                reason="",
                row=i,
            )
        )
    return rows


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    l2: float = 1e-3,
    max_iter: int = 100,
) -> float:
    """Test top-1 of multinomial logistic regression on standardised features (L-BFGS).

    The calibration check of the rehearsal data. Features are standardised with the
    training split's mean and std, so the audio's common offset does not matter here.
    Runs on one thread: the problem is small, and extra threads only slow it down on a
    busy machine.
    """
    import torch

    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64) + 1e-6
    xtr = torch.from_numpy(((train_x - mean) / std).astype(np.float32))
    xte = torch.from_numpy(((test_x - mean) / std).astype(np.float32))
    ytr = torch.from_numpy(np.asarray(train_y, dtype=np.int64))
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(xtr.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ weight + bias, ytr)
        loss = loss + l2 * weight.square().sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        pred = (xte @ weight + bias).argmax(dim=1).numpy()
    return float((pred == np.asarray(test_y)).mean())
