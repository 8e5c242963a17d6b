"""Server aggregation: FedAvg weights, each parameter averaged over exactly its trainers."""

import torch

from avfl.fl.server import weighted_average
from avfl.fl.tasks import AudioTask
from avfl.fl.types import ClientUpdate


def state(**values):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def update(client, weight, **values):
    return ClientUpdate(client, AudioTask(), state(**values), weight)


def test_fedavg_weights_by_sample_count():
    global_state = state(**{"audio_encoder.w": [0.0], "audio_head.w": [0.0]})
    new = weighted_average(global_state, [
        update(0, 1.0, **{"audio_encoder.w": [1.0], "audio_head.w": [10.0]}),
        update(1, 3.0, **{"audio_encoder.w": [4.0], "audio_head.w": [40.0]}),
    ])  # fmt: skip
    assert torch.allclose(new["audio_encoder.w"], torch.tensor([3.25]))
    assert torch.allclose(new["audio_head.w"], torch.tensor([32.5]))


def test_modality_aware_each_parameter_over_its_trainers_only():
    global_state = state(**{"audio_encoder.w": [0.0], "audio_head.w": [5.0], "visual_encoder.w": [7.0],
                            "fusion_head.w": [9.0]})  # fmt: skip
    new = weighted_average(global_state, [
        # Client 0 is audio-only: it trains (and sends) the audio encoder and head.
        update(0, 2.0, **{"audio_encoder.w": [1.0], "audio_head.w": [1.0]}),
        # Clients 1 and 2 are multimodal: audio and visual encoders and the fusion head.
        update(1, 1.0, **{"audio_encoder.w": [3.0], "visual_encoder.w": [2.0], "fusion_head.w": [4.0]}),
        update(2, 1.0, **{"audio_encoder.w": [5.0], "visual_encoder.w": [4.0], "fusion_head.w": [8.0]}),
    ])  # fmt: skip
    assert torch.allclose(new["audio_encoder.w"], torch.tensor([(2 * 1 + 3 + 5) / 4.0]))
    assert torch.allclose(new["audio_head.w"], torch.tensor([1.0]))
    assert torch.allclose(new["visual_encoder.w"], torch.tensor([3.0]))
    assert torch.allclose(new["fusion_head.w"], torch.tensor([6.0]))


def test_untrained_parameters_and_integer_buffers_keep_their_global_value():
    global_state = {
        "audio_head.w": torch.tensor([5.0]),
        "visual_backbone.bn.num_batches_tracked": torch.tensor(3),
    }
    new = weighted_average(global_state, [
        ClientUpdate(0, AudioTask(), {"visual_backbone.bn.num_batches_tracked": torch.tensor(9)}, 1.0)
    ])  # fmt: skip
    assert new["audio_head.w"].item() == 5.0
    assert new["visual_backbone.bn.num_batches_tracked"].item() == 3
    assert new["audio_head.w"] is not global_state["audio_head.w"]  # a copy, not an alias


def _per_tensor_reference(state, updates):
    """FedAvg one kernel per (tensor, update), as it was written before the multi-tensor ops."""
    carried = {}
    for u in updates:
        for name, value in u.state.items():
            if value.is_floating_point():
                carried.setdefault(name, []).append((value, u.weight))
    out = {}
    for name, value in state.items():
        if name not in carried:
            out[name] = value.clone()
            continue
        total = torch.zeros(value.shape, dtype=torch.float64)
        for v, w in carried[name]:
            total.add_(v, alpha=w)
        out[name] = total.div_(sum(w for _, w in carried[name])).to(value.dtype)
    return out


def test_multi_tensor_fedavg_is_bit_identical_to_the_per_tensor_arithmetic():
    g = torch.Generator().manual_seed(0)
    shapes = {"audio_encoder.1.weight": (33, 70), "audio_encoder.1.bias": (33,), "audio_head.weight": (7, 33),
              "visual_encoder.1.weight": (33, 65), "fusion_head.0.weight": (17, 66), "scalar": ()}  # fmt: skip
    state = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    state["counter"] = torch.tensor(4)
    updates = []
    for client in range(9):
        names = [n for n in shapes if client % 3 or not n.startswith(("visual", "fusion"))]
        values = {n: torch.randn(shapes[n], generator=g) * 10 ** (client - 4) for n in names}
        updates.append(ClientUpdate(client, AudioTask(), values, float(1 + 7 * client % 5)))
    new, reference = weighted_average(state, updates), _per_tensor_reference(state, updates)
    assert list(new) == list(state)
    for name in state:
        assert new[name].dtype == state[name].dtype
        assert torch.equal(new[name], reference[name]), name
