"""M3Fed: the first-order meta step, the consensus penalty, the server's clusters and
clients' own layers, the personalised evaluation of its clients' models, and whole runs."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from avfl.fl.data import FederatedData
from avfl.fl.local import train_rows
from avfl.fl.types import TrainSettings
from avfl.methods.m3fed import InnerTask, M3FedServer, M3FedTask, _model_class
from avfl.models.heads import AVModel
from avfl.train import run_job

from .conftest import quiet, tiny_job

HIDDEN, CLASSES, RANK = 8, 3, 6
SETTINGS = {
    "mu": 2,
    "lam": 0.6,
    "inner_lr": 0.01,
    "rank_share": 0.75,
    "gcbc": True,
    "gccm": True,
    "cspm": True,
}
SGD = TrainSettings(local_epochs=1, batch_size=8, lr=0.1, optimizer="sgd", weight_decay=0.0,
                    eval_every=1, selection="last", checkpoint_every=1)  # fmt: skip


def _model(seed=0, cspm=True):
    torch.manual_seed(seed)
    base = AVModel(6, 5, CLASSES, HIDDEN, 0.0)
    return _model_class()(base, CLASSES, HIDDEN, RANK, cspm, torch.Generator().manual_seed(seed))


def _batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g),
            torch.randint(0, CLASSES, (n,), generator=g))  # fmt: skip


def _grads(model, loss):
    names = [n for n, _ in model.named_parameters()]
    found = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return {n: g for n, g in zip(names, found, strict=True)}


def test_the_local_step_is_first_order_maml_on_a_support_and_a_query_half():
    model = _model()
    with torch.no_grad():
        model.consensus.weight.add_(0.3)  # G apart from T: the penalty pulls
    audio, visual, labels = _batch()
    weight = torch.ones(8)
    task = M3FedTask("audio", lam=0.6, inner_lr=0.05, cspm=True)
    got = _grads(model, task.sample_loss(model, audio, visual, labels, weight).mean())
    # By hand: the inner step on clips 0-3, not differentiated through; the query loss on 4-7.
    t, w, b, g = (model.personal_projection.weight, model.personal_head.weight,
                  model.personal_head.bias, model.consensus.weight)  # fmt: skip
    z = model.audio_embedding(audio)
    inner = (
        F.cross_entropy(model.personal_logits(z[:4].detach(), t, w, b), labels[:4])
        + 0.3 * ((t - g.detach()) ** 2).sum()
    )
    gt, gw, gb = torch.autograd.grad(inner, [t, w, b])
    t2, w2, b2 = t - 0.05 * gt, w - 0.05 * gw, b - 0.05 * gb
    outer = (
        F.cross_entropy(model.personal_logits(z[4:], t2, w2, b2), labels[4:])
        + 0.3 * ((t2 - g) ** 2).sum()
    )
    want = _grads(model, outer)
    for name in (
        "audio_encoder.1.weight",
        "personal_projection.weight",
        "personal_head.weight",
        "consensus.weight",
    ):
        assert torch.allclose(got[name], want[name], atol=1e-6), name
    # The penalty's gradient on G is -lambda (T* - G): G moves towards the adapted T.
    assert torch.allclose(_grads(model, 0.3 * ((t2.detach() - g) ** 2).sum())["consensus.weight"],
                          -0.6 * (t2.detach() - g), atol=1e-6)  # fmt: skip
    assert got["visual_encoder.1.weight"] is None  # an audio-only client never reads its frames


def test_padding_is_neither_support_nor_query_and_no_inner_step_is_a_plain_query_loss():
    model = _model()
    audio, visual, labels = _batch(n=6)
    task = M3FedTask("audio", lam=0.0, inner_lr=0.0, cspm=True)
    padded = [torch.cat([x, x[:2]]) for x in (audio, visual, labels)]
    weight = torch.tensor([1.0] * 6 + [0.0] * 2)
    a = task.sample_loss(model, audio, visual, labels, torch.ones(6))
    b = task.sample_loss(model, *padded, weight)
    assert torch.allclose((a.sum() / 6), (b * weight).sum() / 6)
    query = F.cross_entropy(model.audio_logits(audio[3:]), labels[3:])
    assert torch.allclose(a.mean(), query)  # inner_lr 0: the query half's plain loss


def _data(n_clients=6, per=10):
    g = torch.Generator().manual_seed(3)
    n = n_clients * per + 20
    labels = torch.arange(n) % CLASSES
    audio = torch.randn(n, 6, generator=g) + F.one_hot(labels, 6).float()
    clients = [torch.arange(c * per, (c + 1) * per) for c in range(n_clients)]
    return FederatedData(audio, torch.randn(n, 5, generator=g), labels, clients,
                         torch.arange(n - 20, n - 10), torch.arange(n - 10, n), CLASSES,
                         ["a", "b", "c"], frozenset({0, 1, 2}))  # fmt: skip


def test_the_server_starts_each_client_from_its_cluster_and_its_own_layers():
    from avfl.fl.types import ClientUpdate, Phase, PhaseContext

    data, model = _data(), _model()
    state = model.state_dict()
    phase = Phase("m3fed", range(6), lambda c: None, 1, 6, "audio")
    server = M3FedServer(phase, PhaseContext(data, model, 0, SGD), SETTINGS, seed=0)
    updates = []
    for c in range(6):  # two families of encoder updates
        own = {
            n: v.clone()
            for n, v in state.items()
            if n.split(".")[0]
            in ("audio_encoder", "personal_projection", "personal_head", "consensus")
        }
        own["audio_encoder.1.weight"] = (
            own["audio_encoder.1.weight"] + (1.0 if c < 3 else -1.0) + 0.01 * c
        )
        own["personal_head.bias"] = own["personal_head.bias"] + c
        updates.append(ClientUpdate(c, M3FedTask("audio", 0.6, 0.01, True), own, 10.0))
    new = server.aggregate(0, state, updates)
    clusters = server.history[0][2]
    assert (
        clusters[:3] == [clusters[0]] * 3
        and clusters[3:] == [clusters[3]] * 3
        and clusters[0] != clusters[3]
    )
    start = server.client_start(1, 4, new)
    mean = torch.stack([updates[c].state["audio_encoder.1.weight"] for c in (3, 4, 5)]).mean(dim=0)
    assert torch.allclose(start["audio_encoder.1.weight"], mean)
    assert torch.equal(start["personal_head.bias"], updates[4].state["personal_head.bias"])
    # The consensus model's head is the data-weighted mean of the clients' heads.
    assert torch.allclose(new["personal_head.bias"], state["personal_head.bias"] + 2.5)
    saved = server.state_dict()
    again = M3FedServer(phase, PhaseContext(data, model, 0, SGD), SETTINGS, seed=0)
    again.load_state_dict(saved)
    assert all(torch.equal(again.client_start(1, 4, new)[n], v) for n, v in start.items())


def test_the_inner_task_trains_the_clients_own_layers_only():
    data, model = _data(), _model()
    start = model.state_dict()
    (row,) = train_rows(model, InnerTask(0.6, True), [start], [data.clients[0]], [1], data, SGD)
    assert set(row.state) == {
        "personal_projection.weight",
        "personal_head.weight",
        "personal_head.bias",
    }


M3 = {"mu": 2}


def test_a_run_learns_records_its_clusters_and_resumes_bit_identically(tiny_training, tmp_path):
    from avfl.fl.types import Interrupted

    fed = {"rounds": 10, "checkpoint_every": 2, "eval_every": 2}
    (whole,) = run_job(
        tiny_job(tiny_training, tmp_path / "a", "m3fed", settings=M3, federated=fed), log=quiet
    )
    assert set(whole["diagnostics"]["clusters"]) == {
        "ari_audio_only",
        "ari_dominant_class",
        "rounds",
    }
    assert whole["diagnostics"]["clusters"]["rounds"] == 10
    assert set(whole["personalised"]) == {"k0", "k1", "k5"}
    chance = 1.0 / len(whole["classes"])
    assert whole["personalised"]["k0"]["mean"] > chance
    job = tiny_job(tiny_training, tmp_path / "b", "m3fed", settings=M3, federated=fed)
    with pytest.raises(Interrupted):
        run_job(job, log=quiet, stop_after=5)
    (resumed,) = run_job(job, log=quiet)
    assert resumed["resumed_from"] == {"m3fed": 5}
    for key in ("test", "test_by_model", "dev_curve", "personalised", "diagnostics"):
        assert resumed[key] == whole[key], key


@pytest.mark.parametrize("off", [{"gcbc": False}, {"gccm": False}, {"cspm": False}, {"lam": 0.0}])
def test_every_ablation_runs(tiny_training, tmp_path, off):
    fed = {"rounds": 4, "eval_every": 2}
    (record,) = run_job(
        tiny_job(tiny_training, tmp_path, "m3fed", settings={**M3, **off}, federated=fed), log=quiet
    )
    assert record["personalised"]["k1"]["mean"] is not None
    if off == {"gcbc": False}:
        assert record["diagnostics"]["clusters"]["rounds"] == 0  # one cluster: nothing to compare


def test_building_the_model_draws_nothing_from_the_global_generator():
    """A job's runs build their models in parallel threads while others seed and draw from
    PyTorch's global generator (avfl.train): a draw here would change another run's start."""
    torch.manual_seed(0)
    base = AVModel(6, 5, CLASSES, HIDDEN, 0.0)
    state = torch.get_rng_state()
    _model_class()(base, CLASSES, HIDDEN, RANK, True, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)
