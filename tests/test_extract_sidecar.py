"""A sidecar `<video stem>.wav` beside a clip's video supplies its audio (CREMA-D's WAVs)."""

from __future__ import annotations

import os

import numpy as np

from avfl.data import audio, extract

from .media import moving_square, sine, write_media

SETTINGS = {"frame_size": 32, "audio_seconds": 5.0, "sample_rate": 16000, "num_mel_bins": 64,
            "target_frames": 256}  # fmt: skip


def _fbank_of(path) -> np.ndarray:
    decoded = audio.decode_audio(str(path), SETTINGS["audio_seconds"])
    mono = audio.to_mono_resampled(decoded.samples, decoded.sample_rate, 16000)
    return audio.log_mel_fbank(mono, 16000, 64, 256)[0]


def test_sidecar_audio_is_used_and_the_frame_comes_from_the_video(tmp_path):
    video = write_media(tmp_path / "v_A_g01_c01.avi", frames=moving_square(20),
                        audio=sine(300, 2.0, 44100, channels=2), sample_rate=44100)  # fmt: skip
    plain = extract.extract_clip(str(video), SETTINGS)
    sidecar = write_media(tmp_path / "v_A_g01_c01.wav", audio=sine(2000, 1.5, 16000))
    result = extract.extract_clip(str(video), SETTINGS)
    assert (plain.sample_rate, plain.channels) == (44100, 2)
    assert (result.status, result.sample_rate, result.channels) == ("ok", 16000, 1)
    assert np.array_equal(result.fbank, _fbank_of(sidecar))
    assert not np.array_equal(result.fbank, plain.fbank)
    assert np.array_equal(result.frame, plain.frame)


def test_sidecar_gives_audio_to_a_silent_video(tmp_path):
    video = write_media(tmp_path / "v_A_g01_c01.avi", frames=moving_square(20))
    assert extract.extract_clip(str(video), SETTINGS).reason == "no audio stream"
    write_media(tmp_path / "v_A_g01_c01.wav", audio=sine(2000, 1.5, 16000))
    result = extract.extract_clip(str(video), SETTINGS)
    assert result.status == "ok" and result.has_audio and result.has_video


def test_broken_sidecar_is_reported_not_replaced_by_the_video_audio(tmp_path):
    video = write_media(tmp_path / "v_A_g01_c01.avi", frames=moving_square(20),
                        audio=sine(300, 2.0, 16000))  # fmt: skip
    os.symlink(tmp_path / "gone.wav", tmp_path / "v_A_g01_c01.wav")
    result = extract.extract_clip(str(video), SETTINGS)
    assert result.status == "failed" and result.reason.startswith(
        "unreadable sidecar audio v_A_g01_c01.wav"
    )
