"""The centralised references: same model, pooled training clients, the federated sample budget."""

import json

import numpy as np
import torch

from avfl.data.manifest import read_manifest
from avfl.methods.centralised import centralised_epochs
from avfl.train import run_job

from .conftest import quiet, run_folder, tiny_job


def test_budget_matches_the_federated_sample_visits():
    fed = {"rounds": 200, "clients_per_round": 10, "local_epochs": 1}
    assert centralised_epochs(fed, 100) == 20  # the paper: 200 x 10/100 x 1
    assert (
        centralised_epochs({**fed, "rounds": 100, "local_epochs": 2}, 40) == 50
    )  # the embedded config
    assert (
        centralised_epochs({**fed, "clients_per_round": 50}, 20) == 200
    )  # at most every client per round


def test_reference_record_holds_every_model_and_the_probes(tiny_training, tmp_path):
    (record,) = run_job(
        tiny_job(tiny_training, tmp_path, "centralised", federated={"rounds": 10}), log=quiet
    )
    assert record["role"] == "reference" and record["rate"] is None
    assert set(record["rounds"]) == {"audio", "visual", "av"}
    # 10 rounds x 4 of 8 clients x 2 local epochs = 10 epochs over the pooled clients.
    assert record["rounds"]["audio"] == 10
    models = record["test_by_model"]
    assert {"visual", "av", "probe_audio", "probe_visual"} <= set(models)
    chance = 1.0 / len(record["classes"])
    assert models["visual"]["top1"] > chance + 0.2 and models["probe_visual"]["top1"] > chance + 0.2
    assert models["probe_audio"]["C"] in (0.01, 0.1, 1.0, 10.0)


def test_linear_probe_separates_separable_embeddings(tiny_training, tmp_path):
    """Embeddings that are class one-hots plus a large common offset and small noise: the
    probe, on standardised features, is right on every test clip."""
    rows = [
        r for r in read_manifest(tiny_training["features"] / "manifest.tsv") if r.status == "ok"
    ]
    rng = np.random.default_rng(0)
    n_classes = max(r.label for r in rows) + 1
    audio = np.full((len(rows), 16), 50.0, dtype=np.float32)
    for r in rows:
        audio[r.row, r.label] += 0.1
    audio += rng.normal(0, 0.005, audio.shape).astype(np.float32)
    root = tmp_path / "emb"
    root.mkdir()
    np.save(root / "audio.npy", audio)
    job = tiny_job(tiny_training, tmp_path / "run", "centralised", federated={"rounds": 4})
    job = type(job)(
        **{
            **job.__dict__,
            "embeddings": {"audio": root / "audio.npy", "visual": job.embeddings["visual"]},
        }
    )
    (record,) = run_job(job, log=quiet)
    assert record["test_by_model"]["probe_audio"]["top1"] == 1.0
    assert record["test"]["top1"] > 1.0 / n_classes + 0.3  # the trained audio model learns it too
    saved = torch.load(tmp_path / "run" / run_folder(None, 0) / "model.pt", weights_only=True)
    assert json.dumps(sorted(saved["states"])) == json.dumps(
        ["evaluated_audio", "evaluated_av", "evaluated_visual"]
    )
