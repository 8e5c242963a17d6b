"""Harmony (Ouyang et al., MobiSys 2023), as the ModalityMirror paper uses it (Section 4.3).

Stage 1, modality-wise FL over all clients: each client trains a unimodal model for each
modality it has (every client the audio model; multimodal clients also the visual model).
Stage 2, federated fusion on the multimodal clients, with both encoders initialised from
stage 1 and fine-tuned together with the fusion head.

The audio model reported is the stage-1 audio model: all clients have audio, so it does not
depend on the missing rate and one run per (dataset, fold, seed) serves every rate. Run
with a rate (outside the DAG, or by a method that needs it), the method also runs the visual
part of stage 1 and stage 2 for that rate and reports the fused model beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avfl.methods.spec import method, rounds_of, setting

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext


@method(
    name="harmony",
    display="Harmony",
    colour="#55A868",
    uses_rate=False,
    cite="Ouyang et al., Harmony: heterogeneous multimodal federated learning through disentangled model training, MobiSys 2023",
    settings=[
        setting("fusion_stage", True, "Harmony's second stage; runs only when a rate is given (the reported audio model is stage 1's)", type="boolean"),
        setting("fusion_rounds", 1.0, "stage 2's rounds as a share of federated.rounds: 1 gives it the federated rounds, as every stage of the paper's uniform setting", type="number", exclusiveMinimum=0, maximum=10),
        setting("fusion_start_is_candidate", False, "the fusion stage is selected among its own rounds, as ModalityMirror's phase 2 is (its start_is_candidate): neither paper describes a fallback to the stage's start", type="boolean"),
    ],
)  # fmt: skip
def harmony(ctx: RunContext) -> MethodResult:
    """Stage-1 modality-wise FL on every client; the stage-1 audio model is reported."""
    from avfl.fl.tasks import AudioTask, AVTask, VisualTask
    from avfl.fl.types import Phase
    from avfl.methods.context import MethodResult
    from avfl.models.heads import AUDIO_MODEL, VISUAL_MODEL, group_of

    fed = ctx.federated
    clients = range(len(ctx.data.clients))
    audio = ctx.run(Phase("harmony_audio", clients, lambda c: AudioTask(), fed["rounds"],
                          fed["clients_per_round"], "audio"))  # fmt: skip
    phases = {"stage1_audio": audio}
    evaluate = {"audio": audio.state}
    multimodal = ctx.data.multimodal
    if ctx.rate is not None and ctx.method_settings["fusion_stage"] and multimodal:
        visual = ctx.run(Phase("harmony_visual", multimodal, lambda c: VisualTask(), fed["rounds"],
                               fed["clients_per_round"], "visual"))  # fmt: skip
        start = dict(ctx.initial_state)
        start.update({k: v for k, v in audio.state.items() if group_of(k) in AUDIO_MODEL})
        start.update({k: v for k, v in visual.state.items() if group_of(k) in VISUAL_MODEL})
        fusion = ctx.run(
            Phase("harmony_fusion", multimodal, lambda c: AVTask(),
                  rounds_of(ctx.method_settings["fusion_rounds"], fed["rounds"]), fed["clients_per_round"],
                  "av", start_is_candidate=ctx.method_settings["fusion_start_is_candidate"]),
            initial_state=start,
        )  # fmt: skip
        phases |= {"stage1_visual": visual, "stage2_fusion": fusion}
        evaluate["av"] = fusion.state
    return MethodResult(ctx.model, phases, evaluate, saved={"stage1_audio": audio.state})
