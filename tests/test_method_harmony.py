"""Harmony: the reported audio model is stage 1's and does not depend on the missing rate."""

from avfl.train import run

from .conftest import tiny_spec


def test_harmony_audio_model_is_rate_independent(tiny_training, tmp_path):
    no_rate = run(
        tiny_spec(tiny_training, tmp_path / "none", "harmony", rate=None), log=lambda m: None
    )
    assert no_rate["rate"] is None and set(no_rate["rounds"]) == {"stage1_audio"}
    assert no_rate["test"]["top1"] > 1.0 / len(no_rate["classes"]) + 0.1
    with_rate = run(
        tiny_spec(tiny_training, tmp_path / "r", "harmony", rate=0.5), log=lambda m: None
    )
    # With a rate, stage-1 visual and stage-2 fusion run too; the audio model is unchanged.
    assert set(with_rate["rounds"]) == {"stage1_audio", "stage1_visual", "stage2_fusion"}
    assert with_rate["test"] == no_rate["test"]
    assert with_rate["test_av"]["top1"] > 1.0 / len(no_rate["classes"]) + 0.1
