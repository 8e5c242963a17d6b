"""CREMA-D: names and labels, speaker-independent folds, git-lfs pointers, the UCF101-layout
view with WAV sidecars, and extraction taking the audio from the WAVs."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from avfl import partition
from avfl.data import audio, cremad, extract, ucf101
from avfl.data.cremad import CremaDError, link_cremad, parse_name

from .cremad_fixture import EMOTION_CODES, make_pointer, pointer_copy, write_cremad

EXTRACT = {"frame_size": 32, "audio_seconds": 5.0, "sample_rate": 16000, "num_mel_bins": 64,
           "target_frames": 256, "min_clips_per_class": 1}  # fmt: skip
QUIET = {"log": lambda message: None}


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """The fixture copy in the official layout (9 actors x 2 sentences x 6 emotions)."""
    root = tmp_path_factory.mktemp("CREMA-D")
    write_cremad(root)
    return root


@pytest.fixture(scope="module")
def layout(tmp_path_factory, official) -> Path:
    out = tmp_path_factory.mktemp("raw") / "cremad"
    link_cremad(official, out, **QUIET)
    return out


def _clip_ids(layout: Path) -> dict[str, list[str]]:
    lines = (layout / cremad.CLIP_IDS_FILE).read_text().splitlines()
    return {line.split("\t")[0]: line.split("\t") for line in lines[1:]}


def _actors_by_fold(clips: list[ucf101.ClipRef]) -> dict[tuple[int, str], set[int]]:
    actors = defaultdict(set)
    for clip in clips:
        for fold, kind in clip.folds.items():
            actors[(fold, kind)].add(clip.group)
    return actors


def test_names_parse_to_fields_and_labels():
    u = parse_name("1091_IEO_HAP_HI.flv")
    fields = (u.actor, u.sentence, u.emotion, u.level, u.class_name, u.group)
    assert fields == (1091, "IEO", "HAP", "HI", "Happy", 91)
    assert cremad.CLASSES == ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad")
    for bad, problem in [
        ("1001_DFA_ANG.flv", "is not <ActorID>"),
        ("0999_DFA_ANG_XX.wav", "outside 1001-1091"),
        ("1001_XYZ_ANG_XX.wav", "sentence XYZ"),
        ("1001_DFA_JOY_XX.wav", "emotion JOY"),
    ]:
        with pytest.raises(CremaDError, match=f"^{bad}: CREMA-D file name .*{problem}"):
            parse_name(bad)


def test_layout_has_labels_and_speaker_independent_folds(layout):
    classes, clips = ucf101.read_layout(layout)
    assert classes == list(cremad.CLASSES) and len(clips) == 108
    ids = _clip_ids(layout)
    for clip in clips:
        _, name, actor, _, emotion, _, test_fold = ids[clip.clip_id]
        assert clip.class_name == cremad.EMOTIONS[emotion] and name.startswith(actor)
        assert clip.group == int(actor) - 1000 and clip.folds[int(test_fold)] == "test"
        assert sorted(clip.folds) == [1, 2, 3]
    actors = _actors_by_fold(clips)
    tested = [actors[(k, "test")] for k in (1, 2, 3)]
    for k in (1, 2, 3):
        assert not actors[(k, "train")] & actors[(k, "test")]  # no actor on both sides
        assert actors[(k, "train")] | actors[(k, "test")] == set(range(1, 10))
    assert sorted(a for t in tested for a in t) == list(range(1, 10))  # each tested once
    assert [len(t) for t in tested] == [3, 3, 3]
    # Numbering within (class, actor) in sentence order: IEO (first sentence) is c01.
    assert ids["v_Anger_g01_c01"][1] == "1001_IEO_ANG_HI"


def test_every_clip_has_its_wav_sidecar(layout, official):
    flvs = sorted((layout / ucf101.VIDEO_DIR).rglob("*.flv"))
    assert len(flvs) == 108
    for flv in flvs:
        wav = flv.with_suffix(".wav")
        assert wav.is_symlink() and flv.is_symlink()
        assert wav.resolve().parent == (official / "AudioWAV").resolve()
        assert wav.resolve().stem == flv.resolve().stem


def test_extraction_takes_audio_from_the_wavs(layout, tmp_path, official):
    rows = extract.extract_dataset(layout, tmp_path, EXTRACT, threads=1, progress=False)
    assert [r.status for r in rows] == ["ok"] * 108
    # The FLVs carry 22.05 kHz audio; 16 kHz mono is the WAVs'.
    assert {(r.sample_rate, r.channels, r.has_audio, r.has_video) for r in rows} == {
        (16000, 1, True, True)
    }
    fbank = np.load(tmp_path / "fbank.npy")
    row = rows[0]
    wav = (layout / ucf101.VIDEO_DIR / row.rel_path).with_suffix(".wav")
    decoded = audio.decode_audio(str(wav), EXTRACT["audio_seconds"])
    expected, n = audio.log_mel_fbank(
        audio.to_mono_resampled(decoded.samples, decoded.sample_rate, 16000), 16000, 64, 256
    )
    assert n == row.audio_frames and np.array_equal(fbank[row.row], expected)
    assert np.load(tmp_path / "frames.npy").shape == (108, 32, 32, 3)
    assert {r.label for r in rows} == set(range(len(EMOTION_CODES)))
    # The partition stage reads it unchanged; its dev split holds out whole actors.
    settings = {"n_clients": 4, "alpha": 3.0, "min_client_size": 2, "dev_fraction": 0.2,
                "max_resample": 1000}  # fmt: skip
    record = partition.build_partition(rows, dataset="cremad", fold=1, seed=0, settings=settings)
    group = {r.clip_id: r.group for r in rows}
    dev, test = {group[c] for c in record["dev"]}, {group[c] for c in record["test"]}
    train = {group[c] for client in record["clients"] for c in client}
    assert dev and not dev & train and not (dev | train) & test


def test_pointers_and_missing_files_are_skipped_and_recorded(official, tmp_path):
    copy = tmp_path / "CREMA-D"
    shutil.copytree(official, copy)
    make_pointer(copy / "VideoFlash/1001_DFA_ANG_XX.flv")
    make_pointer(copy / "AudioWAV/1002_DFA_SAD_XX.wav")
    (copy / "AudioWAV/1003_DFA_HAP_XX.wav").unlink()
    (copy / "VideoFlash/notes.flv").write_bytes(b"not a clip")
    summary = link_cremad(copy, tmp_path / "raw", **QUIET)
    assert (summary.clips, summary.skipped_clips, summary.pointer_files) == (105, 3, 2)
    skipped = (tmp_path / "raw" / cremad.SKIPPED_FILE).read_text().splitlines()
    assert skipped[0] == "file\treason"
    rows = dict(line.split("\t") for line in skipped[1:])
    assert rows["VideoFlash/1001_DFA_ANG_XX.flv"] == rows["AudioWAV/1002_DFA_SAD_XX.wav"]
    assert rows["VideoFlash/1001_DFA_ANG_XX.flv"] == cremad.POINTER_REASON
    assert "git-lfs pointer, not media: run `git lfs pull`" in cremad.POINTER_REASON
    assert rows["AudioWAV/1003_DFA_HAP_XX.wav"].startswith("missing")
    assert "is not <ActorID>_<Sentence>_<Emotion>_<Level>" in rows["VideoFlash/notes.flv"]
    _, clips = ucf101.read_layout(tmp_path / "raw")
    assert len(clips) == 105
    ids = (tmp_path / "raw" / cremad.CLIP_IDS_FILE).read_text()
    assert "1001_DFA_ANG_XX" not in ids and "1001_IEO_ANG_HI" in ids
    # Ids are stable: a skipped clip keeps its number free for when it is pulled.
    assert not (tmp_path / "raw" / ucf101.VIDEO_DIR / "Anger/v_Anger_g01_c02.flv").exists()


def test_mostly_pointers_fails_at_once(official, tmp_path):
    copy = pointer_copy(official, tmp_path / "zip-download")
    with pytest.raises(
        CremaDError, match=r"git-lfs pointers.*run `git lfs install && git lfs pull` in"
    ):
        link_cremad(copy, tmp_path / "raw", **QUIET)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "raw.staging").exists()


@pytest.mark.parametrize("keep", [("VideoFlash",), ("AudioWAV",), ()])
def test_folder_without_media_folders_says_what_is_missing(tmp_path, keep):
    for name in keep:
        (tmp_path / name).mkdir()
    missing = [f"{n}/" for n in ("VideoFlash", "AudioWAV") if n not in keep]
    expected = (
        rf"must hold VideoFlash/ and AudioWAV/.*missing: {', '.join(missing)}\).*git lfs clone"
    )
    with pytest.raises(CremaDError, match=expected):
        link_cremad(tmp_path, tmp_path / "raw", **QUIET)


def test_unset_source_dir_says_how_to_get_the_copy(tmp_path):
    with pytest.raises(CremaDError, match=r"git lfs clone .* set source_dir"):
        link_cremad(None, tmp_path / "raw", **QUIET)


def test_rerun_replaces_the_layout(official, tmp_path):
    first = link_cremad(official, tmp_path / "raw", **QUIET)
    (tmp_path / "raw" / "stale").write_text("x")
    again = link_cremad(official, tmp_path / "raw", **QUIET)
    assert first == again and not (tmp_path / "raw" / "stale").exists()
