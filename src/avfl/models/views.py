"""The views of self-supervised pre-training (FSSUAVL): an audio crop and SimCLR's image set,
each computed from pre-drawn uniforms.

A view is a pure function of the stored input and a row of uniforms in [0, 1) that the engine
draws from the client's own generator (fl/local.py, `randoms_per_sample`): the same client,
round and step give the same views alone or in a batch of runs, resumed or not. Nothing here
calls a random function.

- Audio (FSSUAVL 3.4: "a random 2 s crop"): the normalised fbank's valid frames, a window of
  `window` frames at a uniform start, as an image of frequency by time, average-pooled to
  size x size and replicated to 3 channels (the paper is silent on the channels). A clip
  shorter than the window is taken whole with its zero padding. Evaluation takes the centre
  window (the paper is silent; the centre is the usual deterministic view).
- Images (Viewmaker's SimCLR set, which FSSUAVL follows; the values from L-DAWA's code): a
  random resized crop of 0.2-1 of the area at a 3/4-4/3 aspect ratio, colour jitter (0.4,
  0.4, 0.4, 0.1) with p 0.8, grayscale with p 0.2, Gaussian blur (sigma 0.1-2, a kernel of a
  tenth of the side) with p 0.5 and a horizontal flip with p 0.5; then ImageNet's
  normalisation. Two departures, both for one draw per parameter: the crop takes one draw of
  scale and ratio, its sides capped at the image's, instead of torchvision's ten tries; the
  jitter applies brightness, contrast, saturation and hue in that fixed order instead of a
  random one, and shifts hue by a rotation of the YIQ chroma plane instead of through HSV.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
AUDIO_DRAWS = 1  # the crop's start
IMAGE_DRAWS = 13  # crop 4, jitter 5, grayscale 1, blur 2, flip 1
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
P_JITTER, P_GRAY, P_BLUR, P_FLIP = 0.8, 0.2, 0.5, 0.5
BLUR_SIGMA = (0.1, 2.0)


def normalise_fbank(
    fbank: torch.Tensor, mean: float, std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSAST's (fbank - mean) / (2 std), with the padding frames set to 0; and the number of
    valid frames per clip (padding rows are exact zeros and follow the valid ones)."""
    valid = fbank.abs().sum(dim=-1) > 0
    x = (fbank.float() - mean) / (2 * std) * valid.unsqueeze(-1)
    return x, valid.sum(dim=1)


def audio_view(
    fbank: torch.Tensor, u: torch.Tensor | None, window: int, size: int, mean: float, std: float
) -> torch.Tensor:
    """(B, T, F) fbank -> (B, 3, size, size): the window at start floor(u (n - window + 1)) of
    the n valid frames (u None: the centre window)."""
    x, n = normalise_fbank(fbank, mean, std)
    window = min(window, x.shape[1])
    room = (n - window).clamp_min(0)
    # The start: floor(u (room + 1)), capped at room (u < 1, but rounding); u None: the centre.
    start = room // 2 if u is None else torch.minimum((u * (room + 1).float()).floor().long(), room)
    idx = start.unsqueeze(1) + torch.arange(window, device=x.device)
    crop = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, window, F)
    image = F.adaptive_avg_pool2d(crop.transpose(1, 2).unsqueeze(1), size)  # frequency x time
    return image.expand(-1, 3, -1, -1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend: ratio a + (1 - ratio) b, clamped to [0, 1]; ratio per image."""
    r = ratio.view(-1, 1, 1, 1)
    return (r * a + (1 - r) * b).clamp(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane (YIQ) by shift x 360 degrees."""
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        device=x.device, dtype=x.dtype,
    )  # fmt: skip
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = 2 * math.pi * shift.view(-1, 1, 1)
    c, s = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, reflect padding."""
    b, c, h, w = x.shape
    k = max(3, int(0.1 * h) // 2 * 2 + 1)  # odd, a tenth of the side (SimCLR)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (b c, k)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (k // 2, k // 2, 0, 0), mode="reflect"),
                    kernel.view(b * c, 1, 1, k), groups=b * c)  # fmt: skip
    flat = F.conv2d(F.pad(flat, (0, 0, k // 2, k // 2), mode="reflect"),
                    kernel.view(b * c, 1, k, 1), groups=b * c)  # fmt: skip
    return flat.view(b, c, h, w)


def _normalise_image(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def image_view(frames: torch.Tensor, u: torch.Tensor | None, size: int) -> torch.Tensor:
    """(B, H, W, 3) uint8 frames -> (B, 3, size, size); u: (B, IMAGE_DRAWS) uniforms, or None
    for the evaluation view (the whole frame, resized)."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    b = x.shape[0]
    if u is None:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        return _normalise_image(x)
    lo, hi = CROP_SCALE
    area = lo + (hi - lo) * u[:, 0]
    ratio = torch.exp(math.log(CROP_RATIO[0]) + math.log(CROP_RATIO[1] / CROP_RATIO[0]) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # shares of the frame's width and height
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    x0, y0 = (1 - w) * u[:, 2], (1 - h) * u[:, 3]
    flip = u[:, 12] < P_FLIP
    zero = torch.zeros_like(w)
    theta = torch.stack([
        torch.stack([torch.where(flip, -w, w), zero, 2 * x0 + w - 1], dim=1),
        torch.stack([zero, h, 2 * y0 + h - 1], dim=1),
    ], dim=1)  # fmt: skip
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    bright, contrast, saturation, hue = JITTER
    jittered = _blend(x, torch.zeros_like(x), 1 + bright * (2 * u[:, 5] - 1))
    mean = _gray(jittered).mean(dim=(1, 2, 3), keepdim=True)
    jittered = _blend(jittered, mean.expand_as(jittered), 1 + contrast * (2 * u[:, 6] - 1))
    jittered = _blend(
        jittered, _gray(jittered).expand_as(jittered), 1 + saturation * (2 * u[:, 7] - 1)
    )
    jittered = _hue(jittered, hue * (2 * u[:, 8] - 1))
    x = torch.where((u[:, 4] < P_JITTER).view(-1, 1, 1, 1), jittered, x)
    x = torch.where((u[:, 9] < P_GRAY).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 11]
    x = torch.where((u[:, 10] < P_BLUR).view(-1, 1, 1, 1), _blur(x, sigma), x)
    return _normalise_image(x)
