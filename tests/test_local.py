"""Local training of stacked rows: a row's result does not depend on the rows beside it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from avfl.fl.data import FederatedData
from avfl.fl.local import train_rows
from avfl.fl.optimizer import RowOptimizer
from avfl.fl.tasks import AudioTask, AVTask
from avfl.fl.types import TrainSettings
from avfl.models.heads import AVModel

SHAPES = [
    (256, 70, 12, 64),
    (768, 512, 51, 128),
    (33, 17, 7, 24),
]  # audio dim, visual dim, classes, hidden
SIZES = (7, 40, 23, 64, 3, 33, 9)


def cfg(optimizer="adam"):
    return TrainSettings(local_epochs=2, batch_size=8, lr=2e-3, optimizer=optimizer, weight_decay=1e-4,
                         eval_every=5, selection="best_dev", checkpoint_every=10)  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "task", [AudioTask(), AVTask(), AVTask(audio_head_weight=1.0)], ids=["audio", "av", "av+head"]
)
def test_a_row_trains_bitwise_alike_alone_and_in_any_company(shape, task):
    torch.set_num_threads(1)
    da, dv, classes, hidden = shape
    torch.manual_seed(0)
    n = 400
    data = FederatedData(audio=torch.randn(n, da), visual=torch.randn(n, dv), labels=torch.randint(0, classes, (n,)),
                         clients=[], dev=torch.arange(4), test=torch.arange(4), n_classes=classes, class_names=[],
                         audio_only=frozenset())  # fmt: skip
    starts = []
    for seed in range(len(SIZES)):
        torch.manual_seed(seed)
        starts.append(AVModel(da, dv, classes, hidden, 0.1).state_dict())
    indices = [torch.randint(0, n, (size,)) for size in SIZES]
    template = AVModel(da, dv, classes, hidden, 0.1)
    alone = [
        train_rows(template, task, [starts[i]], [indices[i]], [i], data, cfg())[0]
        for i in range(len(SIZES))
    ]
    for combo in ([0, 1, 2, 3, 4, 5, 6], [5, 3, 1], [6, 4, 2, 0, 1]):
        together = train_rows(
            template,
            task,
            [starts[i] for i in combo],
            [indices[i] for i in combo],
            combo,
            data,
            cfg(),
        )
        for i, row in zip(combo, together, strict=True):
            assert row.steps == alone[i].steps
            assert row.loss == alone[i].loss
            for name, value in alone[i].state.items():
                assert torch.equal(row.state[name], value), (combo, i, name)


def test_padding_of_the_optimizer_buffers_stays_zero_and_views_hold_the_parameters():
    stacked = {"w": torch.randn(3, 5, 7), "b": torch.randn(3, 7)}
    optimizer = RowOptimizer(
        [{k: v[i] for k, v in stacked.items()} for i in range(3)], list(stacked), cfg()
    )
    for name, value in stacked.items():
        assert torch.equal(optimizer.params[name], value)
        assert optimizer.padded(name).shape[1] % 64 == 0
    optimizer.step({k: torch.ones_like(v) for k, v in stacked.items()})
    for name, value in stacked.items():
        n = value[0].numel()
        assert torch.all(optimizer.padded(name)[:, n:] == 0)
        assert torch.all(optimizer.params[name] < value)  # every real element took a step down


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_step_over_the_active_prefix_leaves_the_finished_rows_as_they_are(optimizer):
    torch.manual_seed(0)
    starts = [{"w": torch.randn(3, 5), "b": torch.randn(7)} for _ in range(4)]
    opt = RowOptimizer(starts, ["w", "b"], cfg(optimizer))
    full = {n: torch.randn(4, *starts[0][n].shape) for n in ("w", "b")}
    opt.step(full)
    before = {n: p.clone() for n, p in opt.params.items()}
    opt.step({n: g[:2] for n, g in full.items()}, 2)
    for n, p in opt.params.items():
        assert torch.equal(p[2:], before[n][2:])
        assert not torch.equal(p[:2], before[n][:2])
    # The prefix step is the step those rows would take in a stack of their own.
    alone = RowOptimizer(starts[:2], ["w", "b"], cfg(optimizer))
    alone.step({n: g[:2] for n, g in full.items()})
    alone.step({n: g[:2] for n, g in full.items()})
    for n in ("w", "b"):
        assert torch.equal(alone.params[n], opt.params[n][:2])


def test_padded_adam_equals_pytorchs_adam_on_one_row():
    torch.manual_seed(0)
    start = torch.randn(1, 13)
    grads = [torch.randn(1, 13) for _ in range(4)]
    ours = RowOptimizer([{"p": start[0]}], ["p"], cfg())
    reference = start.clone().requires_grad_(False)
    torch_adam = torch.optim.Adam([reference], lr=2e-3, weight_decay=1e-4)
    for g in grads:
        ours.step({"p": g})
        reference.grad = g.clone()
        torch_adam.step()
    torch.testing.assert_close(ours.params["p"], reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_direct_kernels_step_exactly_as_torch_optim_does(optimizer):
    """RowOptimizer calls the fused/foreach kernels itself: bit for bit torch.optim's step."""
    torch.manual_seed(1)
    starts = [{"w": torch.randn(5, 7), "b": torch.randn(7)} for _ in range(3)]
    settings = cfg(optimizer=optimizer)
    ours = RowOptimizer(starts, ["w", "b"], settings)
    theirs = {n: ours.padded(n).clone() for n in ours.names}
    kind = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    option = {"fused": True} if optimizer == "adam" else {"foreach": True}
    reference = kind(
        list(theirs.values()), lr=settings.lr, weight_decay=settings.weight_decay, **option
    )
    for _ in range(5):
        grads = {n: torch.randn(3, *p.shape[1:]) for n, p in ours.params.items()}
        ours.step(grads)
        for n, g in grads.items():
            padded = torch.zeros_like(theirs[n])
            padded[:, : g[0].numel()] = g.reshape(3, -1)
            theirs[n].grad = padded
        reference.step()
    for n in theirs:
        assert torch.equal(ours.padded(n), theirs[n]), n


@pytest.mark.parametrize("clip", [None, 10.0, 0.5], ids=["no-clip", "clip-10", "clip-0.5"])
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
def test_fedmultimodals_sgd_steps_each_row_exactly_as_torch_optim_and_clip_grad_norm(
    momentum, clip
):
    """SGD with momentum, weight decay and gradient clipping (FedMultimodal's local optimizer):
    each row of the stack ends bit for bit where a client's own torch.optim.SGD(foreach=True),
    after torch.nn.utils.clip_grad_norm_ on its model's gradients, ends. Rows finish at
    different steps (a prefix keeps training), and the gradients come both given and in place."""

    torch.manual_seed(3)
    shapes = {"w": (51, 128), "b": (51,), "v": (13, 3)}  # aligned and padded blocks
    rows, steps = 4, [6, 6, 4, 2]
    settings = replace(cfg("sgd"), momentum=momentum, grad_clip_norm=clip, weight_decay=1e-5)
    starts = [{n: torch.randn(*s) for n, s in shapes.items()} for _ in range(rows)]
    grads = [
        [{n: 3 * torch.randn(*s) for n, s in shapes.items()} for _ in range(6)] for _ in range(rows)
    ]
    ours = RowOptimizer(starts, list(shapes), settings)
    for step in range(6):
        k = sum(1 for n in steps if n > step)
        if step % 2:  # gradients given
            ours.step({n: torch.stack([grads[r][step][n] for r in range(k)]) for n in shapes}, k)
        else:  # gradients already in the buffer (the written-out kernels)
            for n in shapes:
                ours.grad_views[n][:k].copy_(torch.stack([grads[r][step][n] for r in range(k)]))
            ours.step(active=k)
    clipped = 0
    for r in range(rows):
        params = [starts[r][n].clone().requires_grad_(True) for n in shapes]
        reference = torch.optim.SGD(params, lr=settings.lr, momentum=momentum,
                                    weight_decay=settings.weight_decay, foreach=True)  # fmt: skip
        for step in range(steps[r]):
            for p, n in zip(params, shapes, strict=True):
                p.grad = grads[r][step][n].clone()
            if clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
                clipped += int(norm > clip)
            reference.step()
        for p, n in zip(params, shapes, strict=True):
            assert torch.equal(ours.params[n][r], p.detach()), (r, n)
    assert (clipped > 0) == (clip is not None)  # the clip was reached, so it was tested


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_step_of_every_row_from_the_gradient_buffer_equals_a_step_per_parameter(optimizer):
    """The written-out kernels' step (one kernel call over the flat buffer, gradients already in
    place) updates every element exactly as the per-parameter step with given gradients."""
    torch.manual_seed(2)
    shapes = {"w": (51, 128), "b": (51,), "v": (768,)}  # aligned and padded blocks
    starts = [{n: torch.randn(*s) for n, s in shapes.items()} for _ in range(5)]
    settings = cfg(optimizer=optimizer)
    given, in_place = (
        RowOptimizer(starts, list(shapes), settings),
        RowOptimizer(starts, list(shapes), settings),
    )
    for active in (5, 5, 5, 3):
        grads = {n: torch.randn(active, *s) for n, s in shapes.items()}
        given.step(grads, active)
        for n in shapes:
            in_place.grad_views[n][:active].copy_(grads[n])
        in_place.step(active=active)
    for n in shapes:
        assert torch.equal(given.padded(n), in_place.padded(n)), n


class _BatchCentred:
    """A loss that couples a batch's samples: cross-entropy plus each embedding's squared
    distance from the batch's mean embedding (as contrastive terms and batch statistics do).
    With `masked`, the mean is over the real samples only (the sample-weight seam)."""

    name = "centred"
    groups = AudioTask().groups
    reads = AudioTask().reads

    def __init__(self, masked: bool):
        self.uses_sample_weight = masked

    def sample_loss(self, model, audio, visual, labels, weight=None):
        import torch.nn.functional as F

        embedding = model.audio_embedding(audio)
        w = torch.ones(audio.shape[0]) if weight is None else weight
        mean = (embedding * w[:, None]).sum(0) / w.sum().clamp_min(1.0)
        spread = ((embedding - mean) ** 2).sum(-1)
        return F.cross_entropy(model.audio_head(embedding), labels, reduction="none") + 0.1 * spread


@pytest.mark.parametrize("masked", [True, False], ids=["seam", "no-seam"])
def test_a_loss_that_couples_samples_sees_no_padding_through_the_sample_weights(masked):
    """Rows of 13 and 8 clips in batches of 8: in lockstep the 13-clip row's second batch is
    padded to 8 with zero-weight samples. Through the seam (`uses_sample_weight`) the padded
    batch gives the loss and gradients of the unpadded one, so the row trains as it does on its
    own real samples; without it the padding leaks into the batch mean."""
    torch.manual_seed(0)
    n, classes = 60, 5
    data = FederatedData(audio=torch.randn(n, 12), visual=torch.randn(n, 6), labels=torch.randint(0, classes, (n,)),
                         clients=[], dev=torch.arange(4), test=torch.arange(4), n_classes=classes, class_names=[],
                         audio_only=frozenset())  # fmt: skip
    template = AVModel(12, 6, classes, 16, 0.0)
    starts = [AVModel(12, 6, classes, 16, 0.0).state_dict() for _ in range(2)]
    indices = [torch.arange(0, 13), torch.arange(20, 28)]
    task = _BatchCentred(masked)
    settings = cfg()
    # The reference trains each row alone through autograd on its real samples only (the row
    # path: no padding); lockstep pads a row's last batch to the batch size.
    unpadded = replace(settings, lockstep=False)
    alone = [
        train_rows(template, task, [starts[i]], [indices[i]], [i], data, unpadded)[0]
        for i in range(2)
    ]
    together = train_rows(template, task, starts, indices, [0, 1], data, settings)
    padded_row = together[0]
    close = all(
        torch.allclose(padded_row.state[k], v, atol=1e-6, rtol=1e-5)
        for k, v in alone[0].state.items()
    )
    assert close == masked
    assert (
        abs(padded_row.loss - alone[0].loss) < 1e-5 if masked else padded_row.loss != alone[0].loss
    )
    # The unpadded row trains alike either way.
    for k, v in alone[1].state.items():
        assert torch.allclose(together[1].state[k], v, atol=1e-6, rtol=1e-5)


def _schedule_before_the_seam(sizes, seeds, epochs, batch, noise):
    """`row_schedule` as it was before per-sample randoms: every draw a row made then."""
    per_epoch = [math.ceil(n / batch) for n in sizes]
    total = epochs * max(per_epoch)
    positions = torch.zeros(len(sizes), total, batch, dtype=torch.long)
    weights = torch.zeros(len(sizes), total, batch)
    pools = torch.zeros(len(sizes), total, noise)
    for i, (n, seed) in enumerate(zip(sizes, seeds, strict=True)):
        generator = torch.Generator().manual_seed(seed)
        steps = per_epoch[i]
        for epoch in range(epochs):
            span = slice(epoch * steps, (epoch + 1) * steps)
            positions[i, span].view(-1)[:n] = torch.randperm(n, generator=generator)
            weights[i, span].view(-1)[:n] = 1.0
        pools[i, : epochs * steps] = torch.rand(epochs * steps, noise, generator=generator)
    return positions, weights, pools


def test_per_sample_randoms_change_no_schedule_and_do_not_depend_on_the_company():
    from avfl.fl.local import row_schedule

    sizes, seeds = [13, 8, 21], [11, 12, 13]
    before = _schedule_before_the_seam(sizes, seeds, 2, 8, 40)
    without = row_schedule(sizes, seeds, 2, 8, 40)
    with_randoms = row_schedule(sizes, seeds, 2, 8, 40, randoms=3)
    assert without[3] is None  # a task without the seam draws nothing more
    for old, new, drawn in zip(before, without[:3], with_randoms[:3], strict=True):
        assert torch.equal(old, new) and torch.equal(old, drawn)
    draws = with_randoms[3]
    assert draws.shape == (3, 6, 8, 3) and draws.min() >= 0 and draws.max() < 1
    for i in range(3):  # a row scheduled alone, or beside other rows: the same uniforms
        (alone,) = row_schedule([sizes[i]], [seeds[i]], 2, 8, 40, randoms=3)[3]
        steps = alone.shape[0]
        assert torch.equal(draws[i, :steps], alone) and not draws[i, steps:].any()


class _RandomlyWeighted:
    """A loss that reads pre-drawn per-sample randoms: each sample's cross-entropy weighted
    by its first uniform, plus its embedding scaled by its second."""

    name = "randomly_weighted"
    groups = AudioTask().groups
    reads = AudioTask().reads
    randoms_per_sample = 2

    def __init__(self):
        self.seen: list[list[list[float]]] | None = None  # a list: record (the one-row path)

    def sample_loss(self, model, audio, visual, labels, randoms):
        import torch.nn.functional as F

        if self.seen is not None:  # the one-row path: no vmap, so the values can be read
            self.seen.append(randoms.tolist())
        embedding = model.audio_embedding(audio)
        ce = F.cross_entropy(model.audio_head(embedding), labels, reduction="none")
        return ce * (0.5 + randoms[:, 0]) + 0.1 * randoms[:, 1] * embedding.sum(-1)


def test_a_rows_randoms_reach_its_loss_alike_alone_in_company_and_on_the_one_row_path():
    """Rows of unequal sizes (padded in lockstep) with a loss that reads its randoms: each row
    trains bitwise alike alone or in any company, equals the one-row path (which reads its
    real samples' randoms only), and its loss saw exactly its schedule's uniforms."""
    from avfl.fl.local import row_schedule
    from avfl.models.dropout import pool_size

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n, classes = 80, 5
    data = FederatedData(audio=torch.randn(n, 12), visual=torch.randn(n, 6), labels=torch.randint(0, classes, (n,)),
                         clients=[], dev=torch.arange(4), test=torch.arange(4), n_classes=classes, class_names=[],
                         audio_only=frozenset())  # fmt: skip
    template = AVModel(12, 6, classes, 16, 0.1)
    starts = [AVModel(12, 6, classes, 16, 0.1).state_dict() for _ in range(3)]
    indices = [torch.arange(0, 13), torch.arange(20, 28), torch.arange(30, 51)]
    task = _RandomlyWeighted()
    alone = [
        train_rows(template, task, [starts[i]], [indices[i]], [i], data, cfg())[0] for i in range(3)
    ]
    for combo in ([0, 1, 2], [2, 0]):
        together = train_rows(template, task, [starts[i] for i in combo], [indices[i] for i in combo],
                              combo, data, cfg())  # fmt: skip
        for i, row in zip(combo, together, strict=True):
            assert row.loss == alone[i].loss
            assert all(torch.equal(row.state[k], v) for k, v in alone[i].state.items()), (combo, i)
    one_row = replace(cfg(), lockstep=False)
    for i in range(3):
        task.seen = []
        (row,) = train_rows(template, task, [starts[i]], [indices[i]], [i], data, one_row)
        for k, v in alone[i].state.items():
            assert torch.allclose(row.state[k], v, atol=1e-6, rtol=1e-5), (i, k)
        noise = pool_size(template, 8)
        expected = row_schedule([len(indices[i])], [i], 2, 8, noise, randoms=2)[3][0]
        per_epoch = math.ceil(len(indices[i]) / 8)
        assert len(task.seen) == expected.shape[0] == 2 * per_epoch
        for step, seen in enumerate(task.seen):
            real = min(8, len(indices[i]) - 8 * (step % per_epoch))
            assert seen == expected[step, :real].tolist()
    task.seen = None
    # The randoms matter: another seed's draws train another model.
    (other,) = train_rows(template, task, [starts[0]], [indices[0]], [7], data, cfg())
    assert not torch.equal(other.state["audio_head.weight"], alone[0].state["audio_head.weight"])
