"""Backbones: a modality's raw input -> a fixed-size embedding.

Every backbone takes the stored arrays as they are (fbank float32 (B, T, F) unnormalised;
frames uint8 (B, S, S, 3)) and does its own preprocessing, so data can live on the device
in its compact form and every path preprocesses the same way.

- `fbank_stats` / `color_stats`: parameter-free summaries for the embedded dataset on a CPU
  (per-bin mean and std of the valid fbank frames; a 4x4 colour layout plus a hue histogram);
- `small_cnn`: small convolutional nets trained from scratch (fine-tuning mode on a CPU);
- `ssast` / `resnet18`: the paper's backbones, with their pretrained weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from avfl.models import weights as weight_files
from avfl.models.ssast import SSAST

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AudioInput(nn.Module):
    """SSAST normalisation: (fbank - mean) / (2 std), with the fold's training statistics."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return (fbank.float() - self.mean) / (2 * self.std)


def valid_fbank_stats(fbank: torch.Tensor, indices: torch.Tensor) -> dict[str, float]:
    """The mean and std over the valid (unpadded) frames of the clips `indices`: a backbone's
    input statistics, from the training clips only (float64 sums)."""
    values = fbank[indices.to(fbank.device)].double()
    values = values[values.abs().sum(dim=-1) > 0]  # padding rows are exact zeros
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False))}


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float (B, 3, S, S) in [0, 1]."""
    return frames.permute(0, 3, 1, 2).float() / 255.0


class FbankStats(nn.Module):
    """Per-mel-bin mean and std over the valid (unpadded) frames: (B, T, F) -> (B, 2F)."""

    def __init__(self, mean: float, std: float, num_mel_bins: int):
        super().__init__()
        self.norm = AudioInput(mean, std)
        self.out_dim = 2 * num_mel_bins

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        valid = (fbank.abs().sum(dim=-1, keepdim=True) > 0).float()  # padding rows are exact zeros
        x = self.norm(fbank) * valid
        n = valid.sum(dim=1).clamp_min(1.0)
        mean = x.sum(dim=1) / n
        var = ((x - mean[:, None]) ** 2 * valid).sum(dim=1) / n
        return torch.cat([mean, var.sqrt()], dim=-1)


class ColorStats(nn.Module):
    """4x4 grid of mean RGB, 16-bin saturation-weighted hue histogram, global RGB mean/std: 70 values."""

    out_dim = 4 * 4 * 3 + 16 + 6

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames_to_float(frames)
        layout = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        cmax, cmin = x.max(dim=1).values, x.min(dim=1).values
        delta = (cmax - cmin).clamp_min(1e-6)
        hue = (
            torch.where(
                cmax == r,
                ((g - b) / delta) % 6,
                torch.where(cmax == g, (b - r) / delta + 2, (r - g) / delta + 4),
            )
            / 6.0
        )
        saturation = (cmax - cmin) / cmax.clamp_min(1e-6)
        bins = (hue.clamp(0, 1 - 1e-6) * 16).long().flatten(1)
        hist = torch.zeros(x.shape[0], 16, device=x.device).scatter_add_(
            1, bins, saturation.flatten(1)
        )
        hist = hist / saturation.flatten(1).sum(dim=1, keepdim=True).clamp_min(1e-6)
        stats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)
        return torch.cat([layout, hist, stats], dim=1)


def _conv_stack(channels: list[int], pool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(channels):
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.MaxPool2d(pool),
        ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class SmallAudioCNN(nn.Module):
    """Three conv blocks over the (time, mel) image, trained from scratch: 64-d."""

    out_dim = 64

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.norm = AudioInput(mean, std)
        self.net = _conv_stack([1, 16, 32, 64], pool=(4, 2))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(fbank).unsqueeze(1))


class SmallVisualCNN(nn.Module):
    """Three conv blocks over the frame, trained from scratch: 64-d."""

    out_dim = 64

    def __init__(self):
        super().__init__()
        self.net = _conv_stack([3, 16, 32, 64], pool=2)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames_to_float(frames))


class ResNet18(nn.Module):
    """torchvision ResNet-18 without its classifier: 512-d, ImageNet normalisation."""

    out_dim = 512

    def __init__(self):
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet18(weights=None)
        self.net.fc = nn.Identity()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net((frames_to_float(frames) - self.mean) / self.std)

    def load_imagenet(self, state: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        self.net.load_state_dict(state, strict=True)


class SSASTBackbone(nn.Module):
    def __init__(
        self,
        mean: float,
        std: float,
        num_mel_bins: int,
        target_frames: int,
        options: Mapping[str, Any],
    ):
        super().__init__()
        self.norm = AudioInput(mean, std)
        self.net = SSAST(
            size=options["size"],
            patch=options["patch"],
            input_fdim=num_mel_bins,
            input_tdim=target_frames,
            stride=options.get("stride"),
        )
        self.out_dim = self.net.out_dim

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(fbank))


AUDIO_BACKBONES = ("fbank_stats", "small_cnn", "ssast")
VISUAL_BACKBONES = ("color_stats", "small_cnn", "resnet18")
PARAMETER_FREE = {"fbank_stats", "color_stats"}


def build_audio_backbone(
    spec: Mapping[str, Any], norm: Mapping[str, float], extract: Mapping[str, Any]
) -> nn.Module:
    """spec: the config's model.audio block; norm: the fold's {mean, std}."""
    name = spec["backbone"]
    mean, std = norm["mean"], norm["std"]
    if name == "fbank_stats":
        return FbankStats(mean, std, extract["num_mel_bins"])
    if name == "small_cnn":
        return SmallAudioCNN(mean, std)
    if name == "ssast":
        backbone = SSASTBackbone(
            mean, std, extract["num_mel_bins"], extract["target_frames"], spec["ssast"]
        )
        if spec["pretrained"]:
            path = weight_files.resolve(spec["weights"], "SSAST", "model.audio.weights")
            backbone.net.load_official(weight_files.load_state_dict(path))
        return backbone
    raise ValueError(f"unknown audio backbone {name!r}; choose one of {AUDIO_BACKBONES}")


def build_visual_backbone(spec: Mapping[str, Any]) -> nn.Module:
    """spec: the config's model.visual block."""
    name = spec["backbone"]
    if name == "color_stats":
        return ColorStats()
    if name == "small_cnn":
        return SmallVisualCNN()
    if name == "resnet18":
        backbone = ResNet18()
        if spec["pretrained"]:
            path = weight_files.resolve(spec["weights"], "ResNet-18", "model.visual.weights")
            backbone.load_imagenet(weight_files.load_state_dict(path))
        return backbone
    raise ValueError(f"unknown visual backbone {name!r}; choose one of {VISUAL_BACKBONES}")
