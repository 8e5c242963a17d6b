"""Server aggregation: FedAvg weights, and each parameter averaged over exactly its trainers."""

import torch

from avfl.fl.aggregate import Aggregator


def state(**values):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def test_fedavg_weights_by_sample_count():
    global_state = state(**{"audio_encoder.w": [0.0], "audio_head.w": [0.0]})
    agg = Aggregator(global_state)
    agg.add(
        0,
        state(**{"audio_encoder.w": [1.0], "audio_head.w": [10.0]}),
        ["audio_encoder", "audio_head"],
        1.0,
    )
    agg.add(
        1,
        state(**{"audio_encoder.w": [4.0], "audio_head.w": [40.0]}),
        ["audio_encoder", "audio_head"],
        3.0,
    )
    new = agg.result()
    assert torch.allclose(new["audio_encoder.w"], torch.tensor([3.25]))
    assert torch.allclose(new["audio_head.w"], torch.tensor([32.5]))


def test_modality_aware_each_parameter_over_its_trainers_only():
    global_state = state(
        **{
            "audio_encoder.w": [0.0],
            "audio_head.w": [5.0],
            "visual_encoder.w": [7.0],
            "fusion_head.w": [9.0],
        }
    )
    agg = Aggregator(global_state)
    # Client 0 is audio-only: it trains (and reports) the audio encoder and head.
    agg.add(0, state(**{"audio_encoder.w": [1.0], "audio_head.w": [1.0], "visual_encoder.w": [100.0], "fusion_head.w": [100.0]}),
            ["audio_encoder", "audio_head"], 2.0)  # fmt: skip
    # Clients 1 and 2 are multimodal: audio and visual encoders and the fusion head.
    agg.add(1, state(**{"audio_encoder.w": [3.0], "audio_head.w": [100.0], "visual_encoder.w": [2.0], "fusion_head.w": [4.0]}),
            ["audio_encoder", "visual_encoder", "fusion_head"], 1.0)  # fmt: skip
    agg.add(2, state(**{"audio_encoder.w": [5.0], "audio_head.w": [100.0], "visual_encoder.w": [4.0], "fusion_head.w": [8.0]}),
            ["audio_encoder", "visual_encoder", "fusion_head"], 1.0)  # fmt: skip
    new = agg.result()
    assert agg.contributors["audio_encoder.w"] == [0, 1, 2]
    assert agg.contributors["audio_head.w"] == [0]
    assert agg.contributors["visual_encoder.w"] == [1, 2]
    assert torch.allclose(new["audio_encoder.w"], torch.tensor([(2 * 1 + 3 + 5) / 4.0]))
    assert torch.allclose(new["audio_head.w"], torch.tensor([1.0]))
    assert torch.allclose(new["visual_encoder.w"], torch.tensor([3.0]))
    assert torch.allclose(new["fusion_head.w"], torch.tensor([6.0]))


def test_untrained_parameters_and_integer_buffers_keep_their_global_value():
    global_state = {
        "audio_head.w": torch.tensor([5.0]),
        "visual_backbone.bn.num_batches_tracked": torch.tensor(3),
    }
    agg = Aggregator(global_state)
    agg.add(0, {"audio_head.w": torch.tensor([1.0]), "visual_backbone.bn.num_batches_tracked": torch.tensor(9)},
            ["visual_backbone"], 1.0)  # fmt: skip
    new = agg.result()
    assert new["audio_head.w"].item() == 5.0
    assert new["visual_backbone.bn.num_batches_tracked"].item() == 3
