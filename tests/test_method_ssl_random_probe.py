"""The random-init probe: the probe phase alone on FSSUAVL's initial backbone."""

from __future__ import annotations

import torch

from avfl.fl.types import derive_seed
from avfl.models.backbones import valid_fbank_stats
from avfl.models.ssl import SSLModel
from avfl.train import run_job

from .conftest import quiet, tiny_job
from .test_method_fssuavl import SMALL, _data


def test_the_random_init_probe_is_the_probe_phase_of_the_same_initial_backbone(
    tiny_training, tmp_path
):
    (probe,) = run_job(
        tiny_job(tiny_training, tmp_path, "ssl_random_probe", settings=SMALL), log=quiet
    )
    assert probe["role"] == "reference" and probe["rate"] is None
    assert set(probe["rounds"]) == {"probe"}
    states = torch.load(tmp_path / "rNone_seed0" / "model.pt", weights_only=True)["states"]
    data = _data(tiny_training)
    norm = valid_fbank_stats(data.audio, data.training_indices())
    initial = SSLModel("small_cnn", data.n_classes, 16, 200, norm["mean"], norm["std"],
                       torch.Generator().manual_seed(derive_seed(0, "ssl_init"))).state_dict()  # fmt: skip
    assert all(torch.equal(initial[n], v) for n, v in states["backbone"].items())
