"""Extraction: the seeked middle frame, the SSAST fbank, resampling, bad inputs, the outputs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from avfl.data import audio, extract, ucf101, video
from avfl.data.manifest import read_manifest

from .media import moving_square, sine, write_media

SETTINGS = {
    "frame_size": 32,
    "audio_seconds": 5.0,
    "sample_rate": 16000,
    "num_mel_bins": 128,
    "target_frames": 512,
    "min_clips_per_class": 1,
}


# --- fbank ---------------------------------------------------------------------------


def test_fbank_matches_torchaudio_kaldi_with_ssast_settings():
    wave = torch.from_numpy(sine(440.0, 2.0, 16000)) + 0.01
    fbank, n_frames = audio.log_mel_fbank(wave, 16000, num_mel_bins=128, target_frames=512)
    reference = torchaudio.compliance.kaldi.fbank(
        wave - wave.mean(),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    ).numpy()
    assert n_frames == 1 + (32000 - 400) // 160 == reference.shape[0]
    assert fbank.shape == (512, 128) and fbank.dtype == np.float32
    np.testing.assert_allclose(fbank[:n_frames], reference, rtol=0, atol=1e-5)
    assert not fbank[n_frames:].any()  # zero padding after the signal


def test_fbank_peak_sits_at_the_tone_frequency():
    fbank, n = audio.log_mel_fbank(torch.from_numpy(sine(1000.0, 1.0, 16000)), 16000, 128, 128)
    # HTK mel scale between 20 Hz and Nyquist, as Kaldi's defaults.
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    edges = np.linspace(mel(20.0), mel(8000.0), 130)
    centres = 700.0 * (np.exp(edges[1:-1] / 1127.0) - 1.0)
    peak = centres[int(fbank[:n].mean(axis=0).argmax())]
    assert abs(peak - 1000.0) / 1000.0 < 0.05


def test_fbank_is_cut_to_target_frames():
    fbank, n = audio.log_mel_fbank(torch.from_numpy(sine(300.0, 6.0, 16000)), 16000, 128, 512)
    assert fbank.shape == (512, 128) and n == 512 and fbank[-1].any()


def test_audio_shorter_than_one_window_is_an_error():
    with pytest.raises(audio.AudioError, match="shorter than one 25 ms fbank window"):
        audio.log_mel_fbank(torch.zeros(1, 300), 16000, 128, 512)


# --- resampling and channel mixing ---------------------------------------------------


def test_channels_are_averaged():
    left = sine(500.0, 0.5, 16000)[0]
    mono = audio.to_mono_resampled(np.stack([left, -left]), 16000, 16000)
    assert mono.shape == (1, 8000) and float(mono.abs().max()) < 1e-7
    mono = audio.to_mono_resampled(np.stack([left, np.zeros_like(left)]), 16000, 16000)
    np.testing.assert_allclose(mono[0].numpy(), left / 2, atol=1e-7)


@pytest.mark.parametrize("source_rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_the_tone(source_rate):
    wave = sine(1000.0, 1.0, source_rate, channels=2)
    mono = audio.to_mono_resampled(wave, source_rate, 16000)[0].numpy()
    assert abs(len(mono) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(mono))
    assert abs(np.fft.rfftfreq(len(mono), 1 / 16000)[spectrum.argmax()] - 1000.0) < 2.0


def test_decode_audio_reads_first_seconds_of_a_stereo_file(tmp_path: Path):
    known = sine(700.0, 3.0, 44100, channels=2)
    known[1] *= 0.5
    path = write_media(tmp_path / "a.avi", frames=moving_square(10), audio=known, sample_rate=44100)
    decoded = audio.decode_audio(str(path), max_seconds=2.0)
    assert (decoded.sample_rate, decoded.channels, decoded.codec) == (44100, 2, "pcm_s16le")
    assert decoded.samples.shape == (2, 88200)
    np.testing.assert_allclose(decoded.samples, known[:, :88200], atol=1e-4)


def test_clip_fbank_equals_fbank_of_the_known_waveform(tmp_path: Path):
    known = sine(900.0, 2.0, 48000, channels=2)
    path = write_media(tmp_path / "b.avi", frames=moving_square(20), audio=known, sample_rate=48000)
    result = extract.extract_clip(str(path), SETTINGS)
    assert result.status == "ok", result.reason
    stored = (np.round(known * 32767) / 32767).astype(np.float32)  # the file holds 16-bit PCM
    expected, n = audio.log_mel_fbank(
        audio.to_mono_resampled(stored, 48000, 16000), 16000, 128, 512
    )
    assert result.audio_frames == n
    # Bins holding the tone agree tightly; bins at the quantisation-noise floor (log energy
    # near log(eps)) only loosely, as 16-bit rounding decides them.
    loud = expected > -12.0
    assert loud[:n].any()
    np.testing.assert_allclose(result.fbank[loud], expected[loud], atol=1e-3)
    np.testing.assert_allclose(result.fbank, expected, atol=0.05)
    assert (result.sample_rate, result.channels) == (48000, 2)


# --- middle frame ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "n_frames", "gop"), [("mp4", 41, 5), ("avi", 40, 7), ("mp4", 1, 1), ("avi", 2, 12)]
)
def test_seeked_middle_frame_is_the_frame_shown_at_half_duration(
    tmp_path: Path, ext, n_frames, gop
):
    frames = moving_square(n_frames)
    path = write_media(tmp_path / f"m.{ext}", frames=frames, fps=10, gop=gop)
    seeked = video.middle_frame_seek(str(path))
    full = video.middle_frame_decode_all(str(path))
    np.testing.assert_array_equal(seeked.image, full.image)
    assert seeked.time_s == full.time_s
    expected_index = min(n_frames - 1, int(np.floor((n_frames / 10) / 2 * 10 + 1e-9)))
    assert abs(seeked.time_s - expected_index / 10) < 1e-6
    # The square's position identifies the frame: compare with the source frame (lossy codecs).
    diff = np.abs(seeked.image.astype(int) - frames[expected_index].astype(int)).mean()
    others = [
        np.abs(seeked.image.astype(int) - f.astype(int)).mean()
        for i, f in enumerate(frames)
        if i != expected_index
    ]
    assert not others or diff < min(others)


def test_seek_and_decode_all_agree_on_every_embedded_clip(tiny_raw: Path):
    _, clips = ucf101.read_layout(tiny_raw)
    checked = 0
    for clip in clips:
        path = str(ucf101.resolve_video(tiny_raw, clip.rel_path))
        try:
            seeked = video.middle_frame_seek(path)
        except Exception:
            continue  # the deliberately broken clips
        full = video.middle_frame_decode_all(path)
        np.testing.assert_array_equal(seeked.image, full.image, err_msg=clip.rel_path)
        assert abs(seeked.time_s - seeked.duration_s / 2) <= 0.1 + 1e-6
        checked += 1
    assert checked >= len(clips) - 2


def test_resize_center_crop():
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 8:56] = 200  # the central 48 x 48 square
    out = video.resize_center_crop(image, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    assert out[:, 1:-1].min() == 200


# --- bad inputs ------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, expected status, expected reason fragment)."""
    good_audio = sine(440.0, 1.0, 16000)
    cases = {}
    cases["missing"] = (tmp_path / "missing.mp4", "failed", "file not found")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases["empty"] = (empty, "failed", "empty file (0 bytes)")
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases["garbage"] = (garbage, "failed", "unreadable container")
    full = write_media(tmp_path / "full.mp4", frames=moving_square(30), audio=good_audio)
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    cases["truncated_mp4"] = (cut, "failed", "unreadable container")
    full_avi = write_media(
        tmp_path / "full.avi", frames=moving_square(60), audio=sine(440.0, 6.0, 16000)
    )
    cut_avi = tmp_path / "truncated.avi"
    cut_avi.write_bytes(full_avi.read_bytes()[: full_avi.stat().st_size // 4])
    cases["truncated_avi"] = (cut_avi, "failed", "video truncated")
    cases["no_audio"] = (
        write_media(tmp_path / "silent.mp4", frames=moving_square(10)),
        "dropped",
        "no audio stream",
    )
    cases["no_video"] = (
        write_media(tmp_path / "audio_only.mp4", audio=good_audio),
        "failed",
        "no video stream",
    )
    cases["no_frame"] = (
        write_media(tmp_path / "no_frame.avi", frames=moving_square(0), audio=good_audio),
        "failed",
        "no decodable video frame",
    )
    cases["short_audio"] = (
        write_media(
            tmp_path / "short_audio.avi", frames=moving_square(5), audio=sine(440.0, 0.01, 16000)
        ),
        "failed",
        "shorter than one 25 ms fbank window",
    )
    return cases


def test_each_bad_input_kind_gets_its_reason(tmp_path: Path):
    for name, (path, status, reason) in _bad_inputs(tmp_path).items():
        result = extract.extract_clip(str(path), SETTINGS)
        assert (result.status, name) == (status, name), result.reason
        assert reason in result.reason, (name, result.reason)
        assert result.fbank is None and result.frame is None


def test_dataset_with_bad_files_finishes_and_records_them(tmp_path: Path, raw_copy: Path):
    _, clips = ucf101.read_layout(raw_copy)
    (tmp_path / "bad").mkdir()
    cases = _bad_inputs(tmp_path / "bad")
    victims = {}
    audible = [c for c in clips if c.class_name != clips[-1].class_name]
    for clip, (path, status, reason) in zip(audible[3::4], cases.values(), strict=False):
        target = ucf101.resolve_video(raw_copy, clip.rel_path)
        target.unlink()
        if path.exists():
            # Keep the listed file name; the content (and thus the container) decides.
            shutil.copyfile(path, target)
        victims[clip.clip_id] = (status, reason)
    out = tmp_path / "features"
    rows = extract.extract_dataset(
        raw_copy, out, {**SETTINGS, "target_frames": 128}, threads=2, progress=False
    )
    by_id = {r.clip_id: r for r in rows}
    for clip_id, (status, reason) in victims.items():
        assert by_id[clip_id].status == status and reason in by_id[clip_id].reason, by_id[clip_id]
    assert sum(r.status == "ok" for r in rows) == np.load(out / "fbank.npy").shape[0]


# --- the stage's outputs ---------------------------------------------------------------


def test_outputs_are_consistent(tiny_features: Path, tiny_raw: Path, tiny_settings):
    settings = tiny_settings["extract"]
    rows = read_manifest(tiny_features / "manifest.tsv")
    frames = np.load(tiny_features / "frames.npy")
    fbank = np.load(tiny_features / "fbank.npy")
    ok = [r for r in rows if r.status == "ok"]
    n_classes = (
        tiny_settings["synthetic"]["n_classes"] - tiny_settings["synthetic"]["n_silent_classes"]
    )
    assert len(rows) == len(ucf101.read_layout(tiny_raw)[1])
    assert frames.shape == (len(ok), 32, 32, 3) and frames.dtype == np.uint8
    assert fbank.shape == (len(ok), settings["target_frames"], settings["num_mel_bins"])
    assert [r.row for r in ok] == list(range(len(ok)))
    assert sorted({r.label for r in ok}) == list(range(n_classes))
    assert all(r.label == -1 and r.row == -1 for r in rows if r.status != "ok")
    silent = {r.class_name for r in rows if r.reason == "no audio stream"}
    assert len(silent) == 1 and not any(r.status == "ok" for r in rows if r.class_name in silent)
    assert sorted(r.reason.split(":")[0] for r in rows if r.status == "failed") == [
        "empty file (0 bytes)",
        "unreadable container",
    ]
    for r in ok:
        assert 0 < r.audio_frames <= settings["target_frames"]
        assert not fbank[r.row, r.audio_frames :].any()
        assert r.fold1 in {"train", "test"} and r.has_audio and r.has_video
    assert {r.sample_rate for r in ok} == {8000, 22050, 48000}


def test_stored_frame_is_the_resized_middle_frame(tiny_features: Path, tiny_raw: Path):
    row = next(r for r in read_manifest(tiny_features / "manifest.tsv") if r.status == "ok")
    middle = video.middle_frame_seek(str(ucf101.resolve_video(tiny_raw, row.rel_path)))
    stored = np.load(tiny_features / "frames.npy")[row.row]
    np.testing.assert_array_equal(stored, video.resize_center_crop(middle.image, 32))


def test_norm_stats_come_from_the_training_split(tiny_features: Path):
    rows = read_manifest(tiny_features / "manifest.tsv")
    fbank = np.load(tiny_features / "fbank.npy")
    stats = json.loads((tiny_features / "norm_stats.json").read_text())["folds"]
    for k in (1, 2, 3):
        train = [r for r in rows if r.status == "ok" and r.fold(k) == "train"]
        values = np.concatenate([fbank[r.row, : r.audio_frames].ravel() for r in train]).astype(
            np.float64
        )
        assert stats[f"fold{k}"]["n_clips"] == len(train)
        assert stats[f"fold{k}"]["mean"] == pytest.approx(values.mean(), abs=1e-5)
        assert stats[f"fold{k}"]["std"] == pytest.approx(values.std(), abs=1e-5)
    assert stats["fold1"]["mean"] != stats["fold2"]["mean"]


def test_extraction_is_deterministic_across_thread_counts(
    tmp_path: Path, tiny_raw: Path, tiny_features: Path, tiny_settings
):
    extract.extract_dataset(tiny_raw, tmp_path, tiny_settings["extract"], threads=1, progress=False)
    for name in extract.OUTPUT_FILES:
        a = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        b = hashlib.sha256((tiny_features / name).read_bytes()).hexdigest()
        assert a == b, name
