"""ModalityMirror: phase 1 is MultiFL's saved result; phase 2 distils into the audio student."""

import pytest
import torch

from avfl.methods.modalitymirror import distill_loss
from avfl.train import run

from .conftest import tiny_spec

SETTINGS = {"temperature": 2.0, "t2_scaling": True, "kl_direction": "teacher_to_student"}


def test_reads_multifl_result_instead_of_retraining(tiny_training, tmp_path):
    multifl = run(
        tiny_spec(tiny_training, tmp_path / "multifl", "multifl", rate=0.25), log=lambda m: None
    )
    mirror = run(
        tiny_spec(
            tiny_training, tmp_path / "mm", "modalitymirror", rate=0.25, phase1=tmp_path / "multifl"
        ),
        log=lambda m: None,
    )
    assert set(mirror["rounds"]) == {"distill"}  # no MultiFL rounds were run again
    assert mirror["test"]["top1"] > 1.0 / len(mirror["classes"]) + 0.1
    # The teacher is MultiFL's audio-visual model: its test accuracy is MultiFL's.
    assert mirror["test_av"] == multifl["test_av"]
    assert mirror["shared_hash"] == multifl["shared_hash"]


def test_missing_or_mismatched_phase1_is_a_clear_error(tiny_training, tmp_path):
    with pytest.raises(FileNotFoundError, match="run that method first"):
        run(
            tiny_spec(
                tiny_training,
                tmp_path / "mm",
                "modalitymirror",
                rate=0.25,
                phase1=tmp_path / "nothing",
            ),
            log=lambda m: None,
        )
    run(
        tiny_spec(
            tiny_training, tmp_path / "multifl", "multifl", rate=0.5, federated={"rounds": 2}
        ),
        log=lambda m: None,
    )
    with pytest.raises(ValueError, match="trained with other settings"):
        run(
            tiny_spec(
                tiny_training,
                tmp_path / "mm2",
                "modalitymirror",
                rate=0.25,
                phase1=tmp_path / "multifl",
            ),
            log=lambda m: None,
        )


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


def test_trainable_teacher_and_label_term(tiny_training, tmp_path):
    run(tiny_spec(tiny_training, tmp_path / "multifl", "multifl", rate=0.25), log=lambda m: None)
    frozen = run(
        tiny_spec(
            tiny_training, tmp_path / "a", "modalitymirror", rate=0.25, phase1=tmp_path / "multifl"
        ),
        log=lambda m: None,
    )
    trainable = run(
        tiny_spec(tiny_training, tmp_path / "b", "modalitymirror", rate=0.25, phase1=tmp_path / "multifl",
                  method={"teacher": "trainable", "ce_weight": 0.5}),
        log=lambda m: None,
    )  # fmt: skip
    assert trainable["test"] != frozen["test"] or trainable["dev_curve"] != frozen["dev_curve"]
    saved = torch.load(tmp_path / "b/model.pt", weights_only=True)
    assert any(k.startswith("teacher.") for k in saved["last"])
