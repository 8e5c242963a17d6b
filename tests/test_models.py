"""Backbones and pretrained weights: official SSAST layout, ResNet-18, checksums, clear errors."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

from avfl.models import weights
from avfl.models.backbones import (
    ColorStats,
    FbankStats,
    ResNet18,
    build_audio_backbone,
    build_visual_backbone,
)
from avfl.models.ssast import SSAST


def official_checkpoint(
    size="tiny", patch="patch", input_tdim=1024, depth=2
) -> dict[str, torch.Tensor]:
    """A state dict laid out as the official SSAST files: DataParallel keys, pretext layers, input size."""
    torch.manual_seed(1)
    model = SSAST(size=size, patch=patch, input_fdim=128, input_tdim=input_tdim, depth=depth)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    dim = model.out_dim
    state["module.p_input_fdim"] = torch.tensor(128)
    state["module.p_input_tdim"] = torch.tensor(input_tdim)
    state["module.mask_embed"] = torch.zeros(1, 1, dim)
    state["module.cpredlayer.0.weight"] = torch.zeros(dim, dim)
    state["module.v.head.weight"] = torch.zeros(1000, dim)
    return state


@pytest.mark.parametrize(
    ("patch", "tdim"), [("patch", 512), ("patch", 1024), ("frame", 512), ("patch", 1536)]
)
def test_ssast_loads_official_layout_and_adapts_positions(patch, tdim):
    state = official_checkpoint(patch=patch)
    model = SSAST(size="tiny", patch=patch, input_fdim=128, input_tdim=tdim, depth=2)
    model.load_official(state)
    # Every transformer weight comes from the checkpoint.
    assert torch.equal(
        model.v.blocks[1].attn.qkv.weight, state["module.v.blocks.1.attn.qkv.weight"]
    )
    assert torch.equal(model.v.cls_token, state["module.v.cls_token"])
    f_dim, t_dim = model.grid
    assert model.v.pos_embed.shape == (1, f_dim * t_dim + 2, 192)
    p_t = 1024 // (16 if patch == "patch" else 2)
    p_f = 128 // (16 if patch == "patch" else 128)
    grid = state["module.v.pos_embed"][:, 2:].transpose(1, 2).reshape(1, 192, p_f, p_t)
    if t_dim <= p_t:  # shorter input: the centre of the time axis
        start = p_t // 2 - t_dim // 2
        expected = grid[:, :, :, start : start + t_dim].reshape(1, 192, -1).transpose(1, 2)
        assert torch.equal(model.v.pos_embed[:, 2:], expected)
    out = model(torch.randn(2, tdim, 128))
    assert out.shape == (2, 192) and torch.isfinite(out).all()


def test_ssast_rejects_other_patch_shape_and_foreign_files():
    with pytest.raises(ValueError, match="patches"):
        SSAST(size="tiny", patch="frame", depth=2).load_official(official_checkpoint(patch="patch"))
    with pytest.raises(ValueError, match="not an SSAST checkpoint"):
        SSAST(size="tiny", depth=2).load_official({"module.fc.weight": torch.zeros(1)})


def test_requested_ssast_weights_missing_is_a_clear_error_not_random_init(tmp_path: Path):
    spec = {
        "backbone": "ssast",
        "pretrained": True,
        "weights": {
            "path": str(tmp_path / "SSAST-Base-Patch-400.pth"),
            "url": "https://example.org/x.pth",
            "sha256": None,
            "download": False,
        },
        "ssast": {"size": "tiny", "patch": "patch", "stride": None},
    }
    with pytest.raises(weights.WeightsError) as info:
        build_audio_backbone(
            spec, {"mean": 0.0, "std": 1.0}, {"num_mel_bins": 128, "target_frames": 512}
        )
    message = str(info.value)
    assert "SSAST-Base-Patch-400.pth" in message and "https://example.org/x.pth" in message
    assert "never used" in message


def test_resnet18_loads_imagenet_layout_with_checksum(tmp_path: Path):
    import torchvision

    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    digest = weights.sha256_of(path)
    spec = {
        "backbone": "resnet18",
        "pretrained": True,
        "weights": {"path": str(path), "url": None, "sha256": digest[:8], "download": False},
    }
    backbone = build_visual_backbone(spec)
    assert torch.equal(backbone.net.conv1.weight, reference.conv1.weight)
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    assert backbone.eval()(frames).shape == (2, 512)


def test_checksum_mismatch_moves_the_file_aside(tmp_path: Path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not the weights")
    with pytest.raises(weights.WeightsError, match="expected deadbeef"):
        weights.resolve(
            {"path": str(path), "sha256": "deadbeef"}, "ResNet-18", "model.visual.weights"
        )
    assert not path.exists() and (tmp_path / "w.pth.bad-checksum").exists()


def test_weights_download_from_url(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    torch.save(ResNet18().net.state_dict(), served / "resnet18.pth")
    digest = weights.sha256_of(served / "resnet18.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/resnet18.pth"
        spec = {
            "path": str(tmp_path / "resources/resnet18.pth"),
            "url": url,
            "sha256": digest,
            "download": True,
        }
        path = weights.resolve(spec, "ResNet-18", "model.visual.weights")
        assert path.exists() and weights.sha256_of(path) == digest
    finally:
        server.shutdown()


def test_parameter_free_backbones():
    fbank = torch.zeros(2, 10, 4)
    fbank[0, :6] = torch.arange(24.0).reshape(6, 4)  # 6 valid frames, then padding
    fbank[1, :10] = 1.0
    out = FbankStats(mean=0.0, std=0.5, num_mel_bins=4)(fbank)
    assert out.shape == (2, 8)
    torch.testing.assert_close(
        out[0, :4], fbank[0, :6].mean(dim=0)
    )  # padding excluded; (x - 0) / (2 * 0.5)
    assert list(FbankStats(0.0, 0.5, 4).parameters()) == []
    red = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    red[..., 0] = 255
    blue = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    blue[..., 2] = 255
    hist = lambda x: ColorStats()(x)[0, 48:64]  # noqa: E731
    assert hist(red).argmax() == 0 and hist(blue).argmax() == 10  # hue 0 vs 240 degrees
