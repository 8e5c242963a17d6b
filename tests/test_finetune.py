"""Fine-tuning mode: backbones inside the model, trained end to end (small CNNs on the CPU)."""

import torch

from avfl.train import run

from .conftest import tiny_spec

SMALL = {
    "mode": "finetune",
    "audio": {
        "backbone": "small_cnn",
        "pretrained": False,
        "weights": {"path": "unused"},
        "ssast": {},
    },
    "visual": {"backbone": "small_cnn", "pretrained": False, "weights": {"path": "unused"}},
}


def test_finetune_trains_the_backbones_too(tiny_training, tmp_path):
    spec = tiny_spec(
        tiny_training, tmp_path, "multifl", rate=0.5, model=SMALL, federated={"rounds": 2}
    )
    record = run(spec, log=lambda m: None)
    assert record["config"]["model"]["mode"] == "finetune"
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["last"]
    assert any(k.startswith("audio_backbone.") for k in saved)
    assert any(k.startswith("visual_backbone.") for k in saved)
    assert 0 <= record["test"]["top1"] <= 1
