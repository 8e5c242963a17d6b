"""Personalised evaluation: the label-mix reweighting, the k fine-tuning steps, the scores."""

from __future__ import annotations

import torch

from avfl.fl.data import FederatedData
from avfl.fl.types import TrainSettings
from avfl.models.heads import AVModel
from avfl.personalise import label_mix_weights, personalised_scores, step_indices, weighted_accuracy

CFG = TrainSettings(local_epochs=2, batch_size=4, lr=1e-2, optimizer="adam", weight_decay=0.0,
                    eval_every=1, selection="last", checkpoint_every=1)  # fmt: skip


def test_the_reweighting_is_the_identity_for_a_client_with_the_test_splits_mix():
    test = torch.tensor([0, 0, 1, 2, 2, 2])
    same = torch.tensor([0, 0, 1, 2, 2, 2, 0, 0, 1, 2, 2, 2])
    assert torch.allclose(label_mix_weights(same, test, 4), torch.ones(6, dtype=torch.float64))
    logits = torch.eye(4)[torch.tensor([0, 1, 1, 2, 2, 0])]
    assert weighted_accuracy(logits, test, torch.ones(6)) == 4 / 6
    # A client of class 2 only (and of class 3, which the test split lacks): its clips of class 2.
    only = label_mix_weights(torch.tensor([2, 2, 3]), test, 4)
    assert only[:3].sum() == 0 and weighted_accuracy(logits, test, only) == 2 / 3


def test_k_steps_are_k_batches_of_the_clients_own_clips():
    clips = torch.tensor([5, 9, 11])
    found = step_indices(clips, 5, 4, seed=3)
    assert found.numel() == 20 and set(found.tolist()) == {5, 9, 11}
    assert torch.equal(found, step_indices(clips, 5, 4, seed=3))
    counts = torch.bincount(found)[[5, 9, 11]]
    assert counts.max() - counts.min() <= 1  # permutations after one another: balanced


def _data(n=60, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    audio = (
        torch.randn(n, 6, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 6)[:, :6].float()
    )
    visual = torch.randn(n, 5, generator=g)
    clients = [torch.tensor([i for i in range(40) if labels[i] == c]) for c in range(classes)]
    clients.append(torch.arange(0, 40, 2))
    return FederatedData(audio, visual, labels, clients, torch.arange(40, 45), torch.arange(45, n),
                         classes, ["a", "b", "c"], frozenset({0, 3}))  # fmt: skip


def test_the_scores_of_k0_are_the_global_models_and_fine_tuning_moves_them():
    data = _data()
    torch.manual_seed(0)
    model = AVModel(6, 5, 3, 8, 0.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scores = personalised_scores(model, state, data, CFG, [0, 1, 5], seed=0, has_rate=True)
    assert set(scores) == {"k0", "k1", "k5"}
    test_labels = data.labels[data.test]
    logits = model.audio_logits(data.audio[data.test])
    for c in range(4):  # k = 0: the global model, reweighted to each client's mix
        w = label_mix_weights(data.labels[data.clients[c]], test_labels, 3)
        assert (
            abs(scores["k0"]["per_client"][c] - round(weighted_accuracy(logits, test_labels, w), 6))
            < 1e-9
        )
    assert scores["k5"]["per_client"] != scores["k0"]["per_client"]
    # A one-class client fine-tuned on its class predicts it: 100 % on its own mix.
    assert scores["k5"]["per_client"][1] == 1.0
    assert scores["k0"]["audio_only"] == round(
        (scores["k0"]["per_client"][0] + scores["k0"]["per_client"][3]) / 2, 6
    )
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # left as it was
    again = personalised_scores(model, state, data, CFG, [0, 1, 5], seed=0, has_rate=False)
    assert (
        again["k5"]["per_client"] == scores["k5"]["per_client"]
        and again["k5"]["audio_only"] is None
    )


def test_every_run_records_its_personalised_scores(tiny_training, tmp_path):
    from avfl.train import run_job

    from .conftest import quiet, tiny_job

    (multifl,) = run_job(tiny_job(tiny_training, tmp_path / "m", "multifl"), log=quiet)
    (harmony,) = run_job(tiny_job(tiny_training, tmp_path / "h", "harmony"), log=quiet)
    for record in (multifl, harmony):
        assert set(record["personalised"]) == {"k0", "k1", "k5"}
        assert len(record["personalised"]["k0"]["per_client"]) == record["partition"]["n_clients"]
    assert multifl["personalised"]["k0"]["audio_only"] is not None  # a run with a rate
    assert harmony["personalised"]["k0"]["audio_only"] is None  # rate-free: no such split
    off = tiny_job(tiny_training, tmp_path / "off", "multifl")
    off.settings["evaluation"] = {"personalised_steps": []}
    (none,) = run_job(off, log=quiet)
    assert "personalised" not in none and none["test"] == multifl["test"]


def test_the_personalised_table_averages_runs_per_method_k_and_rate():
    from avfl.report.personalised import personalised_markdown, personalised_rows

    def run(method, rate, seed, mean):
        return {"method": method, "rate": rate, "seed": seed,
                "personalised": {"k0": {"mean": mean, "audio_only": mean - 0.1 if rate else None,
                                        "multimodal": mean + 0.1 if rate else None, "per_client": []}}}  # fmt: skip

    runs = [run("multifl", 0.5, 0, 0.4), run("multifl", 0.5, 1, 0.6), run("harmony", None, 0, 0.5)]
    rows = personalised_rows({"synthetic": runs}, [0.5], ["multifl", "harmony", "unifl"])
    by = {(r["method"], r["k"]): r for r in rows}
    assert set(by) == {("multifl", 0), ("harmony", 0)}
    assert (
        abs(by[("multifl", 0)]["mean"] - 50.0) < 1e-9
        and abs(by[("multifl", 0)]["audio_only"] - 40.0) < 1e-9
    )
    assert by[("harmony", 0)]["audio_only"] is None and by[("harmony", 0)]["n_runs"] == 1
    table = personalised_markdown(rows, [0.5])
    assert "| Embedded | MultiFL | 0 | 50.00 (± 14.14) [40.0 / 60.0] |" in table
