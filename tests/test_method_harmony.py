"""Harmony: the reported audio model is stage 1's and does not depend on the missing rate."""

from avfl.methods.context import RunContext
from avfl.methods.harmony import harmony
from avfl.train import run_job

from .conftest import quiet, tiny_job


def test_harmony_audio_model_is_rate_independent_and_learns(tiny_training, tmp_path):
    (record,) = run_job(tiny_job(tiny_training, tmp_path, "harmony"), log=quiet)
    assert record["rate"] is None and set(record["rounds"]) == {"stage1_audio"}
    assert record["test"]["top1"] > 1.0 / len(record["classes"]) + 0.1
    assert harmony.uses_rate is False and RunContext is not None


def test_the_fusion_stage_runs_its_share_of_the_rounds_and_never_falls_back_by_default(
    tiny_training, tmp_path
):
    """Given a rate, stage 2 fine-tunes the fusion model on the multimodal clients for
    `fusion_rounds` x federated.rounds; its start is a candidate only with
    `fusion_start_is_candidate` (the stage's start is then round 0 of its curve)."""
    from dataclasses import replace

    def run(out, **settings):
        job = tiny_job(tiny_training, tmp_path / out, "harmony", settings=settings)
        (only,) = job.runs
        return run_job(replace(job, runs=[replace(only, rate=0.25)]), log=quiet)[0]

    record = run("a", fusion_rounds=0.5)
    rounds = record["rounds"]
    assert set(rounds) == {"stage1_audio", "stage1_visual", "stage2_fusion"}
    assert rounds["stage2_fusion"] == max(1, round(rounds["stage1_audio"] / 2))
    assert record["dev_curve"]["stage2_fusion"][0]["round"] > 0
    assert "av" in record["test_by_model"]
    fallback = run("b", fusion_rounds=0.5, fusion_start_is_candidate=True)
    assert fallback["dev_curve"]["stage2_fusion"][0]["round"] == 0
    assert fallback["test"] == record["test"]  # the reported audio model is stage 1's
