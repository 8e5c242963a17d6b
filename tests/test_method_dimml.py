"""DI-MML: the detached objectives, DUC, the dimension split, the weighting, and whole runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from avfl.fl.data import FederatedData
from avfl.fl.local import train_rows
from avfl.fl.types import TrainSettings
from avfl.methods.dimml import (
    DIMMLTask,
    _model_class,
    certainty_weights,
    dimension_masks,
    duc_loss,
)
from avfl.models.heads import AVModel
from avfl.train import run_job

from .conftest import quiet, tiny_job

HIDDEN, CLASSES = 8, 4


def _model(seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    base = AVModel(6, 5, CLASSES, HIDDEN, dropout)
    return _model_class()(
        base, CLASSES, HIDDEN, "weighted", 1.0, torch.Generator().manual_seed(seed)
    )


def _task(kind="multimodal", shared=1.0, duc=1.0, similarity="neg_euclidean", detach="teacher"):
    return DIMMLTask(kind, shared, duc, similarity, 1.0, detach)


def _batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 6, generator=g),
        torch.randn(n, 5, generator=g),
        torch.randint(0, CLASSES, (n,), generator=g),
    )


def _grads(model, loss, prefixes):
    named = [(n, p) for n, p in model.named_parameters() if n.split(".")[0] in prefixes]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
    return {n: g for (n, _), g in zip(named, grads, strict=True)}


def _set_masks(model, audio_learns, visual_learns):
    model.duc_masks.audio_learns.copy_(torch.tensor(audio_learns, dtype=torch.float32))
    model.duc_masks.visual_learns.copy_(torch.tensor(visual_learns, dtype=torch.float32))


def test_the_visual_objective_sends_no_gradient_to_the_audio_encoder_and_the_shared_head_gets_both():
    model = _model()
    _set_masks(model, [1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0])
    audio, visual, labels = _batch()
    losses = _task().losses(model, audio, visual, labels, torch.ones(6))
    from_visual = _grads(
        model, losses["visual"].sum(), ("audio_encoder", "audio_head", "shared_head")
    )
    assert all(
        from_visual[n] is None or not from_visual[n].any()
        for n in from_visual
        if not n.startswith("shared_head")
    )
    from_audio = _grads(
        model, losses["audio"].sum(), ("visual_encoder", "visual_head", "shared_head")
    )
    assert all(
        from_audio[n] is None or not from_audio[n].any()
        for n in from_audio
        if not n.startswith("shared_head")
    )
    # W (the shared head) learns from both modalities' objectives.
    assert (
        from_visual["shared_head.weight"].abs().sum() > 0
        and from_audio["shared_head.weight"].abs().sum() > 0
    )


def test_duc_moves_only_the_students_dimensions_that_the_teacher_finds_effective():
    torch.manual_seed(0)
    student = torch.randn(5, HIDDEN, requires_grad=True)
    teacher = torch.randn(5, HIDDEN, requires_grad=True)
    mask = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0], dtype=torch.float32)
    loss = duc_loss(student, teacher.detach(), mask, torch.ones(5), "neg_euclidean", 1.0).sum()
    (grad_student,) = torch.autograd.grad(loss, [student])
    assert not grad_student[:, mask == 0].any() and grad_student[:, mask == 1].abs().sum() > 0
    # The teacher's side is detached in the task: no gradient reaches it.
    model = _model()
    _set_masks(model, [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0])
    audio, visual, labels = _batch()
    task = _task(shared=0.0)
    with_duc = task.losses(model, audio, visual, labels, torch.ones(6))
    without = replace(task, duc_weight=0.0).losses(model, audio, visual, labels, torch.ones(6))
    duc_only = (with_duc["audio"] - without["audio"]).sum()
    assert duc_only.abs() > 0
    assert all(
        g is None or not g.any() for g in _grads(model, duc_only, ("visual_encoder",)).values()
    )
    assert any(
        g is not None and g.any() for g in _grads(model, duc_only, ("audio_encoder",)).values()
    )


def test_duc_is_infonce_against_a_float64_loop_and_zero_before_the_split():
    torch.manual_seed(2)
    s, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.float64)
    for similarity in ("neg_euclidean", "dot"):
        got = duc_loss(s, t, mask, torch.ones(4, dtype=torch.float64), similarity, 0.5)
        for i in range(4):

            def sim(x, y, similarity=similarity):
                x, y = x[mask == 1], y[mask == 1]
                return (x @ y if similarity == "dot" else -((x - y) ** 2).sum().sqrt()) / 0.5

            denominator = sum(torch.exp(sim(s[i], t[j])) for j in range(4))
            assert (
                abs(float(-torch.log(torch.exp(sim(s[i], t[i])) / denominator)) - float(got[i]))
                < 1e-9
            )
    assert not duc_loss(s, t, torch.zeros(6, dtype=torch.float64), torch.ones(4), "dot", 1.0).any()


def test_the_masks_equal_a_brute_force_count():
    """A hit is a sample whose own class is the unique nearest centroid on that dimension; a
    constant dimension (a dead unit) is nearest to every class at once and never effective,
    however large the majority class."""
    torch.manual_seed(3)
    n, dims = 30, 7
    labels = torch.randint(0, 3, (n,))
    labels[:3] = torch.tensor([0, 1, 2])
    labels[3:20] = 0  # a majority class: argmin's first-index tie-break would favour it
    audio = torch.randn(n, dims) + labels[:, None] * torch.tensor([2.0, 0, 0, 1.5, 0, 0, 0])
    visual = torch.randn(n, dims) + labels[:, None] * torch.tensor([0, 2.0, 0, 1.5, 0, 0, 1.0])
    audio[:, 5] = 0.0  # dead in audio
    visual[:, 2] = 0.0  # dead in visual
    masks = dimension_masks(audio, visual, labels, 4)  # class 3 has no sample: never a centroid

    def split(z):
        r = []
        for m in range(dims):
            centroids = {}
            for k in range(3):
                values = [float(z[i, m]) for i in range(n) if labels[i] == k]
                centroids[k] = sum(values) / len(values)
            hits = 0
            for i in range(n):
                d = {k: abs(float(z[i, m]) - c) for k, c in centroids.items()}
                nearest = [k for k in d if d[k] == min(d.values())]
                hits += nearest == [int(labels[i])]
            r.append(hits / n)
        mean = sum(r) / dims
        return [v > mean for v in r], [v < mean for v in r]

    (eff_a, ineff_a), (eff_v, ineff_v) = split(audio), split(visual)
    assert masks["audio_learns"].tolist() == [
        float(v and a) for a, v in zip(ineff_a, eff_v, strict=True)
    ]
    assert masks["visual_learns"].tolist() == [
        float(a and v) for a, v in zip(eff_a, ineff_v, strict=True)
    ]
    assert masks["audio_learns"].sum() > 0 and masks["visual_learns"].sum() > 0
    assert not eff_a[5] and not eff_v[2]  # the dead dimensions teach nothing
    assert masks["visual_learns"][5] == 0 and masks["audio_learns"][2] == 0


def test_the_certainty_weights_sum_to_one_and_favour_the_confident_member():
    confident = torch.tensor([[9.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.1, 0.0, 0.0]])
    w = certainty_weights([confident, unsure, unsure], 1.0)
    torch.testing.assert_close(w.sum(dim=0), torch.ones(1))
    assert w[0, 0] > w[1, 0] and torch.equal(w[1], w[2])
    model = _model()
    audio, visual, _ = _batch()
    a, v = model.audio_embedding(audio), model.visual_embedding(visual)
    members = [model.audio_head(a), model.visual_head(v), model.fused_logits(a, v)]
    w = certainty_weights(members, 1.0)
    expected = sum(w[i][:, None] * members[i] for i in range(3))
    torch.testing.assert_close(model.av_logits(audio, visual), expected)


def test_a_padded_batch_gives_the_loss_and_gradients_of_the_unpadded_one():
    """Rows of 13 and 8 clips in batches of 8: in lockstep the first row's second batch is
    padded; with DUC active that row trains as it does alone on its real samples."""
    torch.manual_seed(0)
    n = 60
    data = FederatedData(audio=torch.randn(n, 6), visual=torch.randn(n, 5), labels=torch.randint(0, CLASSES, (n,)),
                         clients=[], dev=torch.arange(4), test=torch.arange(4), n_classes=CLASSES, class_names=[],
                         audio_only=frozenset())  # fmt: skip
    template = _model()
    starts = []
    for seed in (1, 2):
        m = _model(seed)
        _set_masks(m, [1, 0, 1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0, 0, 0])
        starts.append(m.state_dict())
    indices = [torch.arange(0, 13), torch.arange(20, 28)]
    cfg = TrainSettings(local_epochs=1, batch_size=8, lr=1e-2, optimizer="adam", weight_decay=0.0,
                        eval_every=1, selection="last", checkpoint_every=1)  # fmt: skip
    task = _task()
    alone = [train_rows(template, task, [starts[i]], [indices[i]], [i], data, replace(cfg, lockstep=False))[0]
             for i in range(2)]  # fmt: skip
    together = train_rows(template, task, starts, indices, [0, 1], data, cfg)
    for got, want in zip(together, alone, strict=True):
        assert abs(got.loss - want.loss) < 1e-5
        for k, v in want.state.items():
            torch.testing.assert_close(got.state[k], v, atol=1e-6, rtol=1e-5)
    # The control: without the sample weights the padding enters DUC's denominators.
    leaky = train_rows(
        template, replace(task, uses_sample_weight=False), starts, indices, [0, 1], data, cfg
    )
    assert not all(
        torch.allclose(leaky[0].state[k], v, atol=1e-6, rtol=1e-5)
        for k, v in alone[0].state.items()
    )


def test_with_its_loss_weights_at_zero_the_audio_model_is_harmonys_stage_one(
    tiny_training, tmp_path
):
    """Stage 1 is seeded as Harmony's (its phase name seeds sampling, batches and dropout):
    DI-MML with lam_s = lam_D = 0 trains the audio encoder and head exactly as Harmony's stage
    1, at any missing rate (the visual objective sends the audio part nothing)."""
    fed = {"rounds": 6, "eval_every": 2, "lockstep": False}
    (harmony,) = run_job(
        tiny_job(tiny_training, tmp_path / "h", "harmony", federated=fed), log=quiet
    )
    zero = {"shared_weight": 0.0, "duc_weight": 0.0}
    (ours,) = run_job(
        tiny_job(tiny_training, tmp_path / "d", "dimml", federated=fed, settings=zero), log=quiet
    )
    assert ours["test"] == harmony["test"]

    def dev(record, phase):
        return [p["dev_audio_top1"] for p in record["dev_curve"][phase]]

    assert dev(ours, "encoders") == dev(harmony, "stage1_audio")
    h = torch.load(tmp_path / "h" / "rNone_seed0" / "model.pt", weights_only=True)["states"][
        "stage1_audio"
    ]
    d = torch.load(tmp_path / "d" / "r0.5_seed0" / "model.pt", weights_only=True)["states"][
        "encoders"
    ]
    audio = [k for k in h if k.split(".")[0] in ("audio_encoder", "audio_head")]
    assert audio and all(torch.equal(h[k], d[k]) for k in audio)
    # In lockstep the audio path differs from Harmony's written-out kernels by rounding only.
    fed["lockstep"] = True
    (h2,) = run_job(tiny_job(tiny_training, tmp_path / "h2", "harmony", federated=fed), log=quiet)
    (d2,) = run_job(
        tiny_job(tiny_training, tmp_path / "d2", "dimml", federated=fed, settings=zero), log=quiet
    )
    assert abs(h2["test"]["top1"] - d2["test"]["top1"]) <= 0.05


def test_dimml_learns_splits_after_warmup_and_resumes_identically(tiny_training, tmp_path):
    from avfl.fl.types import Interrupted

    fed = {"rounds": 16, "checkpoint_every": 4}
    (whole,) = run_job(tiny_job(tiny_training, tmp_path / "a", "dimml", federated=fed), log=quiet)
    chance = 1.0 / len(whole["classes"])
    assert (
        whole["test"]["top1"] > chance + 0.1 and whole["test_by_model"]["av"]["top1"] > chance + 0.1
    )
    assert {"audio_shared_head", "av_fusion", "visual"} <= set(whole["test_by_model"])
    assert set(whole["rounds"]) == {"encoders", "fusion"} and whole["rounds"]["fusion"] == 2
    assert whole["health"]["ok"], whole["health"]
    saved = torch.load(tmp_path / "a" / "r0.5_seed0" / "model.pt", weights_only=True)["states"][
        "encoders"
    ]
    masks = saved["duc_masks.audio_learns"] + saved["duc_masks.visual_learns"]
    assert masks.sum() > 0 and masks.max() == 1  # the split happened, and no dimension is in both
    job = tiny_job(tiny_training, tmp_path / "b", "dimml", federated=fed)
    with pytest.raises(Interrupted):
        run_job(job, log=quiet, stop_after=6)
    (resumed,) = run_job(job, log=quiet)
    assert resumed["resumed_from"] and resumed["test"] == whole["test"]
    assert (
        resumed["dev_curve"] == whole["dev_curve"]
        and resumed["test_by_model"] == whole["test_by_model"]
    )
