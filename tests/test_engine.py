"""The round loop: FedAvg = SGD for one client, determinism, resumption, model selection,
server strategies that keep state, and many runs advancing together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avfl.fl.data import FederatedData
from avfl.fl.engine import PhaseRequest, run_phase, run_phases
from avfl.fl.server import FedAvgServer
from avfl.fl.tasks import AudioTask, AVTask
from avfl.fl.types import Interrupted, Phase, TrainSettings, derive_seed
from avfl.models.heads import AVModel
from avfl.records import CHECKSUM_KEY, verify_checksum, with_checksum

from .conftest import quiet
from .helpers import flip_a_tensor_byte


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
                selection="last", checkpoint_every=100)  # fmt: skip
    return TrainSettings(**{**base, **kw})


def fresh_model(dropout: float = 0.0) -> AVModel:
    torch.manual_seed(0)
    return AVModel(6, 5, 3, hidden=8, dropout=dropout)


def initial(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fedavg_with_one_client_equals_plain_sgd():
    data, cfg = make_data(n_clients=1), settings()
    model = fresh_model()
    init = initial(model)
    phase = Phase("p", [0], lambda c: AudioTask(), rounds=3, clients_per_round=1, select_by="audio")
    result = run_phase(phase, model, init, data, cfg, seed=3, log=quiet)

    # Independent reference: plain minibatch SGD over the client's data, same batch order
    # (each round's order is a permutation drawn from the client's round seed).
    ref = fresh_model()
    params = [
        p
        for name, p in ref.named_parameters()
        if name.split(".")[0] in ("audio_encoder", "audio_head")
    ]
    idx = data.clients[0]
    for rnd in range(3):
        generator = torch.Generator().manual_seed(derive_seed(3, "p", rnd, 0))
        order = idx[torch.randperm(idx.numel(), generator=generator)]
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
    assert torch.equal(result.state["fusion_head.0.weight"], init["fusion_head.0.weight"])
    assert result.client_updates == 3 and result.local_steps == 3 * 5


def test_same_seed_same_result_other_seed_other_result():
    data = make_data(n_clients=4)
    phase = Phase("p", range(4), lambda c: AVTask(), rounds=4, clients_per_round=2, select_by="av")
    runs = []
    for seed in (5, 5, 6):
        model = fresh_model(dropout=0.2)
        runs.append(
            run_phase(
                phase,
                model,
                initial(model),
                data,
                settings(optimizer="adam", lr=0.01),
                seed,
                log=quiet,
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
        model = fresh_model(dropout=0.2)
        return run_phase(phase, model, initial(model), data, cfg, 1, checkpoint_dir=ckpt, log=quiet,
                         stop_after=stop_after)  # fmt: skip

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = go(tmp_path / "a")
    with pytest.raises(Interrupted):
        go(tmp_path / "b", stop_after=6)
    resumed = go(tmp_path / "b")
    assert resumed.resumed_from == 6 and resumed.rounds == 9
    assert resumed.dev_curve == whole.dev_curve and resumed.selected_round == whole.selected_round
    assert resumed.client_updates == whole.client_updates == 18
    for name in whole.state:
        assert torch.equal(whole.state[name], resumed.state[name]), name


def checkpointed_audio_phase() -> tuple[FederatedData, Phase, TrainSettings]:
    """What the checkpoint tests interrupt: 4 clients, 6 rounds of 2, a checkpoint every 2."""
    data = make_data(n_clients=4)
    phase = Phase("p", range(4), lambda c: AudioTask(), rounds=6, clients_per_round=2,
                  select_by="audio")  # fmt: skip
    return data, phase, settings(checkpoint_every=2)


@pytest.mark.parametrize(
    "damage",
    [
        "empty",
        "cut short",
        "not a checkpoint",
        "another format",
        "a byte flipped in a tensor",
        "format 4 without its checksum",
    ],
)
def test_an_unreadable_checkpoint_is_set_aside_and_only_its_run_trains_from_round_0(
    tmp_path, damage
):
    """Two runs of a batch were interrupted; one's checkpoint was damaged afterwards (a disk
    fault, a partial copy, another version's file, a flipped bit that torch.load reads
    silently and only the checkpoint's checksum catches). That run trains from round 0 and the
    other resumes; both end as if never interrupted, and the log names the damaged file."""
    data, phase, cfg = checkpointed_audio_phase()
    logged: list[str] = []

    def go(folder: str, stop_after=None):
        runs = []
        for seed in (3, 4):
            model = fresh_model()
            ckpt = tmp_path / folder / f"seed{seed}"
            ckpt.mkdir(parents=True, exist_ok=True)
            runs.append(PhaseRequest(phase, model, initial(model), data, cfg, seed, ckpt,
                                 logged.append, stop_after))  # fmt: skip
        return run_phases(runs)

    whole = go("whole")
    with pytest.raises(Interrupted):
        go("killed", stop_after=4)
    path = tmp_path / "killed" / "seed4" / "p.ckpt"
    good = path.read_bytes()
    if damage == "another format":
        torch.save({**torch.load(path, weights_only=False), "format": -1}, path)
    elif damage == "a byte flipped in a tensor":
        flip_a_tensor_byte(path)
        assert torch.load(path, weights_only=False)["format"] == 4  # loads without complaint
    elif damage == "format 4 without its checksum":
        saved = torch.load(path, weights_only=False)
        torch.save({k: v for k, v in saved.items() if k != CHECKSUM_KEY}, path)
    else:
        path.write_bytes({"empty": b"", "cut short": good[: len(good) // 2],
                          "not a checkpoint": b"x" * 100}[damage])  # fmt: skip
    logged.clear()
    again = go("killed")
    assert [r.resumed_from for r in again] == [4, 0]
    for before, after in zip(whole, again, strict=True):
        assert after.dev_curve == before.dev_curve and after.rounds == 6
        for name in before.state:
            assert torch.equal(before.state[name], after.state[name]), name
    (line,) = [m for m in logged if "cannot resume" in m]
    assert str(path) in line and "round 0" in line
    if damage == "a byte flipped in a tensor":
        assert "do not match their checksum" in line
    assert path.with_name("p.ckpt.unreadable").exists()


def test_a_checkpoint_of_the_version_before_checksums_resumes(tmp_path):
    """A job interrupted before an upgrade resumes after it: a format-3 checkpoint (format 4
    less the checksum) is read unchecked, as its version read it, and the run ends as if never
    interrupted."""
    data, phase, cfg = checkpointed_audio_phase()
    logged: list[str] = []

    def go(folder: str, stop_after=None):
        model = fresh_model()
        (tmp_path / folder).mkdir(exist_ok=True)
        return run_phase(phase, model, initial(model), data, cfg, 3, checkpoint_dir=tmp_path / folder,
                         log=logged.append, stop_after=stop_after)  # fmt: skip

    whole = go("whole")
    with pytest.raises(Interrupted):
        go("killed", stop_after=4)
    path = tmp_path / "killed" / "p.ckpt"
    saved = torch.load(path, weights_only=False)
    old = {k: v for k, v in saved.items() if k != CHECKSUM_KEY}
    torch.save({**old, "format": 3}, path)
    resumed = go("killed")
    assert resumed.resumed_from == 4 and resumed.dev_curve == whole.dev_curve
    for name in whole.state:
        assert torch.equal(whole.state[name], resumed.state[name]), name
    assert not [m for m in logged if "cannot resume" in m]


def test_a_checkpoint_is_not_set_aside_for_what_says_nothing_about_the_file(tmp_path, monkeypatch):
    """Permission and memory errors while loading are raised, and the checkpoint is kept."""
    import avfl.fl.engine as engine

    path = tmp_path / "p.ckpt"
    path.write_bytes(b"anything")
    for error in (PermissionError(13, "Permission denied"),
                  RuntimeError("DefaultCPUAllocator: can't allocate memory")):  # fmt: skip

        def load(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(engine.torch, "load", load)
        with pytest.raises(type(error)):
            engine._load_checkpoint(path, quiet)
        assert path.exists()


def test_checkpoints_wait_for_their_interval_but_the_last_round_is_always_saved(
    tmp_path, monkeypatch
):
    """At multiples of checkpoint_every a job checkpoints only once checkpoint_interval_s has
    passed since its last checkpoint; the phase's last round is saved whatever the time."""
    import avfl.fl.engine as engine

    clock = iter(range(0, 10_000, 10))  # every reading of the clock is 10 s later
    monkeypatch.setattr(engine, "clock", lambda: float(next(clock)))
    saved: list[int] = []
    monkeypatch.setattr(engine, "_save_atomic", lambda obj, path: saved.append(obj["round"]))
    data = make_data(n_clients=4)
    phase = Phase(
        "p", range(4), lambda c: AudioTask(), rounds=9, clients_per_round=2, select_by="audio"
    )

    def go(interval: float) -> list[int]:
        saved.clear()
        model = fresh_model()
        cfg = settings(checkpoint_every=2, checkpoint_interval_s=interval)
        run_phase(phase, model, initial(model), data, cfg, 1, checkpoint_dir=tmp_path, log=quiet)
        return list(saved)

    assert go(0) == [2, 4, 6, 8, 9]
    assert go(25) == [4, 8, 9]  # 40 s after the start, then 40 s after that save
    assert go(10_000) == [9]


def test_best_dev_selection_keeps_the_first_best_round():
    data = make_data(n_clients=2)
    phase = Phase(
        "p", range(2), lambda c: AudioTask(), rounds=6, clients_per_round=2, select_by="audio"
    )
    model = fresh_model()
    result = run_phase(
        phase, model, initial(model), data, settings(selection="best_dev", lr=0.5), 0, log=quiet
    )
    scores = [point["dev_audio_top1"] for point in result.dev_curve]
    assert len(scores) == 6
    assert scores.index(max(scores)) == result.selected_round - 1
    assert all("train_loss" in point for point in result.dev_curve)


def test_a_phase_without_a_dev_metric_keeps_its_last_round_and_scores_nothing(monkeypatch):
    """Self-supervised pre-training has no classifier to score: its curve holds the training
    loss only, nothing is evaluated on dev, and the last round's state is the result."""
    import avfl.fl.engine as engine

    def no_scoring(*args, **kwargs):
        raise AssertionError("a phase without a dev metric was scored on dev")

    monkeypatch.setattr(engine, "dev_scores", no_scoring)
    data = make_data(n_clients=2)
    phase = Phase("p", range(2), lambda c: AudioTask(), rounds=4, clients_per_round=2,
                  select_by=engine.NO_DEV)  # fmt: skip
    model = fresh_model()
    result = run_phase(phase, model, initial(model), data, settings(eval_every=2), 0, log=quiet)
    assert result.selected_round == 4 and [p["round"] for p in result.dev_curve] == [2, 4]
    assert all(set(p) == {"round", "train_loss"} for p in result.dev_curve)
    assert all(torch.equal(result.state[k], result.last_state[k]) for k in result.state)


def test_models_are_selected_on_top5_where_the_report_is_top5():
    """ActivityNet reports top-5: its phases keep the round of the best dev top-5 (the curve
    records top-1 beside it, for the health guard)."""
    from avfl.fl.engine import dev_score

    data = make_data(n_clients=2, classes=8, n=60)
    phase = Phase(
        "p", range(2), lambda c: AudioTask(), rounds=6, clients_per_round=2, select_by="audio"
    )
    torch.manual_seed(0)
    model = AVModel(6, 5, 8, hidden=8, dropout=0.0)
    result = run_phase(phase, model, initial(model), data,
                       settings(selection="best_dev", lr=0.5, selection_metric="top5"), 0, log=quiet)  # fmt: skip
    top5 = [point["dev_audio_top5"] for point in result.dev_curve]
    assert all("dev_audio_top1" in point for point in result.dev_curve)
    assert top5.index(max(top5)) == result.selected_round - 1
    assert all(
        a <= b for a, b in zip((p["dev_audio_top1"] for p in result.dev_curve), top5, strict=True)
    )
    model.load_state_dict(result.state)
    assert dev_score(model, data, "audio", 8) == 1.0  # top-k over every class is always right


def test_a_phase_that_starts_from_a_trained_model_never_reports_worse_than_its_start():
    data = make_data(n_clients=2)
    trained_model = fresh_model()
    trained = run_phase(
        Phase("warm", range(2), lambda c: AudioTask(), rounds=8, clients_per_round=2, select_by="audio"),
        trained_model, initial(trained_model), data, settings(lr=0.3), 0, log=quiet,
    ).state  # fmt: skip
    # A phase whose training can only hurt: a learning rate far too large.
    ruin = Phase("ruin", range(2), lambda c: AudioTask(), rounds=3, clients_per_round=2, select_by="audio",
                 start_is_candidate=True)  # fmt: skip
    result = run_phase(
        ruin, fresh_model(), trained, data, settings(lr=50.0, selection="best_dev"), 0, log=quiet
    )
    start = result.dev_curve[0]
    assert start["round"] == 0
    assert (
        result.selected_round == 0
        or max(p["dev_audio_top1"] for p in result.dev_curve[1:]) > start["dev_audio_top1"]
    )
    if result.selected_round == 0:
        for name, value in trained.items():
            assert torch.equal(result.state[name], value), name


def test_also_selected_keeps_each_metrics_best_state():
    data = make_data(n_clients=3)
    phase = Phase("p", range(3), lambda c: AVTask(audio_head_weight=1.0), rounds=6, clients_per_round=3,
                  select_by="audio", also_select=("av",))  # fmt: skip
    model = fresh_model()
    result = run_phase(
        phase, model, initial(model), data, settings(lr=0.3, selection="best_dev"), 0, log=quiet
    )
    av_scores = [p["dev_av_top1"] for p in result.dev_curve]
    best_av_round = result.dev_curve[av_scores.index(max(av_scores))]["round"]
    model.load_state_dict(result.also_selected["av"])
    from avfl.fl.engine import dev_score

    assert dev_score(model, data, "av") == pytest.approx(max(av_scores), abs=1e-6)
    assert best_av_round >= 1


class CountingServer(FedAvgServer):
    """A strategy with state: it counts the updates it received (checkpointed)."""

    def __init__(self, phase, context):
        super().__init__(phase, context)
        self.seen = 0

    def aggregate(self, rnd, state, updates):
        self.seen += len(updates)
        new = super().aggregate(rnd, state, updates)
        new["audio_head.bias"] = new["audio_head.bias"] + 0.001 * self.seen  # uses its state
        return new

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


def test_server_state_survives_a_resume(tmp_path):
    data = make_data(n_clients=4)
    phase = Phase("p", range(4), lambda c: AudioTask(), rounds=7, clients_per_round=2, select_by="audio",
                  server=CountingServer)  # fmt: skip
    cfg = settings(checkpoint_every=2)

    def go(ckpt, stop_after=None):
        model = fresh_model()
        return run_phase(
            phase,
            model,
            initial(model),
            data,
            cfg,
            0,
            checkpoint_dir=ckpt,
            log=quiet,
            stop_after=stop_after,
        )

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = go(tmp_path / "a")
    with pytest.raises(Interrupted):
        go(tmp_path / "b", stop_after=3)
    resumed = go(tmp_path / "b")
    assert torch.equal(whole.state["audio_head.bias"], resumed.state["audio_head.bias"])


def test_a_finished_phase_is_checkpointed_without_its_server_state(tmp_path):
    """A finished phase never aggregates again: its checkpoint leaves the server's state out
    (BMSFed's update stores are most of a checkpoint), and a rerun restores the result from it.
    The same file before the last round cannot be resumed from: set aside, trained from 0."""
    data = make_data(n_clients=4)
    phase = Phase("p", range(4), lambda c: AudioTask(), rounds=7, clients_per_round=2, select_by="audio",
                  server=CountingServer)  # fmt: skip
    cfg = settings(checkpoint_every=2)
    logged: list[str] = []

    def go(ckpt, stop_after=None):
        model = fresh_model()
        return run_phase(phase, model, initial(model), data, cfg, 0, checkpoint_dir=ckpt,
                         log=logged.append, stop_after=stop_after)  # fmt: skip

    whole = go(tmp_path)
    saved = torch.load(tmp_path / "p.ckpt", weights_only=False)
    assert saved["round"] == 7 and saved["server"] is None
    again = go(tmp_path)
    assert again.resumed_from == 7 and again.dev_curve == whole.dev_curve
    assert again.selected_round == whole.selected_round
    for name in whole.state:
        assert torch.equal(whole.state[name], again.state[name]), name

    (tmp_path / "b").mkdir()
    with pytest.raises(Interrupted):
        go(tmp_path / "b", stop_after=3)
    interrupted = verify_checksum(torch.load(tmp_path / "b/p.ckpt", weights_only=False))
    assert interrupted["round"] == 3 and interrupted["server"] == {"seen": 6}
    interrupted["server"] = None
    torch.save(with_checksum(interrupted), tmp_path / "b/p.ckpt")
    logged.clear()
    redone = go(tmp_path / "b")
    assert redone.resumed_from == 0 and (tmp_path / "b/p.ckpt.unreadable").exists()
    assert any("round 3 of 7 without the server's state" in line for line in logged)
    for name in whole.state:
        assert torch.equal(whole.state[name], redone.state[name]), name


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_lockstep_clients_train_as_one_at_a_time(optimizer):
    """The lockstep path (padded batches, stacked rows) equals row-by-row training, dropout included."""
    data = make_data(n_clients=4)
    data.clients = [
        torch.arange(0, 5),
        torch.arange(5, 17),
        torch.arange(17, 20),
        torch.arange(20, 40),
    ]
    phase = Phase("p", range(4), lambda c: AVTask() if c % 2 else AudioTask(), rounds=3, clients_per_round=4,
                  select_by="audio")  # fmt: skip
    results = []
    for lockstep in (False, True):
        model = fresh_model(dropout=0.3)
        cfg = settings(
            optimizer=optimizer, lr=0.01, local_epochs=2, batch_size=4, lockstep=lockstep
        )
        results.append(run_phase(phase, model, initial(model), data, cfg, 0, log=quiet))
    for name, value in results[0].state.items():
        torch.testing.assert_close(results[1].state[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_runs_advancing_together_equal_runs_alone():
    """Two runs (other seeds, other audio-only clients) in one run_phases call: bitwise their solo results."""
    torch.set_num_threads(1)
    base = make_data(n_clients=4)
    variants = [(0, frozenset()), (1, frozenset({0, 2})), (2, frozenset({1}))]

    def phase_run(seed, audio_only):
        data = FederatedData(**{**base.__dict__, "audio_only": audio_only})
        phase = Phase("p", range(4), lambda c, ao=audio_only: AudioTask() if c in ao else AVTask(), rounds=4,
                      clients_per_round=3, select_by="audio")  # fmt: skip
        torch.manual_seed(seed)
        model = AVModel(6, 5, 3, hidden=8, dropout=0.2)
        return PhaseRequest(
            phase, model, initial(model), data, settings(optimizer="adam", lr=0.02), seed, log=quiet
        )

    together = run_phases([phase_run(*v) for v in variants])
    alone = [run_phases([phase_run(*v)])[0] for v in variants]
    for a, b in zip(together, alone, strict=True):
        assert a.dev_curve == b.dev_curve
        for name in a.state:
            assert torch.equal(a.state[name], b.state[name]), name


def test_client_sampling_is_a_function_of_seed_phase_and_round():
    rng1 = np.random.default_rng(derive_seed(4, "p", 7) % 2**63)
    rng2 = np.random.default_rng(derive_seed(4, "p", 7) % 2**63)
    server = FedAvgServer(Phase("p", range(10), lambda c: AudioTask(), 1, 3, "audio"))
    assert server.select(7, rng1, list(range(10)), 3) == server.select(7, rng2, list(range(10)), 3)


def test_a_server_can_start_each_client_from_its_own_state():
    """`Server.client_start`: a client's local training starts from what the server gives it
    (a personalised method's cluster model and the client's own layers), the others from the
    round's global state."""
    data = make_data(n_clients=4)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    class PerClient(FedAvgServer):
        def client_start(self, rnd, client, state):
            if client != 2:
                return state
            return {**state, "audio_head.bias": state["audio_head.bias"] + 100.0}

        def aggregate(self, rnd, state, updates):
            seen.update({u.client: {k: v.clone() for k, v in u.state.items()} for u in updates})
            return super().aggregate(rnd, state, updates)

    phase = Phase("p", range(4), lambda c: AudioTask(), rounds=1, clients_per_round=4,
                  select_by="audio", server=PerClient)  # fmt: skip
    model = fresh_model()
    start = initial(model)
    run_phase(phase, model, start, data, settings(lr=0.0), 0, log=quiet)
    assert torch.equal(seen[2]["audio_head.bias"], start["audio_head.bias"] + 100.0)
    for client in (0, 1, 3):  # lr 0: each update is its start
        assert torch.equal(seen[client]["audio_head.bias"], start["audio_head.bias"])
