"""ModalityMirror (the paper's Section 3.2, Algorithms 1 and 2).

Phase 1 is modality-aware FL, i.e. MultiFL: its saved result for the same (dataset, fold,
rate, seed) is loaded, never retrained. Phase 2 is federated distillation on the
multimodal clients: the phase-1 audio-visual model is the teacher, an audio student
initialised from the phase-1 audio model learns from it locally, and the server averages
the student. The audio model reported is the student.

The paper leaves these open; each is a config key (defaults, and why):
- `kl_direction`: `teacher_to_student` (default) minimises KL(p_M || p_A), standard
  distillation (Hinton et al.), which is what `F.kl_div(log p_A, p_M)` computes, the usual
  way of coding the "KL(p_A, p_M)" that the paper writes; `student_to_teacher` minimises
  the literal KL(p_A || p_M) (mode-seeking).
- `temperature` T (default 2.0) softens both distributions, p ∝ exp(log p / T); with
  `t2_scaling` (default true) the KL term is multiplied by T^2 so its gradients keep their
  scale as T changes (Hinton et al.).
- `kd_weight` (1.0) and `ce_weight` (default 0.0: the paper's local loss is the KL term
  alone) weigh the distillation and label cross-entropy terms.
- `teacher`: `frozen` (default; the paper distils "from the audio-visual model trained by
  FL") or `trainable` (the teacher keeps training with its own cross-entropy and is
  averaged with the student).
- `phase1_state`: `last` (default; phase 2 continues from where phase 1 ended) or
  `selected` (phase 1's best-dev round).
- `rounds`, `clients_per_round`: phase 2's; null takes the `federated` values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from avfl.fl.engine import Phase
from avfl.methods.base import MethodResult, RunContext
from avfl.models.heads import AUDIO_MODEL, AVModel


class MirrorModel(AVModel):
    """The student (the AVModel's audio path) with the teacher as a sub-model (group `teacher`)."""

    def __init__(self, student: AVModel, teacher: AVModel):
        torch.nn.Module.__init__(self)
        for name, module in student.named_children():
            self.add_module(name, module)
        self.teacher = teacher


def sample_distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, settings: Mapping[str, Any]
) -> torch.Tensor:
    """Per-sample temperature-scaled KL between teacher (p_M) and student (p_A), in the configured direction."""
    t = settings["temperature"]
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    if settings["kl_direction"] == "teacher_to_student":  # KL(p_M || p_A)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(dim=-1)
    else:  # KL(p_A || p_M)
        kl = F.kl_div(log_p_teacher, log_p_student, log_target=True, reduction="none").sum(dim=-1)
    return kl * (t * t if settings["t2_scaling"] else 1.0)


def distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, settings: Mapping[str, Any]
) -> torch.Tensor:
    """Batch mean of `sample_distill_loss` (PyTorch's "batchmean" KL)."""
    return sample_distill_loss(student_logits, teacher_logits, settings).mean()


@dataclass(frozen=True)
class DistillTask:
    settings: Mapping[str, Any]
    name: str = "distill"

    @property
    def groups(self) -> tuple[str, ...]:
        return AUDIO_MODEL + (("teacher",) if self.settings["teacher"] == "trainable" else ())

    def sample_loss(
        self, model: MirrorModel, audio: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        trainable_teacher = self.settings["teacher"] == "trainable"
        model.teacher.train(trainable_teacher)
        teacher_logits = model.teacher.av_logits(audio, visual)
        student_logits = model.audio_logits(audio)
        loss = self.settings["kd_weight"] * sample_distill_loss(
            student_logits, teacher_logits.detach(), self.settings
        )
        if self.settings["ce_weight"] > 0:
            loss = loss + self.settings["ce_weight"] * F.cross_entropy(
                student_logits, labels, reduction="none"
            )
        if trainable_teacher:
            loss = loss + F.cross_entropy(teacher_logits, labels, reduction="none")
        return loss

    def loss(self, model, audio, visual, labels) -> torch.Tensor:
        return self.sample_loss(model, audio, visual, labels).mean()


@dataclass
class ModalityMirror:
    name: str = "modalitymirror"
    uses_rate: bool = True
    requires: str | None = "multifl"

    def run(self, ctx: RunContext) -> MethodResult:
        if ctx.phase1 is None:
            raise ValueError(
                "ModalityMirror needs MultiFL's saved result for the same fold, rate and seed"
            )
        phase1 = ctx.phase1[ctx.settings["phase1_state"]]
        multimodal = ctx.data.multimodal
        if not multimodal:
            raise ValueError(
                "ModalityMirror distils on multimodal clients: the video-missing rate must be below 1"
            )
        model = MirrorModel(ctx.model, copy.deepcopy(ctx.model))
        model.load_state_dict({**phase1, **{f"teacher.{k}": v for k, v in phase1.items()}})
        start = {k: v.clone() for k, v in model.state_dict().items()}
        fed, s = ctx.federated, ctx.settings
        phase = Phase(
            "modalitymirror_distill",
            multimodal,
            lambda c: DistillTask(s),
            s["rounds"] or fed["rounds"],
            s["clients_per_round"] or fed["clients_per_round"],
            "audio",
        )
        result = ctx.run(phase, model=model, initial_state=start)
        student = {k: v for k, v in result.state.items() if not k.startswith("teacher.")}
        return MethodResult(student, {"distill": result}, ctx.model, {"av_state": phase1})
