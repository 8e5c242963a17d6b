"""UniFL: the audio-only and the multimodal groups federate separately and never share."""

import pytest

from avfl.train import run

from .conftest import tiny_spec


def test_unifl_beats_chance(tiny_training, tmp_path):
    record = run(
        tiny_spec(tiny_training, tmp_path, "unifl", rate=0.5, federated={"rounds": 40}),
        log=lambda m: None,
    )
    assert record["test"]["top1"] > 1.0 / len(record["classes"]) + 0.1
    assert set(record["rounds"]) == {"audio_group", "multimodal_group"}


def test_groups_never_share(tiny_training, tmp_path):
    both = run(tiny_spec(tiny_training, tmp_path / "a", "unifl", rate=0.5), log=lambda m: None)
    alone = run(
        tiny_spec(
            tiny_training,
            tmp_path / "b",
            "unifl",
            rate=0.5,
            method={"train_multimodal_group": False},
        ),
        log=lambda m: None,
    )
    # The audio model is the same whether or not the multimodal group trains at all.
    assert both["test"] == alone["test"]
    assert "test_av" in both and "test_av" not in alone


def test_total_sampling_uses_the_group_share(tiny_training, tmp_path):
    record = run(
        tiny_spec(tiny_training, tmp_path, "unifl", rate=0.25, method={"sampling": "total"}),
        log=lambda m: None,
    )
    assert record["test"]["n"] > 0


def test_unifl_needs_audio_only_clients(tiny_training, tmp_path):
    with pytest.raises(ValueError, match="rate above 0"):
        run(tiny_spec(tiny_training, tmp_path, "unifl", rate=0.0), log=lambda m: None)
