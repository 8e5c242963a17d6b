"""ModalityMirror (Feng, Zhang, Avestimehr, Narayanan; the paper's Section 3.2, Algorithms 1-2).

Phase 1 is modality-aware FL, i.e. MultiFL: its saved result for the same (dataset, fold,
rate, seed) is loaded, never retrained. Phase 2 is federated distillation on the multimodal
("data-rich") clients: the phase-1 audio-visual model is the teacher, an audio student
learns from it locally, and the server averages the student. The audio model reported is
the student, selected among phase 2's rounds (`start_is_candidate` lets phase 2's start, i.e.
MultiFL's model, be selected too). The phases' rounds are shares of `federated.rounds`, so a
budget is right on every config: 1 and 1 (the default) give each phase the federated rounds,
0.5 and 0.5 give the whole method the rounds of one run.

The paper leaves most of phase 2 open; each choice is a setting, and each default follows
the paper's text where it speaks and standard practice where it does not (the reasons are
in the settings below; `config/ablations.yaml` runs the alternatives).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avfl.errors import UserError
from avfl.methods.spec import method, rounds_of, setting

if TYPE_CHECKING:
    import torch

    from avfl.methods.context import MethodResult, RunContext


def sample_distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, settings: Mapping[str, Any]
) -> torch.Tensor:
    """Per-sample temperature-scaled KL between teacher (p_M) and student (p_A), in the configured direction."""
    t = settings["temperature"]
    log_p_student = (student_logits / t).log_softmax(dim=-1)
    log_p_teacher = (teacher_logits / t).log_softmax(dim=-1)
    if settings["kl_direction"] == "teacher_to_student":  # KL(p_M || p_A)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
    else:  # KL(p_A || p_M)
        kl = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(dim=-1)
    return kl * (t * t if settings["t2_scaling"] else 1.0)


def distill_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, settings: Mapping[str, Any]
) -> torch.Tensor:
    """Batch mean of `sample_distill_loss` (PyTorch's "batchmean" KL)."""
    return sample_distill_loss(student_logits, teacher_logits, settings).mean()


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -logits.log_softmax(dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class DistillTask:
    """A multimodal client's phase-2 objective: distil the teacher into the audio student."""

    settings: tuple[tuple[str, Any], ...]  # the method's settings, frozen (tasks compare by value)
    name: str = "distill"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.settings)

    @property
    def groups(self) -> tuple[str, ...]:
        from avfl.models.heads import AUDIO_MODEL

        trainable = self.options["teacher"] == "trainable"
        return AUDIO_MODEL + (("teacher",) if trainable else ())

    @property
    def reads(self) -> tuple[str, ...]:
        return ("audio_input", "teacher", *self.groups)

    def sample_loss(self, model, audio, visual, labels) -> torch.Tensor:
        s = self.options
        trainable_teacher = s["teacher"] == "trainable"
        model.teacher.train(trainable_teacher)
        teacher_logits = model.teacher.av_logits(audio, visual)
        student_logits = model.audio_logits(audio)
        loss = s["kd_weight"] * sample_distill_loss(student_logits, teacher_logits.detach(), s)
        if s["ce_weight"] > 0:
            loss = loss + s["ce_weight"] * _cross_entropy(student_logits, labels)
        if trainable_teacher:
            loss = loss + _cross_entropy(teacher_logits, labels)
        return loss

    def stacked(self, rows, batch) -> torch.Tensor:
        """`sample_loss` with its gradients written out (fl/stacked.py)."""
        from avfl.fl.stacked import weighted_cross_entropy

        s = self.options
        trainable_teacher = s["teacher"] == "trainable"
        rows.model.teacher.train(trainable_teacher)
        ta = rows.encode("audio", batch.audio, owner="teacher.")
        tv = rows.encode("visual", batch.visual, owner="teacher.")
        teacher_logits, fused = rows.fuse(ta.out, tv.out, owner="teacher.")
        student = rows.encode("audio", batch.audio)
        student_logits = rows.linear("audio_head", student.out)
        loss, dstudent = weighted_distillation(
            student_logits, teacher_logits, s, batch.weight * s["kd_weight"]
        )
        if s["ce_weight"] > 0:
            ce, dce = weighted_cross_entropy(
                student_logits, batch.labels, batch.weight * s["ce_weight"]
            )
            loss, dstudent = loss + ce, dstudent + dce
        if trainable_teacher:
            ce, dteacher = weighted_cross_entropy(teacher_logits, batch.labels, batch.weight)
            loss = loss + ce
            da, dv = rows.fuse_backward(fused, dteacher)
            rows.encode_backward(ta, da)
            rows.encode_backward(tv, dv)
        rows.encode_backward(student, rows.linear_backward("audio_head", student.out, dstudent))
        return loss


def weighted_distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    settings: Mapping[str, Any],
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: sum over samples of weight * `sample_distill_loss`, and its gradient w.r.t. the
    student's logits (the teacher's are a constant of the student's objective)."""
    t = settings["temperature"]
    scale = t * t if settings["t2_scaling"] else 1.0
    log_q = (student_logits / t).log_softmax(dim=-1)  # the student, p_A
    log_p = (teacher_logits / t).log_softmax(dim=-1)  # the teacher, p_M
    if settings["kl_direction"] == "teacher_to_student":  # KL(p_M || p_A): d/ds = (q - p) / T
        p = log_p.exp()
        kl = (p * (log_p - log_q)).sum(dim=-1)
        grad = log_q.exp() - p
    else:  # KL(p_A || p_M): d/ds_j = q_j (log q_j - log p_j - KL) / T
        q = log_q.exp()
        ratio = log_q - log_p
        kl = (q * ratio).sum(dim=-1)
        grad = q * (ratio - kl.unsqueeze(-1))
    w = weight * scale
    return (kl * w).sum(dim=-1), grad.mul_((w / t).unsqueeze(-1))


def _consumes(settings: Mapping[str, Any]) -> tuple[str, ...]:
    return ("multifl",) + (("harmony",) if settings["student_init"] == "harmony_audio" else ())


def _phase1_federated(
    settings: Mapping[str, Any], federated: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Phase 1 below the full budget: a MultiFL run of that many rounds, not MultiFL's row."""
    if settings["phase1_rounds"] == 1.0:
        return {}
    return {"multifl": {"rounds": rounds_of(settings["phase1_rounds"], federated["rounds"])}}


@method(
    name="modalitymirror",
    display="ModalityMirror",
    colour="#C44E52",
    consumes=_consumes,
    consumed_federated=_phase1_federated,
    cite="Feng, Zhang, Avestimehr, Narayanan, ModalityMirror (Interspeech 2024 workshop / arXiv)",
    settings=[
        setting(
            "kl_direction", "student_to_teacher",
            "the paper's loss (Section 3.2.3) is KL(p_A || p_M), p_A the student's softened "
            "distribution and p_M the teacher's; teacher_to_student is standard distillation "
            "(Hinton et al., 2015), KL(p_M || p_A), which F.kl_div(log p_A, p_M) computes",
            enum=["student_to_teacher", "teacher_to_student"],
        ),
        setting("temperature", 2.0, "the paper introduces T without a value; 2 is a common choice (PyTorch's distillation tutorial), the ablation covers 1 and 4", type="number", exclusiveMinimum=0),
        setting("t2_scaling", True, "Hinton et al. scale the softened KL by T^2 so its gradients keep their size as T changes", type="boolean"),
        setting("kd_weight", 1.0, "the distillation term's weight", type="number", minimum=0),
        setting("ce_weight", 0.0, "the paper's local loss is the KL term alone (Section 3.2.3); >0 adds the labels' cross-entropy", type="number", minimum=0),
        setting("teacher", "frozen", "the student distils from the audio-visual model trained in phase 1 (Section 3.2.3); trainable keeps training it with its labels and averages it too", enum=["frozen", "trainable"]),
        setting(
            "phase1_state", "selected",
            "phase 1 is MultiFL, whose result is its dev-selected model (standard model selection): "
            "the student starts from the audio model selected on audio dev accuracy and the teacher is "
            "the audio-visual model selected on audio-visual dev accuracy; last takes both from MultiFL's last round",
            enum=["selected", "last"],
        ),
        setting("student_init", "phase1_audio", "the student is the audio model of phase 1, which all clients trained (Section 3.2.1); phase1_encoder resets its head, harmony_audio starts from Harmony's stage-1 audio model", enum=["phase1_audio", "phase1_encoder", "harmony_audio"]),
        setting("audio_only_clients", "idle", "phase 2 runs on the multimodal clients only (Section 3.2.3, Algorithm 2); train lets audio-only clients train the student with cross-entropy and averages them in", enum=["idle", "train"]),
        setting(
            "phase1_rounds", 1.0,
            "phase 1's rounds as a share of federated.rounds: 1 reads MultiFL's own run (its Table 1 row), "
            "as the paper's phase 1 is MultiFL (Sections 3.2.2 and 5.1); below 1 trains a shorter MultiFL for it, "
            "so that phase1_rounds 0.5 with phase2_rounds 0.5 gives ModalityMirror the budget of one 200-round run",
            type="number", exclusiveMinimum=0, maximum=1,
        ),
        setting(
            "phase2_rounds", 1.0,
            "phase 2's rounds as a share of federated.rounds: the paper's \"uniform setting of 200 communication "
            "rounds\" (Section 5.1) read per stage, as its MultiFL row is its phase 1; the equal_budget variant "
            "reads it per method (0.5 and 0.5)",
            type="number", exclusiveMinimum=0, maximum=10,
        ),
        setting(
            "start_is_candidate", False,
            "the paper selects the student among phase 2's models and describes no fallback to phase 1's "
            "(Section 3.2.3); true also lets phase 2's start (MultiFL's selected audio model) be selected, so "
            "ModalityMirror can never be worse than MultiFL on dev",
            type="boolean",
        ),
        setting("clients_per_round", None, "phase 2's clients per round; null: the federated value", type=["integer", "null"], minimum=1),
    ],
)  # fmt: skip
def modalitymirror(ctx: RunContext) -> MethodResult:
    """Federated distillation of MultiFL's audio-visual model into the audio student."""
    import copy

    from avfl.fl.tasks import AudioTask
    from avfl.fl.types import Phase
    from avfl.methods.context import MethodResult
    from avfl.models.heads import WithTeacher, group_of

    s = ctx.method_settings
    multimodal = ctx.data.multimodal
    if not multimodal:
        raise UserError(
            "ModalityMirror distils on multimodal clients: the video-missing rate must be below 1"
        )
    phase1 = ctx.consumed_states("multifl")
    if s["phase1_state"] == "selected":
        student, teacher = phase1["selected"], phase1["selected_av"]
    else:
        student = teacher = phase1["last"]
    student = dict(student)
    if s["student_init"] == "phase1_encoder":
        student.update({k: v for k, v in ctx.initial_state.items() if group_of(k) == "audio_head"})
    elif s["student_init"] == "harmony_audio":
        harmony = ctx.consumed_states("harmony")["stage1_audio"]
        student.update(
            {
                k: v
                for k, v in harmony.items()
                if group_of(k) in ("audio_encoder", "audio_head", "audio_backbone")
            }
        )
    model = WithTeacher(ctx.model, copy.deepcopy(ctx.model))
    model.load_state_dict({**student, **{f"teacher.{k}": v for k, v in teacher.items()}})
    start = {k: v.clone() for k, v in model.state_dict().items()}
    distill = DistillTask(tuple(sorted(s.items())))
    audio_only = ctx.data.audio_only
    train_audio_only = s["audio_only_clients"] == "train"
    eligible = range(len(ctx.data.clients)) if train_audio_only else multimodal
    audio_task = AudioTask()
    phase = Phase(
        "modalitymirror_distill", eligible,
        lambda c: audio_task if c in audio_only else distill,
        rounds_of(s["phase2_rounds"], ctx.federated["rounds"]),
        s["clients_per_round"] or ctx.federated["clients_per_round"],
        "audio", start_is_candidate=s["start_is_candidate"],
    )  # fmt: skip
    result = ctx.run(phase, model=model, initial_state=start)
    student_state = {k: v for k, v in result.state.items() if not k.startswith("teacher.")}
    return MethodResult(ctx.model, {"distill": result}, {"audio": student_state, "av": teacher})
