"""FASSL: FSSUAVL's audio-only baseline, and the same run as FSSUAVL's at rate 1."""

from __future__ import annotations

import torch

from avfl.train import run_job

from .conftest import quiet, tiny_job
from .test_method_fssuavl import SMALL


def test_fssuavl_at_rate_one_is_fassl_bit_for_bit(tiny_training, tmp_path):
    (ours,) = run_job(
        tiny_job(tiny_training, tmp_path / "a", "fssuavl", rates=(1.0,), settings=SMALL), log=quiet
    )
    (base,) = run_job(tiny_job(tiny_training, tmp_path / "b", "fassl", settings=SMALL), log=quiet)
    assert base["rate"] is None and ours["rate"] == 1.0
    assert ours["test"] == base["test"] and ours["dev_curve"] == base["dev_curve"]
    a = torch.load(tmp_path / "a" / "r1.0_seed0" / "model.pt", weights_only=True)["states"]
    b = torch.load(tmp_path / "b" / "rNone_seed0" / "model.pt", weights_only=True)["states"]
    assert all(torch.equal(a["evaluated_audio"][n], v) for n, v in b["evaluated_audio"].items())
    (mixed,) = run_job(
        tiny_job(tiny_training, tmp_path / "c", "fssuavl", rates=(0.5,), settings=SMALL), log=quiet
    )
    assert mixed["dev_curve"]["simclr"] != base["dev_curve"]["simclr"]  # frames change phase 1
