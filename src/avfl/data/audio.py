"""The audio input: first N seconds, mono, resampled, SSAST-style log-mel filter bank.

Matches the SSAST recipe (Gong et al.): Kaldi-compatible fbank from torchaudio with
128 mel bins, 25 ms Hanning windows every 10 ms, htk_compat, no dither, computed on
the mean-subtracted waveform, then zero-padded or cut to a fixed number of frames.
Normalisation (mean, std) is not applied here: the statistics are computed from the
training split by the extraction stage and stored beside the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
import torch
import torchaudio

WINDOW_MS = 25.0
SHIFT_MS = 10.0


class AudioError(RuntimeError):
    """The audio stream cannot give features; the message is the manifest reason."""


class NoAudioStream(AudioError):
    """The file has no audio track (expected for UCF101's silent classes)."""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # (channels, n) float32, at the stream's own rate
    sample_rate: int
    channels: int
    codec: str


def decode_audio(path: str, max_seconds: float) -> DecodedAudio:
    """Decode the first `max_seconds` of the first audio stream as planar float32."""
    try:
        container = av.open(path)
    except av.error.FFmpegError as exc:
        raise AudioError(f"unreadable container: {exc}") from exc
    try:
        if not container.streams.audio:
            raise NoAudioStream("no audio stream")
        stream = container.streams.audio[0]
        rate = stream.sample_rate or stream.codec_context.sample_rate
        if not rate:
            raise AudioError("audio stream has no sample rate")
        limit = round(max_seconds * rate)
        resampler = av.AudioResampler(format="fltp")  # keeps rate and layout
        chunks: list[np.ndarray] = []
        total = 0
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                block = converted.to_ndarray()
                chunks.append(block)
                total += block.shape[1]
            if total >= limit:
                break
        if not chunks:
            raise AudioError("no decodable audio samples")
        samples = np.concatenate(chunks, axis=1)[:, :limit].astype(np.float32, copy=False)
        return DecodedAudio(samples, int(rate), samples.shape[0], stream.codec_context.name)
    except av.error.FFmpegError as exc:
        raise AudioError(f"audio decode failed: {exc}") from exc
    finally:
        container.close()


def to_mono_resampled(samples: np.ndarray, sample_rate: int, target_rate: int) -> torch.Tensor:
    """Average the channels, then resample (torchaudio's windowed-sinc) to `target_rate`: (1, n)."""
    mono = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).mean(
        dim=0, keepdim=True
    )
    if sample_rate != target_rate:
        mono = torchaudio.functional.resample(mono, sample_rate, target_rate)
    return mono


def min_samples(sample_rate: int) -> int:
    """Samples in one fbank window: anything shorter yields no frame."""
    return int(sample_rate * WINDOW_MS / 1000)


def log_mel_fbank(
    waveform: torch.Tensor, sample_rate: int, num_mel_bins: int, target_frames: int
) -> tuple[np.ndarray, int]:
    """SSAST fbank of a (1, n) waveform, padded/cut to (target_frames, num_mel_bins).

    Returns the array and the number of frames computed before padding.
    """
    if waveform.shape[-1] < min_samples(sample_rate):
        raise AudioError(
            f"audio shorter than one {WINDOW_MS:g} ms fbank window ({waveform.shape[-1]} samples at {sample_rate} Hz)"
        )
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform - waveform.mean(),
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_length=WINDOW_MS,
        frame_shift=SHIFT_MS,
    )
    n_frames = int(fbank.shape[0])
    if n_frames < target_frames:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - n_frames))
    else:
        fbank = fbank[:target_frames]
    return fbank.numpy().astype(np.float32, copy=False), min(n_frames, target_frames)
