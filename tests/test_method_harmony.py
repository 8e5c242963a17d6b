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
