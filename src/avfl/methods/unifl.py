"""UniFL (Xiong et al., 2022; the paper's Section 4.3): clients with the same modalities
federate among themselves and the groups never share anything.

Audio-only clients train the audio model together; multimodal clients train the
audio-visual model together. The audio model reported is the audio-only group's.

Open choice `sampling`: `per_group` (default) runs each group as its own federation that
samples `clients_per_round` of its members each round, as separate systems would;
`total` samples in each group its expected share of `clients_per_round` clients drawn
from everyone (at least one), so a round costs the same as in the other methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from avfl.fl.engine import Phase
from avfl.fl.tasks import AudioTask, AVTask
from avfl.methods.base import MethodResult, RunContext


@dataclass
class UniFL:
    name: str = "unifl"
    uses_rate: bool = True
    requires: str | None = None

    def run(self, ctx: RunContext) -> MethodResult:
        data, fed = ctx.data, ctx.federated
        audio_only, multimodal = sorted(data.audio_only), data.multimodal
        if not audio_only:
            raise ValueError(
                "UniFL reports the audio-only group's model: it needs a video-missing rate above 0"
            )
        n = len(data.clients)

        def per_round(group_size: int) -> int:
            if ctx.settings["sampling"] == "per_group":
                return fed["clients_per_round"]
            return max(1, math.floor(fed["clients_per_round"] * group_size / n + 0.5))

        phases = {}
        phases["audio_group"] = ctx.run(
            Phase(
                "unifl_audio",
                audio_only,
                lambda c: AudioTask(),
                fed["rounds"],
                per_round(len(audio_only)),
                "audio",
            )
        )
        extra = {}
        if multimodal and ctx.settings["train_multimodal_group"]:
            phases["multimodal_group"] = ctx.run(
                Phase(
                    "unifl_av",
                    multimodal,
                    lambda c: AVTask(),
                    fed["rounds"],
                    per_round(len(multimodal)),
                    "av",
                )
            )
            extra["av_state"] = phases["multimodal_group"].state
        return MethodResult(phases["audio_group"].state, phases, ctx.model, extra)
