"""The round loop: FedAvg = SGD for one client, determinism, resumption, model selection."""

from __future__ import annotations

import pytest
import torch

from avfl.fl.data import FederatedData
from avfl.fl.engine import Interrupted, Phase, TrainSettings, derive_seed, run_phase
from avfl.fl.tasks import AudioTask, AVTask
from avfl.models.heads import AVModel


def make_data(n_clients: int = 1, n: int = 60, classes: int = 3) -> FederatedData:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, 6, generator=gen) * 2
    audio = centres[labels] + torch.randn(n, 6, generator=gen)
    visual = torch.randn(n, 5, generator=gen) + labels[:, None].float()
    train = torch.arange(0, 40)
    return FederatedData(
        audio=audio, visual=visual, labels=labels,
        clients=list(torch.tensor_split(train, n_clients)), dev=torch.arange(40, 50), test=torch.arange(50, 60),
        n_classes=classes, class_names=[f"c{i}" for i in range(classes)], audio_only=frozenset(),
    )  # fmt: skip


def settings(**kw) -> TrainSettings:
    base = dict(local_epochs=1, batch_size=8, lr=0.1, optimizer="sgd", weight_decay=0.0, eval_every=1,
                selection="last", checkpoint_every=100, seed=3, parallel=False)  # fmt: skip
    return TrainSettings(**{**base, **kw})


def fresh_model() -> AVModel:
    torch.manual_seed(0)
    return AVModel(6, 5, 3, hidden=8, dropout=0.0)


def test_fedavg_with_one_client_equals_plain_sgd():
    data, cfg = make_data(n_clients=1), settings()
    model = fresh_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    phase = Phase("p", [0], lambda c: AudioTask(), rounds=3, clients_per_round=1, select_by="audio")
    result = run_phase(phase, model, init, data, cfg, log=lambda m: None)

    # Independent reference: plain minibatch SGD over the client's data, same batch order.
    ref = fresh_model()
    params = [
        p
        for name, p in ref.named_parameters()
        if name.split(".")[0] in ("audio_encoder", "audio_head")
    ]
    idx = data.clients[0]
    for rnd in range(3):
        torch.manual_seed(derive_seed(cfg.seed, "p", rnd, 0))
        order = idx[torch.randperm(idx.numel())]
        for start in range(0, order.numel(), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(
                ref.audio_logits(data.audio[batch]), data.labels[batch]
            )
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p -= cfg.lr * g
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(result.state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # Groups the task does not train stay at their initial values.
    torch.testing.assert_close(result.state["fusion_head.0.weight"], init["fusion_head.0.weight"])


def test_same_seed_same_result_other_seed_other_result():
    data = make_data(n_clients=4)
    phase = Phase("p", range(4), lambda c: AVTask(), rounds=4, clients_per_round=2, select_by="av")
    runs = []
    for seed in (5, 5, 6):
        model = fresh_model()
        init = {k: v.clone() for k, v in model.state_dict().items()}
        runs.append(
            run_phase(
                phase,
                model,
                init,
                data,
                settings(seed=seed, optimizer="adam", lr=0.01),
                log=lambda m: None,
            )
        )
    for name in runs[0].state:
        assert torch.equal(runs[0].state[name], runs[1].state[name]), name
    assert not torch.equal(
        runs[0].state["fusion_head.0.weight"], runs[2].state["fusion_head.0.weight"]
    )


def test_interrupted_phase_resumes_to_the_same_result(tmp_path):
    data = make_data(n_clients=4)
    phase = Phase("p", range(4), lambda c: AVTask(), rounds=9, clients_per_round=2, select_by="av")
    cfg = settings(
        optimizer="adam", lr=0.01, selection="best_dev", eval_every=2, checkpoint_every=4
    )

    def go(ckpt, stop_after=None):
        model = fresh_model()
        init = {k: v.clone() for k, v in model.state_dict().items()}
        return run_phase(
            phase,
            model,
            init,
            data,
            cfg,
            checkpoint_dir=ckpt,
            log=lambda m: None,
            stop_after=stop_after,
        )

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = go(tmp_path / "a")
    with pytest.raises(Interrupted):
        go(tmp_path / "b", stop_after=6)
    resumed = go(tmp_path / "b")
    assert resumed.resumed_from == 6 and resumed.rounds == 9
    assert resumed.dev_curve == whole.dev_curve and resumed.selected_round == whole.selected_round
    for name in whole.state:
        assert torch.equal(whole.state[name], resumed.state[name]), name


def test_best_dev_selection_keeps_the_best_round():
    data = make_data(n_clients=2)
    phase = Phase(
        "p", range(2), lambda c: AudioTask(), rounds=6, clients_per_round=2, select_by="audio"
    )
    model = fresh_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_phase(
        phase, model, init, data, settings(selection="best_dev", lr=0.5), log=lambda m: None
    )
    scores = [point["dev_audio_top1"] for point in result.dev_curve]
    assert len(scores) == 6
    assert scores[result.selected_round - 1] == max(scores)
    assert scores.index(max(scores)) == result.selected_round - 1  # the first best round


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_lockstep_clients_train_exactly_as_one_at_a_time(optimizer):
    """The parallel path (vmap over clients, padded batches) equals sequential local training."""
    data = make_data(n_clients=4)
    # Unequal client sizes, so padding steps occur.
    data.clients = [
        torch.arange(0, 5),
        torch.arange(5, 17),
        torch.arange(17, 20),
        torch.arange(20, 40),
    ]
    phase = Phase(
        "p",
        range(4),
        lambda c: AVTask() if c % 2 else AudioTask(),
        rounds=3,
        clients_per_round=4,
        select_by="audio",
    )
    results = []
    for parallel in (False, True):
        model = fresh_model()  # dropout 0: the only randomness is the batch order
        init = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = settings(
            optimizer=optimizer, lr=0.01, local_epochs=2, batch_size=4, parallel=parallel
        )
        results.append(run_phase(phase, model, init, data, cfg, log=lambda m: None))
    for name, value in results[0].state.items():
        torch.testing.assert_close(results[1].state[name], value, rtol=1e-4, atol=1e-5, msg=name)
