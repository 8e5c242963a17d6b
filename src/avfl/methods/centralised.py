"""The centralised references: the same model trained on the pooled training clients.

Every federated number is read against what the data allows. For each (dataset, fold,
seed) this trains the run's model without federation, on the union of the training clients
(same partition, so the same training, dev and test clips), with the same optimizer, batch
size and learning rate and the same number of sample visits as a federated run: rounds x
clients per round x local epochs x the mean client size, i.e. rounds x (K / N) x local
epochs epochs. It trains the audio model, the visual model and the audio-visual model, each
selected on its dev accuracy, and in frozen mode also fits linear probes (multinomial
logistic regression, scikit-learn) on the standardised embeddings, the regularisation
strength chosen on dev. They are the upper-bound rows of Table 1 and the dashed lines of
Figure 3, and the reference of the learning-health guard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avfl.methods.spec import method, setting

if TYPE_CHECKING:
    from avfl.methods.context import MethodResult, RunContext

KINDS = ("audio", "visual", "av")


def centralised_epochs(federated: dict[str, Any], n_clients: int) -> int:
    """Epochs over the pooled data with a federated run's expected sample visits."""
    k = min(federated["clients_per_round"], n_clients)
    return max(1, round(federated["rounds"] * k / n_clients * federated["local_epochs"]))


def linear_probe(ctx: RunContext, modality: str, strengths: list[float]) -> dict[str, Any]:
    """Logistic regression on standardised embeddings: C picked on dev, then tested."""
    norm = getattr(ctx.model, f"{modality}_input")
    return fit_linear_probe(norm(getattr(ctx.data, modality).float()), ctx.data, strengths)


def fit_linear_probe(features, data, strengths: list[float]) -> dict[str, Any]:
    """Multinomial logistic regression on `features` (N, d) of the training clips, the inverse
    regularisation strength C picked on dev accuracy; test metrics with C and the dev top-1."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from avfl.evaluate import classification_metrics

    def inputs(idx):
        return features[idx].detach().cpu().numpy().astype(np.float64)

    train_idx = data.training_indices()
    x, y = inputs(train_idx), data.labels[train_idx].cpu().numpy()
    best = None
    for c in strengths:
        probe = LogisticRegression(C=c, max_iter=2000, random_state=0).fit(x, y)
        dev = (
            float((probe.predict(inputs(data.dev)) == data.labels[data.dev].cpu().numpy()).mean())
            if data.dev.numel()
            else 0.0
        )
        if best is None or dev > best[0]:
            best = (dev, c, probe)
    dev, c, probe = best
    scores = np.full((data.test.numel(), data.n_classes), -np.inf)
    scores[:, probe.classes_] = probe.decision_function(inputs(data.test))
    metrics = classification_metrics(scores, data.labels[data.test].cpu().numpy(), data.n_classes)
    return {**metrics, "C": c, "dev_top1": round(dev, 6)}


@method(
    name="centralised",
    display="Centralised",
    colour="#4D4D4D",
    uses_rate=False,
    role="reference",
    cite="the upper bound FedMultimodal (Feng et al., KDD 2023) and most FL papers report",
    settings=[
        setting("linear_probe", True, "also fit a linear probe per modality on the frozen embeddings (frozen mode only)", type="boolean"),
        setting("probe_strengths", [0.01, 0.1, 1.0, 10.0], "inverse regularisation strengths C tried; the best on dev is kept (the usual linear-probe protocol)", type="array", items={"type": "number", "exclusiveMinimum": 0}, minItems=1),
    ],
)  # fmt: skip
def centralised(ctx: RunContext) -> MethodResult:
    """Centralised training of the audio, visual and audio-visual models on the pooled clients."""
    from dataclasses import replace

    from avfl.fl.tasks import AudioTask, AVTask, VisualTask
    from avfl.fl.types import Phase
    from avfl.methods.context import MethodResult

    epochs = centralised_epochs(dict(ctx.federated), len(ctx.data.clients))
    pooled = ctx.data.pooled()
    train = replace(ctx.train, local_epochs=1, eval_every=max(1, epochs // 50))
    tasks = {"audio": AudioTask(), "visual": VisualTask(), "av": AVTask()}
    phases = {
        kind: ctx.run(
            Phase(f"centralised_{kind}", [0], lambda c, task=task: task, epochs, 1, kind),
            data=pooled, train=train,
        )
        for kind, task in tasks.items()
    }  # fmt: skip
    metrics = {}
    frozen = not any(
        n.startswith(("audio_backbone.", "visual_backbone."))
        for n, _ in ctx.model.named_parameters()
    )
    if frozen and ctx.method_settings["linear_probe"]:
        for modality in ("audio", "visual"):
            metrics[f"probe_{modality}"] = linear_probe(
                ctx, modality, ctx.method_settings["probe_strengths"]
            )
    evaluate = {kind: phases[kind].state for kind in KINDS}
    return MethodResult(ctx.model, phases, evaluate, metrics=metrics)
