"""The rehearsal dataset: where its files go, UCF101's shape and splits, determinism, the modality gap."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avfl import partition
from avfl.data import rehearsal, ucf101
from avfl.data.manifest import COLUMNS, STATUS_OK, read_manifest

PAPER_PARTITION = {
    "n_clients": 100,
    "alpha": 0.1,
    "min_client_size": 2,
    "dev_fraction": 0.1,
    "max_resample": 1000,
    "seed": None,
}


def _generate(root: Path, settings: dict | None = None) -> dict:
    return rehearsal.generate_rehearsal(settings or {}, root / "features", root / "embeddings")


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("rehearsal")
    return root, _generate(root)


@pytest.fixture(scope="module")
def rows(generated):
    return read_manifest(generated[0] / "features" / "manifest.tsv")


def test_files_where_extraction_and_embedding_put_them(generated, rows):
    root, summary = generated
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "embeddings/fold1/audio_ssast.npy",
        "embeddings/fold2/audio_ssast.npy",
        "embeddings/fold3/audio_ssast.npy",
        "embeddings/visual_resnet18.npy",
        "features/manifest.tsv",
        "features/norm_stats.json",
    ]  # no frames.npy / fbank.npy: frozen mode only
    assert sorted(summary["files"]) == sorted(str(root / f) for f in files)
    json.dumps(summary)  # the CLI logs it as JSON
    m = len(rows)
    for k in (1, 2, 3):
        audio = np.load(root / f"embeddings/fold{k}/audio_ssast.npy", mmap_mode="r")
        assert audio.shape == (m, 768) and audio.dtype == np.float32
    visual = np.load(root / "embeddings/visual_resnet18.npy", mmap_mode="r")
    assert visual.shape == (m, 512) and visual.dtype == np.float32
    assert float(visual.min()) >= 0.0  # after ResNet-18's ReLU
    assert np.isfinite(audio).all() and np.isfinite(visual).all()


def test_other_backbone_names(tmp_path):
    rehearsal.generate_rehearsal(
        {"n_classes": 3, "clips_per_group": [1, 1], "clips_per_group_weights": None},
        tmp_path / "f",
        tmp_path / "e",
        audio_backbone="fbank_stats",
        visual_backbone="color_stats",
    )
    assert np.load(tmp_path / "e/fold2/audio_fbank_stats.npy").shape == (75, 768)
    assert np.load(tmp_path / "e/visual_color_stats.npy").shape == (75, 512)


def test_manifest_has_ucf101_shape(generated, rows):
    assert (generated[0] / "features/manifest.tsv").read_text().split("\n")[0].split(
        "\t"
    ) == COLUMNS
    assert 6_500 <= len(rows) <= 7_100  # UCF101's 51 audio classes: about 6,800 clips
    assert [r.row for r in rows] == list(range(len(rows)))
    assert all(r.status == STATUS_OK and r.reason == "" for r in rows)
    assert all(r.has_audio and r.has_video for r in rows)
    names = sorted({(r.label, r.class_index, r.class_name) for r in rows})
    assert names == [(c, c + 1, rehearsal.CLASS_NAMES[c]) for c in range(51)]
    counts: dict[tuple[int, int], list[int]] = {}
    for r in rows:
        counts.setdefault((r.label, r.group), []).append(r)
        assert ucf101.parse_clip_name(r.rel_path) == (r.class_name, r.group, int(r.clip_id[-2:]))
        assert r.rel_path == f"{r.class_name}/{r.clip_id}.avi"
        assert 1.0 <= r.duration_s <= 71.0
        assert r.sample_rate in (22050, 44100, 48000) and r.channels in (1, 2)
    assert len(counts) == 51 * 25
    assert {len(c) for c in counts.values()} == {4, 5, 6, 7}
    assert len({r.clip_id for r in rows}) == len(rows)


def test_audio_frames_follow_the_duration(rows):
    from avfl.data import audio

    assert (rehearsal.WINDOW_MS, rehearsal.SHIFT_MS) == (audio.WINDOW_MS, audio.SHIFT_MS)
    for r in rows:
        samples = int(min(r.duration_s, 5.0) * 16000)
        assert r.audio_frames == min(1 + (samples - 400) // 160, 512)
    assert max(r.audio_frames for r in rows) == 498  # 5 s at 16 kHz
    assert any(r.audio_frames < 498 for r in rows)  # some clips are shorter than 5 s


def test_folds_test_the_official_groups(rows):
    for k in (1, 2, 3):
        test = {r.group for r in rows if r.fold(k) == "test"}
        train = {r.group for r in rows if r.fold(k) == "train"}
        assert test == set(range(7 * (k - 1) + 1, 7 * k + 1))
        assert train == set(range(1, 26)) - test
        assert all(r.fold(k) in ("train", "test") for r in rows)


def test_norm_stats_format_and_values(generated, rows):
    stats = json.loads((generated[0] / "features/norm_stats.json").read_text())
    assert stats["settings"] == rehearsal.DEFAULT_SETTINGS["extract"]
    assert sorted(stats["folds"]) == ["fold1", "fold2", "fold3"]
    for k in (1, 2, 3):
        fold = stats["folds"][f"fold{k}"]
        assert fold["n_clips"] == sum(r.fold(k) == "train" for r in rows)
        assert -7.0 < fold["mean"] < -3.0 and 3.5 < fold["std"] < 6.0  # Kaldi log-mel scale
    assert stats["folds"]["fold1"] != stats["folds"]["fold2"]


def test_audio_embeddings_differ_by_fold_only_slightly(generated):
    root = generated[0]
    a1, a2, a3 = (np.load(root / f"embeddings/fold{k}/audio_ssast.npy") for k in (1, 2, 3))
    assert not np.array_equal(a1, a2) and not np.array_equal(a2, a3)
    clip_spread = float((a1 - a1.mean(axis=0)).std())
    assert float(np.abs(a1 - a2).mean()) < 0.05 * clip_spread
    # A large common offset with a small per-clip variation, as real frozen embeddings.
    assert float(np.abs(a1.mean(axis=0)).mean()) > 2.0 * clip_spread


def test_partition_with_the_paper_settings(generated, rows):
    """Fold 1 splits into the paper's 100 Dirichlet(0.1) clients, and training can index it."""
    import torch

    from avfl.fl.data import build_federated_data

    record = partition.build_partition(
        rows, dataset="rehearsal", fold=1, seed=0, settings=PAPER_PARTITION
    )
    assert len(record["clients"]) == 100
    assert min(len(c) for c in record["clients"]) >= 2
    assert len(record["classes"]) == 51
    train = {r.clip_id for r in rows if r.fold1 == "train"}
    in_clients = {c for client in record["clients"] for c in client}
    assert in_clients | set(record["dev"]) == train
    assert set(record["test"]) == {r.clip_id for r in rows if r.fold1 == "test"}
    group_of = {r.clip_id: r.group for r in rows}
    dev_groups = {group_of[c] for c in record["dev"]}
    assert len(dev_groups) == 2 and not dev_groups & {group_of[c] for c in in_clients}

    root = generated[0]
    data = build_federated_data(
        record,
        {r.clip_id: r.row for r in rows},
        {r.clip_id: r.label for r in rows},
        torch.from_numpy(np.load(root / "embeddings/fold1/audio_ssast.npy")),
        torch.from_numpy(np.load(root / "embeddings/visual_resnet18.npy")),
        0.5,
        torch.device("cpu"),
    )
    assert len(data.audio_only) == 50 and data.n_classes == 51
    assert int((data.labels < 0).sum()) == 0


def test_generation_is_deterministic(tmp_path, generated):
    _generate(tmp_path)
    assert _digest(tmp_path) == _digest(generated[0])


@pytest.mark.slow
def test_same_bytes_on_one_blas_thread(tmp_path, generated):
    """The matrix products must not depend on the thread count the workflow happens to give."""
    code = (
        "import sys; from pathlib import Path; from avfl.data import rehearsal; "
        "r = Path(sys.argv[1]); rehearsal.generate_rehearsal({}, r / 'features', r / 'embeddings')"
    )
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env)
    assert _digest(tmp_path) == _digest(generated[0])


def test_other_seed_gives_other_data(tmp_path, generated):
    _generate(tmp_path, {"seed": 1})
    ours, theirs = _digest(tmp_path), _digest(generated[0])
    assert all(ours[name] != theirs[name] for name in ours)


def test_unknown_or_inconsistent_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown rehearsal settings"):
        _generate(tmp_path, {"n_clases": 51})
    with pytest.raises(ValueError, match="clips_per_group_weights"):
        _generate(tmp_path, {"clips_per_group": [2, 3]})
    with pytest.raises(ValueError, match="n_groups"):
        _generate(tmp_path, {"n_groups": 20})


def test_clusters_skip_absent_classes():
    settings = {"n_classes": 3}  # ApplyEyeMakeup, ApplyLipstick, Archery
    names = rehearsal.class_names(3)
    clusters = rehearsal._clusters({**rehearsal.DEFAULT_SETTINGS, **settings}, names)
    assert clusters == [[0, 1]]
    assert rehearsal.class_names(53)[-2:] == ["Action052", "Action053"]


def test_audio_is_weaker_than_the_frame(generated, rows):
    """A short linear probe on fold 1: visual well above audio, both well above chance (2 %)."""
    root = generated[0]
    labels = np.array([r.label for r in rows])
    train = np.array([r.fold1 == "train" for r in rows])
    top1 = {}
    for name, path in (("audio", "fold1/audio_ssast.npy"), ("visual", "visual_resnet18.npy")):
        x = np.load(root / "embeddings" / path)
        top1[name] = rehearsal.linear_probe(
            x[train], labels[train], x[~train], labels[~train], max_iter=20
        )
    assert 0.40 <= top1["audio"] <= 0.65, top1
    assert 0.80 <= top1["visual"] <= 0.96, top1
    assert top1["visual"] - top1["audio"] > 0.2, top1
