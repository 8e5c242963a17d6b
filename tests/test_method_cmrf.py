"""CMRF: the Beta mixing ratios, the mixed targets, the SMA teacher, the sample-weighted
contrast, and whole runs (learning, resumption, a run alone equal to it in a batch)."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import pytest
import torch

from avfl.fl.data import FederatedData
from avfl.fl.local import supports_lockstep, train_rows
from avfl.fl.types import ClientUpdate, PhaseContext, TrainSettings
from avfl.methods import get_method
from avfl.methods.cmrf import (
    LOSS_SETTINGS,
    TEACHER,
    CMRFServer,
    CMRFTask,
    beta_quantile,
    build_model,
    distance,
    etas_from_accuracies,
    mixed_targets,
    sma_start_round,
)
from avfl.models.heads import AVModel, group_of
from avfl.train import run_job

from .conftest import quiet, tiny_job
from .test_train import stable

DEFAULTS = get_method("cmrf").defaults()


def loss_settings(**changes) -> tuple:
    s = {**DEFAULTS, **changes}
    return tuple((k, s[k]) for k in LOSS_SETTINGS)


def cfg(**changes) -> TrainSettings:
    return replace(
        TrainSettings(local_epochs=2, batch_size=8, lr=2e-3, optimizer="adam", weight_decay=0.0,
                      eval_every=5, selection="best_dev", checkpoint_every=10),
        **changes,
    )  # fmt: skip


def toy_model(dropout: float = 0.0, seed: int = 0):
    """A small CMRF model whose teacher differs from the online model (so every term is live)."""
    torch.manual_seed(seed)
    model = build_model(AVModel(12, 6, 5, 16, dropout), 16, 8, "teacher", seed)
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def toy_data(n: int = 60, clients=(), audio_only=frozenset()) -> FederatedData:
    torch.manual_seed(1)
    return FederatedData(audio=torch.randn(n, 12), visual=torch.randn(n, 6), labels=torch.randint(0, 5, (n,)),
                         clients=list(clients), dev=torch.arange(4), test=torch.arange(4), n_classes=5,
                         class_names=[str(c) for c in range(5)], audio_only=frozenset(audio_only))  # fmt: skip


# --- the mixing ratios and targets ------------------------------------------------------------


def test_beta_quantile_is_scipys_inverse_cdf_and_draws_beta_samples():
    import numpy as np
    from scipy import special

    generator = torch.Generator().manual_seed(0)
    u = torch.cat([torch.rand(200_000, generator=generator), torch.tensor([0.0, 0.5, 1 - 2**-24])])
    edges = np.array([0.0, 1e-6, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1 - 1e-6, 1.0])
    for alpha in (0.1, 2.0):
        d = beta_quantile(u, alpha)
        exact = special.betaincinv(alpha, alpha, u.double().numpy())
        assert abs(d.double().numpy() - exact).max() < 1e-6
        assert torch.equal(d > 0.5, u > 0.5)  # the nearer modality: d > 0.5 exactly when u > 0.5
        # Its distribution, roughly: counts per bin within 5 sigma of Beta(a, a)'s.
        counts = np.histogram(d[:-3].double().numpy(), edges)[0]
        expected = 200_000 * np.diff(special.betainc(alpha, alpha, edges))
        assert (abs(counts - expected) <= 5 * np.sqrt(expected) + 1).all(), (
            alpha,
            counts,
            expected,
        )
    # a = 0.1: most of the mass near 0 and 1 (the mixes are mostly near one modality).
    d = beta_quantile(u[:-3], 0.1)
    assert float(((d < 0.05) | (d > 0.95)).float().mean()) > 0.7


def test_the_nearer_modality_gets_the_mixed_target():
    torch.manual_seed(0)
    ta, tv = torch.randn(4, 5), torch.randn(4, 5)
    randoms = torch.tensor([[0.9, 0.2], [0.1, 0.7], [0.6, 0.5], [0.4, 0.99]])
    d = beta_quantile(randoms[:, 0], 0.1)
    to_a, a_gets, to_v, v_gets = mixed_targets(ta, tv, randoms, 0.1, "one_per_sample")
    mix = d[:, None] * ta + (1 - d[:, None]) * tv  # 4.8, k = audio, l = visual
    assert torch.equal(to_a, mix) and torch.equal(to_v, mix)
    assert a_gets.tolist() == [1.0, 0.0, 1.0, 0.0] and v_gets.tolist() == [0.0, 1.0, 0.0, 1.0]
    nearer_audio = (mix - ta).norm(dim=1) < (mix - tv).norm(dim=1)
    assert nearer_audio.tolist() == [True, False, True, False]  # 4.9: the target is the nearer's
    # The code's both: an audio target nearer audio and a visual one nearer visual, every sample.
    to_a, a_gets, to_v, v_gets = mixed_targets(ta, tv, randoms, 0.1, "both_per_sample")
    assert a_gets.tolist() == v_gets.tolist() == [1.0] * 4
    assert ((to_a - ta).norm(dim=1) <= (to_a - tv).norm(dim=1)).all()
    assert ((to_v - tv).norm(dim=1) <= (to_v - ta).norm(dim=1)).all()
    # One d per batch: the first sample's, for every sample.
    to_a, a_gets, _, _ = mixed_targets(ta, tv, randoms, 0.1, "one_per_batch")
    assert a_gets.tolist() == [1.0] * 4
    torch.testing.assert_close(to_a, d[0] * ta + (1 - d[0]) * tv)


def test_the_distillation_term_is_the_nearer_modalitys_weighted_squared_distance():
    model = toy_model()
    data = toy_data()
    audio, visual, labels = data.audio[:6], data.visual[:6], data.labels[:6]
    randoms = torch.rand(6, 2, generator=torch.Generator().manual_seed(3))
    with_dis = CMRFTask("multimodal", loss_settings())
    without = CMRFTask("multimodal", loss_settings(lambda_dis=0.0))
    args = dict(weight=torch.ones(6), randoms=randoms, audio_eta=0.5, visual_eta=1.0)
    term = with_dis.sample_loss(model, audio, visual, labels, **args) - without.sample_loss(
        model, audio, visual, labels, **args
    )
    with torch.no_grad():
        t = model.teacher
        ta = t.audio_projector(t.audio_embedding(audio))
        tv = t.visual_projector(t.visual_embedding(visual))
        za = model.audio_projector(model.audio_embedding(audio))
        zv = model.visual_projector(model.visual_embedding(visual))
    d = beta_quantile(randoms[:, 0], 0.1)[:, None]
    mix = d * ta + (1 - d) * tv
    audio_nearer = d[:, 0] > 0.5
    expected = torch.where(
        audio_nearer, 0.5 * ((za - mix) ** 2).sum(1), 1.0 * ((zv - mix) ** 2).sum(1)
    )
    torch.testing.assert_close(term, 3.0 * expected, atol=1e-4, rtol=1e-4)
    # The code's distance: unsquared L2 of unit vectors; finite gradient at zero distance.
    z = torch.randn(3, 8, requires_grad=True)
    (g,) = torch.autograd.grad(distance(z, z.detach(), "normalised").sum(), z)
    assert torch.isfinite(g).all()


def test_eta_follows_the_accuracy_ratio():
    assert etas_from_accuracies(0.6, 0.4, 1.2) == (1.0, 0.5)  # audio leads by more than mu
    assert etas_from_accuracies(0.5, 0.45, 1.2) == (0.5, 0.5)
    assert etas_from_accuracies(0.2, 0.5, 1.2) == (0.5, 1.0)
    assert etas_from_accuracies(0.0, 0.0, 1.2) == (0.5, 0.5)


# --- the teacher ------------------------------------------------------------------------------


def _server(model, data, **changes) -> CMRFServer:
    settings = {**DEFAULTS, **changes}
    t0 = sma_start_round(settings["sma_start"], 10)
    return CMRFServer(None, PhaseContext(data, model, 0, cfg()), settings, t0)


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_teacher_is_the_online_model_before_t0_and_the_running_mean_after():
    model = toy_model()
    data = toy_data(clients=[torch.arange(0, 30), torch.arange(30, 60)])
    server = _server(model, data, sma_start=0.2)  # t0 = 2 of 10 rounds
    assert server.t0 == 2
    online = [n for n in model.state_dict() if group_of(n) != TEACHER]
    floats = [n for n in online if model.state_dict()[n].is_floating_point()]
    state = server.start(model.state_dict())
    thetas = [{n: state[n].clone() for n in online}]  # theta_0
    task = CMRFTask("multimodal", loss_settings())
    generator = torch.Generator().manual_seed(5)
    resumed = None
    # 4.7 at t = 0: the starting state itself.
    assert all(torch.equal(state[f"teacher.{n}"], thetas[0][n]) for n in online)
    for rnd in range(6):
        trained = {n: state[n] + torch.randn(state[n].shape, generator=generator) for n in floats}
        update = ClientUpdate(0, task, trained, 3.0)
        new = server.aggregate(rnd, state, [update])
        if resumed is not None:  # a server restored from the checkpoint before this round
            again = resumed.aggregate(rnd, state, [update])
            assert all(torch.equal(again[k], v) for k, v in new.items())
        state = new
        t = rnd + 1
        thetas.append({n: state[n].clone() for n in online})
        for n in floats:
            if t <= 2:  # 4.7: the online state itself
                expected = thetas[t][n]
            else:  # the mean of theta_t0 .. theta_t, by hand in float64
                expected = (sum(thetas[i][n].double() for i in range(2, t + 1)) / (t - 1)).float()
            assert torch.equal(state[f"teacher.{n}"], expected), (t, n)
        if t == 3:
            resumed = _server(model, data, sma_start=0.2)
            resumed.load_state_dict(_roundtrip(server.state_dict()))
    # Clients never carry the teacher: FedAvg has nothing of it to average.
    assert TEACHER not in task.groups and not any(group_of(n) == TEACHER for n in update.state)


def test_teacher_from_round_zero_and_distillation_waiting_for_t0():
    model = toy_model()
    data = toy_data(clients=[torch.arange(0, 30), torch.arange(30, 60)], audio_only={1})
    server = _server(model, data, sma_start=0.0)
    state = server.start(model.state_dict())
    assert server.count == 1 and torch.equal(
        state["teacher.audio_head.weight"], state["audio_head.weight"]
    )
    waiting = _server(model, data, sma_start=0.3, distill_from="sma_start", eta="audio_half")
    before = waiting.assign_tasks(2, [0, 1], state)
    after = waiting.assign_tasks(3, [0, 1], state)
    assert (
        before[0].row_values == {"audio_eta": 0.0, "visual_eta": 0.0} and before[1].audio_eta == 0.0
    )
    assert (
        after[0].row_values == {"audio_eta": 0.5, "visual_eta": 1.0} and after[1].audio_eta == 1.0
    )
    assert before[0].lockstep_key == after[0].lockstep_key  # eta is a per-row value
    # eta from the teacher's accuracies on the client's own training data, by hand (4.11).
    trained = _server(model, data).assign_tasks(0, [0, 1], state)
    assert trained[0].kind == "multimodal" and trained[1].kind == "audio"
    teacher = model.teacher
    teacher.load_state_dict(
        {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")}
    )
    teacher.eval()
    idx, labels = data.clients[0], data.labels[data.clients[0]]
    with torch.no_grad():
        acc_a = float((teacher.audio_logits(data.audio[idx]).argmax(-1) == labels).float().mean())
        acc_v = float((teacher.visual_logits(data.visual[idx]).argmax(-1) == labels).float().mean())
    expected = (1.0 if acc_a > 1.2 * acc_v else 0.5, 1.0 if acc_v > 1.2 * acc_a else 0.5)
    assert (trained[0].audio_eta, trained[0].visual_eta) == expected
    # A teacher whose audio head is forced to the right answers on client 0 earns audio's eta 1.
    with torch.no_grad():
        state["teacher.audio_head.bias"] = torch.zeros_like(state["teacher.audio_head.bias"])
        state["teacher.audio_head.weight"] = torch.zeros_like(state["teacher.audio_head.weight"])
        state["teacher.audio_head.bias"][int(torch.mode(labels).values)] = 10.0
    forced = _server(model, data).assign_tasks(0, [0, 1], state)
    share = float((labels == torch.mode(labels).values).float().mean())
    assert forced[0].audio_eta == (1.0 if share > 1.2 * acc_v else 0.5)


def test_no_gradient_reaches_the_teacher():
    model = toy_model()
    assert supports_lockstep(model)  # BatchNorm-free: the vmapped lockstep path
    data = toy_data()
    randoms = torch.rand(8, 2)
    for kind in ("multimodal", "audio"):
        model.zero_grad(set_to_none=True)
        task = CMRFTask(kind, loss_settings())
        loss = task.sample_loss(model, data.audio[:8], data.visual[:8], data.labels[:8],
                                weight=torch.ones(8), randoms=randoms).mean()  # fmt: skip
        loss.backward()
        assert all(p.grad is None for p in model.teacher.parameters())
        assert model.audio_projector[0].weight.grad.abs().sum() > 0
        trained = {n for n, p in model.named_parameters() if p.grad is not None}
        assert {group_of(n) for n in trained} <= set(task.groups)
    # Through the trainer: a row's result holds only its task's groups, never the teacher.
    starts = [model.state_dict()]
    (row,) = train_rows(model, CMRFTask("multimodal", loss_settings()), starts, [torch.arange(13)],
                        [0], data, cfg())  # fmt: skip
    assert row.state and not any(group_of(n) == TEACHER for n in row.state)


# --- padding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unmasked(CMRFTask):
    """The control: the same loss without the sample weights (the contrast sees padding)."""

    @property
    def uses_sample_weight(self) -> bool:
        return False


@pytest.mark.parametrize("masked", [True, False], ids=["weights", "control"])
def test_a_padded_batch_gives_the_loss_and_gradients_of_the_unpadded_one(masked):
    model = toy_model()
    data = toy_data()
    task = (CMRFTask if masked else _Unmasked)("multimodal", loss_settings())
    params = [p for n, p in model.named_parameters() if group_of(n) in task.groups]
    randoms = torch.rand(8, 2, generator=torch.Generator().manual_seed(2))
    w = torch.tensor([1.0] * 5 + [0.0] * 3)

    def batch_loss(n, weight):
        kw = {"weight": weight} if task.uses_sample_weight else {}
        per_sample = task.sample_loss(model, data.audio[:n], data.visual[:n], data.labels[:n],
                                      randoms=randoms[:n], **kw)  # fmt: skip
        return (per_sample * weight).sum() / weight.sum()  # the trainer's weighting

    unpadded = batch_loss(5, torch.ones(5))
    padded = batch_loss(8, w)  # three other samples as padding
    g_unpadded = torch.autograd.grad(unpadded, params)
    g_padded = torch.autograd.grad(padded, params)
    same = torch.allclose(padded, unpadded, atol=1e-6) and all(
        torch.allclose(a, b, atol=1e-6, rtol=1e-5)
        for a, b in zip(g_padded, g_unpadded, strict=True)
    )
    assert same == masked
    # In lockstep, a 13-clip row's second batch is padded: it trains as on its real samples
    # alone (the one-row path), through the sample weights; the control does not.
    starts = [model.state_dict(), toy_model(seed=1).state_dict()]
    indices = [torch.arange(0, 13), torch.arange(20, 28)]
    (alone,) = train_rows(model, task, starts[:1], indices[:1], [0], data, cfg(lockstep=False))
    together = train_rows(model, task, starts, indices, [0, 1], data, cfg())
    close = all(
        torch.allclose(together[0].state[k], v, atol=1e-5, rtol=1e-4)
        for k, v in alone.state.items()
    )
    assert close == masked


@pytest.mark.parametrize(
    "kind, changes",
    [("multimodal", {"mixing": m, "distance": d})
     for m in ("one_per_sample", "both_per_sample", "one_per_batch") for d in ("squared", "normalised")]
    + [("audio", {"audio_only_clients": "distill"}), ("audio", {"audio_only_clients": "ce"})],
)  # fmt: skip
def test_every_loss_variant_trains_in_lockstep_as_one_row_at_a_time(kind, changes):
    """Rows of 13 and 8 clips, vmapped in lockstep (padding, randoms, row values) and one at a
    time through autograd: the same training, for every variant of the loss."""
    torch.set_num_threads(1)
    model = toy_model(dropout=0.1)
    data = toy_data()
    task = CMRFTask(kind, loss_settings(**changes), audio_eta=0.5)
    other = replace(task, audio_eta=1.0, visual_eta=0.5)  # another client's eta: same lockstep key
    starts = [model.state_dict(), toy_model(seed=1).state_dict()]
    indices = [torch.arange(0, 13), torch.arange(20, 28)]
    together = train_rows(model, [task, other], starts, indices, [0, 1], data, cfg())
    for i, t in enumerate((task, other)):
        (alone,) = train_rows(
            model, t, starts[i : i + 1], indices[i : i + 1], [i], data, cfg(lockstep=False)
        )
        assert abs(together[i].loss - alone.loss) < 1e-5
        for k, v in alone.state.items():
            assert torch.allclose(together[i].state[k], v, atol=1e-5, rtol=1e-4), (i, k)
    assert set(together[0].state) == {n for n in model.state_dict() if group_of(n) in task.groups}


# --- whole runs -----------------------------------------------------------------------------------

RUN = {"federated": {"rounds": 12, "checkpoint_every": 2}, "settings": {"sma_start": 0.25}}


def test_cmrf_learns_and_resumes_identically(tiny_training, tmp_path):
    from avfl.fl.types import Interrupted

    torch.set_num_threads(1)
    (whole,) = run_job(tiny_job(tiny_training, tmp_path / "a", "cmrf", **RUN), log=quiet)
    chance = 1.0 / len(whole["classes"])
    models = whole["test_by_model"]
    assert whole["test"]["top1"] > chance + 0.1 and models["av"]["top1"] > chance + 0.1
    assert {"audio_online", "av_online"} <= set(models)  # the online model, beside the teacher
    assert whole["role"] == "ablation" and whole["health"]["ok"], whole["health"]
    job = tiny_job(tiny_training, tmp_path / "b", "cmrf", **RUN)
    with pytest.raises(Interrupted):
        run_job(job, log=quiet, stop_after=6)  # t0 = 3: the SMA's sum is in the checkpoint
    (resumed,) = run_job(job, log=quiet)
    assert resumed["resumed_from"] == {"cmrf": 6}
    assert resumed["test"] == whole["test"] and resumed["test_by_model"] == models
    assert resumed["dev_curve"] == whole["dev_curve"]


def test_a_cmrf_run_alone_equals_it_in_a_batch_of_runs(tiny_training, tmp_path):
    torch.set_num_threads(1)
    run = {"federated": {"rounds": 6, "checkpoint_every": 2}, "settings": {"sma_start": 0.34}}
    together = run_job(
        tiny_job(tiny_training, tmp_path / "batch", "cmrf", seeds=(0, 1), **run), log=quiet
    )
    assert {r["batch_size"] for r in together} == {2}
    for record in together:
        seed = record["seed"]
        (alone,) = run_job(tiny_job(tiny_training, tmp_path / f"alone{seed}", "cmrf", seeds=(seed,), **run),
                           log=quiet)  # fmt: skip
        assert stable(alone) == stable(record)
