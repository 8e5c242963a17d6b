"""MultiFL (Zhao et al., 2022), the modality-aware FL of the paper's Algorithm 1.

All clients train every round: an audio-only client trains the audio model (encoder and
head), a multimodal client the audio-visual model (both encoders and the fusion head).
The server averages each parameter over the clients that trained it: the audio encoder
over everyone, the visual encoder and fusion head over multimodal clients, the audio head
over the clients that trained it.

Open choice `multimodal_audio_head_weight`: 0 (default) leaves the audio head to the
audio-only clients, which is how the audio model's quality comes to grow with the
missing rate in the paper's Table 1; a positive weight adds the audio head's
cross-entropy to multimodal clients' loss (the head is then averaged over them too).

ModalityMirror's phase 1 is exactly this run: its saved result is reused, not retrained.
"""

from __future__ import annotations

from dataclasses import dataclass

from avfl.fl.engine import Phase
from avfl.fl.tasks import AudioTask, AVTask
from avfl.methods.base import MethodResult, RunContext


@dataclass
class MultiFL:
    name: str = "multifl"
    uses_rate: bool = True
    requires: str | None = None

    def run(self, ctx: RunContext) -> MethodResult:
        audio_only = ctx.data.audio_only
        av_task = AVTask(audio_head_weight=ctx.settings["multimodal_audio_head_weight"])
        audio_task = AudioTask()
        phase = Phase(
            "multifl",
            range(len(ctx.data.clients)),
            lambda c: audio_task if c in audio_only else av_task,
            ctx.federated["rounds"],
            ctx.federated["clients_per_round"],
            "audio",
        )
        result = ctx.run(phase)
        return MethodResult(
            result.state, {"multifl": result}, ctx.model, {"av_state": result.last_state}
        )
