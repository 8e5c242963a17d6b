"""FSSUAVL (Rehman et al.): federated self-supervised pre-training of one vision backbone on
the clients' unpaired audio and images, then a linear probe of the audio head.

Phase 1 (`simclr`) is federated SimCLR over every training client, FedAvg weighted by the
clients' clip counts: a multimodal client trains on two views of each clip's audio and two of
its frame, an audio-only client on audio views only, all through one backbone (fl/contrastive.py,
models/ssl.py, models/views.py). No dev metric exists for it: its last round is kept. Phase 2
(`probe`) trains the audio linear probe on the frozen backbone's features, federated over
every client with the pipeline's `federated` block, selected on dev: the Table 1 and Figure 3
model. A logistic-regression probe on the pooled training clips (the paper's own, central) is
recorded beside it as `probe_central`.

FASSL (avfl/methods/fassl.py), the single-modality baseline, is this run with every client
audio-only; at rate 1 the two are the same run, bit for bit. The random-init probe
(avfl/methods/ssl_random_probe.py) is phase 2 on the untrained backbone.

The paper publishes no code. Its open points are settings here, each with its reason; those
fixed in the code: the loss is SimCLR's symmetric NT-Xent without the self term; a modality's two views go through one pass (one set of BatchNorm batch
statistics) and a step minimises the sum of the modalities' losses; spectrograms are
replicated to 3 channels; the BatchNorm is shared by both modalities; the projection head is
linear; the learning rate is constant; evaluation takes the centre 2 s of a clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avfl.methods.spec import method, setting

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext

SSL_SETTINGS = [
    setting("backbone", "small_cnn", "a small CNN (3-16-32-64-128, BatchNorm) serves a CPU; resnet18 is FSSUAVL's R-18, for a GPU", enum=["small_cnn", "resnet18"]),
    setting("image_size", 64, "the side of every view: FSSUAVL's images are 128x128; 64 keeps the embedded data's grid to hours of a CPU", type="integer", minimum=16),
    setting("audio_window_s", 2.0, "FSSUAVL 3.4: a random 2 s crop of the clip (10 ms frames)", type="number", exclusiveMinimum=0),
    setting("temperature", 0.5, "FSSUAVL 3.4: tau = 0.5", type="number", exclusiveMinimum=0),
    setting("pretrain_rounds", 100, "FSSUAVL 3.4: 100 rounds", type="integer", minimum=1),
    setting("pretrain_local_epochs", 5, "FSSUAVL 3.4: 5 local epochs (its Table 7 also trains 1)", type="integer", minimum=1),
    setting("pretrain_lr", 0.03, "FSSUAVL 3.4: lr 0.03, constant (open point 7: the text says both cosine and unchanged)", type="number", exclusiveMinimum=0),
    setting("pretrain_momentum", 0.9, "the optimizer is not named: L-DAWA's code, the FL recipe FSSUAVL follows, uses SGD with momentum 0.9", type="number", minimum=0, exclusiveMaximum=1),
    setting("pretrain_weight_decay", 1.0e-4, "FSSUAVL 3.4: weight decay 1e-4", type="number", minimum=0),
    setting("pretrain_batch_size", None, "open point 3: null, a client's whole data per step (the paper's 256 exceeds every client here, and a batch of one clip has no negatives)", type=["integer", "null"], minimum=2),
    setting("probe_rounds_share", 1.0, "the federated probe trains with the federated block, as every method's audio head, for this share of its rounds", type="number", exclusiveMinimum=0),
    setting("central_probe", True, "open point 10: FSSUAVL's linear probe is central; ours is federated, and the central one (logistic regression on the pooled training clips) is recorded beside it", type="boolean"),
    setting("probe_strengths", [0.01, 0.1, 1.0, 10.0], "the central probe's inverse regularisation strengths C, as the centralised reference's (the best on dev is kept)", type="array", items={"type": "number", "exclusiveMinimum": 0}, minItems=1),
]  # fmt: skip
FRAMES_PER_S = 100  # the fbank's 10 ms frame shift (avfl.data.audio.SHIFT_MS)
SIMCLR, PROBE = "simclr", "probe"  # phase names: the methods' runs of a seed draw alike


def pretrain_and_probe(ctx: RunContext, use_frames: bool, pretrain: bool = True) -> MethodResult:
    """The two phases: SimCLR (multimodal clients on frames too where `use_frames`), then the
    federated audio probe on the frozen backbone; without `pretrain`, the probe alone on the
    backbone as initialised."""
    from dataclasses import replace

    import torch

    from avfl.fl.contrastive import ContrastiveTask
    from avfl.fl.engine import NO_DEV
    from avfl.fl.tasks import AudioTask
    from avfl.fl.types import Phase, derive_seed
    from avfl.methods.context import MethodResult, Personalise
    from avfl.methods.spec import rounds_of
    from avfl.models.backbones import valid_fbank_stats
    from avfl.models.heads import feature_stats
    from avfl.models.ssl import ProbeModel, SSLModel

    s, data, fed = ctx.method_settings, ctx.data, ctx.federated
    norm = valid_fbank_stats(data.audio, data.training_indices())
    generator = torch.Generator().manual_seed(derive_seed(ctx.seed, "ssl_init"))
    model = SSLModel(
        s["backbone"], data.n_classes, s["image_size"], round(s["audio_window_s"] * FRAMES_PER_S),
        norm["mean"], norm["std"], generator,
    ).to(data.audio.device)  # fmt: skip
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    phases = {}
    if pretrain:
        audio_only = data.audio_only if use_frames else frozenset(range(len(data.clients)))
        audio_task = ContrastiveTask(("audio",), s["temperature"])
        both_task = ContrastiveTask(("audio", "visual"), s["temperature"])
        largest = max(data.client_size(c) for c in range(len(data.clients)))
        train = replace(
            ctx.train, optimizer="sgd", lr=s["pretrain_lr"], momentum=s["pretrain_momentum"],
            weight_decay=s["pretrain_weight_decay"], local_epochs=s["pretrain_local_epochs"],
            batch_size=s["pretrain_batch_size"] or largest, grad_clip_norm=None,
        )  # fmt: skip
        phase = Phase(
            SIMCLR, range(len(data.clients)),
            lambda c: audio_task if c in audio_only else both_task,
            s["pretrain_rounds"], fed["clients_per_round"], NO_DEV,
        )  # fmt: skip
        phases[SIMCLR] = ctx.run(phase, model=model, initial_state=state, train=train)
        state = {**state, **phases[SIMCLR].state}
    model.load_state_dict(state)
    features = backbone_features(model, data)
    train_idx = data.training_indices()
    mean, std = feature_stats(features[train_idx])
    state["audio_input.mean"], state["audio_input.std"] = mean, std
    probe_data = replace(
        data, audio=features, visual=torch.zeros(features.shape[0], 1, device=features.device)
    )
    probe = ProbeModel(model.feature_dim, data.n_classes).to(features.device)
    probe_state = {k: state[k] for k in probe.state_dict()}
    phases[PROBE] = ctx.run(
        Phase(PROBE, range(len(data.clients)), lambda c: AudioTask(),
              rounds_of(s["probe_rounds_share"], fed["rounds"]), fed["clients_per_round"], "audio"),
        model=probe, initial_state=probe_state, data=probe_data,
    )  # fmt: skip
    selected = {**state, **phases[PROBE].state}
    metrics: dict[str, Any] = {}
    if s["central_probe"]:
        from avfl.methods.centralised import fit_linear_probe

        probe.load_state_dict(phases[PROBE].state)
        standardised = probe.audio_input(features).detach()
        metrics["probe_central"] = fit_linear_probe(standardised, data, s["probe_strengths"])
    saved = {"backbone": {k: v for k, v in selected.items() if k.startswith("shared_backbone.")}}
    # A client's personalised model fine-tunes the probe on the frozen features, as it was trained.
    personalise = Personalise(probe, phases[PROBE].state, probe_data)
    return MethodResult(model, phases, {"audio": selected}, saved=saved, metrics=metrics,
                        personalise=personalise)  # fmt: skip


def backbone_features(model, data, batch: int = 256):
    """The frozen backbone's features of every clip's evaluation view (BatchNorm in eval mode)."""
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model.audio_features(data.audio[i : i + batch])
                          for i in range(0, data.audio.shape[0], batch)])  # fmt: skip


@method(
    name="fssuavl",
    display="FSSUAVL",
    colour="#CCB974",
    cite="Rehman et al., FSSUAVL: a discriminative framework using vision models for federated self-supervised audio and image understanding",
    settings=SSL_SETTINGS,
    opt_in=True,
    raw_inputs=True,
    cost=55.0,
)
def fssuavl(ctx: RunContext) -> MethodResult:
    """Federated SimCLR of one backbone on the clients' audio and frames, then an audio linear probe."""
    return pretrain_and_probe(ctx, use_frames=True)
