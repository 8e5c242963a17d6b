"""Harmony (Ouyang et al., MobiSys 2023), as the paper uses it as a baseline (Section 4.3).

Stage 1, modality-wise FL over all clients: each client trains a unimodal model for each
modality it has (every client the audio model; multimodal clients also the visual model).
Stage 2, federated fusion on the multimodal clients, with both encoders initialised from
stage 1 and fine-tuned together with the fusion head.

The audio model reported is the stage-1 audio model: all clients have audio, so it does
not depend on the missing rate and is computed once per (dataset, fold, seed) for every
rate. Run with a rate, the method also runs the visual part of stage 1 and stage 2 for
that rate and reports the fused model's accuracy beside the audio metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from avfl.fl.engine import Phase
from avfl.fl.tasks import AudioTask, AVTask, VisualTask
from avfl.methods.base import MethodResult, RunContext
from avfl.models.heads import AUDIO_MODEL, VISUAL_MODEL, group_of


@dataclass
class Harmony:
    name: str = "harmony"
    uses_rate: bool = False
    requires: str | None = None

    def run(self, ctx: RunContext) -> MethodResult:
        fed = ctx.federated
        clients = range(len(ctx.data.clients))
        phases = {
            "stage1_audio": ctx.run(
                Phase(
                    "harmony_audio",
                    clients,
                    lambda c: AudioTask(),
                    fed["rounds"],
                    fed["clients_per_round"],
                    "audio",
                )
            )
        }
        extra = {}
        multimodal = ctx.data.multimodal
        if ctx.rate is not None and ctx.settings["fusion_stage"] and multimodal:
            phases["stage1_visual"] = ctx.run(
                Phase(
                    "harmony_visual",
                    multimodal,
                    lambda c: VisualTask(),
                    fed["rounds"],
                    fed["clients_per_round"],
                    "visual",
                )
            )
            audio_state, visual_state = phases["stage1_audio"].state, phases["stage1_visual"].state
            start = dict(ctx.initial_state)
            start.update({k: v for k, v in audio_state.items() if group_of(k) in AUDIO_MODEL})
            start.update({k: v for k, v in visual_state.items() if group_of(k) in VISUAL_MODEL})
            phases["stage2_fusion"] = ctx.run(
                Phase(
                    "harmony_fusion",
                    multimodal,
                    lambda c: AVTask(),
                    ctx.settings["fusion_rounds"] or fed["rounds"],
                    fed["clients_per_round"],
                    "av",
                ),
                initial_state=start,
            )
            extra["av_state"] = phases["stage2_fusion"].state
        return MethodResult(phases["stage1_audio"].state, phases, ctx.model, extra)
