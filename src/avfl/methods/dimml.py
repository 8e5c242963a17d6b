"""DI-MML, federated: detached and interactive multimodal learning (Fan, Xu, Wang, Huo, Guo,
"Detached and Interactive Multimodal Learning", ACM MM 2024; Chapter 3 of Y. Fan's PhD
thesis, PolyU 2025). Equation numbers are the thesis's.

The thesis trains centrally; the federated method here is our own adaptation. What is the
thesis's: each modality's encoder learns from its own objective only (no fused loss lets the
stronger modality set the gradients, 3.2): L^i = CE(psi^i h^i) + lam_s CE(W h^i) +
lam_D DUC^i (3.7), with psi^i the modality's own head and W a head shared by both modalities
(S-Clf), which anchors both feature spaces to the same class vectors. After a warm-up the
feature dimensions are split per modality into effective and ineffective ones (3.3-3.5):
per class and dimension a centroid over the training set; r_m is the share of samples whose
nearest centroid on dimension m alone is their own class; m is effective for a modality
when its r_m exceeds that modality's mean r. The dimension-decoupled unidirectional
contrastive loss (DUC, 3.6) works on the dimensions effective for one modality only: there
the other modality (the student) takes its pair's sub-vector as the positive and the
batch's other sub-vectors as negatives, with the teacher's side detached, so knowledge flows
only from where it is effective and the dimensions effective for both are left alone. Stage
2 freezes the encoders and trains a fusion head by the fused cross-entropy (3.1); inference
weighs, per sample, the logits of psi^A, psi^V and the fusion head by the softmax of their
maximum probabilities over a temperature (3.8, 3.9).

What is ours:
- one phase over all clients with modality-aware FedAvg (the default server): multimodal
  clients train both encoders, their heads and W, with DUC; audio-only clients train the
  audio encoder, psi^A and W by CE(psi^A h^A) + lam_s CE(W h^A), without DUC (no pair);
- the dimension split is computed once, after the warm-up round, by the server from global
  class statistics of the global model (the class centroids of all multimodal clients' samples,
  then the per-dimension hit counts against them: two exchanges of sums and counts), and sent
  to the clients as the buffer group `duc_masks`;
- stage 2 is a fusion-head phase on the multimodal clients, selected by the audio-visual
  model's dev accuracy, starting from stage 1's selected state.

Choices the text leaves open, as recorded settings (the text where it speaks, else the
authors' code `fanyunfeng-bit/DI-MML`, `main_CFT.py`, `main_CFT_stage2.py`,
`loss/contrast_loss.py`); `config/ablations.yaml` runs the alternatives:
- the detached side is the teacher's, as the DBC ablation's description and the code have it
  (a bold sentence of the text says the student's, which would let DUC move the teacher's
  effective dimensions, the very thing the text says DUC must not do);
- the similarity is minus the Euclidean distance over the temperature, as 3.6 writes it (the
  code uses the dot product); the text gives T no value: 1, the code's default (its run.sh's
  50 belongs to dot products of 512-d ResNet features, with no counterpart at our widths);
- the warm-up: the text is silent, the code splits at epoch 20 of 150 (0.13 of the rounds);
- the masks from the multimodal clients' samples only (the text's training set is paired);
- stage 2: the text's 20 epochs beside stage 1's 150 (0.13 of the rounds); the fusion head is
  the pipeline's MLP (the code's is one linear layer); the weighting temperature 1 (code);
- the unimodal model is the encoder with its own head psi (the code's; the text retrains a
  linear head on the frozen encoder). Table 1 reports encoder + psi^A; the shared-head audio
  classifier W h^A, the fusion head alone and the visual model are recorded beside it;
- not followed: the code selects epochs on test data and adds noise to images.
Stage 1 draws its randomness (client sampling, batch orders, dropout) under Harmony's stage-1
phase name, so each DI-MML run is paired with the Harmony run of its seed: with lam_s = lam_D = 0
its audio model is Harmony's stage-1 model (tested; bit for bit where both train one row at a
time, to float rounding in lockstep, where Harmony's task has written-out kernels), and DI-MML
against Harmony isolates what S-Clf and DUC do to the audio model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avfl.methods.spec import method, rounds_of, setting

if TYPE_CHECKING:
    import torch

    from avfl.fl.types import ClientUpdate
    from avfl.methods.context import MethodResult, RunContext

# Stage 1 has Harmony's stage-1 phase name: client sampling, batch orders and dropout are drawn
# from (seed, phase, round, client), so a DI-MML run and the Harmony run of its seed are paired
# draw for draw, and they differ only in what DI-MML adds (as MultiFL, FedProx and FedAdam
# share theirs). Checkpoints are per run folder: the names never meet.
ENCODERS = "harmony_audio"
FUSION = "dimml_fusion"


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -logits.log_softmax(dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def duc_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    similarity: str,
    temperature: float,
) -> torch.Tensor:
    """Per sample i: -log softmax_j(sim(s_i, t_j))[i] on the dimensions `mask` selects (3.6).

    The caller detaches the side that must not learn. Only the real samples (weight > 0) are
    negatives, so padding never enters a denominator. The term is 0 while the mask selects no
    dimension (before the warm-up round has set it)."""
    import torch

    s = student * mask
    t = teacher * mask
    if similarity == "dot":
        sim = s @ t.T
    else:  # minus the Euclidean distance; clamped, so a zero distance has a finite gradient
        squared = ((s[:, None, :] - t[None, :, :]) ** 2).sum(dim=-1)
        sim = -squared.clamp_min(1e-12).sqrt()
    sim = sim / temperature
    negatives = torch.where(weight[None, :] > 0, sim, torch.full_like(sim, -1e9))
    loss = negatives.logsumexp(dim=-1) - sim.diagonal()
    return loss * (mask.sum() > 0).to(loss.dtype)


def certainty_weights(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """(members, batch): softmax over the members of each one's maximum probability / T (3.8)."""
    import torch

    certainty = torch.stack([x.softmax(dim=-1).amax(dim=-1) for x in logits])
    return (certainty / temperature).softmax(dim=0)


def dimension_masks(
    audio: torch.Tensor,
    visual: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    audio_extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The DUC masks from embeddings of the training samples (3.3-3.5).

    Per modality: the class centroid on every dimension, each sample's nearest centroid on
    each dimension alone, r_m = the share of samples whose nearest centroid is their class
    alone, effective = r_m above the modality's mean r, ineffective = below it. `audio_extra` adds (embeddings, labels) to the
    audio statistics only (audio from every client). Returns float masks: `audio_learns`, the
    dimensions effective for visual only (audio is DUC's student there), and `visual_learns`.
    """
    import torch

    def effective(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = z.double()
        sums = torch.zeros(n_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(
            0, y, z
        )
        counts = torch.zeros(n_classes, dtype=z.dtype, device=z.device).index_add_(
            0, y, torch.ones_like(y, dtype=z.dtype)
        )
        centroids = sums / counts.clamp_min(1.0)[:, None]
        distance = (z[:, None, :] - centroids[None, :, :]).abs()  # (samples, classes, dims)
        # A class no sample holds has no centroid: never the nearest.
        distance = torch.where((counts > 0)[None, :, None], distance, torch.inf)
        # A hit: the own class is the nearest centroid, and the only one that near (a
        # dimension that is constant over the samples, a dead ReLU unit, is nearest to every
        # class at once and carries no class information).
        nearest = distance.amin(dim=1, keepdim=True)
        own = distance.gather(1, y[:, None, None].expand(-1, 1, z.shape[1]))
        unique = (distance == nearest).sum(dim=1, keepdim=True) == 1
        hits = ((own == nearest) & unique).squeeze(1).double()
        r = hits.mean(dim=0)
        return r > r.mean(), r < r.mean()  # effective, ineffective (3.5)

    eff_a, ineff_a = effective(
        audio if audio_extra is None else torch.cat([audio, audio_extra[0]]),
        labels if audio_extra is None else torch.cat([labels, audio_extra[1]]),
    )
    eff_v, ineff_v = effective(visual, labels)
    return {
        "audio_learns": (eff_v & ineff_a).float(),  # d_ne^A intersected with d_e^V
        "visual_learns": (eff_a & ineff_v).float(),
    }


@dataclass(frozen=True)
class DIMMLTask:
    """Stage 1: `kind` "multimodal" trains L^A + L^V (3.7), "audio" CE(psi^A) + lam_s CE(W)."""

    kind: str
    shared_weight: float
    duc_weight: float
    similarity: str
    temperature: float
    detach: str = "teacher"
    name: str = "dimml"
    uses_sample_weight: bool = True  # DUC couples a batch's samples

    @property
    def groups(self) -> tuple[str, ...]:
        from avfl.models.heads import AUDIO_MODEL, VISUAL_MODEL

        shared = ("shared_head",) if self.shared_weight > 0 else ()
        return AUDIO_MODEL + (VISUAL_MODEL if self.kind == "multimodal" else ()) + shared

    @property
    def reads(self) -> tuple[str, ...]:
        return ("audio_input", "visual_input", "shared_head", "duc_masks", *self.groups)

    def losses(self, model, audio, visual, labels, weight) -> dict[str, torch.Tensor]:
        """Per sample, each modality's objective L^i (3.7): with the teacher's side detached,
        what reaches that modality's encoder."""
        a = model.audio_embedding(audio)
        out = {"audio": _cross_entropy(model.audio_head(a), labels)}
        if self.shared_weight > 0:
            out["audio"] = out["audio"] + self.shared_weight * _cross_entropy(
                model.shared_head(a), labels
            )
        if self.kind != "multimodal":
            return out
        v = model.visual_embedding(visual)
        out["visual"] = _cross_entropy(model.visual_head(v), labels)
        if self.shared_weight > 0:
            out["visual"] = out["visual"] + self.shared_weight * _cross_entropy(
                model.shared_head(v), labels
            )
        if self.duc_weight > 0:
            masks = model.duc_masks
            for name, student, teacher, mask in (
                ("audio", a, v, masks.audio_learns),
                ("visual", v, a, masks.visual_learns),
            ):
                if self.detach == "teacher":
                    student, teacher = student, teacher.detach()
                else:  # the bold sentence's reading (an ablation): the teacher's side moves
                    student, teacher = student.detach(), teacher
                duc = duc_loss(student, teacher, mask, weight, self.similarity, self.temperature)
                out[name] = out[name] + self.duc_weight * duc
        return out

    def sample_loss(self, model, audio, visual, labels, weight=None) -> torch.Tensor:
        import torch

        if weight is None:
            weight = torch.ones_like(labels, dtype=audio.dtype)
        return sum(self.losses(model, audio, visual, labels, weight).values())


@dataclass(frozen=True)
class FusionTask:
    """Stage 2: the fused cross-entropy (3.1) trains the fusion head on frozen encoders."""

    name: str = "dimml_fusion"
    groups: tuple[str, ...] = ("fusion_head",)
    reads: tuple[str, ...] = (
        "audio_input", "visual_input", "audio_backbone", "visual_backbone",
        "audio_encoder", "visual_encoder", "fusion_head",
    )  # fmt: skip

    def sample_loss(self, model, audio, visual, labels) -> torch.Tensor:
        for encoder in (model.audio_encoder, model.visual_encoder):
            encoder.eval()  # frozen, as the code's stage 2: no dropout on their features
        return _cross_entropy(
            model.fused_logits(model.audio_embedding(audio), model.visual_embedding(visual)),
            labels,
        )


@functools.cache
def _model_class():
    """The DI-MML model: the AVModel plus the shared head and the DUC masks; its audio-visual
    model is the certainty-weighted ensemble (or the fusion head alone)."""
    import torch

    from avfl.models.heads import AVModel, seeded_linear

    class DUCMasks(torch.nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.register_buffer("audio_learns", torch.zeros(dim))
            self.register_buffer("visual_learns", torch.zeros(dim))

    class DIMMLModel(AVModel):
        def __init__(self, base: AVModel, n_classes: int, hidden: int, av_model: str,
                     temperature: float, generator: torch.Generator):  # fmt: skip
            torch.nn.Module.__init__(self)
            for name, module in base.named_children():
                self.add_module(name, module)
            self.shared_head = seeded_linear(hidden, n_classes, generator)
            self.duc_masks = DUCMasks(hidden)
            self.av_model = av_model
            self.weighting_temperature = temperature

        def shared_audio_logits(self, audio):
            return self.shared_head(self.audio_embedding(audio))

        def av_logits(self, audio, visual):
            a, v = self.audio_embedding(audio), self.visual_embedding(visual)
            fused = self.fused_logits(a, v)
            if self.av_model == "fusion":
                return fused
            members = [self.audio_head(a), self.visual_head(v), fused]
            w = certainty_weights(members, self.weighting_temperature)
            return sum(w[i].unsqueeze(-1) * m for i, m in enumerate(members))

    return DIMMLModel


def _batched(forward, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """`forward` over `x` in batches, without gradients (fine-tuning mode's backbones would not
    hold a whole split at once; evaluate.predict batches alike)."""
    import torch

    with torch.no_grad():
        return torch.cat([forward(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def _masks(self, state) -> dict[str, torch.Tensor]:
    """The DUC masks of the global `state` from its class statistics (`dimension_masks`)."""
    import torch

    data = self.data
    self.scratch.load_state_dict(state)
    idx = torch.cat([data.clients[c] for c in data.multimodal])
    extra = None
    if self.audio_from == "all" and data.audio_only:
        other = torch.cat([data.clients[c] for c in sorted(data.audio_only)])
        extra = (_batched(self.scratch.audio_embedding, data.audio[other]), data.labels[other])
    return dimension_masks(
        _batched(self.scratch.audio_embedding, data.audio[idx]),
        _batched(self.scratch.visual_embedding, data.visual[idx]),
        data.labels[idx],
        data.n_classes,
        extra,
    )


@functools.cache
def _server_class():
    """DIMMLServer: modality-aware FedAvg and, after the warm-up round, the dimension split
    as `duc_masks` (the masks are part of the model's state, so checkpoints hold them; the
    class is made on first use because the server module imports torch)."""
    import copy

    from avfl.fl.server import FedAvgServer

    class DIMMLServer(FedAvgServer):
        def __init__(self, phase, context, settings: Mapping[str, Any], warmup: int):
            super().__init__(phase, context)
            self.data = context.data
            self.scratch = copy.deepcopy(context.model).eval()  # evaluates only: never trained
            self.warmup = warmup
            self.audio_from = settings["mask_audio_clients"]

        masks = _masks

        def aggregate(self, rnd: int, state, updates: Sequence[ClientUpdate]):
            new = super().aggregate(rnd, state, updates)
            if rnd + 1 == self.warmup and self.data.multimodal:
                for name, mask in self.masks(new).items():
                    new[f"duc_masks.{name}"] = mask.to(new[f"duc_masks.{name}"])
            return new

    return DIMMLServer


@method(
    name="dimml",
    display="DI-MML",
    colour="#64B5CD",
    objective_drifts=True,  # the DUC term joins the local objective after the warm-up round
    cost=2.4,  # per run, against MultiFL's, on the embedded grid's job records: autograd through vmap, both encoders
    cite="Fan et al., Detached and interactive multimodal learning, ACM MM 2024 (federated here: our adaptation)",
    settings=[
        setting("shared_weight", 1.0, "lam_s of 3.7: the thesis sets lam_s = lam_D = 1 (the code's weight 1); 0 removes the shared classifier (S-Clf)", type="number", minimum=0),
        setting("duc_weight", 1.0, "lam_D of 3.7, 1 in the thesis and the code; 0 removes DUC (with shared_weight 0 the audio model is Harmony's stage 1)", type="number", minimum=0),
        setting("similarity", "neg_euclidean", "3.6 writes the similarity as minus a distance d over T; dot is the authors' code (matmul over T)", enum=["neg_euclidean", "dot"]),
        setting("temperature", 1.0, "DUC's T: the text gives no value, 1 is the code's default (its run.sh's 50 is for dot products of 512-d ResNet features)", type="number", exclusiveMinimum=0),
        setting("detach", "teacher", "the teacher's side is detached, as the DBC ablation and the code describe (student is the literal reading of a bold sentence of 3.4.3)", enum=["teacher", "student"]),
        setting("warmup_rounds", 0.13, "rounds before the dimension split, as a share of federated.rounds: the text is silent, the code splits at epoch 20 of 150", type="number", exclusiveMinimum=0, maximum=1),
        setting("mask_audio_clients", "multimodal", "the split's statistics from the multimodal clients' pairs (the text's training set is paired); all adds the audio-only clients' audio to the audio statistics", enum=["multimodal", "all"]),
        setting("fusion_rounds", 0.13, "stage 2's rounds as a share of federated.rounds: the text's 20 epochs beside stage 1's 150", type="number", exclusiveMinimum=0, maximum=10),
        setting("av_model", "weighted", "the audio-visual model: the certainty-weighted ensemble of psi^A, psi^V and the fusion head (3.8, 3.9); fusion is the fusion head alone (the ablation without weighting, recorded beside either way)", enum=["weighted", "fusion"]),
        setting("weighting_temperature", 1.0, "T of 3.8: the text is silent, the code's stage 2 uses 1", type="number", exclusiveMinimum=0),
    ],
)  # fmt: skip
def dimml(ctx: RunContext) -> MethodResult:
    """Detached encoders with a shared head and DUC, then a certainty-weighted fusion."""
    import torch

    from avfl.evaluate import classification_metrics, evaluate
    from avfl.fl.types import Phase, derive_seed
    from avfl.methods.context import MethodResult

    s = ctx.method_settings
    hidden = ctx.model.audio_head.weight.shape[1]
    generator = torch.Generator().manual_seed(derive_seed(ctx.seed, "dimml_shared_head"))
    model = _model_class()(
        ctx.model, ctx.data.n_classes, hidden, s["av_model"], s["weighting_temperature"], generator
    ).to(ctx.data.audio.device)
    start = {**model.state_dict(), **ctx.initial_state}
    fed = ctx.federated
    audio_only = ctx.data.audio_only
    tasks = {
        kind: DIMMLTask(kind, s["shared_weight"], s["duc_weight"], s["similarity"],
                        s["temperature"], s["detach"])
        for kind in ("multimodal", "audio")
    }  # fmt: skip
    warmup = rounds_of(s["warmup_rounds"], fed["rounds"])
    encoders = ctx.run(
        Phase(ENCODERS, range(len(ctx.data.clients)),
              lambda c: tasks["audio" if c in audio_only else "multimodal"],
              fed["rounds"], fed["clients_per_round"], "audio",
              server=lambda p, c: _server_class()(p, c, s, warmup)),
        model=model, initial_state=start,
    )  # fmt: skip
    phases = {"encoders": encoders}
    evaluate_states = {"audio": encoders.state}
    metrics: dict[str, dict[str, Any]] = {}
    multimodal = ctx.data.multimodal
    if multimodal:
        evaluate_states["visual"] = encoders.state
        fusion = ctx.run(
            Phase(FUSION, multimodal, lambda c: FusionTask(),
                  rounds_of(s["fusion_rounds"], fed["rounds"]), fed["clients_per_round"], "av"),
            model=model, initial_state=encoders.state,
        )  # fmt: skip
        phases["fusion"] = fusion
        evaluate_states["av"] = fusion.state
        model.load_state_dict(fusion.state)
        other = "fusion" if s["av_model"] == "weighted" else "weighted"
        chosen, model.av_model = model.av_model, other
        metrics[f"av_{other}"] = evaluate(model, ctx.data, ctx.data.test, "av")
        model.av_model = chosen
    if s["shared_weight"] > 0:  # W is trained only then
        model.load_state_dict(encoders.state)
        model.eval()
        test = ctx.data.test
        shared = _batched(model.shared_audio_logits, ctx.data.audio[test])
        metrics["audio_shared_head"] = classification_metrics(
            shared.float().cpu().numpy(), ctx.data.labels[test].cpu().numpy(), ctx.data.n_classes
        )
    return MethodResult(
        model, phases, evaluate_states, saved={"encoders": encoders.state}, metrics=metrics
    )
