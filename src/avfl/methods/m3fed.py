"""M3Fed (Li, Qi, Zhang, Xu, "Cross-modal meta consensus for heterogeneous federated
learning", ACM MM 2024), built from the paper's text: the authors' public code contradicts it
in its local rule, its penalty and its use of the clusters (our notes,
shared/papers/M3Fed-notes.md).

Each client keeps its own layers on the shared audio encoder f_theta: a personal projection
T_i (h -> r, r = 0.75 h, orthogonally initialised, nothing enforces orthogonality), a personal
audio head psi_i and a consensus operator G_i that anchors T_i (CSPM, Eq. 2). A local step is
first-order meta-learning on the step's batch, cut into a support and a query half (Eq. 3-4):
the inner step fits (T_i, psi_i) to the support half's cross-entropy plus lambda/2 ||T_i -
G_i||_F^2 (one step of `inner_lr`, not differentiated through), and the step's gradient is the
query half's cross-entropy at the adapted (T*, psi*) plus lambda/2 ||T* - G_i||^2, which moves
theta, G_i (towards T*) and, first-order, T_i and psi_i. Multimodal clients also train the
audio-visual model on all their clips, as MultiFL's (the paper's clients have one modality
each; here "modalities" are the audio-only and the multimodal clients, and the one task is the
dataset's).

The server (M3FedServer) clusters the round's audio-encoder uploads by gradient consistency
(GCBC, Eq. 5-6, fl/clustering.py) into `mu` clusters, each a plain mean; a client starts its
next round from the model of the cluster it last joined, with its own layers (engine hook
`client_start`; FedAvg's model until it has joined one). The consensus operators of the
round's clients are mixed by the consensus matrix (GCCM, Eq. 7). The visual path is averaged
over the multimodal clients, as MultiFL's. Everything per client is kept in the server's
state, checkpointed with it.

M3Fed has no global classifier. Its Table 1 and Figure 3 cell is a consensus model built on the
server each round, selected on the global dev split: the data-weighted mean of the uploads'
encoders, the data-weighted mean of every client's G as the projection and of their heads as
the head. M3Fed does not optimise that model; its result is the personalised row: each
client's own model (its cluster's encoder, its T_i and psi_i, as the last round left them:
no global dev split selects a client's model) after k inner steps on its own clips
(evaluation.personalised_steps, one SGD step of `inner_lr` each), on the test split
reweighted to its label mix. A client never sampled has the consensus model's layers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from avfl.methods.spec import method, setting

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext

PERSONAL = ("personal_projection", "personal_head", "consensus")


def _model_class():
    import torch
    from torch import nn

    from avfl.models.heads import AVModel, seeded_linear

    class M3FedModel(AVModel):
        """AVModel plus a client's own layers on the audio embedding: T, psi and G."""

        def __init__(self, base: AVModel, n_classes: int, hidden: int, rank: int, cspm: bool,
                     generator: torch.Generator):  # fmt: skip
            nn.Module.__init__(self)
            for name, module in base.named_children():
                self.add_module(name, module)
            self.cspm = cspm
            width = rank if cspm else hidden
            self.personal_projection = torch.nn.utils.skip_init(nn.Linear, hidden, rank, bias=False)
            with torch.no_grad():
                nn.init.orthogonal_(self.personal_projection.weight, generator=generator)
            # G starts as T. skip_init: nothing here draws from PyTorch's global generator,
            # which other runs of the job seed and draw from while building their models.
            self.consensus = torch.nn.utils.skip_init(nn.Linear, hidden, rank, bias=False)
            with torch.no_grad():
                self.consensus.weight.copy_(self.personal_projection.weight)
            self.personal_head = seeded_linear(width, n_classes, generator)

        def personal_logits(self, z, projection=None, weight=None, bias=None):
            t = self.personal_projection.weight if projection is None else projection
            w = self.personal_head.weight if weight is None else weight
            b = self.personal_head.bias if bias is None else bias
            hidden = torch.nn.functional.linear(z, t) if self.cspm else z
            return torch.nn.functional.linear(hidden, w, b)

        def audio_logits(self, audio):
            return self.personal_logits(self.audio_embedding(audio))

    return M3FedModel


@dataclass(frozen=True)
class M3FedTask:
    """A client's local step (Eq. 3-4, first order), and the audio-visual loss on multimodal
    clients. `kind`: "audio" (audio-only) or "multimodal". Frozen: equal tasks train in
    lockstep."""

    kind: str
    lam: float
    inner_lr: float
    cspm: bool
    uses_sample_weight: ClassVar[bool] = True  # the support/query split sees real clips only

    @property
    def name(self) -> str:
        return f"m3fed_{self.kind}"

    @property
    def groups(self) -> tuple[str, ...]:
        own = ("audio_encoder", "personal_projection", "personal_head") + (
            ("consensus",) if self.cspm else ()
        )
        if self.kind == "multimodal":
            own += ("visual_encoder", "fusion_head")
        return own

    @property
    def reads(self) -> tuple[str, ...]:
        inputs = ("audio_input", "visual_input") if self.kind == "multimodal" else ("audio_input",)
        return (*inputs, *self.groups, "consensus")

    def sample_loss(self, model, audio, visual, labels, weight):
        import torch
        from torch.func import grad
        from torch.nn import functional as F

        z = model.audio_embedding(audio)
        t, g = model.personal_projection.weight, model.consensus.weight
        w, b = model.personal_head.weight, model.personal_head.bias
        n = weight.sum()
        rank = torch.cumsum(weight, 0) - 1
        support = weight * (rank < torch.floor(n / 2)).to(weight.dtype)
        query = weight - support

        def penalty(projection):
            return 0.5 * self.lam * ((projection - g) ** 2).sum() if self.cspm and self.lam else 0.0

        def inner(t_, w_, b_):
            ce = F.cross_entropy(
                model.personal_logits(z.detach(), t_, w_, b_), labels, reduction="none"
            )
            return (ce * support).sum() / support.sum().clamp_min(1.0) + penalty(t_)

        gt, gw, gb = grad(inner, argnums=(0, 1, 2))(t, w, b)
        a = self.inner_lr
        t2, w2, b2 = t - a * gt.detach(), w - a * gw.detach(), b - a * gb.detach()
        ce = F.cross_entropy(model.personal_logits(z, t2, w2, b2), labels, reduction="none")
        # The trainer averages over every real clip: the query half's mean, as its share of them.
        loss = ce * query * (n / query.sum().clamp_min(1.0)) + penalty(t2)
        if self.kind == "multimodal":
            loss = loss + F.cross_entropy(
                model.fused_logits(z, model.visual_embedding(visual)), labels, reduction="none"
            )
        return loss


@dataclass(frozen=True)
class InnerTask:
    """The personalised evaluation's step: the inner step alone, on (T, psi) (Eq. 3)."""

    lam: float
    cspm: bool
    name: ClassVar[str] = "m3fed_inner"
    groups: ClassVar[tuple[str, ...]] = ("personal_projection", "personal_head")
    reads: ClassVar[tuple[str, ...]] = ("audio_input", "audio_encoder", "personal_projection",
                                        "personal_head", "consensus")  # fmt: skip

    def sample_loss(self, model, audio, visual, labels):
        from torch.nn import functional as F

        loss = F.cross_entropy(model.audio_logits(audio), labels, reduction="none")
        if self.cspm and self.lam:
            diff = model.personal_projection.weight - model.consensus.weight
            loss = loss + 0.5 * self.lam * (diff**2).sum()
        return loss


class M3FedServer:
    """GCBC clusters, per-client layers and cluster models, GCCM, and the consensus model."""

    keeps_state_when_done = True  # the personalised evaluation reads the clients' own models

    def __init__(self, phase, context, settings, seed: int):
        from avfl.fl.server import FedAvgServer

        self.fedavg = FedAvgServer(phase, context)
        self.phase, self.settings, self.seed = phase, settings, seed
        self.sizes = {
            c: float(context.data.client_size(c)) for c in range(len(context.data.clients))
        }
        self.personal: dict[int, dict[str, Any]] = {}  # client -> its T, psi, G
        self.cluster_model: dict[int, dict[str, Any]] = {}  # client -> its last cluster's encoder
        self.history: list[tuple[int, list[int], list[int]]] = []  # (round, clients, labels)

    def start(self, state):
        return dict(state)

    def select(self, rnd, rng, eligible, k):
        return self.fedavg.select(rnd, rng, eligible, k)

    def assign_tasks(self, rnd, clients, state):
        return self.fedavg.assign_tasks(rnd, clients, state)

    def client_start(self, rnd, client, state):
        return {**state, **self.cluster_model.get(client, {}), **self.personal.get(client, {})}

    def aggregate(self, rnd, state, updates):
        import numpy as np
        import torch

        from avfl.fl.clustering import consensus_update, gcbc
        from avfl.fl.server import weighted_average
        from avfl.fl.types import derive_seed
        from avfl.models.heads import group_of

        new = weighted_average(state, updates)  # the visual path over its carriers; the rest below
        for u in updates:
            self.personal[u.client] = {
                n: v.detach().clone() for n, v in u.state.items() if group_of(n) in PERSONAL
            }
        encoder = sorted(n for n in updates[0].state if group_of(n) == "audio_encoder")
        flat = np.stack(
            [
                torch.cat([u.state[n].flatten() for n in encoder]).double().cpu().numpy()
                for u in updates
            ]
        )
        mu = self.settings["mu"] if self.settings["gcbc"] else 1
        labels, _ = gcbc(flat, mu, derive_seed(self.seed, "gcbc", rnd))
        for label in sorted(set(labels.tolist())):
            members = [u for u, lab in zip(updates, labels, strict=True) if lab == label]
            mean = {n: torch.stack([u.state[n] for u in members]).double().mean(dim=0).to(state[n].dtype)
                    for n in encoder}  # fmt: skip
            for u in members:
                self.cluster_model[u.client] = mean
        if self.settings["cspm"] and self.settings["gccm"]:
            shares = np.array([u.weight for u in updates]) / sum(u.weight for u in updates)
            ops = np.stack([u.state["consensus.weight"].double().cpu().numpy() for u in updates])
            mixed, _ = consensus_update(ops, shares)
            for u, op in zip(updates, mixed, strict=True):
                self.personal[u.client]["consensus.weight"] = torch.from_numpy(op).to(
                    state["consensus.weight"]
                )
        self.history.append((rnd, [u.client for u in updates], labels.tolist()))
        return {**new, **self.consensus_state(state)}

    def consensus_state(self, state):
        """The server's consensus model's own layers: data-weighted means, over every client
        seen so far, of G (its projection; of T without CSPM) and of the heads."""
        clients = sorted(self.personal)
        total = sum(self.sizes[c] for c in clients)

        def mean(name):
            found = sum(self.personal[c][name].double() * (self.sizes[c] / total) for c in clients)
            return found.to(state[name].dtype)

        projection = mean(
            "consensus.weight" if self.settings["cspm"] else "personal_projection.weight"
        )
        out = {"personal_projection.weight": projection, "consensus.weight": projection}
        out |= {n: mean(n) for n in state if n.startswith("personal_head.")}
        return out

    def client_states(self, state, n_clients: int) -> list[dict[str, Any]]:
        """Each client's own model: its cluster's encoder and its layers (the consensus model's
        where it never trained)."""
        return [
            {**state, **self.cluster_model.get(c, {}), **self.personal.get(c, {})}
            for c in range(n_clients)
        ]

    def state_dict(self):
        cpu = lambda d: {n: v.detach().cpu().clone() for n, v in d.items()}  # noqa: E731
        return {"personal": {c: cpu(d) for c, d in self.personal.items()},
                "cluster_model": {c: cpu(d) for c, d in self.cluster_model.items()},
                "history": list(self.history)}  # fmt: skip

    def load_state_dict(self, saved):
        device = self.fedavg.context.data.audio.device
        move = lambda d: {n: v.to(device) for n, v in d.items()}  # noqa: E731
        self.personal = {int(c): move(d) for c, d in saved["personal"].items()}
        self.cluster_model = {int(c): move(d) for c, d in saved["cluster_model"].items()}
        self.history = [tuple(h) for h in saved["history"]]


def cluster_agreement(history, audio_only, dominant) -> dict[str, Any]:
    """Per round, the adjusted Rand index of the clusters with the audio-only mask and with
    the clients' dominant class; their means over the rounds with two or more clusters."""
    from sklearn.metrics import adjusted_rand_score

    modality, labels = [], []
    for _, clients, found in history:
        if len(set(found)) < 2:
            continue
        modality.append(adjusted_rand_score([c in audio_only for c in clients], found))
        labels.append(adjusted_rand_score([dominant[c] for c in clients], found))

    def mean(values):
        return round(sum(values) / len(values), 6) if values else None

    return {
        "ari_audio_only": mean(modality),
        "ari_dominant_class": mean(labels),
        "rounds": len(modality),
    }


@method(
    name="m3fed",
    display="M3Fed",
    colour="#2F4B7C",
    cite="Li et al., Cross-modal meta consensus for heterogeneous federated learning, ACM MM 2024",
    objective_drifts=True,  # a client's start is its cluster's model, which changes every round
    cost=20.0,  # the meta step's nested gradient and the clustering: about 20x a MultiFL round
    table1_note="its cell is a consensus model built on the server (the mean encoder, projection and head), which M3Fed does not optimise; its result is its personalised row (personalised.md)",
    settings=[
        setting("mu", 4, "the number of GCBC clusters (the paper's mu = 4; at most the clients of a round)", type="integer", minimum=1),
        setting("lam", 0.6, "lambda of the consensus penalty (the paper's 0.6)", type="number", minimum=0),
        setting("inner_lr", 0.01, "the inner step's learning rate (the paper's inner lr 0.01); the outer step uses the federated block's optimizer, as every method's", type="number", minimum=0),
        setting("rank_share", 0.75, "r / h of the personal projection (the paper's 512 -> 384)", type="number", exclusiveMinimum=0, maximum=1),
        setting("gcbc", True, "cluster the encoders by gradient consistency (false: one cluster, FedAvg; the paper's ablation without GCBC)", type="boolean"),
        setting("gccm", True, "mix the consensus operators by the consensus matrix (false: each keeps its own; the paper's ablation without GCCM)", type="boolean"),
        setting("cspm", True, "the personal projection anchored by the consensus operator (false: a personal head on the encoder alone; the paper's ablation without CSPM)", type="boolean"),
    ],
)  # fmt: skip
def m3fed(ctx: RunContext) -> MethodResult:
    """Personalised FL: first-order meta-learning of own layers, clustered encoders, consensus operators."""
    import numpy as np
    import torch

    from avfl.fl.types import Phase, derive_seed
    from avfl.methods.context import MethodResult, Personalise

    s, data, fed = ctx.method_settings, ctx.data, ctx.federated
    hidden = ctx.model.audio_head.weight.shape[1]
    rank = max(1, round(s["rank_share"] * hidden))
    generator = torch.Generator().manual_seed(derive_seed(ctx.seed, "m3fed_init"))
    model = _model_class()(ctx.model, data.n_classes, hidden, rank, s["cspm"], generator).to(
        data.audio.device
    )
    start = {**model.state_dict(), **ctx.initial_state}
    tasks = {
        kind: M3FedTask(kind, s["lam"], s["inner_lr"], s["cspm"])
        for kind in ("audio", "multimodal")
    }
    made = []

    def server(phase, context):
        made.append(M3FedServer(phase, context, s, ctx.seed))
        return made[-1]

    phase = Phase(
        "m3fed", range(len(data.clients)),
        lambda c: tasks["audio" if c in data.audio_only else "multimodal"],
        fed["rounds"], fed["clients_per_round"], "audio", server=server, also_select=("av",),
    )  # fmt: skip
    result = ctx.run(phase, model=model, initial_state=start)
    keeper = made[-1]
    own = keeper.client_states(result.last_state, len(data.clients))
    dominant = {c: int(np.bincount(data.labels[data.clients[c]].cpu().numpy()).argmax())
                for c in range(len(data.clients))}  # fmt: skip
    diagnostics = {"clusters": cluster_agreement(keeper.history, data.audio_only, dominant)}
    inner = replace(ctx.train, optimizer="sgd", lr=s["inner_lr"], momentum=0.0, weight_decay=0.0)
    personalise = Personalise(model, own, data, InnerTask(s["lam"], s["cspm"]), inner)
    return MethodResult(
        model, {"m3fed": result}, {"audio": result.state, "av": result.also_selected["av"]},
        personalise=personalise, diagnostics=diagnostics,
    )  # fmt: skip
