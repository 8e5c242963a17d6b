"""UniFL (Xiong et al., Neurocomputing 2022; the ModalityMirror paper's Section 4.3): clients
with the same modalities federate among themselves, and the two groups never share anything.

Audio-only clients train the audio model together; multimodal clients train the audio-visual
model together. The audio model reported is the audio-only group's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from avfl.errors import UserError
from avfl.methods.spec import method, setting

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext


@method(
    name="unifl",
    display="UniFL",
    colour="#4C72B0",
    cite="Xiong et al., A unified framework for multi-modal federated learning, Neurocomputing 2022",
    settings=[
        setting(
            "sampling", "total",
            "Section 5.1 gives every experiment one setting, 10 clients sampled per round: each "
            "group trains its share of them (per_group: each group samples clients_per_round of "
            "its own, twice the client updates)",
            enum=["total", "per_group"],
        ),
        setting(
            "train_multimodal_group", True,
            "the multimodal group's audio-visual model is trained and tested beside the audio "
            "model; it does not change the reported audio model",
            type="boolean",
        ),
    ],
)  # fmt: skip
def unifl(ctx: RunContext) -> MethodResult:
    """Each modality group is its own federation; the audio-only group's audio model is reported."""
    from avfl.fl.tasks import AudioTask, AVTask
    from avfl.fl.types import Phase
    from avfl.methods.context import MethodResult

    data, fed = ctx.data, ctx.federated
    audio_only, multimodal = sorted(data.audio_only), data.multimodal
    if not audio_only:
        raise UserError(
            "UniFL reports the audio-only group's model: it needs a video-missing rate above 0"
        )
    n = len(data.clients)

    def per_round(group_size: int) -> int:
        if ctx.method_settings["sampling"] == "per_group":
            return fed["clients_per_round"]
        return max(1, math.floor(fed["clients_per_round"] * group_size / n + 0.5))

    phases = {
        "audio_group": ctx.run(
            Phase("unifl_audio", audio_only, lambda c: AudioTask(), fed["rounds"],
                  per_round(len(audio_only)), "audio")
        )
    }  # fmt: skip
    evaluate = {"audio": phases["audio_group"].state}
    if multimodal and ctx.method_settings["train_multimodal_group"]:
        phases["multimodal_group"] = ctx.run(
            Phase("unifl_av", multimodal, lambda c: AVTask(), fed["rounds"],
                  per_round(len(multimodal)), "av")
        )  # fmt: skip
        evaluate["av"] = phases["multimodal_group"].state
    return MethodResult(ctx.model, phases, evaluate)
