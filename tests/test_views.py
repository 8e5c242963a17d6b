"""The views of self-supervised pre-training: pure functions of the input and the draws."""

from __future__ import annotations

import torch

from avfl.models import views


def _fbank(valid=(300, 120), frames=512, bins=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    fbank = torch.randn(len(valid), frames, bins, generator=g) - 8.0
    for i, n in enumerate(valid):
        fbank[i, n:] = 0.0  # padding rows are exact zeros, after the valid frames
    return fbank


def test_the_audio_window_stays_in_the_valid_frames_and_takes_a_short_clip_whole():
    fbank = _fbank(valid=(300, 120))
    x, n = views.normalise_fbank(fbank, -8.0, 1.0)
    assert n.tolist() == [300, 120]
    assert not x[0, 300:].any() and not x[1, 120:].any()  # padding is 0 after normalising
    window = 200
    for u in (0.0, 0.5, 0.999999):
        start = int(u * (300 - window + 1))
        expected = torch.nn.functional.adaptive_avg_pool2d(
            x[0, start : start + window].T[None, None], 16
        )[0, 0]
        got = views.audio_view(fbank, torch.tensor([u, u]), window, 16, -8.0, 1.0)
        assert torch.allclose(got[0, 0], expected, atol=1e-6)
        assert torch.equal(got[0, 0], got[0, 2])  # replicated to 3 channels
        # A clip shorter than the window: frames 0..window-1, whatever u is.
        whole = torch.nn.functional.adaptive_avg_pool2d(x[1, :window].T[None, None], 16)[0, 0]
        assert torch.allclose(got[1, 0], whole, atol=1e-6)
    centre = views.audio_view(fbank, None, window, 16, -8.0, 1.0)
    middle = torch.nn.functional.adaptive_avg_pool2d(x[0, 50:250].T[None, None], 16)[0, 0]
    assert torch.allclose(centre[0, 0], middle, atol=1e-6)


def test_the_views_are_a_function_of_the_draws():
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (4, 40, 48, 3), dtype=torch.uint8, generator=g)
    u = torch.rand(4, views.IMAGE_DRAWS, generator=g)
    a, b = views.image_view(frames, u, 32), views.image_view(frames, u.clone(), 32)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    other = views.image_view(frames, torch.rand(4, views.IMAGE_DRAWS, generator=g), 32)
    assert not torch.equal(a, other)
    fbank = _fbank(valid=(400, 400))
    first = views.audio_view(fbank, torch.tensor([0.1, 0.9]), 200, 16, -8.0, 1.0)
    assert torch.equal(first, views.audio_view(fbank, torch.tensor([0.1, 0.9]), 200, 16, -8.0, 1.0))
    assert not torch.equal(
        first, views.audio_view(fbank, torch.tensor([0.9, 0.1]), 200, 16, -8.0, 1.0)
    )


def _plain(u: torch.Tensor) -> torch.Tensor:
    """Draws that switch off jitter, grayscale and blur, with the whole frame as the crop."""
    u = u.clone()
    u[:, 0] = 1.0  # scale 1
    u[:, 1] = 0.5  # ratio 1
    u[:, 4], u[:, 9], u[:, 10] = 0.99, 0.99, 0.99  # no jitter, grayscale, blur
    return u


def test_the_full_crop_without_colour_is_the_frame_and_the_flip_mirrors_it():
    g = torch.Generator().manual_seed(2)
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=g)
    u = _plain(torch.rand(2, views.IMAGE_DRAWS, generator=g))
    u[:, 12] = 0.99  # no flip
    straight = views.image_view(frames, u, 32)
    expected = views.image_view(frames, None, 32)
    assert torch.allclose(straight, expected, atol=1e-5)
    u[:, 12] = 0.0  # flip
    assert torch.allclose(views.image_view(frames, u, 32), straight.flip(-1), atol=1e-5)


def test_grayscale_gives_equal_channels_and_blur_keeps_the_mean_of_a_flat_image():
    frames = torch.randint(
        0, 256, (1, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    u = _plain(torch.full((1, views.IMAGE_DRAWS), 0.5))
    u[:, 9] = 0.0  # grayscale
    x = views.image_view(frames, u, 32)
    std = torch.tensor(views.IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(views.IMAGENET_MEAN).view(1, 3, 1, 1)
    raw = x * std + mean
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(
        raw[:, 1], raw[:, 2], atol=1e-5
    )
    flat = torch.full((1, 16, 16, 3), 100, dtype=torch.uint8)
    u = _plain(torch.full((1, views.IMAGE_DRAWS), 0.5))
    u[:, 10], u[:, 11] = 0.0, 1.0  # blur, the widest sigma
    blurred = views.image_view(flat, u, 16) * std + mean
    assert torch.allclose(blurred, torch.full_like(blurred, 100 / 255), atol=1e-5)
