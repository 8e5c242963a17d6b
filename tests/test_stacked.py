"""The written-out kernels (fl/stacked.py) compute each built-in task's loss and gradients
exactly as autograd does on the task's own `sample_loss`, row by row (in float64, so any
difference beyond rounding is a wrong formula)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from avfl.fl import stacked
from avfl.fl.local import _read_names
from avfl.fl.optimizer import RowOptimizer
from avfl.fl.tasks import AudioTask, AVTask, VisualTask
from avfl.fl.types import TrainSettings
from avfl.methods import bmsfed, modalitymirror
from avfl.methods.fedprox import Proximal
from avfl.models.dropout import noise_pool, pool_size
from avfl.models.heads import AVModel, WithTeacher, group_of

from .devices import DEVICES

ROWS, BATCH, AUDIO, VISUAL, CLASSES, HIDDEN = 3, 6, 20, 12, 7, 16
SETTINGS = TrainSettings(local_epochs=1, batch_size=BATCH, lr=1e-3, optimizer="adam", weight_decay=0.0,
                         eval_every=1, selection="best_dev", checkpoint_every=1)  # fmt: skip
DISTILL = {"temperature": 2.0, "t2_scaling": True, "kd_weight": 1.0, "ce_weight": 0.0,
           "teacher": "frozen", "kl_direction": "teacher_to_student"}  # fmt: skip


def distill(**changes) -> modalitymirror.DistillTask:
    return modalitymirror.DistillTask(tuple(sorted({**DISTILL, **changes}.items())))


def base_model() -> AVModel:
    model = AVModel(AUDIO, VISUAL, CLASSES, HIDDEN, dropout=0.3)
    model.audio_input.set_stats(torch.randn(AUDIO), torch.rand(AUDIO) + 0.5)
    model.visual_input.set_stats(torch.randn(VISUAL), torch.rand(VISUAL) + 0.5)
    return model


def model_for(task) -> torch.nn.Module:
    if isinstance(task, modalitymirror.DistillTask):
        return WithTeacher(base_model(), base_model())
    if isinstance(task, bmsfed.BMSFedTask):
        model = bmsfed._model_class()(base_model(), CLASSES, HIDDEN, "prototype")
        model.audio_prototypes.prototypes.copy_(torch.randn(CLASSES, HIDDEN))
        model.visual_prototypes.prototypes.copy_(torch.randn(CLASSES, HIDDEN))
        return model
    return base_model()


TASKS = {
    "audio": AudioTask(),
    "visual": VisualTask(),
    "av": AVTask(),
    "av+head": AVTask(audio_head_weight=0.7),
    "distill": distill(),
    "distill, student to teacher, T 4, no T^2": distill(kl_direction="student_to_teacher", temperature=4.0, t2_scaling=False),
    "distill + ce, trainable teacher": distill(ce_weight=0.5, teacher="trainable", kd_weight=0.8),
    "bmsfed multimodal": bmsfed.BMSFedTask("multimodal"),
    "bmsfed audio": bmsfed.BMSFedTask("audio"),
    "bmsfed visual": bmsfed.BMSFedTask("visual"),
    "fedprox av": Proximal(AVTask(), mu=0.3),
    "fedprox audio": Proximal(AudioTask(), mu=0.05),
}  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(TASKS))
def test_written_out_loss_and_gradients_equal_autograd_of_sample_loss(name, device):
    task = TASKS[name]
    torch.manual_seed(0)
    model = model_for(task).double().to(device)
    assert stacked.supports(model)
    model.train()
    noise = pool_size(model, BATCH)
    state = model.state_dict()
    names = _read_names(model, task, state)
    trained = [n for n, _ in model.named_parameters() if group_of(n) in task.groups]
    # Every row its own tensors: the start state plus noise, so rows differ.
    per_row = [{n: state[n] + 0.1 * torch.randn_like(state[n]) for n in names} for _ in range(ROWS)]
    start = [{n: state[n].clone() for n in trained} for _ in range(ROWS)]
    audio = (torch.randn(ROWS, BATCH, AUDIO, dtype=torch.float64) * 3 + 1).to(device)
    visual = torch.randn(ROWS, BATCH, VISUAL, dtype=torch.float64).abs().to(device)
    labels = torch.randint(0, CLASSES, (ROWS, BATCH)).to(device)
    real = torch.ones(ROWS, BATCH, dtype=torch.float64)
    real[1, 4:] = 0  # padding
    real[2, 1:] = 0
    real = real.to(device)
    pools = torch.rand(ROWS, noise, dtype=torch.float64).to(device)
    values = {"audio_weight": torch.tensor([0.0, 0.4, 1.0]),
              "visual_weight": torch.tensor([0.9, 0.0, 0.3])}  # fmt: skip
    values = (
        {k: v.double().to(device) for k, v in values.items()} if hasattr(task, "row_values") else {}
    )

    expected_loss, expected_grads = [], []
    for i in range(ROWS):
        params = {n: per_row[i][n].clone().requires_grad_(True) for n in trained}
        tensors = {**per_row[i], **params}
        with noise_pool(pools[i]):
            kwargs = {k: v[i] for k, v in values.items()}
            per_sample = _sample_loss(task, model, tensors, audio[i], visual[i], labels[i], kwargs)
        loss = (per_sample * real[i]).sum() / real[i].sum().clamp_min(1.0)
        if hasattr(task, "penalty"):
            loss = loss + task.penalty(params, start[i])
        grads = torch.autograd.grad(loss, [params[n] for n in trained], allow_unused=True)
        expected_loss.append(loss.detach())
        expected_grads.append({n: g if g is not None else torch.zeros_like(params[n])
                               for n, g in zip(trained, grads, strict=True)})  # fmt: skip

    # The engine's layout: trained tensors and their gradients as views of the optimizer's
    # flat, padded buffers (the 7-class biases are not contiguous across rows).
    optimizer = RowOptimizer([{n: r[n] for n in trained} for r in per_row], trained, SETTINGS)
    stack = {
        n: torch.stack([per_row[i][n] for i in range(ROWS)]) for n in names if n not in trained
    }
    grad_buffers = optimizer.grad_views
    for n in trained:
        grad_buffers[n].fill_(float("nan"))
    rows = stacked.Rows(model, optimizer.params | stack, grad_buffers, pools,
                        {n: torch.stack([s[n] for s in start]) for n in trained}, step=1)  # fmt: skip
    batch = stacked.Batch(audio, visual, labels, real / real.sum(-1, keepdim=True), values)
    model.train()
    with torch.no_grad():
        losses = task.stacked(rows, batch)
    # A trained tensor the loss does not reach (a trainable teacher's unimodal heads) has no
    # gradient: the engine zeroes it, autograd's is zero.
    for n in set(trained) - rows.written:
        assert torch.all(expected_grads[0][n] == 0), n
        grad_buffers[n].zero_()
    torch.testing.assert_close(losses, torch.stack(expected_loss), rtol=1e-10, atol=1e-12)
    for i in range(ROWS):
        for n in trained:
            torch.testing.assert_close(
                grad_buffers[n][i], expected_grads[i][n], rtol=1e-9, atol=1e-12, msg=(name, i, n)
            )
    for n in trained:  # nothing was written into the padding between rows
        numel = optimizer.params[n][0].numel()
        assert torch.all(optimizer._block(optimizer.flat_grads, n, ROWS)[:, numel:] == 0), n


def test_the_proximal_term_is_skipped_exactly_at_the_first_step():
    """At step 0 the trained tensors are their start: the term and its gradient are 0."""
    torch.manual_seed(1)
    model = base_model().double().train()
    noise = pool_size(model, BATCH)
    inner, prox = AVTask(), Proximal(AVTask(), mu=0.5)
    trained = [n for n, _ in model.named_parameters() if group_of(n) in inner.groups]
    state = model.state_dict()
    names = _read_names(model, inner, state)
    tensors = {n: torch.stack([state[n]] * ROWS) for n in names}
    batch = stacked.Batch(torch.randn(ROWS, BATCH, AUDIO, dtype=torch.float64),
                          torch.randn(ROWS, BATCH, VISUAL, dtype=torch.float64),
                          torch.randint(0, CLASSES, (ROWS, BATCH)),
                          torch.full((ROWS, BATCH), 1.0 / BATCH, dtype=torch.float64))  # fmt: skip
    pools = torch.rand(ROWS, noise, dtype=torch.float64)
    results = []
    for task, step in ((inner, 0), (prox, 0), (prox, 3)):  # at step 3 computed, and still 0
        grads = {n: torch.empty_like(tensors[n]) for n in trained}
        rows = stacked.Rows(model, tensors, grads, pools,
                            {n: tensors[n].clone() for n in trained}, step=step)  # fmt: skip
        with torch.no_grad():
            results.append((task.stacked(rows, batch), grads))
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        for n in trained:
            assert torch.equal(grads[n], results[0][1][n]), n


def _sample_loss(task, model, tensors, audio, visual, labels, kwargs):
    """task.sample_loss with the model's tensors replaced by one row's (as the engine does)."""

    class TaskLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, a, v, y):
            return task.sample_loss(self.model, a, v, y, **kwargs)

    wrapper = TaskLoss()
    return functional_call(
        wrapper, {f"model.{n}": t for n, t in tensors.items()}, (audio, visual, labels)
    )


def test_models_the_blocks_do_not_describe_take_the_generic_path():
    model = base_model()
    assert stacked.supports(model)
    model.audio_encoder[2] = torch.nn.GELU()
    assert not stacked.supports(model)
    assert not stacked.supports(torch.nn.Linear(3, 3))
    finetune = base_model()
    finetune.audio_backbone = torch.nn.Linear(4, AUDIO)
    assert not stacked.supports(finetune)
    no_affine = base_model()
    no_affine.audio_encoder[0] = torch.nn.LayerNorm(no_affine.audio_encoder[0].normalized_shape,
                                                    elementwise_affine=False)  # fmt: skip
    assert not stacked.supports(no_affine)
    no_bias = base_model()
    head = no_bias.audio_head
    no_bias.audio_head = torch.nn.Linear(head.in_features, head.out_features, bias=False)
    assert not stacked.supports(no_bias)
