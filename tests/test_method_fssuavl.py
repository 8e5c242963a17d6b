"""FSSUAVL: the contrastive task, the one backbone, the two phases, and whole runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from avfl.fl.contrastive import DRAWS, ContrastiveTask
from avfl.fl.data import build_federated_data
from avfl.fl.local import train_rows, trains_in_lockstep
from avfl.fl.types import TrainSettings
from avfl.models.ssl import SSLModel
from avfl.train import run_job

from .conftest import quiet, tiny_job

# Sized for the tests: 16x16 views, 3 rounds of one local epoch, a probe of 5 rounds.
SMALL = {"image_size": 16, "pretrain_rounds": 3, "pretrain_local_epochs": 1,
         "probe_rounds_share": 0.25}  # fmt: skip
SGD = TrainSettings(local_epochs=1, batch_size=64, lr=0.03, optimizer="sgd", weight_decay=1e-4,
                    eval_every=1, selection="last", checkpoint_every=1, momentum=0.9)  # fmt: skip


def _data(training, rate=0.5):
    """The tiny fold's fbank and frames as the trainer holds them."""
    from avfl.data.manifest import STATUS_OK, read_manifest

    features = training["features"]
    rows = [r for r in read_manifest(features / "manifest.tsv") if r.status == STATUS_OK]
    partition = json.loads((training["root"] / "partition.json").read_text())
    return build_federated_data(
        partition, {r.clip_id: r.row for r in rows}, {r.clip_id: r.label for r in rows},
        torch.from_numpy(np.load(features / "fbank.npy")),
        torch.from_numpy(np.load(features / "frames.npy")), rate, torch.device("cpu"),
    )  # fmt: skip


def _model(data, seed=0):
    return SSLModel("small_cnn", data.n_classes, 16, 200, -6.0, 4.0,
                    torch.Generator().manual_seed(seed))  # fmt: skip


def _train(model, data, task, clients, seeds=None, visual=None):
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = data if visual is None else replace(data, visual=visual)
    return train_rows(model, task, [start] * len(clients), [data.clients[c] for c in clients],
                      seeds or [11 + c for c in clients], data, SGD)  # fmt: skip


def test_an_audio_only_client_trains_on_its_audio_views_alone(tiny_training):
    data = _data(tiny_training)
    model = _model(data)
    audio_task = ContrastiveTask(("audio",), 0.5)
    both_task = ContrastiveTask(("audio", "visual"), 0.5)
    assert audio_task.randoms_per_sample == both_task.randoms_per_sample == DRAWS
    noise = torch.randint(0, 256, data.visual.shape, dtype=torch.uint8)
    (a,) = _train(model, data, audio_task, [0])
    (b,) = _train(model, data, audio_task, [0], visual=noise)  # its frames are never read
    assert math.isfinite(a.loss) and a.loss == b.loss
    assert all(torch.equal(a.state[n], b.state[n]) for n in a.state)
    assert set(a.state) == {n for n in model.state_dict() if n.startswith(("shared_backbone.", "projection."))
                            and model.state_dict()[n].is_floating_point()}  # fmt: skip
    (c,) = _train(model, data, both_task, [0])
    (d,) = _train(model, data, both_task, [0], visual=noise)
    assert c.loss != d.loss  # a multimodal client's loss reads its frames


def test_one_backbone_an_audio_only_update_moves_the_image_embeddings(tiny_training):
    data = _data(tiny_training)
    model = _model(data)
    frames = data.visual[:4]
    model.eval()
    before = model.visual_features(frames)
    (update,) = _train(model, data, ContrastiveTask(("audio",), 0.5), [1])
    model.load_state_dict({**model.state_dict(), **update.state})
    model.eval()
    assert not torch.allclose(model.visual_features(frames), before)


def test_clients_train_row_by_row_and_alike_alone_or_together(tiny_training):
    data = _data(tiny_training)
    model = _model(data)
    task = ContrastiveTask(("audio", "visual"), 0.5)
    assert not trains_in_lockstep(model, task, SGD)  # BatchNorm: no padding reaches a batch
    together = _train(model, data, task, [0, 2, 3])
    alone = [_train(model, data, task, [c])[0] for c in (0, 2, 3)]
    for t, a in zip(together, alone, strict=True):
        assert t.loss == a.loss and all(torch.equal(t.state[n], a.state[n]) for n in t.state)


def test_the_fedavg_weight_of_a_client_is_its_clip_count(tiny_training):
    from avfl.fl.engine import NO_DEV, run_phase
    from avfl.fl.server import FedAvgServer
    from avfl.fl.types import Phase

    data = _data(tiny_training, rate=0.5)
    model = _model(data)
    seen = []

    class Recording(FedAvgServer):
        def aggregate(self, rnd, state, updates):
            seen.extend((u.client, u.weight, u.task.modalities) for u in updates)
            return super().aggregate(rnd, state, updates)

    tasks = {
        False: ContrastiveTask(("audio", "visual"), 0.5),
        True: ContrastiveTask(("audio",), 0.5),
    }
    phase = Phase("simclr", range(len(data.clients)), lambda c: tasks[c in data.audio_only], 1,
                  len(data.clients), NO_DEV, server=lambda p, c: Recording(p, c))  # fmt: skip
    result = run_phase(phase, model, model.state_dict(), data, SGD, seed=0, log=quiet)
    assert result.selected_round == 1 and [set(p) for p in result.dev_curve] == [
        {"round", "train_loss"}
    ]
    assert sorted(c for c, _, _ in seen) == list(range(len(data.clients)))
    for client, weight, modalities in seen:
        assert weight == data.client_size(client)
        assert modalities == (("audio",) if client in data.audio_only else ("audio", "visual"))


def test_the_probe_trains_the_head_on_the_frozen_pretrained_backbone(tiny_training, tmp_path):
    (record,) = run_job(tiny_job(tiny_training, tmp_path, "fssuavl", settings=SMALL), log=quiet)
    assert record["rounds"] == {"simclr": 3, "probe": 5}
    assert record["selected_round"]["simclr"] == 3  # no dev metric: the last round
    assert "probe_central" in record["test_by_model"]
    states = torch.load(tmp_path / "r0.5_seed0" / "model.pt", weights_only=True)["states"]
    evaluated, backbone = states["evaluated_audio"], states["backbone"]
    assert backbone and all(torch.equal(evaluated[n], v) for n, v in backbone.items())
    data = _data(tiny_training)
    initial = _model(data).state_dict()  # what phase 1 starts from, but for the fbank statistics
    assert any(not torch.equal(initial[n], v) for n, v in backbone.items())
    assert record["budget"]["own"]["client_trainings"] == 3 * 4 + 5 * 4


def test_a_resumed_run_equals_an_uninterrupted_one(tiny_training, tmp_path):
    from avfl.fl.types import Interrupted

    settings = {**SMALL, "pretrain_rounds": 4}
    fed = {"checkpoint_every": 1, "eval_every": 1}
    (whole,) = run_job(
        tiny_job(tiny_training, tmp_path / "a", "fssuavl", settings=settings, federated=fed),
        log=quiet,
    )
    job = tiny_job(tiny_training, tmp_path / "b", "fssuavl", settings=settings, federated=fed)
    with pytest.raises(Interrupted):
        run_job(job, log=quiet, stop_after=2)
    (resumed,) = run_job(job, log=quiet)
    assert resumed["resumed_from"] == {"simclr": 2}
    assert resumed["dev_curve"] == whole["dev_curve"] and resumed["test"] == whole["test"]
    assert resumed["test_by_model"] == whole["test_by_model"]


@pytest.mark.slow
def test_the_ssl_loss_falls_and_the_pretrained_probes_beat_the_random_init_probe_on_dev(
    tiny_training, tmp_path
):
    settings = {"image_size": 16, "pretrain_rounds": 30, "pretrain_local_epochs": 1}
    dev: dict[str, list[float]] = {}
    for method in ("fssuavl", "fassl", "ssl_random_probe"):
        for seed in (0, 1):
            job = tiny_job(
                tiny_training,
                tmp_path / f"{method}{seed}",
                method,
                seeds=(seed,),
                settings=settings,
            )
            (record,) = run_job(job, log=quiet)
            dev.setdefault(method, []).append(
                max(p["dev_audio_top1"] for p in record["dev_curve"]["probe"])
            )
            losses = [p["train_loss"] for p in record["dev_curve"].get("simclr", [])]
            if method != "ssl_random_probe":
                assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    pretrained = np.mean(dev["fssuavl"] + dev["fassl"])
    assert pretrained > np.mean(dev["ssl_random_probe"]), dev


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_building_the_model_draws_nothing_from_the_global_generator(backbone):
    """A job's runs build their models in parallel threads while others seed and draw from
    PyTorch's global generator (avfl.train): a draw here would change another run's start."""
    state = torch.get_rng_state()
    model = SSLModel(backbone, 5, 16, 200, -6.0, 4.0, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    again = SSLModel(backbone, 5, 16, 200, -6.0, 4.0, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, again.state_dict()[n]) for n, v in model.state_dict().items())
