"""MultiFL (Algorithm 1): modality-aware FL over all clients."""

import torch

from avfl.fl.types import derive_seed
from avfl.models.heads import AVModel
from avfl.train import run_job

from .conftest import quiet, run_folder, tiny_job


def test_multifl_learns_audio_and_audio_visual(tiny_training, tmp_path):
    (record,) = run_job(
        tiny_job(tiny_training, tmp_path, "multifl", federated={"rounds": 40}), log=quiet
    )
    chance = 1.0 / len(record["classes"])
    assert (
        record["test"]["top1"] > chance + 0.1
        and record["test_by_model"]["av"]["top1"] > chance + 0.1
    )
    assert record["rounds"] == {"multifl": 40} and len(record["audio_only_clients"]) == 4


def test_audio_head_is_trained_only_by_audio_only_clients(tiny_training, tmp_path):
    # No audio-only client (rate 0): nobody trains the audio head, so it keeps its initial value...
    run_job(tiny_job(tiny_training, tmp_path, "multifl", (0.0,)), log=quiet)
    saved = torch.load(tmp_path / run_folder(0.0, 0) / "model.pt", weights_only=True)["states"][
        "last"
    ]
    torch.manual_seed(derive_seed(0, "init"))
    init = AVModel(saved["audio_encoder.1.weight"].shape[1], saved["visual_encoder.1.weight"].shape[1],
                   saved["audio_head.weight"].shape[0], 128, 0.1).state_dict()  # fmt: skip
    assert torch.equal(saved["audio_head.weight"], init["audio_head.weight"])
    assert not torch.equal(saved["audio_encoder.1.weight"], init["audio_encoder.1.weight"])
    # ... unless multimodal clients are told to train it too.
    run_job(
        tiny_job(
            tiny_training,
            tmp_path / "w",
            "multifl",
            (0.0,),
            settings={"multimodal_audio_head_weight": 0.5},
        ),
        log=quiet,
    )
    trained = torch.load(tmp_path / "w" / run_folder(0.0, 0) / "model.pt", weights_only=True)[
        "states"
    ]["last"]
    assert not torch.equal(trained["audio_head.weight"], init["audio_head.weight"])


def test_inputs_are_standardised_with_training_clips_only(tiny_training, tmp_path):
    """The stored statistics are the training clients' mean and std: changing dev and test
    clips' features does not change them (a test that fails if they leak in)."""
    import json

    import numpy as np

    partition = json.loads((tiny_training["root"] / "partition.json").read_text())
    from avfl.data.manifest import read_manifest

    rows = {
        r.clip_id: r.row
        for r in read_manifest(tiny_training["features"] / "manifest.tsv")
        if r.status == "ok"
    }
    audio = np.load(tiny_training["root"] / "audio.npy")
    train_rows = [rows[c] for client in partition["clients"] for c in client]
    held_out = [rows[c] for c in partition["dev"] + partition["test"]]
    run_job(tiny_job(tiny_training, tmp_path / "a", "multifl", federated={"rounds": 1}), log=quiet)
    saved = torch.load(tmp_path / "a" / run_folder(0.5, 0) / "model.pt", weights_only=True)[
        "states"
    ]["last"]
    expected = torch.from_numpy(audio[train_rows]).double()
    torch.testing.assert_close(saved["audio_input.mean"], expected.mean(0).float())
    torch.testing.assert_close(saved["audio_input.std"], expected.std(0, unbiased=False).float())
    # The same job with dev and test clips' audio replaced: same statistics.
    shifted = audio.copy()
    shifted[held_out] += 1000.0
    root = tmp_path / "shifted"
    root.mkdir()
    np.save(root / "audio.npy", shifted)
    job = tiny_job(tiny_training, tmp_path / "b", "multifl", federated={"rounds": 1})
    job = type(job)(
        **{
            **job.__dict__,
            "embeddings": {"audio": root / "audio.npy", "visual": job.embeddings["visual"]},
        }
    )
    run_job(job, log=quiet)
    other = torch.load(tmp_path / "b" / run_folder(0.5, 0) / "model.pt", weights_only=True)[
        "states"
    ]["last"]
    assert torch.equal(other["audio_input.mean"], saved["audio_input.mean"])
