"""The model of self-supervised pre-training (FSSUAVL): one backbone for both modalities, a
projection for the contrastive loss, and an audio linear probe on the backbone's features.

Groups (the units clients train and the server averages, as in models/heads.py):
`shared_backbone` and `projection` (pre-training), `audio_input` (the probe's fixed
standardisation of the features, from the training clips) and `audio_head` (the probe).

- `SharedCNN` (CPU): blocks 3 -> 16 -> 32 -> 64 -> 128 of 3x3 convolution, BatchNorm, ReLU and
  2x2 max-pooling, averaged over space: 128-d (the notes' small CNN, after L-DAWA's).
- `resnet18` (GPU): torchvision's ResNet-18 without its classifier, 512-d (FSSUAVL's R-18).

One BatchNorm serves both modalities (FSSUAVL needs "no modification or special treatment
for the model architecture", Section 1), so its running statistics mix spectrograms and
images. Every weight is initialised from the run's own generator (a job's runs build their
models in parallel threads).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from avfl.models import views
from avfl.models.heads import Standardise

BACKBONES = ("small_cnn", "resnet18")


class SharedCNN(nn.Module):
    out_dim = 128

    def __init__(self, channels: tuple[int, ...] = (3, 16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]  # fmt: skip
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNet18Backbone(nn.Module):
    out_dim = 512

    def __init__(self):
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet18(weights=None)
        self.net.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def seeded_init(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of every convolution and linear layer (ResNet's
    Kaiming-normal for its convolutions), drawn from `generator`; BatchNorm weight 1, bias 0."""
    resnet = isinstance(module, ResNet18Backbone)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                if resnet and isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                            generator=generator)  # fmt: skip
                else:
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    m.bias.uniform_(
                        -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator
                    )
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()


class SSLModel(nn.Module):
    """Backbone, projection and the audio probe. `audio_logits` takes the stored fbank (the
    evaluation view), so the engine and the reports evaluate it like any other model."""

    def __init__(self, backbone: str, n_classes: int, image_size: int, window: int,
                 fbank_mean: float, fbank_std: float, generator: torch.Generator,
                 projection_dim: int = 128):  # fmt: skip
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        # Built on the meta device, so that no layer's default initialisation draws from
        # PyTorch's global generator (which other runs of a job seed and draw from while they
        # build their models), then materialised and initialised from `generator` alone.
        with torch.device("meta"):
            backbone_module = SharedCNN() if backbone == "small_cnn" else ResNet18Backbone()
            dim = backbone_module.out_dim
            projection = nn.Linear(dim, projection_dim)  # linear, as L-DAWA's (open point 6)
            head = nn.Linear(dim, n_classes)
        self.shared_backbone = backbone_module.to_empty(device="cpu")
        self.projection = projection.to_empty(device="cpu")
        self.audio_input = Standardise(dim)
        self.audio_head = head.to_empty(device="cpu")
        for part in (self.shared_backbone, self.projection, self.audio_head):
            seeded_init(part, generator)
        self.image_size, self.window = image_size, window
        self.fbank_mean, self.fbank_std = fbank_mean, fbank_std

    @property
    def feature_dim(self) -> int:
        return self.shared_backbone.out_dim

    def audio_views(self, fbank: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return views.audio_view(fbank, u, self.window, self.image_size, self.fbank_mean,
                                self.fbank_std)  # fmt: skip

    def image_views(self, frames: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return views.image_view(frames, u, self.image_size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Projected embeddings of a batch of views (one pass: one set of BN statistics)."""
        return self.projection(self.shared_backbone(images))

    def audio_features(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.shared_backbone(self.audio_views(fbank, None))

    def visual_features(self, frames: torch.Tensor) -> torch.Tensor:
        return self.shared_backbone(self.image_views(frames, None))

    def audio_logits(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.audio_head(self.audio_input(self.audio_features(fbank)))


class ProbeModel(nn.Module):
    """The audio probe alone, on precomputed backbone features: the same group names as
    SSLModel's, so its trained state drops into the full model. Its tensors are left
    uninitialised: a phase starts it from SSLModel's."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.audio_input = Standardise(dim)
        self.audio_head = torch.nn.utils.skip_init(nn.Linear, dim, n_classes)

    def audio_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.audio_head(self.audio_input(features))
