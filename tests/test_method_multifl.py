"""MultiFL (Algorithm 1): modality-aware FL over all clients."""

import torch

from avfl.train import run

from .conftest import tiny_spec


def test_multifl_beats_chance(tiny_training, tmp_path):
    record = run(
        tiny_spec(tiny_training, tmp_path, "multifl", rate=0.5, federated={"rounds": 40}),
        log=lambda m: None,
    )
    n_classes = len(record["classes"])
    assert record["test"]["top1"] > 1.0 / n_classes + 0.1
    assert record["test_av"]["top1"] > 1.0 / n_classes + 0.1
    assert record["rounds"] == {"multifl": 40} and len(record["audio_only_clients"]) == 4


def test_audio_head_is_trained_only_by_audio_only_clients(tiny_training, tmp_path):
    # No audio-only client (rate 0): nobody trains the audio head, so it stays at its initial value...
    run(tiny_spec(tiny_training, tmp_path / "r0", "multifl", rate=0.0), log=lambda m: None)
    saved = torch.load(tmp_path / "r0/model.pt", weights_only=True)["last"]
    from avfl.fl.engine import derive_seed
    from avfl.models.heads import AVModel

    torch.manual_seed(derive_seed(0, "init"))
    init = AVModel(saved["audio_encoder.1.weight"].shape[1], saved["visual_encoder.1.weight"].shape[1],
                   saved["audio_head.weight"].shape[0], 128, 0.1).state_dict()  # fmt: skip
    assert torch.equal(saved["audio_head.weight"], init["audio_head.weight"])
    assert not torch.equal(saved["audio_encoder.1.weight"], init["audio_encoder.1.weight"])
    # ... unless multimodal clients are told to train it too.
    run(
        tiny_spec(
            tiny_training,
            tmp_path / "r0w",
            "multifl",
            rate=0.0,
            method={"multimodal_audio_head_weight": 0.5},
        ),
        log=lambda m: None,
    )
    trained = torch.load(tmp_path / "r0w/model.pt", weights_only=True)["last"]
    assert not torch.equal(trained["audio_head.weight"], init["audio_head.weight"])
