"""ModalityMirror: phase 1 is MultiFL's saved result; phase 2 distils into the audio student."""

from dataclasses import replace

import pytest
import torch

from avfl.errors import UserError
from avfl.methods.modalitymirror import distill_loss
from avfl.train import run_job

from .conftest import quiet, run_folder, tiny_job

SETTINGS = {"temperature": 2.0, "t2_scaling": True, "kl_direction": "teacher_to_student"}


def multifl(tiny_training, folder, **kw):
    job = tiny_job(tiny_training, folder, "multifl", (0.25,), **kw)
    run_job(job, log=quiet)
    return job


def test_reads_multifl_result_instead_of_retraining(tiny_training, tmp_path):
    phase1 = multifl(tiny_training, tmp_path / "multifl")
    job = tiny_job(
        tiny_training,
        tmp_path / "mm",
        "modalitymirror",
        (0.25,),
        consumes={"multifl": tmp_path / "multifl"},
    )
    job = type(job)(**{**job.__dict__, "consumed_hashes": {"multifl": phase1.config_hash}})
    (mirror,) = run_job(job, log=quiet)
    assert set(mirror["rounds"]) == {"distill"}  # no MultiFL rounds were run again
    assert mirror["test"]["top1"] > 1.0 / len(mirror["classes"]) + 0.1
    # The teacher is MultiFL's audio-visual model selected on audio-visual dev accuracy.
    multifl_record = __import__("json").loads(
        (tmp_path / "multifl" / run_folder(0.25, 0) / "metrics.json").read_text()
    )
    assert mirror["test_by_model"]["av"] == multifl_record["test_by_model"]["av"]
    assert mirror["consumed"]["multifl"]["config_hash"] == phase1.config_hash
    # The paper's selection: among phase 2's rounds only, its start is not a candidate.
    assert mirror["dev_curve"]["distill"][0]["round"] == 5
    assert mirror["selected_round"]["distill"] > 0
    # Its budget includes phase 1's.
    assert (
        mirror["budget"]["total"]["client_trainings"] > mirror["budget"]["own"]["client_trainings"]
    )
    # A model.pt written before models carried a checksum is still read, to the same result.
    saved = tmp_path / "multifl" / run_folder(0.25, 0) / "model.pt"
    older = torch.load(saved, weights_only=True)
    torch.save({k: v for k, v in older.items() if k != "sha256"}, saved)
    (run,) = job.runs
    job = replace(job, runs=[replace(run, out=tmp_path / "mm2" / run_folder(0.25, 0))])
    (again,) = run_job(job, log=quiet)
    assert again["dev_curve"] == mirror["dev_curve"] and again["test"] == mirror["test"]


def test_missing_or_mismatched_phase1_is_a_clear_error(tiny_training, tmp_path):
    with pytest.raises(UserError, match="run multifl first"):
        run_job(
            tiny_job(
                tiny_training,
                tmp_path / "mm",
                "modalitymirror",
                (0.25,),
                consumes={"multifl": tmp_path / "none"},
            ),
            log=quiet,
        )
    other = multifl(tiny_training, tmp_path / "multifl", federated={"rounds": 2})
    job = tiny_job(
        tiny_training,
        tmp_path / "mm2",
        "modalitymirror",
        (0.25,),
        consumes={"multifl": tmp_path / "multifl"},
    )
    job = type(job)(**{**job.__dict__, "consumed_hashes": {"multifl": "0123456789ab"}})
    with pytest.raises(UserError, match="trained with other settings"):
        run_job(job, log=quiet)
    assert other.config_hash != "0123456789ab"


def test_distillation_loss_directions_and_temperature():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 3.0, 0.0]])
    p_s = torch.softmax(student / 2, dim=-1)
    p_t = torch.softmax(teacher / 2, dim=-1)
    forward = (p_t * (p_t / p_s).log()).sum()  # KL(p_M || p_A)
    reverse = (p_s * (p_s / p_t).log()).sum()  # KL(p_A || p_M)
    torch.testing.assert_close(distill_loss(student, teacher, SETTINGS), 4 * forward)
    torch.testing.assert_close(
        distill_loss(student, teacher, {**SETTINGS, "kl_direction": "student_to_teacher"}),
        4 * reverse,
    )
    torch.testing.assert_close(
        distill_loss(student, teacher, {**SETTINGS, "t2_scaling": False}), forward
    )
    assert distill_loss(teacher, teacher, SETTINGS).abs() < 1e-6


@pytest.mark.parametrize("change", [
    {"teacher": "trainable", "ce_weight": 0.5},
    {"audio_only_clients": "train"},
    {"student_init": "phase1_encoder"},
    {"phase1_state": "last"},
    {"kl_direction": "teacher_to_student"},
    {"phase2_rounds": 0.5},
])  # fmt: skip
def test_open_choices_change_the_run(tiny_training, tmp_path, change):
    multifl(tiny_training, tmp_path / "multifl")
    (default,) = run_job(
        tiny_job(
            tiny_training,
            tmp_path / "a",
            "modalitymirror",
            (0.25,),
            consumes={"multifl": tmp_path / "multifl"},
        ),
        log=quiet,
    )
    (other,) = run_job(tiny_job(tiny_training, tmp_path / "b", "modalitymirror", (0.25,), settings=change,
                                consumes={"multifl": tmp_path / "multifl"}), log=quiet)  # fmt: skip
    assert other["dev_curve"] != default["dev_curve"]
    if "audio_only_clients" in change:  # audio-only clients now take part: more client trainings
        assert (
            other["budget"]["own"]["client_trainings"]
            == default["budget"]["own"]["client_trainings"]
        )
        assert other["budget"]["own"]["local_steps"] != default["budget"]["own"]["local_steps"]


def test_the_fallback_makes_the_start_a_candidate_it_can_select(tiny_training, tmp_path):
    """start_is_candidate: phase 2's start (MultiFL's selected audio model) is evaluated as
    round 0; if no distilled round beats it on dev, ModalityMirror reports MultiFL's model."""
    import json

    multifl(tiny_training, tmp_path / "multifl")
    phase1 = json.loads((tmp_path / "multifl" / run_folder(0.25, 0) / "metrics.json").read_text())
    # A learning rate far too large: distillation only makes the student worse.
    job = tiny_job(tiny_training, tmp_path / "mm", "modalitymirror", (0.25,),
                   settings={"start_is_candidate": True}, federated={"client_lr": 30.0},
                   consumes={"multifl": tmp_path / "multifl"})  # fmt: skip
    (mirror,) = run_job(job, log=quiet)
    curve = mirror["dev_curve"]["distill"]
    assert curve[0]["round"] == 0
    assert curve[0]["dev_audio_top1"] > max(p["dev_audio_top1"] for p in curve[1:])
    assert mirror["selected_round"]["distill"] == 0
    assert mirror["test"]["top1"] == phase1["test"]["top1"]


def test_phase_budgets_are_shares_of_the_federated_rounds():
    """phase1_rounds / phase2_rounds are shares of federated.rounds, so a budget is right on a
    config of any round count; below 1, phase 1 is a shorter MultiFL run, not MultiFL's row."""
    from avfl.methods import get_method

    spec = get_method("modalitymirror")
    for rounds in (100, 200, 7):
        fed = {"rounds": rounds}
        assert spec.consumed_overrides({}, fed) == {}
        half = spec.consumed_overrides({"phase1_rounds": 0.5}, fed)
        assert half == {"multifl": {"rounds": max(1, round(rounds / 2))}}


def test_student_from_harmony_consumes_harmony(tiny_training, tmp_path):
    from avfl.methods import get_method

    spec = get_method("modalitymirror")
    assert spec.requires() == ("multifl",)
    assert spec.requires({"student_init": "harmony_audio"}) == ("multifl", "harmony")
    multifl(tiny_training, tmp_path / "multifl")
    run_job(tiny_job(tiny_training, tmp_path / "harmony", "harmony"), log=quiet)
    (record,) = run_job(tiny_job(tiny_training, tmp_path / "mm", "modalitymirror", (0.25,), settings={"student_init": "harmony_audio"},
                                 consumes={"multifl": tmp_path / "multifl", "harmony": tmp_path / "harmony"}), log=quiet)  # fmt: skip
    assert set(record["consumed"]) == {"multifl", "harmony"}
