"""The learning-health guard: runs that cannot learn are flagged; healthy runs are not."""

import pytest

from avfl import health
from avfl.errors import UserError
from avfl.train import run_job

from .conftest import quiet, tiny_job


@pytest.fixture(scope="module")
def reference(tiny_training, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    run_job(tiny_job(tiny_training, folder, "centralised", federated={"rounds": 20}), log=quiet)
    return folder


def test_a_run_that_cannot_learn_is_flagged_in_log_and_record(tiny_training, tmp_path, reference):
    messages = []
    (record,) = run_job(tiny_job(tiny_training, tmp_path, "harmony", federated={"client_lr": 0.0}, reference=reference),
                        log=messages.append)  # fmt: skip
    checks = {f["check"] for f in record["health"]["findings"]}
    assert not record["health"]["ok"] and "near_chance" in checks
    assert any("centralised reference" in f["message"] for f in record["health"]["findings"])
    assert any("warning: health:" in m for m in messages)


def test_shuffled_training_labels_are_flagged(tiny_training, tmp_path, reference):
    """Training clips' labels permuted at random (test clips keep theirs): nothing to learn."""
    import json
    import random

    from avfl.data.manifest import read_manifest, write_manifest

    partition = json.loads((tiny_training["root"] / "partition.json").read_text())
    training = {c for client in partition["clients"] for c in client}
    rows = read_manifest(tiny_training["features"] / "manifest.tsv")
    labels = [r.label for r in rows if r.clip_id in training]
    random.Random(0).shuffle(labels)
    it = iter(labels)
    for r in rows:
        if r.clip_id in training:
            r.label = next(it)
    features = tmp_path / "features"
    features.mkdir()
    write_manifest(features / "manifest.tsv", rows)
    job = tiny_job(
        tiny_training, tmp_path / "run", "harmony", federated={"rounds": 40}, reference=reference
    )
    (record,) = run_job(type(job)(**{**job.__dict__, "features": features}), log=quiet)
    assert not record["health"]["ok"], record["test"]["top1"]


def test_a_healthy_run_is_quiet(tiny_training, tmp_path, reference):
    (record,) = run_job(
        tiny_job(tiny_training, tmp_path, "harmony", federated={"rounds": 40}, reference=reference),
        log=quiet,
    )
    assert record["health"] == {
        "ok": True,
        "findings": [],
        "reference": record["health"]["reference"],
    }
    assert record["health"]["reference"]


def test_fatal_health_fails_the_job_with_the_findings(tiny_training, tmp_path, reference):
    job = tiny_job(
        tiny_training,
        tmp_path,
        "harmony",
        federated={"client_lr": 0.0},
        reference=reference,
        health={"fatal": True},
    )
    with pytest.raises(UserError, match="did not learn"):
        run_job(job, log=quiet)


def test_checks_on_hand_made_records():
    settings = health.DEFAULTS
    balanced = [[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]
    one_class = [[5, 0, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0]]
    assert health.chance_level(balanced) == 0.25
    assert (
        health.check_model("audio", {"top1": 1.0, "confusion": balanced}, 1.0, 0.9, settings) == []
    )
    found = health.check_model("audio", {"top1": 0.25, "confusion": one_class}, 0.25, 0.9, settings)
    assert {f["check"] for f in found} == {"near_chance", "one_class"}
    curve = {"p": [{"round": 5, "train_loss": 1.0}, {"round": 10, "train_loss": float("nan")}]}
    assert health.check_losses(curve, settings)[0]["check"] == "loss"
    growing = {"p": [{"round": 5, "train_loss": 1.0}, {"round": 10, "train_loss": 2.0}]}
    assert health.check_losses(growing, settings) and not health.check_losses(
        growing, settings, growth=False
    )
