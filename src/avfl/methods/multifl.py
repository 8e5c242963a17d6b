"""MultiFL (Zhao et al., IoTDI 2022), the modality-aware FL of the ModalityMirror paper's
Algorithm 1.

All clients train every round: an audio-only client trains the audio model (encoder and
head), a multimodal client the audio-visual model (both encoders and the fusion head). The
server averages each parameter over the clients that trained it: the audio encoder over
everyone, the visual encoder and fusion head over multimodal clients, the audio head over
the clients that trained it.

ModalityMirror's phase 1 is exactly this run: its saved result is reused, not retrained.
The audio model is selected by its dev accuracy, the audio-visual model (ModalityMirror's
teacher) by its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from avfl.methods.spec import method, setting

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext

HEAD_WEIGHT = setting(
    "multimodal_audio_head_weight", 0.0,
    "Section 3.2.2: multimodal nodes train the multi-modal model and audio-only nodes the "
    "audio model, so the audio head is trained by audio-only clients (>0 adds the head's "
    "cross-entropy to multimodal clients' loss)",
    type="number", minimum=0,
)  # fmt: skip


def modality_aware_phase(ctx: RunContext, head_weight: float, wrap=None, server=None):
    """Algorithm 1's phase: audio-only clients train audio, multimodal clients audio-visual.

    `wrap(task)` changes the local objective (FedProx), `server` the strategy (FedAdam):
    the baselines that share this phase with MultiFL.
    """
    from avfl.fl.tasks import AudioTask, AVTask
    from avfl.fl.types import Phase

    wrap = wrap or (lambda task: task)
    audio_only = ctx.data.audio_only
    av_task, audio_task = wrap(AVTask(audio_head_weight=head_weight)), wrap(AudioTask())
    # One phase name for the three methods: client sampling and batch orders are drawn from
    # (seed, phase, round), so they differ only in what the method changes.
    return Phase(
        "modality_aware", range(len(ctx.data.clients)), lambda c: audio_task if c in audio_only else av_task,
        ctx.federated["rounds"], ctx.federated["clients_per_round"], "audio",
        server=server, also_select=("av",),
    )  # fmt: skip


def modality_aware_result(ctx: RunContext, name: str, result) -> MethodResult:
    from avfl.methods.context import MethodResult

    selected_av = result.also_selected["av"]
    return MethodResult(
        ctx.model,
        {name: result},
        {"audio": result.state, "av": selected_av},
        saved={"selected": result.state, "selected_av": selected_av, "last": result.last_state},
    )


@method(
    name="multifl",
    display="MultiFL",
    colour="#DD8452",
    cite="Zhao et al., Multimodal federated learning on IoT data, IoTDI 2022",
    settings=[HEAD_WEIGHT],
)
def multifl(ctx: RunContext) -> MethodResult:
    """Modality-aware FedAvg over all clients; the shared audio model is reported."""
    phase = modality_aware_phase(ctx, ctx.method_settings["multimodal_audio_head_weight"])
    return modality_aware_result(ctx, "multifl", ctx.run(phase))
