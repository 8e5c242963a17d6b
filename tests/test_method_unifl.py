"""UniFL: the audio-only and the multimodal groups federate separately and never share."""

import pytest

from avfl.errors import UserError
from avfl.train import run_job

from .conftest import quiet, tiny_job


def test_unifl_learns(tiny_training, tmp_path):
    (record,) = run_job(
        tiny_job(tiny_training, tmp_path, "unifl", federated={"rounds": 40}), log=quiet
    )
    assert record["test"]["top1"] > 1.0 / len(record["classes"]) + 0.1
    assert set(record["rounds"]) == {"audio_group", "multimodal_group"}


def test_groups_never_share(tiny_training, tmp_path):
    (both,) = run_job(tiny_job(tiny_training, tmp_path / "a", "unifl"), log=quiet)
    (alone,) = run_job(
        tiny_job(
            tiny_training, tmp_path / "b", "unifl", settings={"train_multimodal_group": False}
        ),
        log=quiet,
    )
    # The audio model is the same whether or not the multimodal group trains at all.
    assert both["test"] == alone["test"]
    assert "av" in both["test_by_model"] and "av" not in alone["test_by_model"]


def test_total_sampling_trains_each_group_its_share_of_the_round(tiny_training, tmp_path):
    # 8 clients, 4 per round, rate 0.25: 2 audio-only clients get round(4 * 2/8) = 1 a round,
    # the 6 multimodal ones round(4 * 6/8) = 3; per_group gives each group up to 4.
    (total,) = run_job(
        tiny_job(tiny_training, tmp_path / "t", "unifl", (0.25,), federated={"rounds": 5}),
        log=quiet,
    )
    (per_group,) = run_job(tiny_job(tiny_training, tmp_path / "g", "unifl", (0.25,), federated={"rounds": 5},
                                    settings={"sampling": "per_group"}), log=quiet)  # fmt: skip
    assert total["budget"]["own"]["client_trainings"] == 5 * (1 + 3)
    assert per_group["budget"]["own"]["client_trainings"] == 5 * (2 + 4)


def test_unifl_needs_audio_only_clients(tiny_training, tmp_path):
    with pytest.raises(UserError, match="rate above 0"):
        run_job(tiny_job(tiny_training, tmp_path, "unifl", (0.0,)), log=quiet)
