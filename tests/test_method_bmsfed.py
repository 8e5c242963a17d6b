"""BMSFed: prototypes, the ME loss, the ME coefficients, balanced selection, and whole runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avfl.fl.data import FederatedData
from avfl.fl.types import PhaseContext, TrainSettings
from avfl.methods.bmsfed import BMSFedServer, BMSFedTask, _model_class, me_coefficients
from avfl.models.heads import AVModel, PrototypeHead
from avfl.train import run_job

from .conftest import quiet, tiny_job

SETTINGS = {
    "selection": "balanced",
    "chi": 1.5,
    "candidates": None,
    "prototype_timing": "after_training",
    "audio_model": "prototype",
}


def test_prototype_head_logits_are_minus_euclidean_distances():
    head = PrototypeHead(3, 2)
    head.prototypes.copy_(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]))
    z = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(
        head(z), -torch.tensor([[0.0, 5.0, 1.0], [3.0, 4.0, 2.0]]), atol=1e-5, rtol=0
    )


def test_prototype_head_matches_the_difference_form_and_its_gradient_at_model_scale():
    torch.manual_seed(0)
    head = PrototypeHead(51, 128)
    head.prototypes.copy_(torch.randn(51, 128))
    z = torch.randn(16, 128, requires_grad=True)
    direct = -((z[:, None, :] - head.prototypes) ** 2).sum(dim=-1).add(1e-12).sqrt()
    torch.testing.assert_close(head(z), direct, atol=1e-4, rtol=1e-5)
    labels = torch.randint(0, 51, (16,))
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(head(z), labels), z)
    (expected,) = torch.autograd.grad(torch.nn.functional.cross_entropy(direct, labels), z)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


def test_stored_distances_equal_direct_distances_after_rows_are_replaced():
    server = _server(8, [True] * 8)
    torch.manual_seed(1)
    rows = {c: torch.randn(300) for c in range(6)}
    server._store("mm", rows)
    rows |= {c: torch.randn(300) * 3 for c in (1, 4)}  # two clients trained again
    server._store("mm", {c: rows[c] for c in (1, 4)})
    have = sorted(rows)
    every = torch.stack([rows[c] for c in have]).double()
    expected = torch.cdist(every, every).numpy()
    got = server.dist["mm"][have][:, have]
    assert abs(got - expected).max() < 1e-3 * expected.max()
    assert server.has_row["mm"][have].all() and not server.has_row["mm"][6:].any()


def test_me_loss_is_cross_entropy_over_negative_distances():
    torch.manual_seed(0)
    model = _model_class()(AVModel(4, 3, 3, 2, 0.0), 3, 2, "prototype")
    model.audio_prototypes.prototypes.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
    audio, visual, labels = torch.randn(5, 4), torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    base = BMSFedTask("audio").sample_loss(model, audio, visual, labels)
    weighted = BMSFedTask("audio", audio_weight=0.7).sample_loss(model, audio, visual, labels)
    z = model.audio_embedding(audio)
    distances = torch.cdist(z, model.audio_prototypes.prototypes)
    me = torch.nn.functional.cross_entropy(-distances, labels, reduction="none")
    torch.testing.assert_close(weighted - base, 0.7 * me, atol=1e-5, rtol=1e-5)
    # The audio-only task classifies with the fusion head and a zero visual half.
    fused = model.fused_logits(z, torch.zeros_like(z))
    torch.testing.assert_close(
        base, torch.nn.functional.cross_entropy(fused, labels, reduction="none")
    )


def test_me_coefficients_enhance_the_weaker_modality():
    assert me_coefficients(1.0) == (0.0, 0.0)
    assert me_coefficients(1.5) == (0.0, 0.5)  # audio ahead: enhance visual, beta = rho - 1
    assert me_coefficients(4.0) == (0.0, 1.0)  # clipped to 1
    gamma, beta = me_coefficients(0.8)
    assert beta == 0.0 and gamma == pytest.approx(0.25)  # visual ahead: gamma = 1/rho - 1


def test_global_prototypes_are_class_count_weighted_and_absent_classes_keep_theirs():
    state = {"audio_prototypes.prototypes": torch.full((3, 2), 9.0)}
    # Client 1: class 0 mean (1, 1) over 1 sample; client 2: class 0 mean (4, 4) over 3, class 1 (2, 0) over 2.
    sums = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]) + torch.tensor(
        [[12.0, 12.0], [4.0, 0.0], [0.0, 0.0]]
    )
    counts = torch.tensor([1.0 + 3.0, 2.0, 0.0])
    new = BMSFedServer._write_prototypes(dict(state), {"audio": (sums.double(), counts.double())})
    expected = torch.tensor([[(1 * 1 + 3 * 4) / 4, (1 * 1 + 3 * 4) / 4], [2.0, 0.0], [9.0, 9.0]])
    torch.testing.assert_close(new["audio_prototypes.prototypes"], expected)


def _server(n_clients: int, video: list[bool], candidates: int | None = None) -> BMSFedServer:
    data = FederatedData(
        audio=torch.zeros(n_clients, 4), visual=torch.zeros(n_clients, 3), labels=torch.zeros(n_clients, dtype=torch.long),
        clients=[torch.tensor([c]) for c in range(n_clients)], dev=torch.arange(0), test=torch.arange(0),
        n_classes=2, class_names=["a", "b"], audio_only=frozenset(c for c, v in enumerate(video) if not v),
    )  # fmt: skip
    cfg = TrainSettings(1, 8, 1e-3, "adam", 0.0, 5, "best_dev", 10)
    model = _model_class()(AVModel(4, 3, 2, 2, 0.0), 2, 2, "prototype")
    return BMSFedServer(
        None, PhaseContext(data, model, 0, cfg), {**SETTINGS, "candidates": candidates}
    )


def _clustered(server: BMSFedServer, store: str, groups: list[list[int]]) -> None:
    """Rows that form tight clusters far apart: the facility-location greedy covers each."""
    rows = {}
    for g, members in enumerate(groups):
        for i, c in enumerate(members):
            rows[c] = torch.tensor([100.0 * g, 0.01 * i, 0.0])
    server._store(store, rows)


def test_greedy_selection_picks_one_representative_per_cluster():
    server = _server(
        9, [True] * 9, candidates=9
    )  # every unselected client is a candidate each step
    _clustered(server, "mm", [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    server.has_rho[:] = True  # rho 1 everywhere: no client is severely imbalanced
    picked = server.select(5, np.random.default_rng(0), list(range(9)), 3)
    assert len(picked) == 3 and sorted(c // 3 for c in picked) == [0, 1, 2]
    assert set(server.assigned.values()) == {"multimodal"}


def test_conflict_rule_gives_a_severely_imbalanced_client_its_weak_modality_alone():
    server = _server(6, [True] * 6)
    _clustered(server, "mm", [[0, 1, 2], [3, 4, 5]])
    _clustered(server, "audio", [[0, 1, 2], [3, 4, 5]])
    server.has_rho[:] = True
    server.rho[:] = 0.9  # globally visual ahead: audio is the weak modality
    server.rho[4] = 0.5  # below 1 / chi = 0.67: severely imbalanced
    server.select(5, np.random.default_rng(1), list(range(6)), 6)
    assert server.assigned[4] == "audio"
    assert all(kind == "multimodal" for c, kind in server.assigned.items() if c != 4)


def test_clients_without_video_are_only_ever_picked_for_audio():
    server = _server(6, [True, True, True, False, False, False])
    _clustered(server, "mm", [[0, 1, 2]])
    _clustered(server, "audio", [[0, 1], [3, 4, 5]])
    server.has_rho[:3] = True
    server.rho[:3] = (
        1.3  # audio ahead: visual is weak, so chain U never proposes a video-less client
    )
    for seed in range(5):
        server.select(5, np.random.default_rng(seed), list(range(6)), 4)
        for client, kind in server.assigned.items():
            assert kind == ("audio" if client >= 3 else "multimodal") or (
                client < 3 and kind == "visual"
            )


def test_bmsfed_learns_and_resumes_identically(tiny_training, tmp_path):
    from avfl.fl.types import Interrupted

    fed = {"rounds": 30, "checkpoint_every": 4}
    (whole,) = run_job(tiny_job(tiny_training, tmp_path / "a", "bmsfed", federated=fed), log=quiet)
    chance = 1.0 / len(whole["classes"])
    assert (
        whole["test"]["top1"] > chance + 0.1 and whole["test_by_model"]["av"]["top1"] > chance + 0.1
    )
    assert "audio_fusion_zeroed" in whole["test_by_model"]
    assert whole["health"]["ok"], whole["health"]
    # Round 0 trains every client once, later rounds clients_per_round.
    assert whole["budget"]["own"]["client_trainings"] == 8 + 29 * 4
    job = tiny_job(tiny_training, tmp_path / "b", "bmsfed", federated=fed)
    with pytest.raises(Interrupted):
        run_job(job, log=quiet, stop_after=10)
    (resumed,) = run_job(job, log=quiet)
    assert (
        resumed["resumed_from"]
        and resumed["test"] == whole["test"]
        and resumed["dev_curve"] == whole["dev_curve"]
    )
